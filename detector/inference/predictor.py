"""A trained detector on any image: ``Detector.load(path).predict(image)``.

    from detector import Detector
    detector = Detector.load("runs/demo/model.pt", device="cpu")
    result = detector.predict("photo.jpg")          # or an RGB uint8 array, or a list of either
    for box, score, name in zip(result.boxes, result.scores, result.class_names): ...

Decisions:
- The pipeline is :func:`detector.inference.detect.detect`, unchanged: an in-memory image gets
  an ``ImageRecord`` of its own size and its pixels are handed through, so nothing is decoded
  twice.  The model is built with no conv-map cache (``cache_dir=None``) and proposals come
  from selective search run here with the model's ``proposals.method`` and ``max_side``
  (or ``proposals=``): no dataset cache is read or written.  A model trained on external
  proposals (``proposals.source``) names files of its training images; for new images pass
  ``proposals=`` (selective search is used otherwise).
- ``score_threshold`` None picks the scorer's default, applied to the final detections (after
  NMS; a lower-scored box never suppresses a higher one, so filtering before or after NMS keeps
  the same boxes).  SVM scores are margins: 0 is each SVM's own decision boundary, the
  score above which it was trained to say "object" (positives at +1, hard negatives at -1), so
  ``DEFAULT_SVM_THRESHOLD = 0.0``.  Softmax scores are class probabilities:
  ``DEFAULT_SOFTMAX_THRESHOLD = 0.5`` keeps a box when its class is more likely than all
  others together.  Measured on the demo test split with the Quickstart's model (README, "Use a
  trained model"; 2.51 objects per image): SVM 0.0 keeps 2.39 detections per image at precision
  0.993 and recall 0.947 (-0.5: 0.894 / 0.980; 0.5: 1.000 / 0.870); softmax 0.5 keeps 2.73 at
  0.909 / 0.990.  Both draw the shapes with few false boxes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from detector.core.images import load_image
from detector.core.records import ImageRecord
from detector.core.timing import StageTimer
from detector.inference.detect import detect
from detector.model.detector import DetectorModel, load_model
from proposals.selective_search import selective_search

DEFAULT_SVM_THRESHOLD = 0.0
DEFAULT_SOFTMAX_THRESHOLD = 0.5


@dataclass
class Prediction:
    """Detections of one image: boxes (N x 4, x1 y1 x2 y2 pixels), scores, class indices and names,
    best first."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    width: int
    height: int

    def __len__(self) -> int:
        return len(self.scores)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``width``, ``height``, ``boxes``, ``scores``, ``labels``, ``class_names``)."""
        return {"width": self.width, "height": self.height, "boxes": self.boxes.tolist(),
                "scores": self.scores.tolist(), "labels": self.labels.tolist(), "class_names": list(self.class_names)}


def default_score_threshold(scorer: str) -> float:
    """The default threshold of a scorer (see the module docstring)."""
    return DEFAULT_SVM_THRESHOLD if scorer == "svm" else DEFAULT_SOFTMAX_THRESHOLD


def as_rgb(image: Any) -> tuple[np.ndarray, Path | None]:
    """RGB uint8 H x W x 3 pixels of a path or an array (a path is returned too), else a ValueError."""
    if isinstance(image, (str, Path)):
        return load_image(image, exif_orientation=True), Path(image)
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 1:
        raise ValueError(f"an image must be a path or an RGB uint8 H x W x 3 array, got {array.dtype} {array.shape}")
    return array, None


class Detector:
    """A trained detector for single images and lists of them (see the module docstring)."""

    def __init__(self, model: DetectorModel) -> None:
        self.model = model

    @classmethod
    def load(cls, path: str | Path, device: str | None = None,
             overrides: Mapping[str, Any] | None = None) -> Detector:
        """Load a ``model.pt``; ``overrides`` as in ``load_model`` (e.g. ``{"test.scorer": "softmax"}``)."""
        return cls(load_model(path, device, cache_dir=None, overrides=overrides))

    @property
    def classes(self) -> list[str]:
        return list(self.model.classes)

    @property
    def default_threshold(self) -> float:
        """The score threshold ``predict`` uses when given none."""
        return default_score_threshold(self.model.config.test.scorer)

    def proposals(self, image: np.ndarray) -> np.ndarray:
        """Selective search boxes of RGB pixels with the model's proposal settings."""
        settings = self.model.config.proposals
        return selective_search(image, mode=settings.method, max_side=settings.max_side)

    def predict(self, image: Any, score_threshold: float | None = None,
                proposals: Any = None) -> Prediction | list[Prediction]:
        """Detections of a path or RGB array (a Prediction), or of a list of them (a list);
        ``proposals``: M x 4 boxes per image (a list for a list) instead of selective search."""
        if isinstance(image, (list, tuple)):
            boxes = proposals if proposals is not None else [None] * len(image)
            if len(boxes) != len(image):
                raise ValueError(f"proposals: {len(boxes)} arrays for {len(image)} images")
            return [self._predict_one(i, score_threshold, b) for i, b in zip(image, boxes)]
        return self._predict_one(image, score_threshold, proposals)

    def _predict_one(self, image: Any, score_threshold: float | None,
                     proposals: np.ndarray | None) -> Prediction:
        pixels, path = as_rgb(image)
        height, width = pixels.shape[:2]
        record = ImageRecord(path.stem if path else "image", path or Path("<memory>"), width, height)
        boxes = self.proposals(pixels) if proposals is None else np.asarray(proposals, np.float32).reshape(-1, 4)
        found = detect(self.model, record, boxes, StageTimer(), image=pixels)
        threshold = self.default_threshold if score_threshold is None else score_threshold
        keep = found.scores >= threshold
        labels = found.labels[keep].astype(np.int64)
        return Prediction(np.asarray(found.boxes[keep], np.float32), np.asarray(found.scores[keep], np.float64),
                          labels, [self.model.classes[k] for k in labels], width, height)

