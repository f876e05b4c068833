"""train_det.py --calibrate: a twin trained on the split's -fit part, tested on its -holdout part,
the maps fitted on its detections and kept in model.pt; a test then writes calibrated scores."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TRAINED_TINY

from detector.cli import calibrate as calibrate_tool
from detector.config import make_config
from detector.core.paths import cache_root
from detector.data.demo import make_demo_dataset
from detector.data.voc import load_voc
from detector.engine.test import test_detector
from detector.engine.train import train_detector
from detector.evaluation.voc_eval import read_result_files
from detector.model.detector import load_model, read_model_file


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("SPPNET_CACHE", str(cache))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = make_demo_dataset(cache / "demo", n_train=20, n_test=4, seed=11)
        run = tmp_path_factory.mktemp("run")
        config = make_config("cpu", {**TRAINED_TINY, "calibration": "platt"})
        train_detector(load_voc(root, "train"), config, run, progress=False)
        yield root, run, cache
    finally:
        torch.set_num_threads(threads)
        patch.undo()


def test_the_model_keeps_maps_fitted_on_its_twins_held_out_detections(calibrated_run):
    root, run, _ = calibrated_run
    state = read_model_file(run / "model.pt")
    assert state["calibration"]["method"] == "platt"
    source = state["calibration"]["source"]
    assert source["split"] == "train-holdout" and source["results"] == str((run / "calibration" / "holdout").resolve())
    twin = read_model_file(run / "calibration" / "model.pt")
    assert "calibration" not in twin and source["made_by"] == twin["checksum"]
    holdout = {r.image_id for r in load_voc(root, "train-holdout").records}
    fit = {r.image_id for r in load_voc(root, "train-fit").records}
    assert holdout and fit and not holdout & fit
    # the model itself is the one training on all of train: its stages are not the twin's
    assert state["stages"]["finetune"]["inputs"]["training_data"] != twin["stages"]["finetune"]["inputs"]["training_data"]


def test_a_test_writes_the_calibrated_scores_beside_the_raw_ones(calibrated_run, tmp_path, monkeypatch):
    root, run, cache = calibrated_run
    monkeypatch.setenv("SPPNET_CACHE", str(cache))
    model = load_model(run / "model.pt", cache_dir=cache_root(root))
    dataset = load_voc(root, "test", model.classes)
    test_detector(model, dataset, tmp_path / "t", progress=False)
    raw = read_result_files(tmp_path / "t", "test", model.classes)
    calibrated = read_result_files(tmp_path / "t" / "calibrated", "test", model.classes)
    for name in model.classes:
        assert np.allclose(calibrated[name].scores, model.calibration.apply(name, raw[name].scores), atol=1e-6)
        assert np.array_equal(calibrated[name].boxes, raw[name].boxes)
    assert json.loads((tmp_path / "t" / "calibrated" / "run.json").read_text())["status"] == "complete"


def test_a_rerun_reuses_the_twin_and_its_held_out_results(calibrated_run, caplog):
    root, run, cache = calibrated_run
    patch = pytest.MonkeyPatch()
    patch.setenv("SPPNET_CACHE", str(cache))
    stamp = (run / "calibration" / "holdout" / "run.json").stat().st_mtime_ns
    try:
        with caplog.at_level("INFO"):
            train_detector(load_voc(root, "train"), make_config("cpu", {**TRAINED_TINY, "calibration": "platt"}), run,
                           progress=False, policy="resume")
    finally:
        patch.undo()
    assert (run / "calibration" / "holdout" / "run.json").stat().st_mtime_ns == stamp
    assert "holds the twin's detections" in caplog.text


def test_calibrate_tool_fits_on_a_folder_and_calibrates_earlier_results(calibrated_run, tmp_path, monkeypatch):
    root, run, cache = calibrated_run
    monkeypatch.setenv("SPPNET_CACHE", str(cache))
    twin = run / "calibration"
    model = load_model(twin / "model.pt", cache_dir=cache_root(root))
    test_detector(model, load_voc(root, "test", model.classes), tmp_path / "t", progress=False)
    calibrate_tool.main(["--model", str(twin / "model.pt"), "--held-out", str(twin / "holdout"), "--voc-root",
                         str(root), "--split", "train-holdout", "--out", str(tmp_path / "cal.pt"),
                         "--method", "isotonic", "--apply-to", str(tmp_path / "t")])
    calibrated = load_model(tmp_path / "cal.pt")
    assert calibrated.calibration.method == "isotonic"
    raw = read_result_files(tmp_path / "t", "test", model.classes)
    written = read_result_files(tmp_path / "t" / "calibrated", "test", model.classes)
    for name in model.classes:
        assert np.allclose(written[name].scores, calibrated.calibration.apply(name, raw[name].scores), atol=1e-6)
    with pytest.raises(SystemExit, match="made by another model"):  # the full model did not make these results
        calibrate_tool.main(["--model", str(run / "model.pt"), "--held-out", str(twin / "holdout"), "--voc-root",
                             str(root), "--split", "train-holdout", "--out", str(tmp_path / "c2.pt"),
                             "--apply-to", str(tmp_path / "t")])
