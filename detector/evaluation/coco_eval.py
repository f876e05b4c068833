"""COCO-style box metrics (pycocotools ``COCOeval``) on the same detections and GT as the VOC
evaluation, and detections as COCO-style JSON.

Decisions:
- The GT becomes a COCO dataset in memory: image ids 1..N in record order (ours are
  strings), category ids 1..K in class order, boxes ``[x1, y1, x2 - x1, y2 - y1]`` in our
  continuous convention (COCO's IoU has no "+1", so it agrees with ours), ``area`` = box
  area (there are no masks), and ``difficult`` -> ``iscrowd = 1`` so that COCOeval ignores
  those boxes and the detections that match them (it matches crowd regions by
  intersection over detection area, close to the devkit's "neither TP nor FP").
- Zero detections: ``COCO.loadRes`` cannot take an empty list, so an empty result set
  with the GT's images and categories is built directly and COCOeval runs as usual
  (AP 0 where GT exists).
- A metric COCOeval cannot define (its -1, e.g. APs without small GT boxes) is NaN.
- COCO AP50 is not VOC07 AP: 101-point interpolation, at most 100 detections per image
  and class, crowd-style ignoring.
- pycocotools prints progress; that output is captured and logged at debug level.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.core.detections import DetectionSet, check_class_names
from detector.core.records import ImageRecord

log = logging.getLogger(__name__)

COCO_METRICS = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5, "AR100": 8}
"""Metric name -> index in ``COCOeval.stats`` (AR100: recall at 100 detections per image)."""


def _xywh(boxes: np.ndarray) -> np.ndarray:
    """Continuous ``(x1, y1, x2, y2)`` boxes -> COCO ``[x, y, width, height]`` (float64)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def detections_to_coco_json(
    detection_set: DetectionSet, records: Sequence[ImageRecord], classes: Sequence[str]
) -> list[dict]:
    """One dict per detection: ``image_id`` (our string id), ``file_name``, ``category_id``
    (1-based class index), ``category`` (class name), ``bbox`` ``[x, y, w, h]`` in pixels
    (continuous convention), ``score``.  A detection on an unknown image is a ValueError."""
    check_class_names(detection_set, classes)
    file_names = {record.image_id: record.path.name for record in records}
    results = []
    for category_id, name in enumerate(classes, start=1):
        dets = detection_set.get(name)
        if dets is None or len(dets) == 0:
            continue
        unknown = sorted(set(dets.image_ids.tolist()) - file_names.keys())
        if unknown:
            raise ValueError(f"class {name}: detections on images not in the records: {unknown[:10]}")
        for image_id, score, bbox in zip(dets.image_ids.tolist(), dets.scores.tolist(),
                                         _xywh(dets.boxes).tolist()):
            results.append({"image_id": image_id, "file_name": file_names[image_id],
                            "category_id": category_id, "category": name, "bbox": bbox,
                            "score": score})
    return results


def _coco_ground_truth(records: Sequence[ImageRecord], classes: Sequence[str]) -> COCO:
    """The records' GT as an in-memory COCO dataset (see the module notes)."""
    images, annotations = [], []
    for number, record in enumerate(records, start=1):
        images.append({"id": number, "file_name": record.path.name,
                       "width": int(record.width), "height": int(record.height)})
        for bbox, label, difficult in zip(_xywh(record.boxes).tolist(), record.labels.tolist(),
                                          record.difficult.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": number,
                                "category_id": int(label) + 1, "bbox": bbox,
                                "area": bbox[2] * bbox[3], "iscrowd": int(difficult)})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": k, "name": name} for k, name in enumerate(classes, start=1)]}
    gt.createIndex()
    return gt


def _results(gt: COCO, detections: list[dict]) -> COCO:
    """The detections as a COCO result set on ``gt``'s images (an empty one when there are none)."""
    if detections:
        return gt.loadRes(detections)
    results = COCO()
    results.dataset = {"images": list(gt.dataset["images"]), "annotations": [],
                       "categories": copy.deepcopy(gt.dataset["categories"])}
    results.createIndex()
    return results


def coco_metrics(
    detection_set: DetectionSet, records: Sequence[ImageRecord], classes: Sequence[str]
) -> dict[str, float]:
    """COCOeval box metrics ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"}`` (NaN where
    COCOeval leaves a metric undefined)."""
    detections = detections_to_coco_json(detection_set, records, classes)
    numbers = {record.image_id: number for number, record in enumerate(records, start=1)}
    for detection in detections:
        detection["image_id"] = numbers[detection["image_id"]]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        gt = _coco_ground_truth(records, classes)
        evaluator = COCOeval(gt, _results(gt, detections), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    log.debug("pycocotools output:\n%s", printed.getvalue())
    stats = evaluator.stats
    return {name: float(stats[i]) if stats[i] >= 0 else math.nan for name, i in COCO_METRICS.items()}


def detections_in_file_ids(detection_set: DetectionSet, classes: Sequence[str], image_ids: dict[str, int],
                           category_ids: Sequence[int]) -> list[dict]:
    """Detections in COCO's results format with a COCO dataset's own ``image_id`` and ``category_id``
    (``detector.data.coco.CocoSource``): ready to submit, or to ``COCO.loadRes`` on its file."""
    check_class_names(detection_set, classes)
    results = []
    for name, category_id in zip(classes, category_ids):
        dets = detection_set.get(name)
        if dets is None or len(dets) == 0:
            continue
        for image_id, score, bbox in zip(dets.image_ids.tolist(), dets.scores.tolist(), _xywh(dets.boxes).tolist()):
            results.append({"image_id": image_ids[image_id], "category_id": int(category_id), "bbox": bbox,
                            "score": score})
    return results


def coco_file_metrics(annotation_file: str | Path, detections: list[dict], image_ids: Sequence[int],
                      category_ids: Sequence[int], classes: Sequence[str]) -> tuple[dict[str, float], dict[str, float]]:
    """``COCOeval`` on a dataset's own file and its detections (``detections_in_file_ids``), over the
    images the test ran on: the box metrics as ``coco_metrics`` gives them, and each class's AP at
    IoU 0.5 (NaN where undefined)."""
    from detector.data.coco import read_coco

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        gt = read_coco(annotation_file)
        evaluator = COCOeval(gt, _results(gt, detections), iouType="bbox")
        evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    log.debug("pycocotools output:\n%s", printed.getvalue())
    stats = evaluator.stats
    metrics = {name: float(stats[i]) if stats[i] >= 0 else math.nan for name, i in COCO_METRICS.items()}
    precision = evaluator.eval["precision"]  # IoU thresholds x recall points x categories x areas x max dets
    order = list(evaluator.params.catIds)
    per_class = {}
    for name, category_id in zip(classes, category_ids):
        values = precision[0, :, order.index(int(category_id)), 0, -1]
        values = values[values > -1]
        per_class[name] = float(values.mean()) if len(values) else math.nan
    return metrics, per_class
