"""A run stopped by SIGTERM or SIGINT exits non-zero (128 + the signal) with one line naming the stage
it was in, and its train.log says so too."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY

from detector.cli import predict, test_det, train_det
from detector.engine import test as test_module
from detector.engine import train as train_module

ROOT = Path(__file__).resolve().parents[2]


def tiny_set() -> list[str]:
    """TINY as one ``--set`` (a second ``--set`` would replace the first)."""
    def text(value):
        return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return ["--set", *(f"{key}={text(value)}" for key, value in TINY.items())]


def signal_self(signum: int):
    """A stand-in for a stage that receives ``signum`` while it works."""
    def stage(*args, **kwargs):
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("the signal did not stop the stage")
    return stage


@pytest.mark.parametrize("target, stage", [
    ("training_windows", "proposals"),
    ("finetune", "fine-tuning"),
    ("train_classifiers", "SVMs and box regressors"),
    ("save_model", "writing the model"),
])
def test_an_interrupted_training_names_its_stage(tiny_demo, tmp_path, monkeypatch, capsys, target, stage):
    monkeypatch.setattr(train_module, target, signal_self(signal.SIGTERM))
    with pytest.raises(SystemExit) as stop:
        train_det.main(["--voc-root", str(tiny_demo), "--out", str(tmp_path / "run"), "--quiet", "--force",
                        *tiny_set()])
    assert stop.value.code == 128 + signal.SIGTERM
    assert (f"train_det.py: interrupted by SIGTERM during {stage}; rerun the same command to resume"
            in capsys.readouterr().err)
    assert f"training stopped during {stage}: interrupted by SIGTERM" in (tmp_path / "run" / "train.log").read_text()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the tool


def test_sigint_in_a_test_run_names_its_stage(tiny_trained, tmp_path, monkeypatch, capsys):
    root, run, cache = tiny_trained
    monkeypatch.setenv("SPPNET_CACHE", str(cache))
    monkeypatch.setattr(test_module, "detect", signal_self(signal.SIGINT))
    with pytest.raises(SystemExit) as stop:
        test_det.main(["--voc-root", str(root), "--split", "test", "--model", str(run / "model.pt"),
                       "--out", str(tmp_path / "test"), "--quiet"])
    assert stop.value.code == 128 + signal.SIGINT
    assert "test_det.py: interrupted by SIGINT during detecting; rerun" in capsys.readouterr().err


def test_sigterm_in_predict_exits_non_zero(tiny_trained, tmp_path, monkeypatch, capsys):
    root, run, _ = tiny_trained
    monkeypatch.setattr("detector.inference.batch.load_image", signal_self(signal.SIGTERM))
    with pytest.raises(SystemExit) as stop:
        predict.main(["--model", str(run / "model.pt"), str(root / "JPEGImages"), "--out", str(tmp_path / "p")])
    assert stop.value.code == 128 + signal.SIGTERM
    assert "predict.py: interrupted by SIGTERM during" in capsys.readouterr().err


def test_a_real_sigterm_during_fine_tuning_ends_the_tool_non_zero(tiny_demo, tmp_path):
    """The whole tool as a scheduler sees it: SIGTERM from outside while fine-tuning runs."""
    out = tmp_path / "run"
    arguments = tiny_set()
    arguments[arguments.index("finetune.iterations=20")] = "finetune.iterations=1000000"
    # the tool's output goes to a file, not a pipe: an unread pipe that filled (64 KiB of progress
    # bars) would block the tool in a write while this loop waits
    with open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen([sys.executable, str(ROOT / "tools" / "train_det.py"), "--voc-root",
                                    str(tiny_demo), "--out", str(out), *arguments], stdout=subprocess.DEVNULL,
                                   stderr=stderr, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if (out / "history.jsonl").exists() and '"finetune"' in (out / "history.jsonl").read_text():
            break
        time.sleep(0.5)
    assert process.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    err = (tmp_path / "stderr.txt").read_text()
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "train_det.py: interrupted by SIGTERM during fine-tuning; rerun the same command to resume" in err
