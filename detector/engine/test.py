"""Testing a trained detector on a split: detections, devkit result files, COCO JSON, metrics.

``out_dir`` is checked writable before any detection.  An image that fails (decode, trunk,
pooling) is logged naming its file and skipped (its GT boxes still count, as misses); the count is
``skipped_images`` in ``metrics.json``.  ``classes.json`` beside the results records the model's
class list, the split and the dataset folder, so that ``--eval-only`` and ``tools/ensemble.py``
use the classes the results were made for (``detector.evaluation.voc_eval.CLASSES_FILE``).
"""
from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from detector.core.io import write_json_atomic
from detector.core.runtime import trimming
from detector.core.timing import StageTimer
from detector.data.voc import VOCDataset
from detector.engine.stages import check_writable
from detector.evaluation.coco_eval import detections_to_coco_json
from detector.evaluation.evaluator import VOCEvaluator
from detector.evaluation.voc_eval import write_classes_file, write_result_files
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
    timer.skipped = len(dataset.records) - len(proposals)
    for record in trimming(tqdm(dataset.records, desc="detecting", disable=not progress, unit="img")):
        if record.image_id not in proposals:
            continue
        try:
            found = detect(model, record, proposals[record.image_id], timer)
        except OSError:
            raise  # an unwritable cache stops the run; its message names the path
        except Exception as error:  # this image only: decode, trunk or pooling failure
            log.error("detection: skipping image %s (%s): %s", record.image_id, record.path, error)
            timer.skipped += 1
            continue
        evaluator.process(record, found)
    return timer


def test_detector(model: DetectorModel, dataset: VOCDataset, out_dir: Path,
                  use_07_metric: bool = True, progress: bool = True) -> dict:
    """Detect, write devkit result files, COCO JSON and metrics.json, and return the metrics."""
    check_writable([out_dir])
    write_classes_file(out_dir, model.classes, dataset.split, dataset.root)
    evaluator = VOCEvaluator(model.classes, use_07_metric)
    timer = run_detector(model, dataset, evaluator, progress)
    detection_set = evaluator.detection_set()
    write_result_files(out_dir, dataset.split, detection_set, model.classes)
    write_json_atomic(out_dir / "detections_coco.json",
               detections_to_coco_json(detection_set, dataset.records, model.classes))
    metrics = evaluator.evaluate()
    metrics["seconds_per_image"] = timer.per_image()
    metrics.update({"split": dataset.split, "dataset": str(dataset.root), "classes": list(model.classes),
                    "skipped_images": timer.skipped})
    write_json_atomic(out_dir / "metrics.json", metrics)
    return metrics


test_detector.__test__ = False  # a library function, not a pytest test
