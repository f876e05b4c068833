"""Which scales do the work: per-scale window shares, map coverage and conv seconds, and the
mAP and seconds of every subset of a scale set, measured once per image.

Each window is pooled from the one scale whose scaled window is closest to 224 x 224
(``select_scales``), so a subset of the scales changes only which map a window is read from.
:func:`score_every_scale` therefore scores every window at every scale once (conv map, pooling,
fc, scorer, box regression: what ``detect`` does at that scale), and :func:`subset_detections`
gives any subset's detections from those scores exactly as ``detect`` with that subset would:
each window keeps its scores at its nearest scale of the subset, then the same NMS and box voting
(``suppress``).  One pass over the images thus evaluates all 31 subsets of five scales.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from detector.core.detections import ImageDetections
from detector.core.images import load_image
from detector.core.records import ImageRecord
from detector.features.geometry import image_scale_factor, resized_size, select_scales
from detector.features.pooling import distinct_windows, pool_cells, window_cells
from detector.inference.detect import WindowFeatures, score_windows, suppress
from detector.model.detector import DetectorModel


@dataclass
class ScaleScores:
    """One image's windows scored at one scale: the (window, class) pairs above the drop threshold."""

    rows: np.ndarray  # window index per pair
    classes: np.ndarray  # class index per pair
    scores: np.ndarray
    boxes: np.ndarray  # regressed (or given) boxes per pair, N x 4


@dataclass
class ImageScales:
    """An image's windows scored at every scale, and the seconds each scale's map and head took."""

    boxes: np.ndarray
    per_scale: list[ScaleScores]
    conv_seconds: list[float]
    head_seconds: list[float]
    threshold: float = 0.0
    window_counts: list[int] = field(default_factory=list)


def score_every_scale(model: DetectorModel, record: ImageRecord, proposals: np.ndarray,
                      image: np.ndarray | None = None) -> ImageScales:
    """Score every window at every scale of ``model.scales`` (maps computed or read from its cache)."""
    boxes = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
    threshold = (model.config.test.score_threshold if model.config.test.scorer == "svm"
                 else model.config.test.softmax_threshold)
    per_scale, conv_seconds, head_seconds = [], [], []
    image = load_image(record.path) if image is None else image  # decoded once, not per scale
    for k, scale in enumerate(model.scales):
        start = time.perf_counter()
        conv_map = model.conv_maps.get(record, scale, flip=False, image=image)
        conv_seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        distinct, rows = distinct_windows(window_cells(model.backbone.geometry, [conv_map], boxes,
                                                       np.zeros(len(boxes), np.int64)))
        pooled = pool_cells(model.spp, [conv_map], distinct)
        with torch.inference_mode():
            fc7 = model.head.features(pooled)
        features = WindowFeatures(pooled, fc7, rows)
        scores = score_windows(model, features)[rows]
        keep_rows, classes = np.nonzero(scores > threshold)
        kept_boxes = boxes[keep_rows]
        if model.regressor is not None and model.config.test.bbox_regression and len(keep_rows):
            kept_boxes = model.regressor.apply(pooled.numpy(), kept_boxes, classes, record.width,
                                               record.height, feature_rows=rows[keep_rows])
        per_scale.append(ScaleScores(keep_rows, classes, scores[keep_rows, classes], kept_boxes))
        head_seconds.append(time.perf_counter() - start)
        del conv_map, pooled, fc7
    return ImageScales(boxes, per_scale, conv_seconds, head_seconds, threshold)


def subset_detections(model: DetectorModel, record: ImageRecord, scored: ImageScales,
                      subset: Sequence[int]) -> ImageDetections:
    """The detections ``detect`` gives with the scales ``model.scales[i] for i in subset``."""
    subset = list(subset)
    chosen = np.asarray(subset)[select_scales(scored.boxes, record.height, record.width,
                                              [model.scales[i] for i in subset], model.config.max_side)]
    parts = [(s.boxes[chosen[s.rows] == k], s.scores[chosen[s.rows] == k], s.classes[chosen[s.rows] == k])
             for k, s in enumerate(scored.per_scale) if k in subset]
    boxes = np.concatenate([p[0] for p in parts]).reshape(-1, 4)
    scores = np.concatenate([p[1] for p in parts])
    classes = np.concatenate([p[2] for p in parts]).astype(np.int64)
    return suppress(model, boxes, scores, classes, scored.threshold)


def all_subsets(count: int) -> list[tuple[int, ...]]:
    """Every non-empty subset of ``range(count)``, smallest first."""
    return [c for size in range(1, count + 1) for c in itertools.combinations(range(count), size)]


@dataclass
class ScaleUsage:
    """Per scale: windows assigned to it, and the share of its map's image area they cover."""

    windows: np.ndarray
    covered: np.ndarray  # pixels of the resized images inside an assigned window (+ margin)
    pixels: np.ndarray  # pixels of the resized images


def scale_usage(records: Sequence[ImageRecord], proposals: dict[str, np.ndarray], scales: Sequence[int],
                max_side: int, margin: int = 0) -> ScaleUsage:
    """Count, per scale, the windows pooled from it and the resized-image area they cover (each
    window grown by ``margin`` pixels of the resized image on every side)."""
    usage = ScaleUsage(np.zeros(len(scales)), np.zeros(len(scales)), np.zeros(len(scales)))
    for record in records:
        boxes = proposals[record.image_id]
        index = select_scales(boxes, record.height, record.width, scales, max_side)
        for k, scale in enumerate(scales):
            factor = image_scale_factor(record.height, record.width, scale, max_side)
            height, width = resized_size(record.height, record.width, factor)
            mask = np.zeros((height, width), bool)
            for x1, y1, x2, y2 in boxes[index == k] * factor:
                mask[max(0, int(y1) - margin):int(np.ceil(y2)) + margin,
                     max(0, int(x1) - margin):int(np.ceil(x2)) + margin] = True
            usage.windows[k] += int((index == k).sum())
            usage.covered[k] += int(mask.sum())
            usage.pixels[k] += height * width
    return usage
