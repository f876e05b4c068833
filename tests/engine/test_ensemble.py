import json

import numpy as np
import pytest

from detector.core.detections import Detections
from detector.data.demo import make_demo_dataset
from detector.data.voc import load_voc
from detector.engine.ensemble import ensemble_result_dirs
from detector.engine.merge import cap_per_image
from detector.engine.merge import merge_nms as merge_detections
from detector.evaluation.voc_eval import read_result_files, voc_ap, write_classes_file, write_result_files


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("d") / "demo", n_train=1, n_test=12, seed=5)


def _half_right(dataset, keep_image):
    """Exact GT boxes (score 1) on the images ``keep_image`` selects, a wrong box elsewhere."""
    sets = {c: [] for c in dataset.classes}
    for i, record in enumerate(dataset.records):
        for box, label in zip(record.boxes, record.labels):
            good = keep_image(i)
            shifted = box + (0 if good else np.array([box[2] - box[0], 0, box[2] - box[0], 0]))
            sets[dataset.classes[label]].append(Detections([record.image_id], np.array([0.9 if good else 0.5]),
                                                           shifted[None]))
    return {c: Detections.concat(p) if p else Detections.empty() for c, p in sets.items()}


def test_merge_beats_each_input_and_reports_them(demo, tmp_path):
    dataset = load_voc(demo, "test")
    write_result_files(tmp_path / "a", "test", _half_right(dataset, lambda i: i % 2 == 0), dataset.classes)
    write_result_files(tmp_path / "b", "test", _half_right(dataset, lambda i: i % 2 == 1), dataset.classes)
    metrics = ensemble_result_dirs(demo, "test", [tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    inputs = list(metrics["inputs"].values())
    assert metrics["mAP"] > max(inputs)
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["mAP"] == pytest.approx(metrics["mAP"])
    curves = json.loads((tmp_path / "m" / "pr_curves.json").read_text())  # the merge's curves
    for name, curve in curves["classes"].items():
        recomputed = voc_ap(np.array(curve["recall"]), np.array(curve["precision"]), curves["metric"] == "voc07")
        assert recomputed == metrics["ap"][name]
    assert (tmp_path / "m" / "pr_curves.png").stat().st_size > 10_000


def test_different_class_lists_are_refused(demo, tmp_path):
    dataset = load_voc(demo, "test")
    sets = _half_right(dataset, lambda i: True)
    write_result_files(tmp_path / "a", "test", sets, dataset.classes)
    fewer = dataset.classes[:-1]
    write_result_files(tmp_path / "b", "test", {c: sets[c] for c in fewer}, fewer)
    with pytest.raises(ValueError, match="same class list"):
        ensemble_result_dirs(demo, "test", [tmp_path / "a", tmp_path / "b"], tmp_path / "m")


def test_nms_keeps_the_best_of_overlapping_boxes_per_image():
    box = np.array([[10, 10, 50, 50]], np.float32)
    parts = [Detections(["x"], np.array([0.4]), box), Detections(["x"], np.array([0.8]), box + 1),
             Detections(["y"], np.array([0.1]), box)]
    merged = merge_detections(parts, 0.3)
    assert sorted(zip(merged.image_ids.tolist(), merged.scores.tolist())) == [("x", 0.8), ("y", 0.1)]


def test_cap_per_image_against_a_naive_sort():
    rng = np.random.default_rng(0)
    sets = {c: Detections(rng.choice(["a", "b", "c"], 50).tolist(), rng.random(50),
                          np.tile(np.array([[0, 0, 5, 5]], np.float32), (50, 1))) for c in ("p", "q")}
    capped = cap_per_image(sets, 7)
    for image in ("a", "b", "c"):
        everything = sorted((s for d in sets.values() for i, s in zip(d.image_ids, d.scores) if i == image),
                            reverse=True)
        kept = sorted((s for d in capped.values() for i, s in zip(d.image_ids, d.scores) if i == image),
                      reverse=True)
        assert kept == everything[:7]


def test_unusable_or_foreign_inputs_are_named_before_anything_is_written(demo, tmp_path):
    dataset = load_voc(demo, "test")
    sets = _half_right(dataset, lambda i: True)
    for name in ("a", "b"):
        write_result_files(tmp_path / name, "test", sets, dataset.classes)
        write_classes_file(tmp_path / name, dataset.classes, "test", demo)
    (tmp_path / "b" / "classes.json").unlink()
    (tmp_path / "b" / "metrics.json").write_text(json.dumps({"mAP": 0.5}))  # no "ap"
    with pytest.raises(ValueError, match=f"{tmp_path / 'b' / 'metrics.json'} has no per-class \"ap\""):
        ensemble_result_dirs(demo, "test", [tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    write_classes_file(tmp_path / "b", dataset.classes, "val", demo)  # results of another split
    with pytest.raises(ValueError, match=f"{tmp_path / 'b'} holds results of split 'val'"):
        ensemble_result_dirs(demo, "test", [tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    write_classes_file(tmp_path / "b", dataset.classes, "test", tmp_path / "other")  # another dataset
    with pytest.raises(ValueError, match="holds results on dataset"):
        ensemble_result_dirs(demo, "test", [tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_a_folder_twice_or_out_among_the_inputs_is_refused_before_writing(demo, tmp_path):
    dataset = load_voc(demo, "test")
    for name in ("a", "b"):
        write_result_files(tmp_path / name, "test", _half_right(dataset, lambda i: True), dataset.classes)
    before = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    (tmp_path / "link").symlink_to(tmp_path / "a")
    with pytest.raises(ValueError, match=f"result folder {tmp_path / 'link'} is given twice"):
        ensemble_result_dirs(demo, "test", [tmp_path / "a", tmp_path / "link"], tmp_path / "m")
    with pytest.raises(ValueError, match=f"--out {tmp_path / 'a'} is one of the result folders"):
        ensemble_result_dirs(demo, "test", [tmp_path / "a", tmp_path / "b"], tmp_path / "a")
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == before
    assert not (tmp_path / "m").exists()


def _merge_reference(parts, nms_iou):
    """Cross-model NMS by plain loops in float64: per image, best score first (earlier model on ties),
    a detection is kept unless a kept detection of another model overlaps it by IoU > nms_iou."""
    rows = [(float(s), k, str(i), [float(v) for v in b]) for k, part in enumerate(parts)
            for i, s, b in zip(part.image_ids, part.scores, part.boxes)]
    rows.sort(key=lambda r: (-r[0], r[1]))

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union
    kept = []
    for score, k, image, box in rows:
        if not any(j != k and other == image and iou(box, b) > nms_iou for _, j, other, b in kept):
            kept.append((score, k, image, box))
    return sorted((image, score, tuple(box)) for score, _, image, box in kept)


def test_merge_matches_a_loop_reference_and_keeps_each_models_own_overlaps():
    rng = np.random.default_rng(0)
    for trial in range(20):
        parts = []
        for _ in range(rng.integers(1, 4)):
            n = int(rng.integers(0, 30))
            xy = rng.uniform(0, 60, (n, 2))
            boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], 1).astype(np.float32)
            scores = np.round(rng.uniform(0, 1, n), 1)  # ties on purpose
            parts.append(Detections(rng.choice(["a", "b", "c"], n), scores, boxes))
        merged = merge_detections(parts, 0.3)
        got = sorted((str(i), float(s), tuple(float(v) for v in b))
                     for i, s, b in zip(merged.image_ids, merged.scores, merged.boxes))
        assert got == _merge_reference(parts, 0.3), trial
    # one model's own overlapping pair (box voting moved them together) survives the merge
    pair = Detections(["x", "x"], np.array([0.9, 0.8]), np.array([[10, 10, 50, 50], [12, 12, 52, 52]], np.float32))
    assert len(merge_detections([pair, Detections.empty()], 0.3)) == 2


def test_a_model_merged_with_itself_gives_itself_back(demo, tmp_path):
    dataset = load_voc(demo, "test")
    sets = _half_right(dataset, lambda i: i % 3 != 0)
    rng = np.random.default_rng(1)
    for name in sets:  # overlapping pairs inside one model, as box voting leaves them
        found = sets[name]
        moved = Detections(found.image_ids, found.scores * 0.5, found.boxes + rng.uniform(0, 3, found.boxes.shape))
        sets[name] = Detections.concat([found, moved])
    for folder in ("a", "copy_of_a"):
        write_result_files(tmp_path / folder, "test", sets, dataset.classes)
    metrics = ensemble_result_dirs(demo, "test", [tmp_path / "a", tmp_path / "copy_of_a"], tmp_path / "m")
    assert metrics["mAP"] == pytest.approx(metrics["inputs"][str(tmp_path / "a")])
    for name in dataset.classes:
        assert len(read_result_files(tmp_path / "m", "test", [name])[name]) == len(sets[name])
