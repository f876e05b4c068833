"""PASCAL VOC detection evaluation with the devkit's semantics, result files in the devkit
format, and the ``metrics.json`` of a result folder.

Matching (the devkit's ``VOCevaldet.m``, exactly):
- IoU is ``detector.core.boxes.iou_matrix`` on continuous boxes, which equals the devkit's "+1"
  IoU on 1-based inclusive boxes.
- Detections are ranked by score, descending, with a stable sort (MATLAB's ``sort`` is
  stable too): tied scores keep the order of the ``Detections`` rows.
- Each detection takes the GT box of its class in its image with the highest IoU (the first
  one on ties), difficult boxes included.  IoU >= ``iou_threshold`` (the devkit's
  ``ovmax >= minoverlap``; py-faster-rcnn's ``>`` differs only at exactly 0.5): a difficult
  GT makes the detection neither TP nor FP; a free GT makes it a TP and takes the GT; a GT
  taken by a higher-ranked detection makes it a FP, even if another GT would have matched.
  Below the threshold, or in an image without GT of the class: FP.
- ``npos`` counts the non-difficult GT boxes of the class over all images.

Decisions:
- A class without positives (npos == 0) has no defined recall, so its AP is NaN: written as
  null in JSON, shown as "n/a", left out of the mean.  A class with positives but no
  detections has AP 0.  mAP is the mean of the defined APs (NaN when none is defined).
- Precision where no detection has counted yet (only difficult matches so far) is 0, as in
  py-faster-rcnn; the devkit's NaN there is ignored by MATLAB's ``max``; AP is the same.
- The 11-point thresholds are exactly k/10: py-faster-rcnn's ``np.arange(0, 1.1, 0.1)``
  drifts by one ulp above 0.3, 0.6 and 0.7 and would drop a recall exactly equal to them.
- A detection on an image that is not among the records is a ValueError (the devkit also
  stops on an unknown image).

Result files: ``comp4_det_<split>_<class>.txt``, one line ``image_id score x1 y1 x2 y2`` per
detection, coordinates 1-based VOC (``boxes_to_voc``).  The score is written with Python's
shortest round-trip repr (exact, so reading back never creates ties); each coordinate with
the shortest repr of its float32 value, which is exactly what ``voc_to_boxes`` reads back,
so writing what was read reproduces the file.  Files are written atomically.

``classes.json`` (``write_classes_file``) beside the result files records the class list of the
model that made them, the split and the dataset; ``evaluate_result_dir`` uses that list (a class
the model never had must not enter the mAP) and refuses results of another split.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.core.boxes import boxes_to_voc, iou_matrix, voc_to_boxes
from detector.core.detections import Detections, DetectionSet, check_class_names
from detector.core.folders import CLASSES_FILE, METRICS_FILE, PR_CURVES_FILE, RUN_FILE, check_complete
from detector.core.io import write_json_atomic, write_text_atomic
from detector.core.paths import check_name
from detector.core.records import ImageRecord
from detector.data.voc import load_voc
from detector.evaluation.coco_eval import COCO_METRICS, coco_metrics

log = logging.getLogger(__name__)



def write_classes_file(result_dir: str | Path, classes: Sequence[str], split: str, dataset: str | Path) -> None:
    """Record beside result files the model's class list, the split and the dataset folder."""
    write_json_atomic(Path(result_dir) / CLASSES_FILE,
                      {"classes": list(classes), "split": split, "dataset": str(Path(dataset).resolve())})


def read_classes_file(result_dir: str | Path) -> dict | None:
    """The ``classes.json`` of a result folder, or None when it has none; a broken one is refused by name."""
    path = Path(result_dir) / CLASSES_FILE
    if not path.is_file():
        return None
    try:
        found = json.loads(path.read_text())
        if not isinstance(found.get("classes"), list) or not all(isinstance(c, str) for c in found["classes"]):
            raise ValueError("no list of class names under 'classes'")
        for name in found["classes"]:
            check_name(name, "class name")
    except (OSError, ValueError, AttributeError) as error:
        raise ValueError(f"{path} is not a readable class list ({error}); delete it or rerun tools/test_det.py") \
            from error
    return found


@dataclass
class ClassResult:
    """AP of one class with its precision / recall curve (one point per ranked detection)."""

    ap: float
    recall: np.ndarray
    precision: np.ndarray
    npos: int


@dataclass
class EvalResult:
    """AP per class name (NaN: no positives), their mean over the defined ones, and each class's
    full result (its precision / recall curve)."""

    ap: dict[str, float]
    mAP: float
    per_class: dict[str, ClassResult] = field(default_factory=dict)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP of a precision / recall curve: VOC2007's 11-point interpolation, or (VOC2010+)
    the area under the monotone precision envelope."""
    recall = np.asarray(recall, dtype=np.float64).reshape(-1)
    precision = np.asarray(precision, dtype=np.float64).reshape(-1)
    if recall.shape != precision.shape:
        raise ValueError(f"recall ({recall.shape}) and precision ({precision.shape}) differ in length")
    if use_07_metric:
        ap = 0.0
        for threshold in np.arange(11) / 10.0:
            reached = precision[recall >= threshold]
            ap += (reached.max() if reached.size else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))


def _record_index(records: Sequence[ImageRecord]) -> dict[str, int]:
    """Image id -> position in ``records``; repeated ids are a ValueError."""
    index = {record.image_id: i for i, record in enumerate(records)}
    if len(index) != len(records):
        raise ValueError("records repeat an image id; every image must appear once")
    return index


def _unknown_ids(image_ids: np.ndarray, known: Collection[str]) -> list[str]:
    """The distinct ids of ``image_ids`` that are not in ``known`` (sorted)."""
    return sorted(i for i in np.unique(image_ids).tolist() if i not in known)


@dataclass
class _Matches:
    """Matching of one class's detections, in ranking order (``order``: rows of the input)."""

    order: np.ndarray
    tp: np.ndarray
    ignored: np.ndarray
    best_gt: np.ndarray  # GT id (class GT boxes numbered image by image in ranking order of images), -1: none
    npos: int


def _match_ranked(
    dets: Detections, records: Sequence[ImageRecord], class_index: int, iou_threshold: float
) -> _Matches:
    """Devkit matching of one class (see the module notes), in ranking order.

    The greedy "first come takes the GT" rule reduces to: among ranked detections whose best
    GT is a non-difficult match, the first one per GT is the TP.
    """
    index = _record_index(records)
    unknown = _unknown_ids(dets.image_ids, index)
    if unknown:
        raise ValueError(f"detections on images not in the evaluated records: {unknown[:10]}")
    npos = int(sum(np.count_nonzero((r.labels == class_index) & ~r.difficult) for r in records))

    order = np.argsort(-dets.scores, kind="stable")
    image_ids, boxes = dets.image_ids[order], dets.boxes[order]
    n = len(order)
    best_gt = np.full(n, -1, dtype=np.int64)  # GT id unique over all images
    best_iou = np.zeros(n, dtype=np.float64)
    best_difficult = np.zeros(n, dtype=bool)
    unique_ids, inverse, counts = np.unique(image_ids, return_inverse=True, return_counts=True)
    rows_per_image = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    gt_offset = 0
    for image_id, rows in zip(unique_ids.tolist(), rows_per_image):
        record = records[index[image_id]]
        of_class = record.labels == class_index
        if not of_class.any():
            continue
        ious = iou_matrix(boxes[rows], record.boxes[of_class])
        nearest = ious.argmax(axis=1)
        best_gt[rows] = gt_offset + nearest
        best_iou[rows] = ious[np.arange(len(rows)), nearest]
        best_difficult[rows] = record.difficult[of_class][nearest]
        gt_offset += int(of_class.sum())

    matched = (best_gt >= 0) & (best_iou >= iou_threshold)
    ignored = matched & best_difficult
    candidates = np.flatnonzero(matched & ~best_difficult)
    _, first = np.unique(best_gt[candidates], return_index=True)
    tp = np.zeros(n, dtype=bool)
    tp[candidates[first]] = True
    return _Matches(order, tp, ignored, np.where(matched, best_gt, -1), npos)


def detection_outcomes(dets: Detections, records: Sequence[ImageRecord], class_index: int,
                       iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, tp)`` of one class's detections as the devkit judges them (a detection matched to a
    difficult GT box is neither, and left out), in ranking order."""
    matches = _match_ranked(dets, records, class_index, iou_threshold)
    kept = ~matches.ignored
    return dets.scores[matches.order][kept], matches.tp[kept]


def _match(
    dets: Detections, records: Sequence[ImageRecord], class_index: int, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(tp, fp, npos)``: 0/1 flags per detection in ranking order, and the positive count."""
    matches = _match_ranked(dets, records, class_index, iou_threshold)
    tp = matches.tp.astype(np.float64)
    return tp, 1.0 - tp - matches.ignored, matches.npos


@dataclass
class ImageMatch:
    """One image's detections judged as the evaluation judges them: ``tp`` / ``ignored`` (matched
    a difficult GT) per detection, the rest false positives; ``missed`` per GT box (non-difficult,
    taken by no detection)."""

    tp: np.ndarray
    ignored: np.ndarray
    missed: np.ndarray


def match_image(record: ImageRecord, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                iou_threshold: float = 0.5) -> ImageMatch:
    """Devkit matching (``_match_ranked``, class by class) of one image's detections to its GT."""
    tp = np.zeros(len(scores), dtype=bool)
    ignored = np.zeros(len(scores), dtype=bool)
    taken = np.zeros(len(record.labels), dtype=bool)
    for k in np.unique(labels):
        rows = np.flatnonzero(labels == k)
        dets = Detections([record.image_id] * len(rows), scores[rows], boxes[rows])
        matches = _match_ranked(dets, [record], int(k), iou_threshold)
        tp[rows[matches.order]] = matches.tp
        ignored[rows[matches.order]] = matches.ignored
        gt_rows = np.flatnonzero(record.labels == k)  # one image: GT id = index among its class's boxes
        taken[gt_rows[matches.best_gt[matches.tp]]] = True
    return ImageMatch(tp, ignored, ~taken & ~record.difficult)


def evaluate_class(
    dets: Detections,
    records: Sequence[ImageRecord],
    class_index: int,
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> ClassResult:
    """AP of one class's detections against the GT of ``records`` (labels == ``class_index``)."""
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    tp, fp, npos = _match(dets, records, class_index, iou_threshold)
    tp_sum, fp_sum = np.cumsum(tp), np.cumsum(fp)
    counted = tp_sum + fp_sum
    precision = np.divide(tp_sum, counted, out=np.zeros_like(tp_sum), where=counted > 0)
    if npos == 0:
        return ClassResult(math.nan, np.full_like(tp_sum, math.nan), precision, 0)
    recall = tp_sum / npos
    return ClassResult(voc_ap(recall, precision, use_07_metric), recall, precision, npos)


def evaluate_detections(
    detection_set: DetectionSet,
    records: Sequence[ImageRecord],
    classes: Sequence[str],
    use_07_metric: bool = True,
) -> EvalResult:
    """VOC AP of every class in ``classes`` (a class absent from the set has no detections)."""
    check_class_names(detection_set, classes)
    per_class = {
        name: evaluate_class(detection_set.get(name, Detections.empty()), records, k, use_07_metric=use_07_metric)
        for k, name in enumerate(classes)
    }
    ap = {name: result.ap for name, result in per_class.items()}
    defined = [value for value in ap.values() if not math.isnan(value)]
    return EvalResult(ap, float(np.mean(defined)) if defined else math.nan, per_class)


def json_number(value: float) -> float | None:
    """A float for JSON: NaN (undefined) becomes None (null)."""
    return None if math.isnan(value) else float(value)


def evaluate_detection_set(
    detection_set: DetectionSet,
    records: Sequence[ImageRecord],
    classes: Sequence[str],
    use_07_metric: bool = True,
    voc: EvalResult | None = None,
) -> dict:
    """VOC and COCO metrics of a detection set as a JSON-ready dict (undefined values None):
    ``{"metric", "num_images", "mAP", "ap": {class: AP}, "coco": {"AP", "AP50", ...}}``; ``voc``:
    this set's ``evaluate_detections`` result when already computed."""
    voc = voc or evaluate_detections(detection_set, records, classes, use_07_metric)
    coco = coco_metrics(detection_set, records, classes)
    return {
        "metric": "voc07" if use_07_metric else "voc10",
        "num_images": len(records),
        "mAP": json_number(voc.mAP),
        "ap": {name: json_number(value) for name, value in voc.ap.items()},
        "coco": {name: json_number(value) for name, value in coco.items()},
    }




def pr_curves(
    detection_set: DetectionSet,
    records: Sequence[ImageRecord],
    classes: Sequence[str],
    use_07_metric: bool = True,
) -> dict:
    """The precision / recall curve of every class as ``evaluate_class`` computes it, JSON-ready:
    ``{"metric": "voc07"|"voc10", "classes": {name: {"ap", "npos", "precision": [...],
    "recall": [...]}}}`` (one point per ranked detection; a class without positives has AP
    null and empty curves).  ``voc_ap(recall, precision, metric == "voc07")`` gives ``ap`` back."""
    return curves_of(evaluate_detections(detection_set, records, classes, use_07_metric), use_07_metric)


def curves_of(voc: EvalResult, use_07_metric: bool) -> dict:
    """``pr_curves``' dict from an ``evaluate_detections`` result (no second matching pass)."""
    curves = {}
    for name, result in voc.per_class.items():
        defined = result.npos > 0
        curves[name] = {"ap": json_number(result.ap), "npos": result.npos,
                        "precision": result.precision.tolist() if defined else [],
                        "recall": result.recall.tolist() if defined else []}
    return {"metric": "voc07" if use_07_metric else "voc10", "classes": curves}


def write_pr_curves_json(path: str | Path, curves: Mapping) -> None:
    """Write ``pr_curves``' dict atomically, compact (a VOC test has ~10^5 points per class)."""
    write_text_atomic(path, json.dumps(curves, separators=(",", ":")) + "\n")


def result_prefix(split: str) -> str:
    """The start of a split's result file names, ``comp4_det_<split>_`` (a split that is not a plain
    file-name part is refused)."""
    return f"comp4_det_{check_name(split, 'split')}_"


def result_file(out_dir: str | Path, split: str, class_name: str) -> Path:
    """Path of one class's devkit result file: ``<out_dir>/comp4_det_<split>_<class>.txt`` (a split or
    class name that is not a plain file-name part is refused, so no name leaves ``out_dir``)."""
    return Path(out_dir) / f"{result_prefix(split)}{check_name(class_name, 'class name')}.txt"


def write_result_files(
    out_dir: str | Path, split: str, detection_set: DetectionSet, classes: Sequence[str]
) -> list[Path]:
    """Write one devkit result file per class of ``classes`` (empty for a class without
    detections) and return their paths."""
    check_class_names(detection_set, classes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in classes:
        dets = detection_set.get(name, Detections.empty())
        bad = [i for i in np.unique(dets.image_ids).tolist() if not i or len(i.split()) != 1]
        if bad:
            raise ValueError(f"class {name}: image ids {bad[:5]} are empty or hold whitespace")
        coordinates = boxes_to_voc(dets.boxes).astype(np.float32)
        lines = [
            f"{image_id} {score!r} {' '.join(map(str, box))}\n"
            for image_id, score, box in zip(dets.image_ids.tolist(), dets.scores.tolist(), coordinates)
        ]
        path = result_file(out_dir, split, name)
        write_text_atomic(path, "".join(lines))
        paths.append(path)
    return paths


def _read_result_file(path: Path, known_ids: Collection[str] | None) -> Detections:
    """Parse one result file; a malformed line or an unknown image is a ValueError naming
    the file and line.  Blank lines are skipped."""
    image_ids, scores, coordinates = [], [], []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                if len(fields) != 6:
                    raise ValueError(f"{len(fields)} fields, not 6")
                numbers = [float(f) for f in fields[1:]]
                if not all(math.isfinite(x) for x in numbers):
                    raise ValueError("non-finite number")
            except ValueError as error:
                raise ValueError(
                    f"{path}:{line_number}: malformed detection line {line.rstrip()!r} ({error}); "
                    "expected 'image_id score x1 y1 x2 y2'"
                ) from None
            if known_ids is not None and fields[0] not in known_ids:
                raise ValueError(f"{path}:{line_number}: image id {fields[0]!r} is not in the split")
            image_ids.append(fields[0])
            scores.append(numbers[0])
            coordinates.append(numbers[1:])
    if not image_ids:
        return Detections.empty()
    return Detections(image_ids, np.array(scores), voc_to_boxes(np.array(coordinates)))


def read_result_files(
    out_dir: str | Path,
    split: str,
    classes: Sequence[str],
    image_ids: Collection[str] | None = None,
    allow_incomplete: bool = False,
) -> dict[str, Detections]:
    """Read the devkit result files of ``classes`` into a detection set.

    A folder whose ``run.json`` says its run is incomplete is refused
    (``detector.core.folders.IncompleteFolderError``) unless ``allow_incomplete``, which reads it
    with a warning.  A class without a file gets no detections, and files of other classes are
    ignored (both logged as warnings); a folder with no file of any class is refused (ValueError).
    With ``image_ids`` (the split's ids), a line naming another image is a ValueError naming file
    and line.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"result folder {out_dir} not found")
    if not check_complete(out_dir, allow_incomplete):
        log.warning("%s holds an incomplete run (%s); read anyway, as asked", out_dir, RUN_FILE)
    prefix = result_prefix(split)
    ignored = sorted(p.name for p in out_dir.glob(f"{prefix}*.txt") if p.stem[len(prefix):] not in classes)
    if ignored:
        log.warning("result files of classes outside the class list are ignored: %s", ignored)
    if not any(result_file(out_dir, split, name).is_file() for name in classes):
        others = sorted(p.name for p in out_dir.glob("comp4_det_*.txt"))
        raise ValueError(f"{out_dir} holds no result file {prefix}<class>.txt for any of the {len(classes)} "
                         f"classes" + (f" (it has {', '.join(others[:3])}{' ...' if len(others) > 3 else ''}: "
                                       "another split?)" if others else "")
                         + "; write them with tools/test_det.py --out")
    known = set(image_ids) if image_ids is not None else None
    detection_set = {}
    for name in classes:
        path = result_file(out_dir, split, name)
        if not path.is_file():
            log.warning("no result file %s: class %s has no detections", path, name)
            detection_set[name] = Detections.empty()
            continue
        detection_set[name] = _read_result_file(path, known)
    return detection_set


def result_classes(result_dir: str | Path, split: str, classes: Sequence[str] | None) -> Sequence[str] | None:
    """The class list of a result folder: ``classes`` if given, else its ``classes.json``'s, else
    None (the dataset's); a ``classes.json`` of another split is a ValueError."""
    recorded = read_classes_file(result_dir)
    if recorded is not None and recorded.get("split") not in (None, split):
        raise ValueError(f"{Path(result_dir) / CLASSES_FILE}: the results are of split {recorded['split']!r}, "
                         f"not {split!r}")
    if classes is None and recorded is not None:
        classes = recorded["classes"]
        log.info("classes from %s: %s", Path(result_dir) / CLASSES_FILE, classes)
    return classes


def evaluate_result_dir(
    voc_root: str | Path,
    split: str,
    result_dir: str | Path,
    classes: Sequence[str] | None = None,
    use_07_metric: bool = True,
    metrics_file: str = METRICS_FILE,
    allow_incomplete: bool = False,
) -> dict:
    """Evaluate the devkit result files in ``result_dir`` against a VOC split's GT, write
    ``result_dir/metrics_file`` (``evaluate_detection_set``'s dict plus ``"split"`` and
    ``"complete"``, NaN as null) and ``result_dir/pr_curves.json`` (``pr_curves``), and return the
    metrics.  ``classes`` defaults to the folder's ``classes.json`` (the list of the model that made
    the results), else the dataset's classes.  An incomplete folder is refused unless
    ``allow_incomplete`` (``read_result_files``)."""
    complete = check_complete(result_dir, allow_incomplete)
    dataset = load_voc(voc_root, split, result_classes(result_dir, split, classes))
    detection_set = read_result_files(
        result_dir, split, dataset.classes, image_ids=[r.image_id for r in dataset.records],
        allow_incomplete=allow_incomplete,
    )
    voc = evaluate_detections(detection_set, dataset.records, dataset.classes, use_07_metric)
    metrics = {"split": split, "complete": complete,
               **evaluate_detection_set(detection_set, dataset.records, dataset.classes, use_07_metric, voc)}
    path = Path(result_dir) / metrics_file
    write_json_atomic(path, metrics)
    write_pr_curves_json(Path(result_dir) / PR_CURVES_FILE,
                         curves_of(voc, use_07_metric))
    log.info("wrote %s (mAP %s)", path, metrics["mAP"])
    return metrics


def _percent(value: float | None) -> str:
    """An AP as a percentage with one decimal, "n/a" when undefined."""
    return "n/a" if value is None or math.isnan(value) else f"{100.0 * value:.1f}"


def format_ap_table(metrics: Mapping) -> str:
    """A per-class AP table with the mAP below and the COCO metrics beside, in percent."""
    metric = {"voc07": "VOC07 11-point", "voc10": "VOC10 area"}.get(metrics.get("metric"), "VOC")
    ap = metrics["ap"]
    width = max([len(name) for name in ap] + [len("class")])
    ap50 = metrics.get("coco_ap50")  # a COCO dataset: COCOeval's AP at IoU 0.5 per class, beside
    extra = (lambda name: f"  {_percent(ap50.get(name)):>8}") if ap50 else (lambda name: "")
    rule = "-" * (width + 8 + (10 if ap50 else 0))
    left = [f"{'class':<{width}}  {'AP':>6}" + ("  COCO AP50" if ap50 else ""), rule]
    left += [f"{name:<{width}}  {_percent(value):>6}" + extra(name) for name, value in ap.items()]
    mean50 = [v for v in (ap50 or {}).values() if v is not None]
    left += [rule, f"{'mAP':<{width}}  {_percent(metrics['mAP']):>6}"
             + (f"  {_percent(sum(mean50) / len(mean50) if mean50 else None):>8}" if ap50 else "")]
    coco = metrics.get("coco", {})
    right = ["COCO bbox", "-" * 14] + [
        f"{name:<6}  {_percent(coco[name]):>6}" for name in COCO_METRICS if name in coco
    ]
    rows = max(len(left), len(right))
    left += [""] * (rows - len(left))
    right += [""] * (rows - len(right))
    left_width = len(rule)
    table = [f"{a:<{left_width}}   |  {b}".rstrip() for a, b in zip(left, right)]
    return f"AP per class ({metric}, percent)\n" + "\n".join(table)
