"""What a training run and a test run leave in their folders: the training record, the
precision-recall curves, the drawn test images; and external proposals wired through testing."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from detector.core.images import load_image
from detector.data.voc import load_voc
from detector.engine.run_log import read_history
from detector.engine.test import test_detector
from detector.evaluation.voc_eval import voc_ap
from detector.model.detector import load_model


def test_training_record_is_written_and_valid(tiny_trained):
    run = tiny_trained[1]
    config = json.loads((run / "config.json").read_text())
    model = load_model(run / "model.pt")
    assert config == model.config.to_dict()  # the resolved config the model was trained with
    rows = read_history(run / "history.jsonl")
    assert rows[0]["stage"] == "run"
    tune = [r for r in rows if r["stage"] == "finetune"]
    every, iterations = config["finetune"]["history_every"], config["finetune"]["iterations"]
    assert [r["iteration"] for r in tune] == list(range(every, iterations + 1, every))
    assert all(math.isfinite(r["loss"]) and 0 <= r["fg_accuracy"] <= 1 and r["lr"] > 0 for r in tune)
    assert tune[-1]["lr"] < tune[0]["lr"]  # the schedule's step is recorded
    svm = [r for r in rows if r["stage"] == "svm"]
    assert {r["class_name"] for r in svm} <= set(model.classes) and len(svm) >= 1
    assert all(r["negatives"] >= 0 and r["seconds"] >= 0 and r["positives"] > 0 for r in svm)
    log = (run / "train.log").read_text()
    assert "SVM mining" in log and "finetune" in log
    assert (run / "training_curves.png").stat().st_size > 10_000


def test_test_run_writes_pr_curves_equal_to_its_ap_and_draws_images(tiny_trained, tmp_path, monkeypatch):
    root, run, cache = tiny_trained
    monkeypatch.setenv("SPPNET_CACHE", str(cache))
    model = load_model(run / "model.pt")
    dataset = load_voc(root, "test", classes=model.classes)
    metrics = test_detector(model, dataset, tmp_path / "out", progress=False, show_dir=tmp_path / "show", show=3)
    curves = json.loads((tmp_path / "out" / "pr_curves.json").read_text())
    assert curves["metric"] == "voc07" and set(curves["classes"]) == set(model.classes)
    for name, curve in curves["classes"].items():
        if curve["ap"] is None:
            assert metrics["ap"][name] is None
        else:
            assert voc_ap(np.array(curve["recall"]), np.array(curve["precision"]), True) == metrics["ap"][name]
    assert (tmp_path / "out" / "pr_curves.png").stat().st_size > 10_000
    drawn = sorted((tmp_path / "show").iterdir())
    assert [p.stem for p in drawn] == [r.image_id for r in dataset.records[:3]]
    for path, record in zip(drawn, dataset.records):
        height, width, _ = load_image(path).shape
        assert width == record.width and height > record.height  # the legend strip below


def test_external_proposals_are_used_by_testing_and_bad_ones_refused(tiny_trained, tmp_path, monkeypatch):
    root, run, cache = tiny_trained
    monkeypatch.setenv("SPPNET_CACHE", str(cache))
    dataset = load_voc(root, "test")
    boxes = {r.image_id: r.boxes.tolist() for r in dataset.records}  # the GT boxes: every object found
    (tmp_path / "gt.json").write_text(json.dumps(boxes))
    model = load_model(run / "model.pt", overrides={"proposals.source": str(tmp_path / "gt.json")})
    dataset = load_voc(root, "test", classes=model.classes)
    metrics = test_detector(model, dataset, tmp_path / "out", progress=False)
    detected = sum(len(d) for d in _result_lines(tmp_path / "out"))
    assert 0 < detected <= sum(len(b) for b in boxes.values()) * len(model.classes)
    assert metrics["num_images"] == len(dataset.records)
    first = dataset.records[0]
    boxes[first.image_id] = [[0, 0, first.width + 5, 10]]
    (tmp_path / "bad.json").write_text(json.dumps(boxes))
    bad = load_model(run / "model.pt", overrides={"proposals.source": str(tmp_path / "bad.json")})
    with pytest.raises(ValueError, match=f"bad.json, image id '{first.image_id}'.*outside"):
        test_detector(bad, dataset, tmp_path / "out2", progress=False)


def _result_lines(folder):
    return [p.read_text().splitlines() for p in folder.glob("comp4_det_*.txt")]


def test_a_result_folder_is_one_complete_run_or_visibly_incomplete(tiny_trained, tmp_path, monkeypatch):
    from detector.core.paths import cache_root
    from detector.data.voc import load_voc
    from detector.engine import test as test_module
    from detector.engine.test import test_detector
    from detector.model.detector import load_model, read_model_file
    root, run, cache = tiny_trained
    monkeypatch.setenv("SPPNET_CACHE", str(cache))
    model = load_model(run / "model.pt", cache_dir=cache_root(root))
    dataset = load_voc(root, "test", classes=model.classes)
    out = tmp_path / "out"
    metrics = test_detector(model, dataset, out, progress=False)
    state = json.loads((out / "run.json").read_text())
    checksum = read_model_file(run / "model.pt")["checksum"]
    assert state["status"] == "complete" and state["made_by"]["model"]["checksum"] == checksum
    assert metrics["model"] == {"path": str((run / "model.pt").resolve()), "checksum": checksum}
    assert json.loads((out / "metrics.json").read_text())["model"]["checksum"] == checksum

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(test_module, "write_result_files", disk_full)  # the next run fails mid-way
    model.source = {"path": "other.pt", "checksum": "f" * 64}
    with pytest.raises(OSError):
        test_detector(model, dataset, out, progress=False)
    state = json.loads((out / "run.json").read_text())
    assert state["status"] == "incomplete" and state["made_by"]["model"]["checksum"] == "f" * 64
    left = sorted(p.name for p in out.iterdir())
    assert left == ["classes.json", "run.json"], left  # nothing of the earlier run beside it


def test_show_errors_keeps_the_images_with_most_mistakes_worst_first():
    from detector.core.detections import ImageDetections
    from detector.core.records import ImageRecord
    from detector.engine.show import KeepForShow, mistakes

    class Sink:
        def process(self, record, found):
            pass

    def image(index, wrong):
        """An image with one GT box, found once, plus ``wrong`` false positives."""
        record = ImageRecord(f"im{index}", Path(f"im{index}.jpg"), 100, 100, np.array([[10, 10, 50, 50]], np.float32),
                             np.array([0]), np.array([False]))
        boxes = np.array([[10, 10, 50, 50]] + [[60, 60 - k, 90, 90 - k] for k in range(wrong)], np.float32)
        return record, ImageDetections(boxes, np.linspace(0.9, 0.5, len(boxes)), np.zeros(len(boxes), np.int64))

    images = [image(i, wrong) for i, wrong in enumerate([0, 3, 1, 3, 5, 0, 2])]
    assert [mistakes(r, f, 0.0) for r, f in images] == [0, 3, 1, 3, 5, 0, 2]
    worst, first = KeepForShow(Sink(), 3, 0.0, errors=True), KeepForShow(Sink(), 3)
    for record, found in images:
        worst.process(record, found)
        first.process(record, found)
    assert [r.image_id for r, _ in worst.kept] == ["im4", "im1", "im3"]  # 5, 3, 3 (the earlier first)
    assert [r.image_id for r, _ in first.kept] == ["im0", "im1", "im2"]
