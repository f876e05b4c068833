"""Choosing svm.C on a split's held-out fifth: one mining, a refit per candidate, one feature pass."""
from __future__ import annotations

import json

import pytest

from detector.cli import choose_svm_c
from detector.data.demo import make_demo_dataset


def test_the_tool_measures_every_candidate_on_the_held_out_images(tiny_trained, tmp_path, monkeypatch, capsys):
    _, run, _ = tiny_trained
    monkeypatch.setenv("SPPNET_CACHE", str(tmp_path / "cache"))
    root = make_demo_dataset(tmp_path / "demo", n_train=15, n_test=1, seed=3)  # 7, 12, 13, 14 are held out
    choose_svm_c.main(["--voc-root", str(root), "--split", "train", "--model", str(run / "model.pt"),
                       "--C", "0.01", "1", "--quiet", "--json", str(tmp_path / "c.json"), "--images", "9",
                       "--set", "svm.passes=2", "--bootstrap", "40",
                       "--test-variants", "test.box_voting=0", "test.score_threshold=-1.0,test.nms_iou=0.4"])
    out = capsys.readouterr().out
    assert "train-fit (9 images) -> train-holdout (4 images)" in out
    assert "note: the refits at C = 1 are above the mining's C = 0.1" in out  # 0.01 is below it: not named
    data = json.loads((tmp_path / "c.json").read_text())
    svms = ["SVMs as mined (C=0.1)", "SVMs after pass 1 of 2", "SVMs refit at C=0.01", "SVMs refit at C=1"]
    variants = ("test.box_voting=0", "test.score_threshold=-1.0,test.nms_iou=0.4")
    assert list(data["results"]) == ["softmax", *svms, *(f"{name} {item}" for item in variants
                                                         for name in ("softmax", *svms))]
    assert all(r["mAP"] is not None and 0 <= r["mAP"] <= 1 for r in data["results"].values())
    assert data["mining"]["images_per_pass"] == [9, 9]
    # each SVM candidate against the softmax under its own test settings, on the same 4 images
    candidates = [*svms, *(f"{name} {item}" for item in variants for name in svms)]
    assert list(data["minus_softmax"]) == candidates
    results = data["results"]
    for name, difference in data["minus_softmax"].items():
        softmax = "softmax" + next((f" {item}" for item in variants if name.endswith(item)), "")
        assert difference["observed"] == pytest.approx(100 * (results[name]["mAP"] - results[softmax]["mAP"]))
        assert difference["resamples"] <= 40 and difference["low"] <= difference["mean"] <= difference["high"]
    assert "SVMs minus the softmax under the same test settings" in out


def test_the_tool_refuses_bad_variants_before_mining(tiny_trained, monkeypatch):
    root, run, cache = tiny_trained
    monkeypatch.setenv("SPPNET_CACHE", str(cache))
    with pytest.raises(SystemExit):
        choose_svm_c.main(["--model", str(run / "model.pt"), "--test-variants", "svm.C=1"])
    with pytest.raises(SystemExit, match="box_voting"):  # named before any mining, not after it
        choose_svm_c.main(["--voc-root", str(root), "--split", "train", "--model", str(run / "model.pt"),
                           "--test-variants", "test.box_voting=7", "--quiet"])


def test_the_tool_refuses_a_split_without_held_out_images(tiny_trained, monkeypatch):
    root, run, cache = tiny_trained
    monkeypatch.setenv("SPPNET_CACHE", str(cache))
    with pytest.raises(SystemExit, match="leaves no image in its holdout part"):
        choose_svm_c.main(["--voc-root", str(root), "--split", "train", "--model", str(run / "model.pt"), "--quiet"])


def test_a_grid_mines_every_value_from_one_feature_pass(tiny_trained, tmp_path, monkeypatch, capsys):
    _, run, _ = tiny_trained
    monkeypatch.setenv("SPPNET_CACHE", str(tmp_path / "cache"))
    root = make_demo_dataset(tmp_path / "demo", n_train=15, n_test=1, seed=3)
    computed = []
    from detector.engine import train as train_module
    real = train_module.image_features
    monkeypatch.setattr(train_module, "image_features",
                        lambda model, record, boxes, stage, **kw: computed.append(stage) or real(model, record, boxes,
                                                                                                 stage, **kw))
    # the same setting spelt twice: the first mining records the features, the second replays them
    choose_svm_c.main(["--voc-root", str(root), "--split", "train", "--model", str(run / "model.pt"), "--quiet",
                       "--json", str(tmp_path / "g.json"), "--images", "9", "--grid", "svm.neg_iou=0.3,0.30,0.2"])
    data = json.loads((tmp_path / "g.json").read_text())
    names = ["SVMs svm.neg_iou=0.3 as mined (C=0.1)", "SVMs svm.neg_iou=0.30 as mined (C=0.1)",
             "SVMs svm.neg_iou=0.2 as mined (C=0.1)"]
    assert list(data["results"]) == ["softmax", *names]
    first, again, lower = (data["mining"][f"svm.neg_iou={v}"] for v in ("0.3", "0.30", "0.2"))
    def untimed(stats):
        return [{k: v for k, v in c.items() if "seconds" not in k} for c in stats["classes"]]

    assert untimed(first) == untimed(again)  # replayed features == recorded ones, to the bit
    assert data["results"][names[0]] == data["results"][names[1]]
    assert untimed(first) != untimed(lower)  # the grid's values do reach the mining
    assert computed.count("SVMs") == 9  # one pass of the negatives' features for three minings
    assert not list((tmp_path / "cache").glob("choose_svm_*"))  # the feature file is removed


def test_the_grid_refuses_what_it_cannot_share(tiny_trained, monkeypatch):
    root, run, cache = tiny_trained
    monkeypatch.setenv("SPPNET_CACHE", str(cache))
    for grid in ("svm.features=fc7,pool5", "svm.scales=224,288", "test.nms_iou=0.3,0.4", "svm.neg_iou"):
        with pytest.raises(SystemExit):
            choose_svm_c.main(["--voc-root", str(root), "--split", "train", "--model", str(run / "model.pt"),
                               "--grid", grid, "--quiet"])
    with pytest.raises(SystemExit, match="neg_iou"):  # a bad value is named before any mining
        choose_svm_c.main(["--voc-root", str(root), "--split", "train", "--model", str(run / "model.pt"),
                           "--grid", "svm.neg_iou=0.3,7", "--quiet"])


def test_test_scales_set_the_scales_of_the_held_out_windows(tiny_trained, tmp_path, monkeypatch):
    _, run, _ = tiny_trained
    monkeypatch.setenv("SPPNET_CACHE", str(tmp_path / "cache"))
    root = make_demo_dataset(tmp_path / "demo", n_train=15, n_test=1, seed=3)
    from detector.analysis import svm_choice
    real, seen = svm_choice.window_features, []
    monkeypatch.setattr(svm_choice, "window_features",
                        lambda *a, scales=None, **kw: seen.append(tuple(scales)) or real(*a, scales=scales, **kw))
    choose_svm_c.main(["--voc-root", str(root), "--split", "train", "--model", str(run / "model.pt"), "--quiet",
                       "--images", "2", "--C", "0.1", "--bootstrap", "0", "--set", "test.scales=288"])
    assert seen == [(288,)] * 4  # the 4 held-out images, each scored once at the scales set
    with pytest.raises(SystemExit):
        choose_svm_c.main(["--voc-root", str(root), "--split", "train", "--model", str(run / "model.pt"),
                           "--set", "test.nms_iou=0.4", "--quiet"])
