"""Model combination: pool the scored detections of several models per class and merge them.

As in the paper (two ZF-5 models: 59.1 and 59.2 mAP -> 60.9 combined), the detections of every
model are put together per class and image and merged by a rule (``detector.engine.merge``: NMS
across models, box voting across models, or score averaging); an image keeps at most
``max_per_image`` detections, as at test.  The scores merged are the calibrated ones
(``detector.evaluation.calibration``) when every input has them, else the raw ones (said in the
log): two models' raw scores lie on scales of their own, and a merge then favours whichever model
scores higher, right or not.  Inputs are devkit result folders; every input is checked before anything is written: a folder
whose ``metrics.json`` is unreadable or lacks ``"ap"`` is named, and folders made for different
class lists, splits or datasets (their ``classes.json`` / ``metrics.json``) are refused.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from detector.core.detections import Detections
from detector.core.folders import (
    CALIBRATED_DIR,
    CLASSES_FILE,
    METRICS_FILE,
    RESULT_OUTPUTS,
    begin_run,
    check_complete,
    finish_run,
)
from detector.core.records import ImageRecord
from detector.data.voc import VOCDataset, load_voc
from detector.engine.merge import merge_rule, merge_sets
from detector.engine.test import write_pr_curves
from detector.evaluation.bootstrap import paired_bootstrap, per_image, rank_matches
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

# chosen on dev_train's held-out fifth (two folds: calibration fitted on one half, the rules measured on
# the other), cpu + cpu-partner: merged minus the better model +3.7 for average on Platt scores, +0.9
# vote, +0.8 nms; raw scores: nms +1.3, vote +1.1, average -0.8 (docs/results.md, "Model combination")
DEFAULT_RULE = "average"


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


def evaluated(records: Sequence[ImageRecord], detection_set: Mapping[str, Detections], classes: Sequence[str],
              use_07_metric: bool, coco: bool = True) -> VOCEvaluator:
    """An evaluator that has processed ``detection_set`` on ``records`` (``evaluate()`` gives the metrics)."""
    evaluator = VOCEvaluator(classes, use_07_metric, coco)
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


def checked_inputs(voc_root: Path, split: str, result_dirs: Sequence[Path],
                   allow_incomplete: bool = False) -> tuple[VOCDataset, list[str]]:
    """The dataset of result folders checked to be complete (unless ``allow_incomplete``), of ``split``
    of ``voc_root`` and of one class list; returns it (with that class list) and the incomplete folders."""
    incomplete = [str(d) for d in result_dirs if not check_complete(d, allow_incomplete)]
    check_same_origin(result_dirs, split, voc_root)
    return load_voc(voc_root, split, check_same_classes(result_dirs, split)), incomplete


def read_inputs(result_dirs: Sequence[Path], split: str, classes: Sequence[str], image_ids: Sequence[str],
                calibrated: bool, allow_incomplete: bool) -> tuple[list[dict[str, Detections]], list[str]]:
    """Each folder's detections: its calibrated scores (``<folder>/calibrated``, written by
    ``test_det.py`` for a model with a calibration) when every folder has them and ``calibrated``,
    else the raw scores of all (a folder without calibration is named in the log).  Returns the sets
    and the folders without calibrated scores (empty: the sets are calibrated)."""
    lacking = [str(d) for d in result_dirs if not (Path(d) / CALIBRATED_DIR / CLASSES_FILE).is_file()]
    use = calibrated and not lacking
    if calibrated and lacking:
        log.warning("no calibrated scores in %s (its model has no calibration): merging the raw scores of every "
                    "input", ", ".join(lacking))
    folders = [Path(d) / CALIBRATED_DIR if use else Path(d) for d in result_dirs]
    return [read_result_files(d, split, classes, image_ids=image_ids, allow_incomplete=allow_incomplete)
            for d in folders], [] if use else lacking or [str(d) for d in result_dirs]


def ensemble_result_dirs(voc_root: Path, split: str, result_dirs: Sequence[Path], out_dir: Path,
                         rule: str = DEFAULT_RULE, nms_iou: float = 0.3, vote_iou: float = 0.5, match_iou: float = 0.5,
                         max_per_image: int = 100, use_07_metric: bool = True, allow_incomplete: bool = False,
                         calibrated: bool = True, resamples: int = 1000) -> dict:
    """Merge result folders by ``rule`` (``detector.engine.merge``), on calibrated scores when every
    input has them (``read_inputs``); write the merged result files, metrics.json and the
    precision-recall curves; return the merge's metrics with ``"inputs"`` (each folder's mAP),
    ``"input_ap"`` (its per-class AP), ``"calibrated"``, ``"rule"``, ``"beats_both"`` (classes where
    the merge is ahead of every input), ``"minus_best"`` (the merge's mAP minus the best input's,
    with the paired bootstrap's 90% interval over the images) and ``"incomplete_inputs"``."""
    if len(result_dirs) < 2:
        raise ValueError("give at least two result folders to combine")
    merge_rule(rule)  # an unknown rule is refused before any work
    check_distinct_folders(result_dirs, out_dir)
    dataset, incomplete = checked_inputs(voc_root, split, result_dirs, allow_incomplete)
    classes = dataset.classes
    ids = [r.image_id for r in dataset.records]
    sets, uncalibrated = read_inputs(result_dirs, split, classes, ids, calibrated, allow_incomplete)
    used_calibration = not uncalibrated
    inputs = {str(d): evaluated(dataset.records, s, classes, use_07_metric, coco=False).evaluate()  # VOC AP only
              for d, s in zip(result_dirs, sets)}
    merged = merge_sets(sets, classes, rule, max_per_image, nms_iou, vote_iou, match_iou)
    begin_run(out_dir, {"merged": [str(Path(d).resolve()) for d in result_dirs], "rule": rule,
                        "calibrated": used_calibration}, RESULT_OUTPUTS)
    write_result_files(out_dir, split, merged, classes)
    write_classes_file(out_dir, classes, split, voc_root)
    evaluator = evaluated(dataset.records, merged, classes, use_07_metric)
    metrics = {"split": split, **evaluator.evaluate(), "rule": rule, "calibrated": used_calibration,
               "uncalibrated_inputs": uncalibrated,
               "inputs": {d: m["mAP"] for d, m in inputs.items()}, "input_ap": {d: m["ap"] for d, m in inputs.items()},
               "incomplete_inputs": incomplete}
    metrics.update(versus_inputs(dataset.records, classes, merged, sets, metrics, use_07_metric, resamples))
    write_json_atomic(out_dir / METRICS_FILE, metrics)
    write_pr_curves(out_dir, evaluator.pr_curves(), f"merge of {len(result_dirs)} models, {split}")
    finish_run(out_dir)
    return metrics


def versus_inputs(records: Sequence[ImageRecord], classes: Sequence[str], merged: dict[str, Detections],
                  sets: Sequence[dict[str, Detections]], metrics: dict, use_07_metric: bool,
                  resamples: int) -> dict:
    """The paper's comparison: in how many classes the merge is ahead of every input, and its mAP
    minus the best input's with the paired bootstrap's 90% interval (``resamples`` 0: none)."""
    aps = list(metrics["input_ap"].values())
    beats = [c for c in classes if metrics["ap"].get(c) is not None
             and all(ap.get(c) is not None and metrics["ap"][c] > ap[c] for ap in aps)]
    best = int(np.argmax(list(metrics["inputs"].values())))
    found = {"beats_both": len(beats), "beats_every_input": beats, "best_input": list(metrics["inputs"])[best]}
    if resamples:
        ranked = [rank_matches(records, per_image(d, records, classes), len(classes)) for d in (merged, sets[best])]
        found["minus_best"] = dataclasses.asdict(paired_bootstrap(*ranked, resamples=resamples,
                                                                  use_07_metric=use_07_metric).mAP)
    return found


def format_ensemble(metrics: dict) -> str:
    """The paper's table: per class, each input's AP and the merge's; the classes where the merge
    beats every input; the merged mAP minus the best input's with its interval."""
    names = list(metrics["inputs"])
    header = ["class"] + [f"model {k + 1}" for k in range(len(names))] + ["merged", "ahead"]
    rows = []
    for c in metrics["ap"]:
        values = [metrics["input_ap"][n].get(c) for n in names] + [metrics["ap"].get(c)]
        rows.append([c] + [_points(v) for v in values] + ["*" if c in metrics["beats_every_input"] else ""])
    rows.append(["mAP"] + [_points(metrics["inputs"][n]) for n in names] + [_points(metrics["mAP"]), ""])
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(cell).rjust(w) if i else str(cell).ljust(w) for i, (cell, w) in
                       enumerate(zip(row, widths))) for row in [header] + rows]
    lines += [f"model {k + 1}: {name}" for k, name in enumerate(names)]
    lines.append(f"rule {metrics['rule']}, {'calibrated' if metrics['calibrated'] else 'raw'} scores; the merge is "
                 f"ahead of every model in {metrics['beats_both']} of {len(metrics['ap'])} classes")
    if "minus_best" in metrics:
        d = metrics["minus_best"]
        lines.append(f"merged mAP minus the best model's ({metrics['best_input']}), points: {d['observed']:+.1f} "
                     f"(90% interval {d['low']:+.1f} to {d['high']:+.1f}, paired bootstrap over the images; ahead in "
                     f"{100 * d['share_above']:.0f}% of {d['resamples']} resamples)")
    return "\n".join(lines)


def _points(value: float | None) -> str:
    return "-" if value is None or value != value else f"{100 * value:.1f}"
