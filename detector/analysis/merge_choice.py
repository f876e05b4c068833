"""Choosing how ``tools/ensemble.py`` merges, on held-out training images (``tools/choose_merge_rule.py``).

The inputs are two or more models' result folders on images none of them was trained on (for
models trained on ``NAME-fit``, ``test_det.py --split NAME-holdout``).  The images are cut in two
halves (alternate images of the split file); each model's calibration is fitted on one half and
every merge rule is measured on the other, then the halves swap, so no map is judged on the
detections it was fitted on.  A cell of the choice is, per half, the merged mAP minus the better
model's and the classes where the merge is ahead of every model; their mean over the two halves
decides.  The better model is judged by its own (raw) mAP, the figure ``test_det.py`` gives it: a
Platt map leaves a model's ranking as it was, an isotonic map ties scores, so an isotonic cell
includes what those ties cost each model as well as what the merge gains.  (2-fold cross-fitting,
the two halves' calibrated detections pooled in one ranking, mixes two maps per class in one
ranking: it cost calibration about 2 points on VOC, which is why each half is scored on its own.)
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.core.detections import Detections
from detector.core.records import ImageRecord
from detector.engine.ensemble import checked_inputs, evaluated
from detector.engine.merge import RULES, merge_sets
from detector.evaluation.calibration import fit_calibration
from detector.evaluation.voc_eval import read_result_files
from detector.model.calibration import METHODS

SCORES = ("raw", *METHODS)  # the raw scores, then each calibration method


@dataclass(frozen=True)
class Cell:
    """One rule on one kind of scores, measured on one half: the merge's mAP, its mAP minus the
    better model's, and the classes where it is ahead of every model."""

    mAP: float
    minus_best: float
    ahead: tuple[str, ...]


@dataclass(frozen=True)
class MergeChoice:
    """The figures of the choice: per half (the half measured), each model's mAP and every cell."""

    split: str
    folders: tuple[str, ...]
    classes: tuple[str, ...]
    half_images: tuple[int, int]
    model_map: tuple[tuple[float, ...], tuple[float, ...]]  # per half, per model
    cells: dict[tuple[str, str], tuple[Cell, Cell]]  # (scores, rule) -> per half

    def mean_gain(self, scores: str, rule: str) -> float:
        """The merged mAP minus the better model's, mean of the two halves."""
        return float(np.mean([cell.minus_best for cell in self.cells[scores, rule]]))

    def best(self) -> tuple[str, str]:
        """The (scores, rule) with the largest mean gain (ties: the earlier scores, then rule)."""
        return max(self.cells, key=lambda key: (self.mean_gain(*key), -list(self.cells).index(key)))


def halves(records: Sequence[ImageRecord]) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """The split's images in two halves: the 1st, 3rd, 5th, ... and the 2nd, 4th, ... of its list."""
    return list(records[0::2]), list(records[1::2])


def restrict(detection_set: Mapping[str, Detections], records: Sequence[ImageRecord]) -> dict[str, Detections]:
    """The detections of ``records``' images only (order kept)."""
    ids = np.array([r.image_id for r in records], dtype=np.str_)
    out = {}
    for name, found in detection_set.items():
        keep = np.isin(found.image_ids, ids)
        out[name] = Detections(found.image_ids[keep], found.scores[keep], found.boxes[keep])
    return out


def measure_half(fit: Sequence[ImageRecord], measure: Sequence[ImageRecord], sets: Sequence[Mapping[str, Detections]],
                 classes: Sequence[str], scores: Sequence[str], rules: Sequence[str], max_per_image: int = 100,
                 use_07_metric: bool = True) -> tuple[tuple[float, ...], dict[tuple[str, str], Cell]]:
    """Every model's mAP on ``measure`` and, for each kind of ``scores`` (maps fitted on ``fit``) and
    each rule, the merge's cell on ``measure``."""
    measured = [restrict(s, measure) for s in sets]
    inputs = [evaluated(measure, s, classes, use_07_metric, coco=False).evaluate() for s in measured]
    best = max(m["mAP"] for m in inputs)
    cells = {}
    for kind in scores:
        if kind == "raw":
            merged_sets = measured
        else:
            merged_sets = [fit_calibration(restrict(s, fit), fit, classes, kind).apply_set(m)
                           for s, m in zip(sets, measured)]
        for rule in rules:
            merged = merge_sets(merged_sets, classes, rule, max_per_image)
            found = evaluated(measure, merged, classes, use_07_metric, coco=False).evaluate()
            ahead = tuple(c for c in classes if found["ap"].get(c) is not None  # None: no object of c in the half
                          and all(m["ap"].get(c) is not None and found["ap"][c] > m["ap"][c] for m in inputs))
            cells[kind, rule] = Cell(found["mAP"], found["mAP"] - best, ahead)
    return tuple(m["mAP"] for m in inputs), cells


def choose_merge(voc_root: Path, split: str, result_dirs: Sequence[Path], scores: Sequence[str] = SCORES,
                 rules: Sequence[str] = RULES, max_per_image: int = 100, use_07_metric: bool = True) -> MergeChoice:
    """Measure every rule on every kind of scores over the two halves of ``split`` (module docstring)."""
    if len(result_dirs) < 2:
        raise ValueError("give at least two result folders (one per model) to choose a merge for")
    unknown = [k for k in scores if k not in SCORES] + [r for r in rules if r not in RULES]
    if unknown:
        raise ValueError(f"unknown scores or rules {unknown}: scores are {SCORES}, rules {RULES}")
    dataset, _ = checked_inputs(voc_root, split, result_dirs)
    classes = dataset.classes
    sets = [read_result_files(d, split, classes, image_ids=[r.image_id for r in dataset.records])
            for d in result_dirs]
    first, second = halves(dataset.records)
    if min(len(first), len(second)) == 0:
        raise ValueError(f"split {split} has {len(dataset.records)} image(s): two halves need at least two")
    measured = [measure_half(fit, measure, sets, classes, scores, rules, max_per_image, use_07_metric)
                for measure, fit in ((first, second), (second, first))]  # measured on the first half, then the second
    return MergeChoice(split, tuple(str(d) for d in result_dirs), tuple(classes), (len(first), len(second)),
                       (measured[0][0], measured[1][0]),
                       {key: (measured[0][1][key], measured[1][1][key]) for key in measured[0][1]})


def format_merge_choice(choice: MergeChoice) -> str:
    """The table: rows the kinds of scores, columns the rules; each cell the mean gain over the better
    model (each half's in brackets) and the classes ahead of every model in each half."""
    kinds = list(dict.fromkeys(kind for kind, _ in choice.cells))
    rules = list(dict.fromkeys(rule for _, rule in choice.cells))
    header = ["scores", *rules]
    rows = []
    for kind in kinds:
        row = [kind]
        for rule in rules:
            a, b = choice.cells[kind, rule]
            row.append(f"{100 * choice.mean_gain(kind, rule):+.1f} ({100 * a.minus_best:+.1f}, "
                       f"{100 * b.minus_best:+.1f}); {len(a.ahead)}, {len(b.ahead)}")
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"{choice.split}: halves of {choice.half_images[0]} and {choice.half_images[1]} images; each "
             "calibration fitted on one half, every merge measured on the other"]
    for k, folder in enumerate(choice.folders):
        lines.append(f"model {k + 1}: {folder}: mAP {100 * choice.model_map[0][k]:.1f} on the first half, "
                     f"{100 * choice.model_map[1][k]:.1f} on the second")
    lines.append("cell: merged mAP minus the better model's, mean of the halves (each half's); classes of "
                 f"{len(choice.classes)} where the merge is ahead of every model, per half")
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in [header, *rows]]
    kind, rule = choice.best()
    lines.append(f"best: rule {rule} on {kind} scores, {100 * choice.mean_gain(kind, rule):+.1f} points "
                 "(ensemble.py --rule " + rule + (" --raw" if kind == "raw" else
                                                  f"; calibrate with --method {kind}") + ")")
    return "\n".join(lines)
