"""Testing a trained detector on a split: detections, devkit result files, COCO JSON, metrics."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from detector.core.detections import Detections
from detector.core.io import write_json_atomic
from detector.core.runtime import trimming
from detector.core.timing import StageTimer
from detector.data.voc import VOCDataset
from detector.evaluation.coco_eval import detections_to_coco_json
from detector.evaluation.voc_eval import evaluate_detection_set, format_ap_table, write_result_files
from detector.inference.detect import detect
from detector.model.detector import DetectorModel
from proposals.cache import load_or_compute_proposals

log = logging.getLogger(__name__)


def run_detector(model: DetectorModel, dataset: VOCDataset, progress: bool = True
                 ) -> tuple[dict[str, Detections], StageTimer]:
    """Detections of every image of the split, per class name, and the per-stage timings."""
    timer = StageTimer()
    with timer.stage("proposals"):
        proposals = load_or_compute_proposals(dataset.root, dataset.records, model.config.proposal_mode,
                                              model.config.proposal_max_side, model.config.workers,
                                              progress)
    per_class: dict[int, list[Detections]] = {k: [] for k in range(len(model.classes))}
    for record in trimming(tqdm(dataset.records, desc="detecting", disable=not progress, unit="img")):
        if record.image_id not in proposals:
            continue
        found = detect(model, record, proposals[record.image_id], timer)
        for k in np.unique(found.labels):
            rows = found.labels == k
            per_class[int(k)].append(Detections([record.image_id] * int(rows.sum()),
                                                found.scores[rows], found.boxes[rows]))
    detection_set = {model.classes[k]: Detections.concat(parts) if parts else Detections.empty()
                     for k, parts in per_class.items()}
    return detection_set, timer


def evaluate_on_split(model: DetectorModel, dataset: VOCDataset, out_dir: Path,
                  use_07_metric: bool = True, progress: bool = True) -> dict:
    """Detect, write devkit result files, COCO JSON and metrics.json, and return the metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    detection_set, timer = run_detector(model, dataset, progress)
    write_result_files(out_dir, dataset.split, detection_set, model.classes)
    write_json_atomic(out_dir / "detections_coco.json",
               detections_to_coco_json(detection_set, dataset.records, model.classes))
    metrics = evaluate_detection_set(detection_set, dataset.records, model.classes, use_07_metric)
    metrics["seconds_per_image"] = timer.per_image()
    write_json_atomic(out_dir / "metrics.json", metrics)
    print(format_ap_table(metrics))
    print("seconds per image: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics["seconds_per_image"].items()))
    return metrics
