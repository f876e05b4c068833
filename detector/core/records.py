"""Plain data passed between stages: one annotated image."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class ImageRecord:
    """An image and its ground truth.

    ``boxes`` are continuous pixel boxes (see ``detector.core.boxes``), float32 N x 4;
    ``labels`` index into the dataset's class list (int64, N); ``difficult`` is bool N.
    """

    image_id: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    difficult: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
