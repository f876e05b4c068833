"""Box <-> regression-target transforms (R-CNN / SPP-net parameterisation).

Boxes follow the project convention (continuous ``x1, y1, x2, y2``): width = ``x2 - x1``
and centre = ``x1 + width / 2``, so no ``+1`` appears anywhere.  Targets are
``dx = (gx - px) / pw``, ``dy = (gy - py) / ph``, ``dw = log(gw / pw)``,
``dh = log(gh / ph)``.

Both functions compute in the widest float type of their inputs (at least float32), so
float64 inputs round-trip exactly enough for tests and float32 inputs stay float32.
"""
from __future__ import annotations

import math

import numpy as np

#: Largest log-scale a delta may apply (detectron's ``log(1000 / 16)``): keeps ``exp``
#: finite for wild predictions while never limiting a sane one (a 62.5x growth).
MAX_LOG_SCALE = math.log(1000.0 / 16.0)


def _as_boxes(boxes: np.ndarray, name: str) -> np.ndarray:
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must be an N x 4 array, got shape {boxes.shape}")
    return boxes


def _centres_and_sizes(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights, widths, heights


def encode(proposals: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Targets ``(N, 4) = [dx, dy, log dw, log dh]`` that move ``proposals`` onto ``gt``.

    Row ``i`` of ``gt`` is the target of row ``i`` of ``proposals``.  Every box must have
    positive width and height (a log of a non-positive size is meaningless).
    """
    proposals = _as_boxes(proposals, "proposals")
    gt = _as_boxes(gt, "gt")
    if len(proposals) != len(gt):
        raise ValueError(f"proposals ({len(proposals)}) and gt ({len(gt)}) differ in length")
    dtype = np.result_type(proposals.dtype, gt.dtype, np.float32)
    px, py, pw, ph = _centres_and_sizes(proposals.astype(dtype, copy=False))
    gx, gy, gw, gh = _centres_and_sizes(gt.astype(dtype, copy=False))
    for name, sizes in (("proposal", pw), ("proposal", ph), ("gt", gw), ("gt", gh)):
        if len(sizes) and not np.all(sizes > 0):
            bad = int(np.flatnonzero(~(sizes > 0))[0])
            raise ValueError(f"{name} box {bad} has a non-positive width or height")
    return np.stack([(gx - px) / pw, (gy - py) / ph, np.log(gw / pw), np.log(gh / ph)], axis=1)


def decode(boxes: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """Apply ``deltas`` ``(N, 4)`` (as made by :func:`encode`) to ``boxes`` ``(N, 4)``.

    ``log dw`` and ``log dh`` are clamped to :data:`MAX_LOG_SCALE` so ``exp`` cannot
    overflow.  The result is not clipped to any image (see ``BoxRegressor.apply``).
    """
    boxes = _as_boxes(boxes, "boxes")
    deltas = _as_boxes(deltas, "deltas")
    if len(boxes) != len(deltas):
        raise ValueError(f"boxes ({len(boxes)}) and deltas ({len(deltas)}) differ in length")
    dtype = np.result_type(boxes.dtype, deltas.dtype, np.float32)
    px, py, pw, ph = _centres_and_sizes(boxes.astype(dtype, copy=False))
    deltas = deltas.astype(dtype, copy=False)
    cx = px + deltas[:, 0] * pw
    cy = py + deltas[:, 1] * ph
    half_w = 0.5 * pw * np.exp(np.minimum(deltas[:, 2], MAX_LOG_SCALE))
    half_h = 0.5 * ph * np.exp(np.minimum(deltas[:, 3], MAX_LOG_SCALE))
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
