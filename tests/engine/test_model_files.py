"""Loading a state file never runs code: malicious pickles are refused by name, real files round-trip,
files of earlier versions load or convert with tools/convert_model.py."""
import ast
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TRAINED_TINY

from detector import Detector
from detector.cli import (
    bench_distributed,
    benchmark,
    compress_net,
    convert_model,
    predict,
    scale_sets,
    test_det,
    window_accuracy,
)
from detector.config import make_config
from detector.core.integrity import UnsafeStateError, numpy_globals, read_state, state_digest
from detector.data.voc import load_voc
from detector.engine.stages import read_classifiers
from detector.engine.train import train_detector
from detector.head.finetune import read_finetune_checkpoint
from detector.model.detector import load_model, read_model_file, save_model

ROOT = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this calls ``os.system`` (an attacker's model file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_file(path: Path, marker: Path, like: Path | None = None) -> Path:
    """``path``: a copy of the state in ``like`` (or a bare dict) carrying the payload."""
    state = read_state(like) if like is not None else {"format": "sppnet-detector-v3"}
    torch.save({**state, "extra": Payload(marker)}, path)
    return path


def test_the_payload_runs_under_an_unrestricted_load(tmp_path):
    """The test's payload is real: a plain pickle load creates the marker (so its absence below means
    something)."""
    marker = tmp_path / "ran"
    malicious_file(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_library_readers_refuse_a_malicious_file_without_running_it(tiny_trained, tmp_path):
    _, run, _ = tiny_trained
    marker = tmp_path / "ran"
    for name, read in [("model.pt", read_model_file), ("model.pt", load_model), ("model.pt", Detector.load),
                       ("finetune.pt", read_finetune_checkpoint), ("classifiers.pt", read_classifiers)]:
        path = malicious_file(tmp_path / name, marker, like=run / name)
        with pytest.raises(UnsafeStateError, match=f"{path}.*posix.system.*convert_model.py"):
            read(path)
        assert not marker.exists(), read


@pytest.mark.parametrize("stage", ["finetune.pt", "classifiers.pt"])
def test_stage_reuse_refuses_a_malicious_stage_file(tiny_trained, tmp_path, stage):
    root, run, cache = tiny_trained
    out = tmp_path / "run"
    shutil.copytree(run, out)
    marker = tmp_path / "ran"
    malicious_file(out / stage, marker, like=run / stage)
    patch = pytest.MonkeyPatch()
    patch.setenv("SPPNET_CACHE", str(cache))
    try:
        with pytest.raises(UnsafeStateError, match=str(out / stage)):
            train_detector(load_voc(root, "train"), make_config("cpu", TRAINED_TINY), out, progress=False)
    finally:
        patch.undo()
    assert not marker.exists()


def test_every_tool_taking_a_model_refuses_a_malicious_file(tiny_trained, tmp_path):
    root, run, _ = tiny_trained
    marker = tmp_path / "ran"
    evil = malicious_file(tmp_path / "model.pt", marker, like=run / "model.pt")
    image = next((root / "JPEGImages").iterdir())
    data = ["--voc-root", str(root), "--split", "test"]
    calls = {
        "test_det": (test_det.main, [*data, "--model", str(evil), "--out", str(tmp_path / "t")]),
        "predict": (predict.main, ["--model", str(evil), str(image), "--out", str(tmp_path / "p")]),
        "compress_net": (compress_net.main, ["--model", str(evil), "--rank", "8", "--out", str(tmp_path / "c.pt")]),
        "window_accuracy": (window_accuracy.main, [*data, "--model", str(evil)]),
        "benchmark": (benchmark.main, [*data, "--model", str(evil), "--images", "1"]),
        "bench_distributed": (bench_distributed.main, [*data, "--model", str(evil), "--out", str(tmp_path / "b")]),
        "scale_sets": (scale_sets.main, [*data, "--model", str(evil)]),
    }
    for name, (main, argv) in calls.items():
        with pytest.raises(SystemExit) as stop:
            main(argv)
        message = str(stop.value.code)
        assert str(evil) in message and "convert_model.py" in message and "\n" not in message, name
        assert not marker.exists(), name


def test_a_model_round_trips_and_holds_no_global_beyond_torch(tiny_trained, tmp_path):
    _, run, _ = tiny_trained
    assert torch.serialization.get_unsafe_globals_in_checkpoint(run / "model.pt") == []
    model = load_model(run / "model.pt")
    save_model(tmp_path / "again.pt", model)
    first, again = read_model_file(run / "model.pt"), read_model_file(tmp_path / "again.pt")
    for key in ("trunk", "head"):
        assert all(torch.equal(first[key][name], again[key][name]) for name in first[key])
    for key in ("svm", "regressor"):
        assert all(np.array_equal(np.asarray(first[key][name]), np.asarray(again[key][name])) for name in first[key])
    assert again["config"] == first["config"] and again["classes"] == first["classes"]
    for name in ("finetune.pt", "classifiers.pt"):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(run / name) == [], name


def as_earlier_version(state: dict) -> dict:
    """``state`` as versions before weights-only files wrote it: SVMs and regressors as numpy arrays,
    sealed over them."""
    old = {key: value for key, value in state.items() if key != "checksum"}
    for part in ("svm", "regressor"):
        old[part] = {name: np.asarray(value) for name, value in old[part].items()}
    return {**old, "checksum": state_digest(old)}


def test_a_model_file_of_the_earlier_format_loads_under_the_same_rule(tiny_trained, tmp_path):
    _, run, _ = tiny_trained
    old = as_earlier_version(read_model_file(run / "model.pt"))
    torch.save(old, tmp_path / "old.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "old.pt")  # numpy's, allowed
    model, new = load_model(tmp_path / "old.pt"), load_model(run / "model.pt")
    assert np.array_equal(model.svm.weights, new.svm.weights)
    assert np.array_equal(model.regressor.weights, new.regressor.weights)
    assert len(numpy_globals()) > 4


def test_a_file_needing_other_globals_is_refused_then_converts(tiny_trained, tmp_path, capsys):
    _, run, _ = tiny_trained
    old = as_earlier_version(read_model_file(run / "model.pt"))
    old = {**old, "classes": np.array(old["classes"])}  # a string array: not an allowed numpy type
    old["checksum"] = state_digest(old)
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(UnsafeStateError, match="old.pt.*convert_model.py"):
        load_model(tmp_path / "old.pt")
    convert_model.main([str(tmp_path / "old.pt"), "--out", str(tmp_path / "new.pt")])
    assert "wrote" in capsys.readouterr().out
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "new.pt") == []
    model = load_model(tmp_path / "new.pt")
    assert model.classes == list(old["classes"]) and np.array_equal(model.svm.weights, load_model(run / "model.pt").svm.weights)
    # a corrupt source, or the source as its own target, is refused
    old["checksum"] = "0" * 64
    torch.save(old, tmp_path / "bad.pt")
    with pytest.raises(SystemExit, match="bad.pt fails its checksum"):
        convert_model.main([str(tmp_path / "bad.pt"), "--out", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit, match="is the file being converted"):
        convert_model.main([str(tmp_path / "new.pt"), "--out", str(tmp_path / "new.pt")])
    assert not (tmp_path / "x.pt").exists()


def test_no_code_path_loads_with_weights_only_false_but_the_converter():
    """Source check over every ``torch.load(...)`` call: each passes ``weights_only=True`` but the
    converter's, which runs only when every global of the file is numpy data or named by its user."""
    unrestricted, restricted = [], 0
    for folder in ("detector", "svm", "bbox_regression", "proposals", "tools"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
                for node in ast.walk(function):
                    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                            and node.func.attr == "load" and getattr(node.func.value, "id", None) == "torch"):
                        safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True
                                   for k in node.keywords)
                        if not safe:
                            unrestricted.append(f"{path.relative_to(ROOT)}:{function.name}")
                        restricted += safe
    assert unrestricted == ["detector/core/integrity.py:convert_file"], unrestricted
    assert restricted >= 3  # read_state, the converter's numpy-only read and the trunk weights' reader


def test_the_converter_refuses_a_payload_by_name_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = malicious_file(tmp_path / "evil.pt", marker)
    with pytest.raises(SystemExit) as stop:
        convert_model.main([str(evil), "--out", str(tmp_path / "out.pt")])
    message = str(stop.value.code)
    assert "posix.system" in message and "--trust-global posix.system" in message and "\n" not in message
    assert not marker.exists() and not (tmp_path / "out.pt").exists()
    assert capsys.readouterr().out == ""  # nothing said before the refusal
    # trusting another global is not trusting this one
    with pytest.raises(SystemExit, match="posix.system"):
        convert_model.main([str(evil), "--out", str(tmp_path / "out.pt"), "--trust-global", "builtins.print"])
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_the_converter_calls_a_global_only_when_its_user_names_it(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = malicious_file(tmp_path / "evil.pt", marker)
    convert_model.main([str(evil), "--out", str(tmp_path / "out.pt"), "--trust-global", "posix.system"])
    assert marker.exists()  # the user asked for it
    assert "called the trusted posix.system" in capsys.readouterr().out
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "out.pt") == []


def test_a_file_of_numpy_data_converts_without_a_flag(tiny_trained, tmp_path, capsys):
    _, run, _ = tiny_trained
    old = as_earlier_version(read_model_file(run / "model.pt"))
    torch.save(old, tmp_path / "old.pt")
    convert_model.main([str(tmp_path / "old.pt"), "--out", str(tmp_path / "new.pt")])
    assert "numpy" in capsys.readouterr().out
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "new.pt") == []
    assert np.array_equal(load_model(tmp_path / "new.pt").svm.weights, load_model(run / "model.pt").svm.weights)


def test_plain_keeps_container_types_and_shapes():
    from collections import Counter, OrderedDict

    from detector.core.integrity import plain_values
    state = plain_values({"m": Counter({1000: 1, 2000: 2}), "o": OrderedDict(a=np.zeros((2, 3))), "s": np.array(2.5),
                   "t": (np.int64(3), [np.float32(1.5)]), "names": np.array(["a", "b"])})
    assert state["m"] == Counter({1000: 1, 2000: 2}) and type(state["o"]) is OrderedDict
    assert state["o"]["a"].shape == (2, 3) and state["s"].shape == () and float(state["s"]) == 2.5
    assert state["t"] == (3, [1.5]) and type(state["t"][0]) is int and state["names"] == ["a", "b"]
