"""Plain data for scored detections of one class; a mapping class name -> Detections is a
"detection set", the currency between testing, model combination and evaluation.

Decisions:
- Arrays are normalised on construction: ``image_ids`` a numpy str array (N,), ``scores``
  float64 (N,) (SVM scores are doubles; float32 would create ties that change the ranking),
  ``boxes`` float32 N x 4 in the continuous convention of ``detector.core.boxes``.
- Construction checks shapes and rejects non-finite scores or boxes with a clear message,
  since a NaN score silently scrambles the ranking that AP is computed from.
- The order of the rows is kept as given; evaluation sorts by score with a stable sort,
  so ties are ranked in this order.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """Scored boxes of one class over a set of images (row i: ``image_ids[i]``, ``scores[i]``,
    ``boxes[i]``)."""

    image_ids: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray

    def __post_init__(self) -> None:
        self.image_ids = np.asarray(self.image_ids, dtype=np.str_).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        n = len(self.image_ids)
        if len(self.scores) != n or len(self.boxes) != n:
            raise ValueError(
                f"Detections need one score and one box per image id: got {n} ids, "
                f"{len(self.scores)} scores, {len(self.boxes)} boxes"
            )
        if not np.isfinite(self.scores).all():
            bad = np.flatnonzero(~np.isfinite(self.scores))
            raise ValueError(f"Detections: non-finite score at rows {bad[:10].tolist()}")
        if not np.isfinite(self.boxes).all():
            bad = np.flatnonzero(~np.isfinite(self.boxes).all(axis=1))
            raise ValueError(f"Detections: non-finite box at rows {bad[:10].tolist()}")

    def __len__(self) -> int:
        return len(self.image_ids)

    @classmethod
    def empty(cls) -> Detections:
        """No detections."""
        return cls(np.zeros(0, np.str_), np.zeros(0, np.float64), np.zeros((0, 4), np.float32))

    @classmethod
    def concat(cls, parts: Iterable[Detections]) -> Detections:
        """All rows of ``parts``, in order (empty when there are none)."""
        parts = list(parts)
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.image_ids for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.boxes for p in parts]),
        )


DetectionSet = Mapping[str, Detections]
"""Detections per class name."""


def check_class_names(detection_set: DetectionSet, classes: Sequence[str]) -> None:
    """Raise ValueError when ``detection_set`` holds a class that is not in ``classes``."""
    unknown = sorted(set(detection_set) - set(classes))
    if unknown:
        raise ValueError(
            f"detections for classes not in the class list: {unknown} (classes: {list(classes)})"
        )


@dataclass
class ImageDetections:
    """Final detections of one image: boxes (N x 4), scores (N,), class indices (N,)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
