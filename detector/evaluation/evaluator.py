"""A streaming detection evaluator (detectron2's ``DatasetEvaluator`` shape): ``reset()``, then
``process(record, detections)`` per image, then ``evaluate()``.

Test, the benchmark and model combination all feed it instead of grouping detections by class
themselves; it keeps each image's detections per class and, at ``evaluate()``, runs the VOC
devkit evaluation (``detector.evaluation.voc_eval``) and optionally the COCO metrics on the
images it was given.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from detector.core.detections import Detections, DetectionSet, ImageDetections
from detector.core.records import ImageRecord
from detector.evaluation.voc_eval import EvalResult, curves_of, evaluate_detection_set, evaluate_detections, json_number


class VOCEvaluator:
    """Collects per-image detections of ``classes`` and evaluates them against the images' GT."""

    def __init__(self, classes: Sequence[str], use_07_metric: bool = True, coco: bool = True) -> None:
        self.classes = list(classes)
        self.use_07_metric = use_07_metric
        self.coco = coco
        self.reset()

    def reset(self) -> None:
        """Forget every image processed so far."""
        self.records: list[ImageRecord] = []
        self._voc: EvalResult | None = None  # the VOC evaluation of what was processed, once computed
        self._parts: dict[int, list[Detections]] = {k: [] for k in range(len(self.classes))}

    def process(self, record: ImageRecord, found: ImageDetections) -> None:
        """Add one image: its record (with GT) and its detections (labels index ``classes``)."""
        self.records.append(record)
        self._voc = None
        for k in np.unique(found.labels):
            rows = found.labels == k
            self._parts[int(k)].append(Detections([record.image_id] * int(rows.sum()),
                                                  found.scores[rows], found.boxes[rows]))

    def process_set(self, records: Sequence[ImageRecord], detection_set: Mapping[str, Detections]) -> None:
        """Add whole images at once: their records and a detection set keyed by class name."""
        self.records.extend(records)
        self._voc = None
        for k, name in enumerate(self.classes):
            if name in detection_set:
                self._parts[k].append(detection_set[name])

    def detection_set(self) -> DetectionSet:
        """Every detection so far, per class name."""
        return {self.classes[k]: Detections.concat(parts) if parts else Detections.empty()
                for k, parts in self._parts.items()}

    def evaluate(self) -> dict:
        """``{"metric", "num_images", "mAP", "ap": {class: AP}[, "coco": {...}]}``, undefined
        values None (a class absent from the images has no AP)."""
        voc = self._voc_result()
        if self.coco:
            return evaluate_detection_set(self.detection_set(), self.records, self.classes, self.use_07_metric, voc)
        return {"metric": "voc07" if self.use_07_metric else "voc10", "num_images": len(self.records),
                "mAP": json_number(voc.mAP), "ap": {name: json_number(v) for name, v in voc.ap.items()}}

    def pr_curves(self) -> dict:
        """The precision / recall curve of every class (``voc_eval.pr_curves``), from the same
        matching pass as ``evaluate``."""
        return curves_of(self._voc_result(), self.use_07_metric)

    def _voc_result(self) -> EvalResult:
        """The VOC evaluation of the images processed so far, computed once."""
        if self._voc is None:
            self._voc = evaluate_detections(self.detection_set(), self.records, self.classes, self.use_07_metric)
        return self._voc
