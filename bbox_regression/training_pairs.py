"""Which proposals train the box regressors, and towards which ground-truth box.

DESIGN: training pairs are proposals with IoU > 0.5 (strictly) to a GT box.  Each such
proposal is paired with the GT box it overlaps most (ties go to the first GT box); the
pair's class is that GT box's label.  A proposal is never paired with a GT box of lower
IoU just because that one is of another class: the regressor of class c learns to move a
window onto the object of class c it covers best, which is what it will face at test.

GT boxes passed in as proposals (IoU 1) are kept, with all-zero targets, as in R-CNN's
released regressor training, whose example rows also included the GT boxes (R-CNN used
IoU >= 0.6; we follow DESIGN's > 0.5).  They are few (one per object against tens of
overlapping proposals) and teach the regressor to leave a well-placed window alone.
Whether to pass them is the caller's choice.
"""
from __future__ import annotations

import numpy as np

from detector.core.boxes import iou_matrix


def select_training_pairs(
    boxes: np.ndarray,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    min_iou: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Proposals overlapping a GT box by more than ``min_iou``, with their best GT box.

    Returns ``(indices, matched_gt_index)``, both int64: ``boxes[indices[k]]`` regresses
    towards ``gt_boxes[matched_gt_index[k]]``, of class ``gt_labels[matched_gt_index[k]]``.
    ``gt_labels`` is only checked here (one label per GT box) so that every caller holds
    the labels that give each pair its class.
    """
    boxes = np.asarray(boxes).reshape(-1, 4)
    gt_boxes = np.asarray(gt_boxes).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels)
    if gt_labels.shape != (len(gt_boxes),):
        raise ValueError(
            f"gt_labels has shape {gt_labels.shape}, expected ({len(gt_boxes)},): one per GT box"
        )
    if not 0.0 <= min_iou < 1.0:
        raise ValueError(f"min_iou must be in [0, 1), got {min_iou}")
    empty = np.zeros(0, dtype=np.int64)
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return empty, empty.copy()
    overlaps = iou_matrix(boxes, gt_boxes)
    best_gt = overlaps.argmax(axis=1)
    best_iou = overlaps[np.arange(len(boxes)), best_gt]
    indices = np.flatnonzero(best_iou > min_iou).astype(np.int64)
    return indices, best_gt[indices].astype(np.int64)
