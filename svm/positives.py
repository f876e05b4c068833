"""Positive windows of the SVMs beyond the GT boxes (``svm.pos_iou``).

The paper (as R-CNN) trains each class's SVM on the GT boxes alone (``pos_iou`` = 1).  With
``pos_iou`` below 1, every proposal whose best-overlapping GT box (the project's IoU, float64) is
not difficult and overlaps it by at least ``pos_iou`` is a positive of that box's class too, as
fine-tuning's foreground windows are (IoU >= 0.5).  Windows between ``neg_iou`` and ``pos_iou``
stay out of both sets.
"""
from __future__ import annotations

import numpy as np

from detector.core.boxes import iou_matrix


def select_positives(proposals: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray,
                     gt_difficult: np.ndarray, min_iou: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (int64, ascending) into ``proposals`` (P x 4) of the positives, and their classes."""
    proposals = np.asarray(proposals, dtype=np.float64).reshape(-1, 4)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    if min_iou >= 1 or not len(proposals) or not len(gt_boxes):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    iou = iou_matrix(proposals, gt_boxes)
    best = iou.argmax(axis=1)
    keep = (iou[np.arange(len(proposals)), best] >= min_iou) & ~np.asarray(gt_difficult, dtype=bool)[best]
    rows = np.flatnonzero(keep).astype(np.int64)
    return rows, np.asarray(gt_labels, dtype=np.int64)[best[rows]]
