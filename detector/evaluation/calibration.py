"""Calibrated scores: per class, a map from a model's raw detection score (an SVM margin or a
softmax probability) to the probability that the detection is right, so that the scores of two
models can be compared (``tools/ensemble.py`` merges on them).

A detection is "right" as the devkit judges it (``voc_eval.detection_outcomes``: IoU >= 0.5 with a
GT box of its class not taken by a better-scored detection; one matched to a difficult box is left
out).  Each class's map is fitted with scikit-learn on the detections a model made on images it was
not trained on:
- ``platt``: ``LogisticRegression`` on the raw score alone, with Platt's targets (1999): a right
  detection counts as (N+ + 1) / (N+ + 2) right and a wrong one as 1 / (N- + 2), given to
  scikit-learn as each detection twice, once per outcome, weighted by those shares; so a class
  whose scores happen to separate right from wrong gets a finite slope, not a step.  ``C`` = 1e4:
  the weak L2 penalty of scikit-learn's default is left out.  Strictly increasing, so a model's own
  ranking, and its AP, are unchanged.
- ``isotonic``: ``IsotonicRegression`` (increasing, clipped to [0, 1] and to the fitted range);
  non-decreasing, so it can tie detections the raw scores told apart.

A class with fewer than ``MIN_EACH`` right or wrong detections to fit on uses the map fitted on
every class's detections together (logged).  The maps are kept as plain tensors in the model file
and applied by ``detector.model.calibration.ScoreCalibration``.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from detector.core.detections import Detections
from detector.core.records import ImageRecord
from detector.evaluation.voc_eval import detection_outcomes
from detector.model.calibration import METHODS, POOLED, ScoreCalibration

log = logging.getLogger(__name__)

MIN_EACH = 5  # right and wrong detections a class needs for a map of its own
PLATT_C = 1e4  # LogisticRegression's inverse penalty: the fitted sigmoid is the likelihood's maximum


def platt_targets(scores: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Platt's smoothed targets as weighted samples: every detection once as right and once as wrong,
    weighted by its target and one minus it (module docstring)."""
    positives, negatives = int(right.sum()), int((~right).sum())
    target = np.where(right, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    return (np.concatenate([scores, scores]), np.concatenate([np.ones(len(scores), bool), np.zeros(len(scores), bool)]),
            np.concatenate([target, 1 - target]))


def fit_map(method: str, scores: np.ndarray, right: np.ndarray) -> dict[str, np.ndarray]:
    """The parameters of one map fitted on ``scores`` with outcomes ``right`` (bool)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    right = np.asarray(right, dtype=bool).reshape(-1)
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        x, y, weight = platt_targets(scores, right)
        fitted = LogisticRegression(C=PLATT_C).fit(x[:, None], y, sample_weight=weight)
        return {"coef": np.array(fitted.coef_[0, 0]), "intercept": np.array(fitted.intercept_[0])}
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        fitted = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        fitted.fit(scores, right.astype(np.float64))
        return {"x": np.asarray(fitted.X_thresholds_, np.float64), "y": np.asarray(fitted.y_thresholds_, np.float64)}
    raise ValueError(f"calibration method must be one of {METHODS}, not {method!r}")


def outcomes(detection_set: Mapping[str, Detections], records: Sequence[ImageRecord],
             classes: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per class, the raw scores of its detections and whether each is right (module docstring)."""
    return {name: detection_outcomes(detection_set.get(name, Detections.empty()), records, k)
            for k, name in enumerate(classes)}


def fit_calibration(detection_set: Mapping[str, Detections], records: Sequence[ImageRecord],
                    classes: Sequence[str], method: str = "platt", source: Mapping | None = None) -> ScoreCalibration:
    """Fit every class's map on a model's detections on held-out ``records`` (module docstring)."""
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {METHODS}, not {method!r}")
    found = outcomes(detection_set, records, classes)
    pooled_scores = np.concatenate([scores for scores, _ in found.values()])
    pooled_right = np.concatenate([right for _, right in found.values()])
    if pooled_right.sum() < MIN_EACH or (~pooled_right).sum() < MIN_EACH:
        raise ValueError(f"calibration needs at least {MIN_EACH} right and {MIN_EACH} wrong detections, got "
                         f"{int(pooled_right.sum())} and {int((~pooled_right).sum())} on {len(records)} images")
    maps = {POOLED: fit_map(method, pooled_scores, pooled_right)}
    few = []
    for name, (scores, right) in found.items():
        if right.sum() >= MIN_EACH and (~right).sum() >= MIN_EACH:
            maps[name] = fit_map(method, scores, right)
        else:
            few.append(name)
    if few:
        log.info("calibration: %s had fewer than %d right or wrong detections; they use the map of all classes",
                 ", ".join(few), MIN_EACH)
    return ScoreCalibration(method, maps, {"images": len(records), "detections": int(len(pooled_scores)),
                                           "pooled_classes": few, **(source or {})})
