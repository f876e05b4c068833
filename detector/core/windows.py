"""The windows of an image (GT boxes first, then proposals) with their overlap to the GT.

Like py-faster-rcnn's roidb: computed once per image, then used by the fine-tuning sampler,
the SVM trainer and the box regressors.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.core.boxes import iou_matrix
from detector.core.records import ImageRecord


@dataclass
class ImageWindows:
    """Windows of one image: ``boxes`` (M x 4), rows 0..G-1 are the GT boxes.

    ``max_iou`` is each window's highest IoU with any GT box and ``gt_index`` that GT box's
    index (-1 when the image has no GT); ``num_gt`` is G.
    """

    record: ImageRecord
    boxes: np.ndarray
    max_iou: np.ndarray
    gt_index: np.ndarray
    num_gt: int

    @property
    def gt_labels(self) -> np.ndarray:
        """Class index of each window's best-overlapping GT box (-1 when there is none)."""
        labels = np.full(len(self.boxes), -1, dtype=np.int64)
        has = self.gt_index >= 0
        labels[has] = self.record.labels[self.gt_index[has]]
        return labels

    def near_gt(self, min_iou: float) -> np.ndarray:
        """Rows of the proposals whose best-overlapping GT box is not difficult and overlaps them
        by IoU >= ``min_iou`` (the SVMs' extra positives, ``svm.pos_iou``; none at 1 or above)."""
        if min_iou >= 1 or self.num_gt == 0:
            return np.zeros(0, dtype=np.int64)
        rows = np.arange(self.num_gt, len(self.boxes))
        keep = (self.max_iou[rows] >= min_iou) & ~np.asarray(self.record.difficult, dtype=bool)[self.gt_index[rows]]
        return rows[keep].astype(np.int64)


def build_windows(record: ImageRecord, proposals: np.ndarray) -> ImageWindows:
    """Stack the GT boxes and the proposals and compute their overlaps with the GT."""
    gt = np.asarray(record.boxes, dtype=np.float32).reshape(-1, 4)
    boxes = np.concatenate([gt, np.asarray(proposals, np.float32).reshape(-1, 4)], axis=0)
    overlaps = iou_matrix(boxes, gt)
    if overlaps.shape[1]:
        gt_index = overlaps.argmax(axis=1).astype(np.int64)
        max_iou = overlaps.max(axis=1).astype(np.float32)
    else:
        gt_index = np.full(len(boxes), -1, dtype=np.int64)
        max_iou = np.zeros(len(boxes), dtype=np.float32)
    return ImageWindows(record, boxes, max_iou, gt_index, len(gt))
