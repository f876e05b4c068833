"""Testing a trained detector on a split: detections, devkit result files, COCO JSON, metrics."""
from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from detector.core.io import write_json_atomic
from detector.core.runtime import trimming
from detector.core.timing import StageTimer
from detector.data.voc import VOCDataset
from detector.evaluation.coco_eval import detections_to_coco_json
from detector.evaluation.evaluator import VOCEvaluator
from detector.evaluation.voc_eval import write_result_files
from detector.inference.detect import detect
from detector.model.detector import DetectorModel
from proposals.cache import load_or_compute_proposals

log = logging.getLogger(__name__)


def run_detector(model: DetectorModel, dataset: VOCDataset, evaluator: VOCEvaluator,
                 progress: bool = True) -> StageTimer:
    """Detect on every image of the split, feeding ``evaluator``; returns the per-stage timings."""
    timer = StageTimer()
    with timer.stage("proposals"):
        proposals = load_or_compute_proposals(dataset.root, dataset.records, model.config.proposals.method,
                                              model.config.proposals.max_side, model.config.proposals.workers,
                                              progress)
    for record in trimming(tqdm(dataset.records, desc="detecting", disable=not progress, unit="img")):
        if record.image_id not in proposals:
            continue
        evaluator.process(record, detect(model, record, proposals[record.image_id], timer))
    return timer


def test_detector(model: DetectorModel, dataset: VOCDataset, out_dir: Path,
                  use_07_metric: bool = True, progress: bool = True) -> dict:
    """Detect, write devkit result files, COCO JSON and metrics.json, and return the metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluator = VOCEvaluator(model.classes, use_07_metric)
    timer = run_detector(model, dataset, evaluator, progress)
    detection_set = evaluator.detection_set()
    write_result_files(out_dir, dataset.split, detection_set, model.classes)
    write_json_atomic(out_dir / "detections_coco.json",
               detections_to_coco_json(detection_set, dataset.records, model.classes))
    metrics = evaluator.evaluate()
    metrics["seconds_per_image"] = timer.per_image()
    write_json_atomic(out_dir / "metrics.json", metrics)
    return metrics


test_detector.__test__ = False  # a library function, not a pytest test
