"""Testing a trained detector on a split: detections, devkit result files, COCO JSON, metrics.

``out_dir`` is checked writable before any detection.  An image that fails (decode, trunk,
pooling) is logged naming its file and skipped (its GT boxes still count, as misses); the count,
with the images the loader refused, is ``skipped_images`` in ``metrics.json``.  ``classes.json`` beside the results records the model's
class list, the split and the dataset folder, so that ``--eval-only`` and ``tools/ensemble.py``
use the classes the results were made for (``detector.evaluation.voc_eval.CLASSES_FILE``).

Under ``torchrun`` (``detector.core.distributed``) the images are split across ranks and their
detections gathered to rank 0, which alone writes the result files, the COCO JSON, ``metrics.json``
and the curves; ``seconds_per_image`` then sums every rank's seconds over every rank's images.
"""
from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from detector.core import distributed
from detector.core.detections import ImageDetections
from detector.core.folders import (
    CALIBRATED_DIR,
    COCO_FILE,
    METRICS_FILE,
    PR_CURVES_FILE,
    PR_CURVES_PNG,
    RESULT_OUTPUTS,
    begin_run,
    finish_run,
)
from detector.core.interrupt import set_stage
from detector.core.io import write_json_atomic
from detector.core.runtime import releasing_freed_memory
from detector.core.timing import StageTimer
from detector.data.voc import VOCDataset
from detector.engine.show import KeepForShow, draw_test_images
from detector.engine.stages import check_writable
from detector.evaluation.coco_eval import coco_file_metrics, detections_in_file_ids, detections_to_coco_json
from detector.evaluation.evaluator import VOCEvaluator
from detector.evaluation.voc_eval import json_number, write_classes_file, write_pr_curves_json, write_result_files
from detector.inference.detect import detect
from detector.inference.predictor import default_score_threshold
from detector.model.calibration import ScoreCalibration
from detector.model.detector import DetectorModel
from detector.visualization.plots import plot_pr_curves
from proposals.external import load_proposals

log = logging.getLogger(__name__)

def run_detector(model: DetectorModel, dataset: VOCDataset, evaluator: VOCEvaluator | KeepForShow,
                 progress: bool = True) -> StageTimer:
    """Detect on every image of the split, feeding ``evaluator`` (anything with its ``process``) in
    the split's order; returns the per-stage timings.

    Under ``torchrun`` each rank detects on its shard of the images; the detections are gathered
    to rank 0, which alone feeds ``evaluator`` (the other ranks' stays empty), and rank 0's timer
    sums every rank's seconds and images."""
    timer = StageTimer()
    set_stage("proposals")
    with timer.stage("proposals"):
        proposals = load_proposals(dataset.root, dataset.records, model.config.proposals.method,
                                   model.config.proposals.max_side, model.config.proposals.workers,
                                   progress, model.config.proposals.source)
    missing = len(dataset.records) - len(proposals)
    found_here: list[tuple[int, ImageDetections]] = []
    set_stage("detecting")
    mine = distributed.shard(list(enumerate(dataset.records)))
    bar = tqdm(mine, desc="detecting", disable=not progress or not distributed.is_main(), unit="img")
    for index, record in releasing_freed_memory(bar):
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
        found_here.append((index, found))
    parts = distributed.gather_to_main((found_here, dict(timer.seconds), timer.images, timer.skipped))
    if parts is None:
        return timer
    if len(parts) > 1:
        timer = StageTimer()
        timer.seconds.update(distributed.merge_counts(part[1] for part in parts))
        timer.images = sum(part[2] for part in parts)
        timer.skipped = sum(part[3] for part in parts)
    timer.skipped += missing
    for index, found in sorted((item for part in parts for item in part[0]), key=lambda item: item[0]):
        evaluator.process(dataset.records[index], found)
    return timer


def test_detector(model: DetectorModel, dataset: VOCDataset, out_dir: Path,
                  use_07_metric: bool = True, progress: bool = True,
                  show_dir: Path | None = None, show: int = 20, show_errors: bool = False) -> dict:
    """Detect, write devkit result files, COCO JSON, metrics.json and the precision-recall curves
    (pr_curves.json, pr_curves.png), and return the metrics; with ``show_dir``, also draw the
    first ``show`` images, or with ``show_errors`` the ``show`` with the most mistakes
    (``detector.engine.show``)."""
    check_writable([out_dir] + ([show_dir] if show_dir is not None else []))
    made_by = {"model": model.source or {"path": None, "checksum": None}}
    if distributed.is_main():
        begin_run(out_dir, made_by, RESULT_OUTPUTS)
        write_classes_file(out_dir, model.classes, dataset.split, dataset.root)
    evaluator = VOCEvaluator(model.classes, use_07_metric, coco=dataset.coco is None)  # a COCO file: COCOeval on it
    keeper = KeepForShow(evaluator, show if show_dir is not None else 0,
                         default_score_threshold(model.config.test.scorer), show_errors)
    timer = run_detector(model, dataset, keeper, progress)
    if not distributed.is_main():
        return distributed.broadcast_from_main(None)  # rank 0's metrics, once it has written every file
    set_stage("writing results")
    detection_set = evaluator.detection_set()
    write_result_files(out_dir, dataset.split, detection_set, model.classes)
    metrics = evaluator.evaluate()
    metrics.update(write_coco_results(out_dir, dataset, detection_set, model.classes))
    metrics["seconds_per_image"] = timer.per_image()
    metrics.update({"split": dataset.split, "dataset": str(dataset.root), "classes": list(model.classes),
                    "skipped_images": timer.skipped + dataset.skipped, **made_by})
    write_json_atomic(out_dir / METRICS_FILE, metrics)
    write_pr_curves(out_dir, evaluator.pr_curves(), f"{dataset.split} ({len(dataset.records)} images)")
    if model.calibration is not None:
        write_calibrated(out_dir, dataset, detection_set, model.classes, model.calibration, made_by)
    if show_dir is not None:
        draw_test_images(keeper.kept, model.classes, default_score_threshold(model.config.test.scorer), show_dir,
                         ranked=show_errors)
        metrics["drawn"] = f"{show_dir}: {keeper.summary()}"
    finish_run(out_dir)
    return distributed.broadcast_from_main(metrics)


def write_coco_results(out_dir: Path, dataset: VOCDataset, detection_set: dict, classes: list[str]) -> dict:
    """Write ``detections_coco.json``; for a COCO dataset with the file's own image and category ids,
    and return the metrics ``COCOeval`` gives on the file (``"coco"``, and ``"coco_ap50"`` per class),
    which replace those of the in-memory copy of the ground truth."""
    if dataset.coco is None:
        write_json_atomic(out_dir / COCO_FILE, detections_to_coco_json(detection_set, dataset.records, classes))
        return {}
    source = dataset.coco
    results = detections_in_file_ids(detection_set, classes, source.image_ids, source.category_ids)
    write_json_atomic(out_dir / COCO_FILE, results)
    overall, per_class = coco_file_metrics(source.annotation_file, results,
                                           [source.image_ids[r.image_id] for r in dataset.records],
                                           source.category_ids, classes)
    return {"coco": {k: json_number(v) for k, v in overall.items()},
            "coco_ap50": {k: json_number(v) for k, v in per_class.items()},
            "annotation_file": str(source.annotation_file)}


def write_calibrated(out_dir: Path, dataset: VOCDataset, detection_set: dict, classes: list[str],
                     calibration: ScoreCalibration, made_by: dict) -> Path:
    """``out_dir/calibrated``: the result files again with calibrated scores, a result folder of its
    own (``tools/ensemble.py`` merges on it)."""
    folder = Path(out_dir) / CALIBRATED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    begin_run(folder, {**made_by, "calibration": calibration.method}, RESULT_OUTPUTS)
    write_result_files(folder, dataset.split, calibration.apply_set(detection_set), classes)
    write_classes_file(folder, classes, dataset.split, dataset.root)
    finish_run(folder)
    return folder


def write_pr_curves(out_dir: Path, curves: dict, title: str = "") -> None:
    """``out_dir/pr_curves.json`` and ``out_dir/pr_curves.png`` from ``voc_eval.pr_curves``' dict."""
    write_pr_curves_json(out_dir / PR_CURVES_FILE, curves)
    plot_pr_curves(curves, out_dir / PR_CURVES_PNG, title)


test_detector.__test__ = False  # a library function, not a pytest test
