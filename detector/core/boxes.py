"""Pure box arithmetic shared by every stage.

Convention (used everywhere in memory and in caches): a box is ``(x1, y1, x2, y2)``
in continuous pixel coordinates, float32, where ``(x1, y1)`` is the top-left corner of
the top-left pixel (0-based) and ``(x2, y2)`` the bottom-right corner of the
bottom-right pixel.  A VOC box ``xmin, ymin, xmax, ymax`` (1-based, inclusive) is
``(xmin - 1, ymin - 1, xmax, ymax)``.  With this convention width = ``x2 - x1``
equals the devkit's ``xmax - xmin + 1``, so ``torchvision.ops.box_iou`` on these
boxes is exactly the devkit's "+1" IoU.
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_iou


def voc_to_boxes(voc: np.ndarray) -> np.ndarray:
    """1-based inclusive VOC boxes -> continuous boxes (float32, N x 4)."""
    voc = np.asarray(voc, dtype=np.float32).reshape(-1, 4)
    return voc - np.array([1, 1, 0, 0], dtype=np.float32)


def boxes_to_voc(boxes: np.ndarray) -> np.ndarray:
    """Continuous boxes -> 1-based inclusive VOC boxes (float, N x 4)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return boxes + np.array([1, 1, 0, 0], dtype=np.float64)


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Areas of continuous boxes (zero for empty ones)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w = np.clip(boxes[:, 2] - boxes[:, 0], 0, None)
    h = np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    return w * h


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` with every box in ``b`` (len(a) x len(b), float64)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    return box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip continuous boxes to an image of ``width`` x ``height`` pixels."""
    boxes = np.array(boxes, dtype=np.float32, copy=True).reshape(-1, 4)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)
    return boxes


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Mirror continuous boxes left-right in an image ``width`` pixels wide."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)


def box_problems(boxes: np.ndarray, width: int, height: int) -> list[tuple[str, np.ndarray]]:
    """What is wrong with (M, 4) boxes for a ``width`` x ``height`` image: ``(problem, row mask)``
    pairs, each with a mask of the rows it hits (empty list: every box is finite, non-empty, inside)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    finite = np.isfinite(boxes).all(axis=1)
    if not finite.all():
        return [("non-finite coordinates", ~finite)]
    problems = [("empty (x2 <= x1 or y2 <= y1)", (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])),
                (f"outside the {width}x{height} image",
                 (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width) | (boxes[:, 3] > height))]
    return [(what, rows) for what, rows in problems if rows.any()]


def vote_boxes(kept: np.ndarray, kept_classes: np.ndarray, candidates: np.ndarray,
               weights: np.ndarray, candidate_classes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Box voting (Gidaris & Komodakis, MR-CNN 2015): each kept box (M x 4) -> the weighted mean of
    the candidates (R x 4, weights R >= 0) of its class overlapping it by IoU >= ``iou_threshold``.

    The kept boxes are NMS survivors among the candidates, so each usually votes for itself; a box
    whose voters weigh nothing in total stays as it is.  torchvision has no box voting; this is
    one masked matrix product (M x R), float64.
    """
    kept = np.asarray(kept, dtype=np.float64).reshape(-1, 4)
    candidates = np.asarray(candidates, dtype=np.float64).reshape(-1, 4)
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(weights) != len(candidates) or (weights < 0).any():
        raise ValueError(f"need one weight >= 0 per candidate, got {len(weights)} for {len(candidates)}")
    same_class = np.asarray(kept_classes).reshape(-1, 1) == np.asarray(candidate_classes).reshape(1, -1)
    votes = np.where(same_class & (iou_matrix(kept, candidates) >= iou_threshold), weights[None], 0.0)
    total = votes.sum(axis=1, keepdims=True)
    voted = votes @ candidates / np.where(total > 0, total, 1.0)
    return np.where(total > 0, voted, kept).astype(np.float32)
