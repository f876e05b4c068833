"""The plain data the SVM stage consumes: fc7 features of every window of one image.

Contract (the pipeline builds one ``ImageFeatures`` per image, on the fly):

- ``boxes`` = ``concatenate([gt_boxes, proposals])``: rows ``0..G-1`` of ``features`` and
  ``boxes`` are the image's ground-truth boxes themselves (all of them, difficult ones
  included, in the order of ``gt_boxes``); rows ``G..M-1`` are the proposals.
- ``features`` are the *unscaled* fc7 features (the SVM model applies its own scale).
- Boxes follow the project convention (continuous ``x1, y1, x2, y2``, see
  ``detector.core.boxes``); ``gt_labels`` index the class list, ``gt_difficult`` flags
  VOC "difficult" objects.
- ``image_id`` must be unique within one pass over the training images (a flipped copy
  needs its own id, e.g. ``"000005_flip"``): the miner keys cached windows by it.

Nothing here depends on the network: any producer of these arrays can feed the SVMs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ImageFeatures:
    """fc7 features and boxes of the windows of one image, GT boxes first."""

    image_id: str
    features: np.ndarray
    boxes: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_difficult: np.ndarray

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, dtype=np.float32)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.gt_boxes = np.asarray(self.gt_boxes, dtype=np.float32).reshape(-1, 4)
        self.gt_labels = np.asarray(self.gt_labels, dtype=np.int64).reshape(-1)
        self.gt_difficult = np.asarray(self.gt_difficult, dtype=bool).reshape(-1)
        where = f"ImageFeatures {self.image_id!r}"
        num_gt = len(self.gt_boxes)
        if self.features.ndim != 2:
            raise ValueError(f"{where}: features must be M x D, got shape {self.features.shape}")
        if len(self.features) != len(self.boxes):
            raise ValueError(
                f"{where}: {len(self.features)} feature rows but {len(self.boxes)} boxes"
            )
        if len(self.gt_labels) != num_gt or len(self.gt_difficult) != num_gt:
            raise ValueError(
                f"{where}: {num_gt} GT boxes, {len(self.gt_labels)} labels, "
                f"{len(self.gt_difficult)} difficult flags"
            )
        if len(self.boxes) < num_gt or not np.allclose(self.boxes[:num_gt], self.gt_boxes, atol=1e-3):
            raise ValueError(f"{where}: the first {num_gt} rows of boxes must be the GT boxes")

    @property
    def num_gt(self) -> int:
        """Number of GT rows at the top of ``features`` / ``boxes``."""
        return len(self.gt_boxes)


class FeatureReplay:
    """One pass of ``ImageFeatures`` kept in a float16 file and given again, so that several SVM
    settings can be mined on the same stream without recomputing fc7 (``choose_svm_c.py --grid``).

    ``record(stream)`` writes each image's features as it passes and yields them rounded to
    float16, exactly as ``replay()`` gives them later, so every candidate mined through one
    ``FeatureReplay`` reads the same numbers (float16 is the caches' own precision, see
    ``svm.mining``).  ``replay()`` needs a completed ``record``.  Disk: 2 bytes per feature, e.g.
    about 6 GB for the 1635 ``dev_train-fit`` images at fc7 width 1024.
    """

    def __init__(self, path) -> None:
        self.path = path
        self.complete = False
        self._entries: list[tuple[int, int, ImageFeatures]] = []  # offset, rows, metadata (empty features)
        self._dim = 0

    def record(self, stream):
        """Yield ``stream``'s images (features rounded to float16) while writing them to ``path``."""
        self.complete, self._entries, offset = False, [], 0
        with open(self.path, "wb") as sink:
            for image in stream:
                rounded = image.features.astype(np.float16)
                sink.write(rounded.tobytes())
                self._dim = rounded.shape[1]
                self._entries.append((offset, len(rounded), _without_features(image)))
                offset += len(rounded)
                yield ImageFeatures(image.image_id, rounded, image.boxes, image.gt_boxes, image.gt_labels,
                                    image.gt_difficult)
        self.complete = True

    def replay(self):
        """Yield the recorded images again, in their order (features as float32 from the file)."""
        if not self.complete:
            raise ValueError(f"FeatureReplay {self.path}: nothing recorded yet (or the recording pass was cut short)")
        rows = sum(count for _, count, _ in self._entries)
        # np.memmap refuses an empty file: a pass without any window reads from an empty array
        data = np.memmap(self.path, dtype=np.float16, mode="r", shape=(rows, self._dim)) if rows else \
            np.zeros((0, self._dim), np.float16)
        for offset, count, image in self._entries:
            yield ImageFeatures(image.image_id, data[offset:offset + count], image.boxes, image.gt_boxes,
                                image.gt_labels, image.gt_difficult)


def _without_features(image: ImageFeatures) -> ImageFeatures:
    """``image``'s boxes and labels with a zero-width feature matrix (what a replay keeps in memory)."""
    return ImageFeatures(image.image_id, np.zeros((len(image.boxes), 0), np.float32), image.boxes, image.gt_boxes,
                         image.gt_labels, image.gt_difficult)
