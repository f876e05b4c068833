"""Model combination: pool the scored detections of several models per class, then NMS.

As in the paper (two ZF-5 models: 59.1 and 59.2 mAP -> 60.9 combined), the detections of every
model are put together per class and image and NMS at IoU 0.3 keeps the best-scored of each
group of overlapping boxes from different models (``merge_detections``: across models only); an image keeps at most ``max_per_image`` detections, as at test.
Inputs are devkit result folders; every input is checked before anything is written: a folder
whose ``metrics.json`` is unreadable or lacks ``"ap"`` is named, and folders made for different
class lists, splits or datasets (their ``classes.json`` / ``metrics.json``) are refused.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from detector.core.boxes import iou_matrix
from detector.core.detections import Detections
from detector.core.folders import METRICS_FILE, RESULT_OUTPUTS, begin_run, check_complete, finish_run
from detector.core.records import ImageRecord
from detector.data.voc import load_voc
from detector.engine.test import write_pr_curves
from detector.evaluation.evaluator import VOCEvaluator
from detector.evaluation.voc_eval import (
    read_classes_file,
    read_result_files,
    result_prefix,
    write_classes_file,
    write_json_atomic,
    write_result_files,
)

log = logging.getLogger(__name__)


def _metrics(result_dir: Path) -> dict | None:
    """A result folder's metrics.json, None when it has none; refused by name when unusable."""
    path = result_dir / METRICS_FILE
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not readable JSON ({error}); rerun tools/test_det.py for it") from error
    if not isinstance(metrics, dict) or not isinstance(metrics.get("ap"), dict):
        raise ValueError(f"{path} has no per-class \"ap\"; it is not a metrics file of tools/test_det.py "
                         "(rerun it, or remove the file to use the result files' names)")
    return metrics


def result_dir_origin(result_dir: Path) -> dict:
    """The split and dataset a result folder was made for, as far as its files record them."""
    recorded = read_classes_file(result_dir) or _metrics(result_dir) or {}
    return {key: recorded.get(key) for key in ("split", "dataset")}


def check_same_origin(result_dirs: Sequence[Path], split: str, voc_root: Path) -> None:
    """Refuse, by folder, results of another split or dataset than ``split`` of ``voc_root``."""
    for folder in result_dirs:
        origin = result_dir_origin(folder)
        if origin["split"] is not None and origin["split"] != split:
            raise ValueError(f"{folder} holds results of split {origin['split']!r}, not {split!r}")
        if origin["dataset"] is not None and Path(origin["dataset"]).resolve() != Path(voc_root).resolve():
            raise ValueError(f"{folder} holds results on dataset {origin['dataset']}, not {voc_root}")


def result_dir_classes(result_dir: Path, split: str) -> list[str]:
    """Class list of a result folder: its classes.json, else the classes of its metrics.json, else of
    its file names."""
    recorded = read_classes_file(result_dir)
    if recorded is not None:
        return sorted(recorded["classes"])
    metrics = _metrics(result_dir)
    if metrics is not None:
        return sorted(metrics["ap"])
    prefix = result_prefix(split)
    classes = sorted(p.stem[len(prefix):] for p in result_dir.glob(f"{prefix}*.txt"))
    if not classes:
        raise FileNotFoundError(f"no result files {prefix}<class>.txt in {result_dir}")
    return classes


def check_same_classes(result_dirs: Sequence[Path], split: str) -> list[str]:
    """The common class list of the folders; a folder with another list is refused by name."""
    first = result_dir_classes(result_dirs[0], split)
    for other in result_dirs[1:]:
        classes = result_dir_classes(other, split)
        if classes != first:
            raise ValueError(f"{other} was made for classes {classes}, but {result_dirs[0]} for "
                             f"{first}: only results of the same class list can be combined")
    return first


def merge_detections(parts: Sequence[Detections], nms_iou: float) -> Detections:
    """Union of one class's detections from several models with NMS *across* models: per image, in
    order of score, a detection is dropped when a kept detection of another model overlaps it by IoU
    > ``nms_iou``; overlaps within one model are left as that model's test made them.

    Each model's detections have been through NMS 0.3 already; a plain NMS over the union would do it
    again on boxes box voting has moved (which may now overlap their own neighbours), dropping 31-38%
    of a model's own detections and taking the same folder twice from 7.2 to 3.0 mAP.  Without
    voting the two rules are the same (no two kept boxes of one model overlap above 0.3).  Ties in
    score keep the earlier model's detection, so a model merged with itself gives itself back."""
    merged = Detections.concat(parts)
    if len(merged) == 0:
        return merged
    model = np.concatenate([np.full(len(part), k) for k, part in enumerate(parts)])
    keep = np.zeros(len(merged), dtype=bool)
    _, image_index = np.unique(merged.image_ids, return_inverse=True)
    for rows in np.split(np.argsort(image_index, kind="stable"),
                         np.cumsum(np.bincount(image_index))[:-1]):
        rows = rows[np.lexsort((model[rows], -merged.scores[rows]))]  # best first, earlier model on ties
        overlaps = iou_matrix(merged.boxes[rows], merged.boxes[rows]) > nms_iou
        kept_here = np.zeros(len(rows), dtype=bool)
        for i in range(len(rows)):
            rivals = kept_here & (model[rows] != model[rows[i]]) & overlaps[i]
            kept_here[i] = not rivals.any()
        keep[rows[kept_here]] = True
    kept = np.flatnonzero(keep)
    kept = kept[np.argsort(-merged.scores[kept], kind="stable")]
    return Detections(merged.image_ids[kept], merged.scores[kept], merged.boxes[kept])


def cap_per_image(detection_set: dict[str, Detections], max_per_image: int) -> dict[str, Detections]:
    """Keep each image's ``max_per_image`` best-scored detections over all classes."""
    names = list(detection_set)
    sizes = [len(detection_set[n]) for n in names]
    ids = np.concatenate([detection_set[n].image_ids for n in names])
    scores = np.concatenate([detection_set[n].scores for n in names])
    order = np.lexsort((-scores, ids))  # grouped by image, best first within an image
    sorted_ids = ids[order]
    rank = np.arange(len(order)) - np.searchsorted(sorted_ids, sorted_ids, side="left")
    keep = np.zeros(len(ids), dtype=bool)
    keep[order[rank < max_per_image]] = True
    out, start = {}, 0
    for name, size in zip(names, sizes):
        rows = np.flatnonzero(keep[start:start + size])
        found = detection_set[name]
        out[name] = Detections(found.image_ids[rows], found.scores[rows], found.boxes[rows])
        start += size
    return out


def _evaluator(records: Sequence[ImageRecord], detection_set: dict[str, Detections], classes: Sequence[str],
               use_07_metric: bool) -> VOCEvaluator:
    evaluator = VOCEvaluator(classes, use_07_metric)
    evaluator.process_set(records, detection_set)
    return evaluator


def check_distinct_folders(result_dirs: Sequence[Path], out_dir: Path) -> None:
    """Refuse a result folder given twice (a model merged with itself) and an ``out_dir`` that is one
    of them (the merge would overwrite that model's results), naming the folder."""
    seen: dict[Path, Path] = {}
    for folder in result_dirs:
        resolved = Path(folder).resolve()
        if resolved in seen:
            raise ValueError(f"result folder {folder} is given twice (as {seen[resolved]} too): a model "
                             "merged with itself is still one model; give the folders of different models")
        seen[resolved] = Path(folder)
    if Path(out_dir).resolve() in seen:
        raise ValueError(f"--out {out_dir} is one of the result folders; the merge would overwrite its "
                         "results: write it to a new folder")


def ensemble_result_dirs(voc_root: Path, split: str, result_dirs: Sequence[Path], out_dir: Path,
                         nms_iou: float = 0.3, max_per_image: int = 100,
                         use_07_metric: bool = True, allow_incomplete: bool = False) -> dict:
    """Merge result folders, write the merged result files, metrics.json and the precision-recall
    curves (pr_curves.json, pr_curves.png); return the metrics
    of the merge with ``"inputs"``: the mAP of each input folder, and ``"incomplete_inputs"``: the
    folders read although their run was incomplete (refused unless ``allow_incomplete``)."""
    if len(result_dirs) < 2:
        raise ValueError("give at least two result folders to combine")
    check_distinct_folders(result_dirs, out_dir)
    incomplete = [str(d) for d in result_dirs if not check_complete(d, allow_incomplete)]
    check_same_origin(result_dirs, split, voc_root)
    classes = check_same_classes(result_dirs, split)
    dataset = load_voc(voc_root, split, classes)
    ids = [r.image_id for r in dataset.records]
    sets = [read_result_files(d, split, classes, image_ids=ids, allow_incomplete=allow_incomplete)
            for d in result_dirs]
    inputs = {str(d): _evaluator(dataset.records, s, classes, use_07_metric).evaluate()["mAP"]
              for d, s in zip(result_dirs, sets)}
    merged = cap_per_image({c: merge_detections([s[c] for s in sets], nms_iou) for c in classes},
                           max_per_image)
    begin_run(out_dir, {"merged": [str(Path(d).resolve()) for d in result_dirs]}, RESULT_OUTPUTS)
    write_result_files(out_dir, split, merged, classes)
    write_classes_file(out_dir, classes, split, voc_root)
    evaluator = _evaluator(dataset.records, merged, classes, use_07_metric)
    metrics = {"split": split, **evaluator.evaluate(), "inputs": inputs, "incomplete_inputs": incomplete}
    write_json_atomic(out_dir / METRICS_FILE, metrics)
    write_pr_curves(out_dir, evaluator.pr_curves(), f"merge of {len(result_dirs)} models, {split}")
    finish_run(out_dir)
    return metrics
