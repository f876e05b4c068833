"""VOC evaluation against hand-computed cases and a naive devkit-loop reference, result files,
COCO metrics and ``tools/test_det.py --eval-only`` end to end.

Boxes in the cases are written as VOC 1-based inclusive coordinates (as in the devkit) and
turned into our continuous boxes with ``voc_to_boxes``.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.core.boxes import boxes_to_voc, iou_matrix, voc_to_boxes
from detector.core.detections import Detections
from detector.core.records import ImageRecord
from detector.data.voc import write_voc_annotation
from detector.evaluation.coco_eval import COCO_METRICS, coco_metrics, detections_to_coco_json
from detector.evaluation.evaluator import VOCEvaluator
from detector.evaluation.voc_eval import (
    evaluate_class,
    evaluate_detection_set,
    evaluate_detections,
    format_ap_table,
    match_image,
    read_result_files,
    result_file,
    voc_ap,
    write_classes_file,
    write_pr_curves_json,
    write_result_files,
)

REPO = Path(__file__).resolve().parents[2]


def record(image_id: str, objects=(), width: int = 100, height: int = 100) -> ImageRecord:
    """An image with ``objects`` = ``(label, (xmin, ymin, xmax, ymax) VOC, difficult)``."""
    labels = [o[0] for o in objects]
    voc = [o[1] for o in objects]
    difficult = [o[2] for o in objects]
    return ImageRecord(image_id, Path(f"{image_id}.jpg"), width, height,
                       voc_to_boxes(np.array(voc).reshape(-1, 4)),
                       np.array(labels, dtype=np.int64), np.array(difficult, dtype=bool))


def detections(rows) -> Detections:
    """Detections from ``(image_id, score, (xmin, ymin, xmax, ymax) VOC)`` rows."""
    if not rows:
        return Detections.empty()
    return Detections([r[0] for r in rows], [r[1] for r in rows],
                      voc_to_boxes(np.array([r[2] for r in rows])))


# ---------------------------------------------------------------------------------------------
# Hand-computed cases


def test_difficult_match_is_neither_tp_nor_fp():
    # GT: a non-difficult box and a difficult one; npos = 1.
    # Ranked: 0.9 hits the difficult box (ignored: tp = fp = 0), 0.8 hits the real box (TP),
    # 0.7 hits nothing (FP).  Cumulative tp 0,1,1 / fp 0,0,1 -> recall 0,1,1, precision
    # 0 (nothing counted yet), 1, 1/2.  Every recall threshold is reached with precision 1,
    # so AP = 1 for both metrics.  (Were the difficult hit a FP, AP would be 0.5.)
    records = [record("a", [(0, (1, 1, 10, 10), False), (0, (51, 51, 60, 60), True)])]
    dets = detections([("a", 0.9, (51, 51, 60, 60)), ("a", 0.8, (1, 1, 10, 10)),
                       ("a", 0.7, (80, 80, 90, 90))])
    result = evaluate_class(dets, records, 0)
    assert result.npos == 1
    np.testing.assert_array_equal(result.recall, [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(result.precision, [0.0, 1.0, 0.5])
    assert result.ap == pytest.approx(1.0)
    assert evaluate_class(dets, records, 0, use_07_metric=False).ap == pytest.approx(1.0)


def test_duplicate_detection_is_fp_and_11_point_differs_from_area():
    # Two GT boxes, npos = 2.  0.9 exact on GT0 (TP), 0.8 on GT0 again (IoU 0.9, already
    # taken: FP), 0.7 exact on GT1 (TP).  recall 1/2, 1/2, 1; precision 1, 1/2, 2/3.
    # 11-point: thresholds 0..0.5 (6 of them) reach precision 1, thresholds 0.6..1.0 (5) only
    # the last point, 2/3: AP = (6 + 5 * 2/3) / 11 = 28/33.
    # Area: envelope 1 on recall (0, 1/2], 2/3 on (1/2, 1]: AP = 1/2 + 1/3 = 5/6.
    records = [record("a", [(0, (1, 1, 10, 10), False), (0, (21, 21, 30, 30), False)])]
    dets = detections([("a", 0.9, (1, 1, 10, 10)), ("a", 0.8, (2, 1, 10, 10)), ("a", 0.7, (21, 21, 30, 30))])
    result = evaluate_class(dets, records, 0)
    np.testing.assert_allclose(result.recall, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(result.precision, [1.0, 0.5, 2 / 3])
    assert result.ap == pytest.approx(28 / 33)
    assert evaluate_class(dets, records, 0, use_07_metric=False).ap == pytest.approx(5 / 6)


def test_match_goes_to_best_gt_even_when_taken():
    # GT0 = (1,1,10,10) (area 100), GT1 = (1,1,10,20) (area 200).  0.9 exact on GT0: TP.
    # 0.8 = (1,1,10,12) (area 120): IoU 100/120 with GT0, 120/200 = 0.6 with GT1.  The devkit
    # takes the best GT only, GT0, already taken: FP although GT1 is free.
    # recall 1/2, 1/2; precision 1, 1/2 -> 11-point AP = 6/11 (thresholds 0..0.5 reach 1).
    records = [record("a", [(0, (1, 1, 10, 10), False), (0, (1, 1, 10, 20), False)])]
    dets = detections([("a", 0.9, (1, 1, 10, 10)), ("a", 0.8, (1, 1, 10, 12))])
    result = evaluate_class(dets, records, 0)
    np.testing.assert_allclose(result.precision, [1.0, 0.5])
    assert result.ap == pytest.approx(6 / 11)


def test_image_without_gt_gives_fp():
    # Image "b" has no cat (only a dog exactly where the cat detection is).  Ranked: 0.9 on b
    # (FP), 0.8 exact on a's cat (TP).  recall 0, 1; precision 0, 1/2: every threshold reaches
    # precision 1/2 -> AP 0.5 (area: 1 * 1/2 = 0.5 too).
    records = [record("a", [(0, (1, 1, 10, 10), False)]), record("b", [(1, (1, 1, 10, 10), False)]),
               record("c")]
    dets = detections([("b", 0.9, (1, 1, 10, 10)), ("a", 0.8, (1, 1, 10, 10))])
    assert evaluate_class(dets, records, 0).ap == pytest.approx(0.5)
    assert evaluate_class(dets, records, 0, use_07_metric=False).ap == pytest.approx(0.5)
    # An image with no objects at all: the same.
    dets = detections([("c", 0.9, (1, 1, 10, 10)), ("a", 0.8, (1, 1, 10, 10))])
    assert evaluate_class(dets, records, 0).ap == pytest.approx(0.5)


def test_iou_boundary_uses_plus_one_convention():
    # GT (1,1,10,10) is 10 x 10 = 100 pixels.  Detection (1,1,10,5) is 10 x 5 = 50 pixels,
    # all inside: devkit IoU = 50 / 100 = 0.5 exactly -> TP (>= 0.5), AP 1.
    # Without the +1 the boxes would be 9 x 9 and 9 x 4: IoU 36/81 = 0.44 -> FP.
    # (1,1,10,4) has devkit IoU 40/100 = 0.4 -> FP, AP 0.
    records = [record("a", [(0, (1, 1, 10, 10), False)])]
    assert iou_matrix(voc_to_boxes([1, 1, 10, 5]), voc_to_boxes([1, 1, 10, 10]))[0, 0] == 0.5
    assert evaluate_class(detections([("a", 1.0, (1, 1, 10, 5))]), records, 0).ap == pytest.approx(1.0)
    assert evaluate_class(detections([("a", 1.0, (1, 1, 10, 4))]), records, 0).ap == 0.0


def test_tied_scores_keep_row_order():
    # Equal scores are ranked in row order (stable sort).  [FP, TP]: precision 0, 1/2 ->
    # AP 0.5; [TP, FP]: precision 1, 1/2 at recall 1 -> AP 1.
    records = [record("a", [(0, (1, 1, 10, 10), False)])]
    miss, hit = ("a", 0.5, (50, 50, 60, 60)), ("a", 0.5, (1, 1, 10, 10))
    assert evaluate_class(detections([miss, hit]), records, 0).ap == pytest.approx(0.5)
    assert evaluate_class(detections([hit, miss]), records, 0).ap == pytest.approx(1.0)


def test_voc_ap_11_point_and_area_on_one_curve():
    # recall 1/4, 1/2, 1/2, 3/4 with precision 1, 1, 2/3, 3/4.
    # 11-point: t = 0, .1, .2 -> 1; t = .3, .4, .5 -> 1 (the point at recall 1/2);
    # t = .6, .7 -> 3/4; t = .8, .9, 1 -> 0 (recall never reached).  AP = 7.5 / 11.
    # Area: envelope 1 on (0, 1/2], 3/4 on (1/2, 3/4], 0 beyond: 1/2 + 3/16 = 0.6875.
    recall = np.array([0.25, 0.5, 0.5, 0.75])
    precision = np.array([1.0, 1.0, 2 / 3, 0.75])
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx(7.5 / 11)
    assert voc_ap(recall, precision, use_07_metric=False) == pytest.approx(0.6875)
    # No detections: AP 0 either way.
    assert voc_ap(np.zeros(0), np.zeros(0), True) == 0.0
    assert voc_ap(np.zeros(0), np.zeros(0), False) == 0.0


def test_voc_ap_11_point_thresholds_are_exact_tenths():
    # Recall exactly 3/10 reaches the thresholds 0, .1, .2 and .3: AP = 4/11
    # (np.arange(0, 1.1, 0.1)[3] is 0.30000000000000004 and would give 3/11).
    assert voc_ap(np.array([3 / 10]), np.array([1.0]), use_07_metric=True) == pytest.approx(4 / 11)


def test_missing_class_and_class_without_positives():
    # cat: one exact hit on its only GT -> AP 1.  dog: GT but no detections -> AP 0.
    # bird: no GT (only a difficult one) -> npos 0 -> AP NaN, left out: mAP = (1 + 0) / 2.
    records = [record("a", [(0, (1, 1, 10, 10), False), (1, (30, 30, 50, 50), False),
                            (2, (60, 60, 80, 80), True)])]
    detection_set = {"cat": detections([("a", 0.9, (1, 1, 10, 10))]),
                     "bird": detections([("a", 0.3, (60, 60, 80, 80)), ("a", 0.2, (5, 5, 9, 9))])}
    result = evaluate_detections(detection_set, records, ["cat", "dog", "bird"])
    assert result.ap["cat"] == pytest.approx(1.0)
    assert result.ap["dog"] == 0.0
    assert math.isnan(result.ap["bird"])
    assert result.mAP == pytest.approx(0.5)
    bird = evaluate_class(detection_set["bird"], records, 2)
    assert bird.npos == 0 and np.isnan(bird.recall).all()


def test_bad_input_is_refused():
    records = [record("a", [(0, (1, 1, 10, 10), False)])]
    with pytest.raises(ValueError, match="'zzz'"):
        evaluate_class(detections([("zzz", 0.9, (1, 1, 10, 10))]), records, 0)
    with pytest.raises(ValueError, match="horse"):
        evaluate_detections({"horse": Detections.empty()}, records, ["cat"])
    with pytest.raises(ValueError, match="non-finite score"):
        Detections(["a"], [math.nan], np.zeros((1, 4)))
    with pytest.raises(ValueError, match="2 scores"):
        Detections(["a"], [1.0, 2.0], np.zeros((1, 4)))


def test_detections_concat_and_empty():
    a = detections([("a", 0.9, (1, 1, 10, 10))])
    b = detections([("b", 0.1, (2, 2, 5, 5)), ("c", 0.2, (3, 3, 4, 4))])
    both = Detections.concat([a, Detections.empty(), b])
    assert both.image_ids.tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(both.scores, [0.9, 0.1, 0.2])
    assert both.boxes.dtype == np.float32 and both.boxes.shape == (3, 4)
    assert len(Detections.concat([])) == 0 and Detections.empty().boxes.shape == (0, 4)


# ---------------------------------------------------------------------------------------------
# Against a naive reference: the devkit's loop, literally, in Python floats


def reference_class(rows, records, class_index, use_07_metric):
    """``(ap, recall, precision, npos)`` by the devkit's loop; rows are (id, score, VOC box)."""
    gt = {r.image_id: [(list(boxes_to_voc(b)[0]), bool(d)) for b, l, d in zip(r.boxes, r.labels, r.difficult)
                       if l == class_index] for r in records}
    npos = sum(not d for boxes in gt.values() for _, d in boxes)
    taken = {image_id: [False] * len(boxes) for image_id, boxes in gt.items()}
    order = sorted(range(len(rows)), key=lambda i: -rows[i][1])  # Python's sort is stable
    tp, fp = [], []
    for i in order:
        image_id, _, bb = rows[i]
        ovmax, jmax = -math.inf, -1
        for j, (g, _) in enumerate(gt[image_id]):
            iw = min(bb[2], g[2]) - max(bb[0], g[0]) + 1
            ih = min(bb[3], g[3]) - max(bb[1], g[1]) + 1
            if iw > 0 and ih > 0:
                ua = ((bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)
                      + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - iw * ih)
                if iw * ih / ua > ovmax:
                    ovmax, jmax = iw * ih / ua, j
        if ovmax >= 0.5:
            if gt[image_id][jmax][1]:
                tp.append(0), fp.append(0)
            elif not taken[image_id][jmax]:
                taken[image_id][jmax] = True
                tp.append(1), fp.append(0)
            else:
                tp.append(0), fp.append(1)
        else:
            tp.append(0), fp.append(1)
    ctp = np.cumsum(tp, dtype=np.float64)
    cfp = np.cumsum(fp, dtype=np.float64)
    precision = [t / (t + f) if t + f > 0 else 0.0 for t, f in zip(ctp, cfp)]
    if npos == 0:
        return math.nan, None, precision, 0
    recall = [t / npos for t in ctp]
    if use_07_metric:
        ap = 0.0
        for k in range(11):
            ap += max([p for p, r in zip(precision, recall) if r >= k / 10], default=0.0) / 11
    else:
        mrec, mpre = [0.0] + recall + [1.0], [0.0] + precision + [0.0]
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
        ap = sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])
    return ap, recall, precision, npos


def random_case(rng: np.random.Generator):
    """Records with random GT of 3 classes and random detections: jittered GT copies (so IoU
    falls on both sides of 0.5), pure noise, and scores on a coarse grid (ties)."""
    records, rows = [], {k: [] for k in range(3)}
    for i in range(25):
        n = int(rng.integers(0, 5))
        xy = rng.integers(1, 60, size=(n, 2))
        wh = rng.integers(5, 40, size=(n, 2))
        voc = np.concatenate([xy, xy + wh], axis=1).astype(float)
        objects = [(int(rng.integers(0, 3)), tuple(b), bool(rng.random() < 0.2)) for b in voc]
        records.append(record(f"img{i:02d}", objects))
        for label, box, _ in objects:
            for _ in range(int(rng.integers(0, 4))):
                jitter = rng.integers(-8, 9, size=4) / 2.0  # half pixels stay exact in float32
                k = label if rng.random() < 0.8 else int(rng.integers(0, 3))
                score = float(np.round(rng.random(), 1))
                rows[k].append((f"img{i:02d}", score, tuple(np.array(box) + jitter)))
        for _ in range(int(rng.integers(0, 3))):
            xy = rng.integers(1, 70, size=2)
            box = tuple(np.concatenate([xy, xy + rng.integers(3, 30, size=2)]).astype(float))
            rows[int(rng.integers(0, 3))].append((f"img{i:02d}", float(np.round(rng.random(), 1)), box))
    return records, rows


@pytest.mark.parametrize("seed", range(6))
def test_evaluate_class_matches_naive_reference(seed):
    rng = np.random.default_rng(seed)
    records, rows = random_case(rng)
    for k in range(3):
        for use_07 in (True, False):
            result = evaluate_class(detections(rows[k]), records, k, use_07_metric=use_07)
            ap, recall, precision, npos = reference_class(rows[k], records, k, use_07)
            assert result.npos == npos
            np.testing.assert_allclose(result.precision, precision, rtol=0, atol=1e-12)
            if npos == 0:
                assert math.isnan(result.ap)
            else:
                np.testing.assert_allclose(result.recall, recall, rtol=0, atol=1e-12)
                assert result.ap == pytest.approx(ap, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Result files


def test_result_file_format_and_round_trip(tmp_path):
    records, rows = random_case(np.random.default_rng(7))
    classes = ["cat", "dog", "bird"]
    rng = np.random.default_rng(8)
    detection_set = {}
    for k, name in enumerate(classes):
        dets = detections(rows[k])
        # Arbitrary float scores and boxes, not just grid values.
        detection_set[name] = Detections(dets.image_ids, rng.normal(size=len(dets)),
                                         dets.boxes + rng.random(dets.boxes.shape).astype(np.float32))
    detection_set["dog"] = Detections.empty()
    paths = write_result_files(tmp_path, "val", detection_set, classes)
    assert [p.name for p in paths] == [f"comp4_det_val_{c}.txt" for c in classes]
    assert paths[1].read_text() == ""

    ids = [r.image_id for r in records]
    read = read_result_files(tmp_path, "val", classes, image_ids=ids)
    for name in classes:
        assert read[name].image_ids.tolist() == detection_set[name].image_ids.tolist()
        np.testing.assert_array_equal(read[name].scores, detection_set[name].scores)  # exact
        np.testing.assert_allclose(read[name].boxes, detection_set[name].boxes, rtol=0, atol=1e-4)
    assert (evaluate_detections(read, records, classes).ap
            == pytest.approx(evaluate_detections(detection_set, records, classes).ap, nan_ok=True))
    # Writing what was read reproduces the files byte for byte.
    again = tmp_path / "again"
    write_result_files(again, "val", read, classes)
    for name in classes:
        assert result_file(again, "val", name).read_text() == result_file(tmp_path, "val", name).read_text()

    # One line, by hand: continuous box (0, 0, 10, 10) is VOC (1, 1, 10, 10).
    one = {"cat": Detections(["000001"], [0.5], [[0, 0, 10, 10]])}
    write_result_files(tmp_path / "one", "val", one, ["cat"])
    assert result_file(tmp_path / "one", "val", "cat").read_text() == "000001 0.5 1.0 1.0 10.0 10.0\n"


def test_missing_result_file_gives_ap_zero(tmp_path, caplog):
    records = [record("a", [(0, (1, 1, 10, 10), False), (1, (30, 30, 50, 50), False)])]
    write_result_files(tmp_path, "val", {"cat": detections([("a", 0.9, (1, 1, 10, 10))])}, ["cat"])
    read = read_result_files(tmp_path, "val", ["cat", "dog"], image_ids=["a"])
    assert len(read["dog"]) == 0
    assert "comp4_det_val_dog.txt" in caplog.text
    result = evaluate_detections(read, records, ["cat", "dog"])
    assert result.ap == {"cat": pytest.approx(1.0), "dog": 0.0}


@pytest.mark.parametrize("bad_line, message", [
    ("000002 0.5 1 2 3", "5 fields"),
    ("000002 high 1 2 3 4", "could not convert"),
    ("000002 nan 1 2 3 4", "non-finite"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad_line, message):
    path = result_file(tmp_path, "val", "cat")
    path.write_text(f"000001 0.9 1 1 10 10\n{bad_line}\n")
    with pytest.raises(ValueError, match=rf"comp4_det_val_cat\.txt:2: .*{message}"):
        read_result_files(tmp_path, "val", ["cat"])


def test_unknown_image_id_in_result_file(tmp_path):
    result_file(tmp_path, "val", "cat").write_text("000001 0.9 1 1 10 10\n\n000777 0.5 1 1 5 5\n")
    with pytest.raises(ValueError, match=r"comp4_det_val_cat\.txt:3: image id '000777'"):
        read_result_files(tmp_path, "val", ["cat"], image_ids=["000001"])
    assert len(read_result_files(tmp_path, "val", ["cat"])["cat"]) == 2  # no id list: not checked


# ---------------------------------------------------------------------------------------------
# COCO metrics


def coco_case():
    records = [record("a", [(0, (1, 1, 40, 40), False), (1, (50, 50, 99, 90), False)]),
               record("b", [(0, (10, 20, 60, 80), False), (0, (70, 70, 80, 80), True)]),
               record("c")]
    return records, ["cat", "dog"]


def test_coco_perfect_detections_give_ap_one():
    records, classes = coco_case()
    perfect = {name: Detections.concat(
        Detections([r.image_id], [1.0], r.boxes[i:i + 1]) for r in records for i in range(len(r.boxes))
        if r.labels[i] == k and not r.difficult[i]) for k, name in enumerate(classes)}
    metrics = coco_metrics(perfect, records, classes)
    assert set(metrics) == set(COCO_METRICS)
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(1.0)
    assert metrics["AR100"] == pytest.approx(1.0)


def test_coco_no_detections_give_zero():
    records, classes = coco_case()
    metrics = coco_metrics({}, records, classes)
    assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0 and metrics["AR100"] == 0.0


def test_detections_to_coco_json():
    records, classes = coco_case()
    out = detections_to_coco_json({"dog": detections([("a", 0.25, (50, 50, 99, 90))])}, records, classes)
    # VOC (50, 50, 99, 90) is the continuous box (49, 49, 99, 90): 50 x 41 pixels.
    assert out == [{"image_id": "a", "file_name": "a.jpg", "category_id": 2, "category": "dog",
                    "bbox": [49.0, 49.0, 50.0, 41.0], "score": 0.25}]


def test_metrics_dict_and_table():
    records, classes = coco_case()
    metrics = evaluate_detection_set({"cat": detections([("a", 0.9, (1, 1, 40, 40))])}, records,
                                     classes + ["bird"])
    # cat: 1 of 2 positives found, precision 1 -> 11-point AP 6/11; dog 0; bird n/a.
    assert metrics["ap"] == {"cat": pytest.approx(6 / 11), "dog": 0.0, "bird": None}
    assert metrics["mAP"] == pytest.approx(3 / 11)
    json.dumps(metrics, allow_nan=False)
    table = format_ap_table(metrics)
    assert "54.5" in table and "n/a" in table and "27.3" in table and "AP50" in table


# ---------------------------------------------------------------------------------------------
# tools/test_det.py --eval-only, end to end


def make_tiny_voc(root: Path) -> None:
    """Two 64 x 48 images: 'one' with a cat, 'two' with a dog; split 'val'."""
    for image_id, objects in (("one", [("cat", (1, 1, 20, 20), 0)]), ("two", [("dog", (5, 5, 30, 30), 0)])):
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), np.zeros((48, 64, 3), np.uint8))
        write_voc_annotation(root / "Annotations" / f"{image_id}.xml", image_id, f"{image_id}.jpg",
                             64, 48, objects)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "val.txt").write_text("one\ntwo\n")


def test_test_det_eval_only_end_to_end(tmp_path):
    root, results = tmp_path / "VOC", tmp_path / "results"
    make_tiny_voc(root)
    results.mkdir()
    # cat: 0.9 exact on the cat (TP), 0.8 on image 'two' without cats (FP) -> AP 1 (precision 1
    # at recall 1).  dog: no file -> AP 0.  bird: no GT -> null.  mAP = (1 + 0) / 2.
    result_file(results, "val", "cat").write_text("one 0.9 1 1 20 20\ntwo 0.8 5 5 30 30\n")
    completed = subprocess.run(
        [sys.executable, "tools/test_det.py", "--voc-root", str(root), "--split", "val",
         "--eval-only", str(results), "--classes", "cat", "dog", "bird"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    metrics = json.loads((results / "metrics_eval.json").read_text())
    assert metrics["split"] == "val" and metrics["metric"] == "voc07" and metrics["num_images"] == 2
    assert metrics["ap"] == {"cat": pytest.approx(1.0), "dog": 0.0, "bird": None}
    assert metrics["mAP"] == pytest.approx(0.5)
    assert set(metrics["coco"]) == set(COCO_METRICS)
    assert metrics["coco"]["AP50"] == pytest.approx(0.5)  # cat 1, dog 0
    assert "n/a" in completed.stdout and "50.0" in completed.stdout


def test_test_det_compares_two_result_folders(tmp_path, capsys):
    root, results, other = tmp_path / "VOC", tmp_path / "results", tmp_path / "other"
    make_tiny_voc(root)
    results.mkdir()
    other.mkdir()
    result_file(results, "val", "cat").write_text("one 0.9 1 1 20 20\ntwo 0.8 5 5 30 30\n")  # cat AP 1
    result_file(other, "val", "cat").write_text("one 0.9 1 1 20 20\ntwo 0.95 5 5 30 30\n")  # FP first: AP 0.5
    load_tool().main(["--voc-root", str(root), "--split", "val", "--eval-only", str(results),
                      "--classes", "cat", "dog", "bird", "--compare", str(other), "--resamples", "20"])
    out = capsys.readouterr().out
    assert f"{results} minus {other}, mAP points over 2 images: +25.0 (" in out  # cat +50, dog 0: mean of two
    assert "cat +50.0 [" in out and "dog +0.0 [" in out and "bird" not in out.split("per class")[-1]
    assert "by the images alone, every class level: some class more than 5 AP behind in " in out
    with pytest.raises(SystemExit):
        load_tool().parse_args(["--model", "m.pt", "--out", "o", "--compare", str(other)])
    assert "--compare needs --eval-only" in capsys.readouterr().err
    write_classes_file(results, ["cat", "dog", "bird"], "val", root)
    write_classes_file(other, ["cat", "dog"], "val", root)  # another model's class list: refused by name
    with pytest.raises(SystemExit, match=f"{other} was made for classes"):
        load_tool().main(["--voc-root", str(root), "--split", "val", "--eval-only", str(results),
                          "--compare", str(other)])
    write_classes_file(other, ["cat", "dog", "bird"], "train", root)  # another split
    with pytest.raises(SystemExit, match="split 'train', not 'val'"):
        load_tool().main(["--voc-root", str(root), "--split", "val", "--eval-only", str(results),
                          "--compare", str(other)])


def load_tool():
    """The module behind tools/test_det.py and the sppnet-test entry point."""
    from detector.cli import test_det
    return test_det


def test_test_det_needs_a_model_or_eval_only(capsys):
    with pytest.raises(SystemExit):
        load_tool().parse_args(["--voc-root", "x", "--split", "val"])
    assert "--model MODEL --out DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_tool().parse_args(["--eval-only", "results"])
    assert "--eval-only needs --voc-root and --split" in capsys.readouterr().err


def test_test_det_reports_bad_input(tmp_path):
    root = tmp_path / "VOC"
    make_tiny_voc(root)
    with pytest.raises(SystemExit, match="result folder .*missing not found"):
        load_tool().main(["--voc-root", str(root), "--split", "val", "--eval-only", str(tmp_path / "missing")])


# ---------------------------------------------------------------------------------------------
# Precision-recall curves and per-image matching (what the plots and drawn pictures use)


@pytest.mark.parametrize("use_07", [True, False])
def test_ap_recomputed_from_pr_curves_json_equals_the_evaluators(tmp_path, use_07):
    records, rows = random_case(np.random.default_rng(11))
    classes = ["a", "b", "c", "never"]
    evaluator = VOCEvaluator(classes, use_07, coco=False)
    evaluator.process_set(records, {classes[k]: detections(rows[k]) for k in range(3)})
    metrics = evaluator.evaluate()
    write_pr_curves_json(tmp_path / "pr_curves.json", evaluator.pr_curves())
    curves = json.loads((tmp_path / "pr_curves.json").read_text())
    assert curves["metric"] == metrics["metric"] == ("voc07" if use_07 else "voc10")
    for name in classes[:3]:
        curve = curves["classes"][name]
        assert len(curve["precision"]) == len(curve["recall"]) == len(rows[classes.index(name)])
        recomputed = voc_ap(np.array(curve["recall"]), np.array(curve["precision"]), curves["metric"] == "voc07")
        assert recomputed == metrics["ap"][name] == curve["ap"]
    assert curves["classes"]["never"] == {"ap": None, "npos": 0, "precision": [], "recall": []}


def test_match_image_agrees_with_the_evaluation(seed=4):
    records, rows = random_case(np.random.default_rng(seed))
    totals = np.zeros(3)
    for record_ in records:
        found = [(k, r) for k in range(3) for r in rows[k] if r[0] == record_.image_id]
        boxes = voc_to_boxes(np.array([r[2] for _, r in found]).reshape(-1, 4))
        scores = np.array([r[1] for _, r in found], np.float64)
        labels = np.array([k for k, _ in found], np.int64)
        match = match_image(record_, boxes, scores, labels)
        assert not (match.tp & match.ignored).any()
        usable = ~record_.difficult
        assert match.missed.sum() == usable.sum() - match.tp.sum()  # each TP takes one usable GT
        totals += np.bincount(labels[match.tp], minlength=3)
    for k in range(3):
        result = evaluate_class(detections(rows[k]), records, k)
        assert totals[k] == (round(result.recall[-1] * result.npos) if len(rows[k]) else 0)


def test_a_folder_without_any_result_file_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path} holds no result file comp4_det_val_<class>.txt for any of the 2"):
        read_result_files(tmp_path, "val", ["cat", "dog"], image_ids=["a"])
    write_result_files(tmp_path, "test", {"cat": Detections.empty()}, ["cat"])  # another split's
    with pytest.raises(ValueError, match="comp4_det_test_cat.txt: another split"):
        read_result_files(tmp_path, "val", ["cat", "dog"], image_ids=["a"])
