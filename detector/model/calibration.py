"""A model's calibrated scores: per class, a map from its raw detection score (an SVM margin or a
softmax probability) to the probability that the detection is right, kept in the model file as
plain tensors.  ``detector.evaluation.calibration`` fits the maps; this module applies them (the
Platt map as ``1 / (1 + exp(-(coef * s + intercept)))``, the isotonic one by linear interpolation
between its thresholds, as scikit-learn's ``predict`` does).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from detector.core.detections import Detections

METHODS = ("platt", "isotonic")
POOLED = "__all__"  # the key of the map fitted on every class together


@dataclass(frozen=True)
class ScoreCalibration:
    """Per-class maps from raw scores to calibrated probabilities (module docstring)."""

    method: str
    maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # class (or POOLED) -> parameters
    source: dict = field(default_factory=dict)  # what the maps were fitted on (split, detections, model)

    def apply(self, class_name: str, scores: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of one class's raw ``scores`` (float64)."""
        params = self.maps.get(class_name, self.maps.get(POOLED))
        if params is None:
            raise ValueError(f"calibration has no map for class {class_name!r} and no pooled map")
        return _predict(self.method, params, np.asarray(scores, dtype=np.float64))

    def apply_set(self, detection_set: Mapping[str, Detections]) -> dict[str, Detections]:
        """A detection set with every score calibrated (boxes and order as they were)."""
        return {name: Detections(found.image_ids, self.apply(name, found.scores), found.boxes)
                for name, found in detection_set.items()}

    def state_dict(self) -> dict:
        """Plain values and arrays, for the model file (``detector.core.integrity`` makes them tensors)."""
        return {"method": self.method, "maps": {k: dict(v) for k, v in self.maps.items()}, "source": dict(self.source)}

    @classmethod
    def from_state_dict(cls, state: Mapping) -> ScoreCalibration:
        """The calibration a ``state_dict`` holds (tensors as a model file holds them, or arrays)."""
        maps = {name: {key: np.asarray(value, dtype=np.float64) for key, value in params.items()}
                for name, params in state["maps"].items()}
        return cls(str(state["method"]), maps, dict(state.get("source", {})))


def _predict(method: str, params: Mapping[str, np.ndarray], scores: np.ndarray) -> np.ndarray:
    if method == "platt":
        return 1.0 / (1.0 + np.exp(-(float(params["coef"]) * scores + float(params["intercept"]))))
    return np.interp(scores, params["x"], params["y"])
