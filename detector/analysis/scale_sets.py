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
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from detector.core.detections import ImageDetections
from detector.core.images import load_image
from detector.core.records import ImageRecord
from detector.core.timing import StageTimer
from detector.features.geometry import image_scale_factor, resized_size, select_scales
from detector.inference.detect import ScoredWindows, scored_windows, suppress
from detector.model.detector import DetectorModel
from detector.model.features import window_features


@dataclass
class ImageScales:
    """An image's windows scored at every scale, and the seconds each scale's map and head took."""

    boxes: np.ndarray
    per_scale: list[ScoredWindows]
    conv_seconds: list[float]
    head_seconds: list[float]


def score_every_scale(model: DetectorModel, record: ImageRecord, proposals: np.ndarray,
                      image: np.ndarray | None = None) -> ImageScales:
    """Score every window at every scale of ``model.scales`` (maps computed or read from its cache):
    ``detect``'s features and scoring with that scale alone."""
    boxes = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
    image = load_image(record.path) if image is None else image  # decoded once, not per scale
    per_scale, conv_seconds, head_seconds = [], [], []
    for scale in model.scales:
        timer = StageTimer()
        features = window_features(model, record, boxes, timer, image=image, scales=(scale,))
        per_scale.append(scored_windows(model, record, boxes, features, timer))
        conv_seconds.append(timer.seconds["conv"])
        head_seconds.append(sum(timer.seconds[stage] for stage in ("pooling", "fc", "scoring", "regression")))
    return ImageScales(boxes, per_scale, conv_seconds, head_seconds)


def subset_detections(model: DetectorModel, record: ImageRecord, scored: ImageScales,
                      subset: Sequence[int]) -> ImageDetections:
    """The detections ``detect`` gives with the test scales ``model.scales[i] for i in subset``."""
    subset = list(subset)
    chosen = np.asarray(subset)[select_scales(scored.boxes, record.height, record.width,
                                              [model.scales[i] for i in subset], model.config.max_side)]
    mine = {k: chosen[scored.per_scale[k].rows] == k for k in subset}  # the pairs of windows read at scale k
    boxes = np.concatenate([scored.per_scale[k].boxes[m] for k, m in mine.items()]).reshape(-1, 4)
    scores = np.concatenate([scored.per_scale[k].scores[m] for k, m in mine.items()])
    classes = np.concatenate([scored.per_scale[k].classes[m] for k, m in mine.items()]).astype(np.int64)
    return suppress(model, boxes, scores, classes, scored.per_scale[0].threshold)


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


def usage_rows(records: Sequence[ImageRecord], proposals: dict[str, np.ndarray], scales: Sequence[int],
               max_side: int, margins: Sequence[int]) -> list[dict]:
    """Per scale: the share of windows pooled from it, the share of its map those windows cover
    with each margin, and its pixels against the first scale's."""
    usage = {m: scale_usage(records, proposals, scales, max_side, m) for m in margins}
    first = usage[margins[0]]
    return [{"scale": s, "windows": float(first.windows[k] / max(first.windows.sum(), 1)),
             "covered": {str(m): float(usage[m].covered[k] / usage[m].pixels[k]) for m in margins},
             "pixels_vs_first": float(first.pixels[k] / first.pixels[0])}
            for k, s in enumerate(scales)]


def subset_rows(model: DetectorModel, records: Sequence[ImageRecord], proposals: dict[str, np.ndarray],
                scales: Sequence[int], rows: list[dict], progress: bool = True) -> list[dict]:
    """Every subset's mAP and conv seconds per image, from one scoring pass at every scale; adds
    each scale's conv and head seconds per image to its ``usage_rows`` row."""
    from tqdm import tqdm

    from detector.evaluation.evaluator import VOCEvaluator

    subsets = all_subsets(len(scales))
    evaluators = {s: VOCEvaluator(model.classes, use_07_metric=True, coco=False) for s in subsets}
    conv, head = np.zeros(len(scales)), np.zeros(len(scales))
    for record in tqdm(records, desc="every scale", disable=not progress, unit="img"):
        scored = score_every_scale(model, record, proposals[record.image_id])
        conv += scored.conv_seconds
        head += scored.head_seconds
        for subset in subsets:
            evaluators[subset].process(record, subset_detections(model, record, scored, subset))
    conv, head = conv / max(len(records), 1), head / max(len(records), 1)
    for k, row in enumerate(rows):
        row.update(conv_seconds=float(conv[k]), head_seconds=float(head[k]))
    return [{"scales": [scales[i] for i in s], "mAP": float(evaluators[s].evaluate()["mAP"]),
             "conv_seconds": float(conv[list(s)].sum())} for s in subsets]


def format_scale_sets(rows: list[dict], subsets: list[dict], margins: Sequence[int], timed: bool) -> str:
    """The per-scale table, then every subset by conv seconds (when measured)."""
    lines = ["scale  windows  " + "  ".join(f"area(+{m}px)" for m in margins) + "  pixels"
             + ("  conv s  head s" if timed else "")]
    for row in rows:
        lines.append(f"{row['scale']:5d}  {100 * row['windows']:6.1f}%  "
                     + "  ".join(f"{100 * v:10.1f}%" for v in row["covered"].values())
                     + f"  {row['pixels_vs_first']:5.2f}x"
                     + (f"  {row['conv_seconds']:6.3f}  {row['head_seconds']:6.3f}" if timed else ""))
    if subsets:
        lines.append("\nsubset                        mAP   conv s/img")
        lines += [f"{' '.join(map(str, row['scales'])):28s}  {100 * row['mAP']:5.1f}  {row['conv_seconds']:6.3f}"
                  for row in sorted(subsets, key=lambda r: r["conv_seconds"])]
    return "\n".join(lines)
