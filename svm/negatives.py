"""Candidate negative windows of one class in one image (SPP-net, Sec. 4 "Training").

A window is a negative for a class when its IoU with every GT box of that class (difficult
ones included: a window on a difficult object is not a reliable negative) is below
``iou_threshold`` (0.3).  Among those, a negative overlapping an already kept negative by
more than ``max_overlap`` (0.7) is dropped: greedy in the given window order, i.e. NMS
without scores.  ``torchvision.ops.nms`` with strictly decreasing rank scores is exactly
that greedy pass (it keeps boxes in score order and suppresses IoU > threshold), so it is
used instead of a Python loop.  IoU is computed in float64 with the project's box
convention (devkit "+1" IoU).

The caller decides which rows are candidates: the miner passes only the proposal rows
(the GT rows of an ``ImageFeatures`` are never negatives) and offsets the indices.
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import nms

from detector.core.boxes import iou_matrix


def select_negatives(
    boxes: np.ndarray,
    gt_boxes_of_class: np.ndarray,
    iou_threshold: float = 0.3,
    max_overlap: float = 0.7,
) -> np.ndarray:
    """Indices (int64, ascending) into ``boxes`` of the negatives of one class."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    gt_boxes_of_class = np.asarray(gt_boxes_of_class, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    if len(gt_boxes_of_class):
        candidates = np.flatnonzero(iou_matrix(boxes, gt_boxes_of_class).max(axis=1) < iou_threshold)
    else:
        candidates = np.arange(len(boxes))
    if len(candidates) == 0:
        return candidates.astype(np.int64)
    rank_scores = torch.arange(len(candidates), 0, -1, dtype=torch.float64)
    kept = nms(torch.from_numpy(boxes[candidates]), rank_scores, max_overlap).numpy()
    return np.sort(candidates[kept]).astype(np.int64)
