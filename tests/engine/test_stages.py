"""Reruns into one --out never pair stages made by different settings; saved files are checked."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import torch
from conftest import TINY

from detector.config import make_config, stage_settings
from detector.core.integrity import StateFileError
from detector.core.paths import cache_root
from detector.data.voc import load_voc
from detector.engine.stages import read_classifiers
from detector.engine.test import test_detector
from detector.engine.train import train_detector
from detector.head.finetune import read_finetune_checkpoint
from detector.model.detector import load_model, read_model_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def first_run(tiny_demo, tmp_path_factory):
    """One trained run folder (its files are copied by tests that change them)."""
    out = tmp_path_factory.mktemp("run")
    train_detector(load_voc(tiny_demo, "train"), make_config("cpu", TINY), out, progress=False)
    return out


def stage_files(out):
    """The checked states of a run folder's three files."""
    return (read_finetune_checkpoint(out / "finetune.pt"),
            read_classifiers(out / "classifiers.pt"),
            read_model_file(out / "model.pt"))


def assert_consistent(out, config):
    """model.pt, classifiers.pt and finetune.pt were all made by ``config``, each from the next upstream."""
    tuned, classifiers, model = stage_files(out)
    assert tuned["stage"]["settings"] == json.loads(json.dumps(stage_settings(config, "finetune")))
    assert classifiers["stage"]["settings"] == json.loads(json.dumps(stage_settings(config, "classifiers")))
    assert classifiers["stage"]["inputs"]["finetune.pt"] == tuned["checksum"]
    assert model["stages"]["classifiers"] == classifiers["stage"]
    assert model["stages"]["finetune"] == tuned["stage"]
    assert model["config"] == config.to_dict()
    for name, tensor in tuned["head"].items():
        assert torch.equal(tensor, model["head"][name]), name
    return tuned, classifiers


def test_changed_settings_never_pair_stages_made_by_other_settings(tiny_demo, first_run, tmp_path, caplog):
    out = tmp_path / "run"
    shutil.copytree(first_run, out)
    dataset = load_voc(tiny_demo, "train")
    tuned, classifiers = assert_consistent(out, make_config("cpu", TINY))
    caplog.set_level(logging.INFO)

    config = make_config("cpu", {**TINY, "svm.C": 0.01})  # head reused, SVMs retrained
    train_detector(dataset, config, out, progress=False)
    assert "finetune.pt is complete" in caplog.text and "svm.C: 0.001 -> 0.01" in caplog.text
    tuned_b, classifiers_b = assert_consistent(out, config)
    assert tuned_b["checksum"] == tuned["checksum"] and classifiers_b["checksum"] != classifiers["checksum"]

    caplog.clear()
    config = make_config("cpu", {**TINY, "svm.C": 0.01, "seed": 1})  # everything retrained
    train_detector(dataset, config, out, progress=False)
    assert "seed: 0 -> 1" in caplog.text and "finetune.pt: " in caplog.text  # classifiers: new upstream
    tuned_c, _ = assert_consistent(out, config)
    assert tuned_c["checksum"] != tuned["checksum"]

    caplog.clear()
    config = make_config("cpu", {**TINY, "svm.C": 0.01, "seed": 1, "fc_width": 32, "finetune.iterations": 30})
    train_detector(dataset, config, out, progress=False)  # once a size-mismatch traceback
    assert "fc_width: 64 -> 32" in caplog.text and "finetune.iterations: 20 -> 30" in caplog.text
    tuned_d, _ = assert_consistent(out, config)
    assert tuned_d["head"]["fc6.weight"].shape[0] == 32 and tuned_d["iteration"] == 30

    # --resume refuses, naming the file and the key, instead of retraining
    with pytest.raises(ValueError, match=r"classifiers.pt was made with other settings.*svm.C: 0.01 -> 0.1"):
        train_detector(dataset, config.replace(**{"svm.C": 0.1}), out, progress=False, policy="resume")
    assert_consistent(out, config)  # nothing was touched
    assert json.loads((out / "config.json").read_text()) == config.to_dict()  # not the refused settings
    assert "classifiers.pt was made with other settings" in (out / "train.log").read_text().splitlines()[-1]


def test_svm_scales_retrain_the_svms_on_maps_computed_before_their_stage(tiny_demo, first_run, tmp_path,
                                                                        monkeypatch, caplog):
    out = tmp_path / "run"
    shutil.copytree(first_run, out)
    dataset = load_voc(tiny_demo, "train")
    from detector.features.convmaps import ConvMapProvider
    real, calls = ConvMapProvider.precompute, []

    def spy(self, records, scales, flips=(False,), progress=True, desc="conv maps"):
        records = list(records)
        calls.append((tuple(scales), tuple(flips), len(records)))
        return real(self, records, scales, flips, progress, desc)

    monkeypatch.setattr(ConvMapProvider, "precompute", spy)
    caplog.set_level(logging.INFO)
    config = make_config("cpu", {**TINY, "svm.scales": (288,)})
    train_detector(dataset, config, out, progress=False)
    assert "finetune.pt is complete" in caplog.text and "svm.scales: [] -> [288]" in caplog.text
    assert calls == [((224,), (False, True), 6), ((288,), (False,), 6)]  # fine-tuning's maps, then the SVMs'
    _, classifiers = assert_consistent(out, config)
    assert classifiers["stage"]["settings"]["svm.scales"] == [288]


def flip_byte(path, fraction):
    """Invert the byte at ``fraction`` of the file's length."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * fraction)] ^= 0xFF
    path.write_bytes(bytes(data))


READERS = {
    "finetune.pt": read_finetune_checkpoint,
    "classifiers.pt": read_classifiers,
    "model.pt": read_model_file,
}


@pytest.mark.parametrize("name", sorted(READERS))
def test_flipped_truncated_or_foreign_files_are_refused_by_name(first_run, tmp_path, name):
    read = READERS[name]
    original = (first_run / name).read_bytes()
    path = tmp_path / name
    for fraction in (0.25, 0.5, 0.75):
        path.write_bytes(original)
        flip_byte(path, fraction)
        with pytest.raises(StateFileError, match=str(path)):
            read(path)
    # anywhere in the file: refused, or (zip padding, unused bytes) the very same content
    good = read(first_run / name)
    for fraction in [i / 40 for i in range(1, 40)]:
        path.write_bytes(original)
        flip_byte(path, fraction)
        try:
            state = read(path)
        except StateFileError as error:
            assert str(path) in str(error)
        else:
            assert state["checksum"] == good["checksum"]
    path.write_bytes(original[:len(original) // 2])
    with pytest.raises(StateFileError, match=f"{path}.*unreadable"):
        read(path)
    path.write_bytes(b'{"not": "a model"}')
    with pytest.raises(StateFileError, match=str(path)):
        read(path)
    torch.save({"something": torch.zeros(3)}, path)
    with pytest.raises(StateFileError, match=str(path)):
        read(path)


def test_a_corrupt_stage_file_stops_training_naming_it(tiny_demo, first_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(first_run, out)
    flip_byte(out / "finetune.pt", 0.5)
    with pytest.raises(StateFileError, match=f"{out / 'finetune.pt'}.*delete it"):
        train_detector(load_voc(tiny_demo, "train"), make_config("cpu", TINY), out, progress=False)
    train_detector(load_voc(tiny_demo, "train"), make_config("cpu", TINY), out, progress=False, policy="force")
    assert_consistent(out, make_config("cpu", TINY))


def test_a_killed_test_run_resumes_to_the_same_results(tiny_demo, first_run, tmp_path):
    model = load_model(first_run / "model.pt", cache_dir=cache_root(tiny_demo))
    test = load_voc(tiny_demo, "test", classes=model.classes)
    maps = cache_root(tiny_demo) / "convmaps"
    test_ids = {quote(r.image_id, safe="") + ".npz" for r in test.records}
    command = [sys.executable, str(ROOT / "tools" / "test_det.py"), "--voc-root", str(tiny_demo), "--split", "test",
               "--model", str(first_run / "model.pt"), "--out", str(tmp_path / "out"), "--quiet"]
    running = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.monotonic() + 240
    while not any(p.name in test_ids for p in maps.rglob("*.npz")) and running.poll() is None:
        assert time.monotonic() < deadline, "test_det made no conv map of the test split"
        time.sleep(0.05)
    running.kill()  # mid-detection: some test maps cached, no result file written yet
    running.wait()
    assert running.returncode == -signal.SIGKILL and not (tmp_path / "out" / "metrics.json").exists()
    subprocess.run(command, check=True, capture_output=True, env=os.environ.copy(), timeout=300)
    resumed = json.loads((tmp_path / "out" / "metrics.json").read_text())
    reference = test_detector(model, test, tmp_path / "reference", progress=False)
    assert resumed["ap"] == pytest.approx(reference["ap"]) and resumed["mAP"] == pytest.approx(reference["mAP"])
    assert not list((tmp_path / "out").glob(".*.tmp")) and not list(maps.rglob(".*.tmp"))  # nothing torn
