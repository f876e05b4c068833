"""The last trust edges: no stale outputs beside new ones, no incomplete folder read as complete,
no decompression bomb, and one line with nothing written for each refusal."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.cli import ensemble, predict, test_det
from detector.core.folders import RUN_FILE
from detector.core.images import ImageReadError, image_size, load_image
from detector.data.voc import load_voc

ROOT = Path(__file__).resolve().parents[2]


def header_only_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` but which holds almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def real_png(path: Path, side: int) -> Path:
    """A real, decodable ``side`` x ``side`` grey PNG (small on disk: it is uniform)."""
    ok, data = cv2.imencode(".png", np.full((side, side), 128, np.uint8))
    assert ok
    path.write_bytes(data.tobytes())
    return path


def test_images_over_the_pixel_limit_are_refused_from_their_header(tmp_path, monkeypatch):
    giant = header_only_png(tmp_path / "giant.png", 30000, 30000)
    large = real_png(tmp_path / "large.png", 12000)
    for path in (giant, large):
        for read in (load_image, image_size):
            with pytest.raises(ImageReadError, match=f"{path.name}: .* MP, over the limit of 100 MP") as error:
                read(path)
            assert "\n" not in str(error.value)
    monkeypatch.setenv("SPPNET_MAX_IMAGE_PIXELS", "2e8")  # the limit is the user's to raise
    assert image_size(large) == (12000, 12000)
    monkeypatch.setenv("SPPNET_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="SPPNET_MAX_IMAGE_PIXELS='lots'"):
        image_size(large)


def test_a_truncated_png_is_refused_in_one_line_and_libpng_prints_nothing(tmp_path, capfd):
    ok, data = cv2.imencode(".png", (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8))
    path = tmp_path / "cut.png"
    path.write_bytes(data.tobytes()[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png: not a decodable image .*libpng") as error:
        load_image(path)
    assert "\n" not in str(error.value)
    assert capfd.readouterr().err == ""  # what libpng printed is in the error, not on stderr


def test_a_dataset_skips_and_counts_a_giant_image(tiny_demo, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(tiny_demo, root)
    first = load_voc(root, "train")
    victim = first.records[0]
    header_only_png(victim.path.with_suffix(".tmp"), 30000, 30000).replace(victim.path)
    again = load_voc(root, "train")
    assert again.skipped == first.skipped + 1
    assert victim.image_id not in [r.image_id for r in again.records]


def images(source: Path, folder: Path, names: list[str]) -> Path:
    """``folder`` holding copies of the demo's images under ``names``."""
    folder.mkdir(parents=True)
    pictures = sorted((source / "JPEGImages").iterdir())
    for name, picture in zip(names, pictures):
        shutil.copy(picture, folder / name)
    return folder


def test_predict_goes_on_past_a_bomb_and_refuses_it_in_one_line(tiny_trained, tmp_path, capsys):
    root, run, _ = tiny_trained
    inputs = images(root, tmp_path / "in", ["a.jpg", "c.jpg"])
    header_only_png(inputs / "b.png", 30000, 30000)
    predict.main(["--model", str(run / "model.pt"), str(inputs), "--out", str(tmp_path / "out"), "--quiet"])
    printed = capsys.readouterr()
    refusals = [line for line in printed.err.splitlines() if "b.png" in line]
    assert len(refusals) == 1 and "over the limit of 100 MP" in refusals[0], printed.err
    records = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert [Path(r["file"]).name for r in records] == ["a.jpg", "c.jpg"]


def test_predict_on_an_empty_folder_writes_nothing(tiny_trained, tmp_path, capsys):
    _, run, _ = tiny_trained
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as stop:
        predict.main(["--model", str(run / "model.pt"), str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    assert "no image files" in str(stop.value.code) and "\n" not in str(stop.value.code)
    assert not (tmp_path / "out").exists()
    assert capsys.readouterr().err == ""  # no progress bar, no log line


KILL_AFTER_THREE = """
import os, sys
from detector.inference import predictor
calls = [0]
original = predictor.Detector.predict
def predict(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == 4:
        os._exit(137)  # as SIGKILL: no cleanup, no finally
    return original(self, *args, **kwargs)
predictor.Detector.predict = predict
from detector.cli import predict as tool
tool.main(sys.argv[1:])
"""


def test_a_killed_predict_leaves_nothing_of_the_earlier_run(tiny_trained, tmp_path):
    root, run, _ = tiny_trained
    out = tmp_path / "out"
    earlier = images(root, tmp_path / "earlier", ["e0.jpg", "e1.jpg", "e2.jpg"])
    predict.main(["--model", str(run / "model.pt"), str(earlier), "--out", str(out), "--quiet"])
    assert {"e0.jpg", "e1.jpg", "e2.jpg", "detections.json"} <= {p.name for p in out.iterdir()}
    later = images(root, tmp_path / "later", [f"n{k}.jpg" for k in range(5)])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", KILL_AFTER_THREE, "--model", str(run / "model.pt"), str(later),
                           "--out", str(out), "--quiet"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 137, done.stderr
    left = sorted(p.name for p in out.iterdir())
    assert left == ["detections.jsonl", "n0.jpg", "n1.jpg", "n2.jpg", RUN_FILE], left
    state = json.loads((out / RUN_FILE).read_text())
    assert state["status"] == "incomplete" and state["writes"] == [f"n{k}.jpg" for k in range(5)]
    lines = (out / "detections.jsonl").read_text().splitlines()
    assert [Path(json.loads(line)["file"]).name for line in lines] == ["n0.jpg", "n1.jpg", "n2.jpg"]
    # a complete rerun on the earlier images removes the killed run's drawn copies too
    predict.main(["--model", str(run / "model.pt"), str(earlier), "--out", str(out), "--quiet"])
    assert sorted(p.name for p in out.iterdir()) == ["detections.json", "detections.jsonl", "e0.jpg", "e1.jpg",
                                                     "e2.jpg", RUN_FILE]
    assert json.loads((out / RUN_FILE).read_text())["status"] == "complete"


@pytest.fixture(scope="module")
def result_folders(tiny_trained, tmp_path_factory):
    """Two complete test result folders of the tiny model (the second with another scorer)."""
    root, run, cache = tiny_trained
    base = tmp_path_factory.mktemp("results")
    patch = pytest.MonkeyPatch()
    patch.setenv("SPPNET_CACHE", str(cache))
    try:
        for name, extra in (("a", []), ("b", ["--scorer", "softmax"])):
            test_det.main(["--voc-root", str(root), "--split", "test", "--model", str(run / "model.pt"),
                           "--out", str(base / name), "--quiet", *extra])
    finally:
        patch.undo()
    return root, base


def mark_incomplete(folder: Path, copy_to: Path) -> Path:
    """A copy of a result folder as a killed run leaves it: ``run.json`` incomplete, a class file
    and ``metrics.json`` missing."""
    shutil.copytree(folder, copy_to)
    state = json.loads((copy_to / RUN_FILE).read_text())
    (copy_to / RUN_FILE).write_text(json.dumps({**state, "status": "incomplete"}))
    (copy_to / "metrics.json").unlink()
    sorted(copy_to.glob("comp4_det_*.txt"))[0].unlink()
    return copy_to


def test_eval_only_refuses_an_incomplete_folder_unless_allowed(result_folders, tmp_path, capsys):
    root, base = result_folders
    broken = mark_incomplete(base / "a", tmp_path / "broken")
    data = ["--voc-root", str(root), "--split", "test"]
    for extra in ([], ["--compare", str(base / "b")]):
        with pytest.raises(SystemExit) as stop:
            test_det.main([*data, "--eval-only", str(broken), *extra])
        message = str(stop.value.code)
        assert str(broken) in message and "incomplete" in message and "\n" not in message
    with pytest.raises(SystemExit, match="incomplete"):  # as the compared folder too
        test_det.main([*data, "--eval-only", str(base / "b"), "--compare", str(broken)])
    assert not (broken / "metrics_eval.json").exists()
    capsys.readouterr()
    test_det.main([*data, "--eval-only", str(broken), "--allow-incomplete"])
    assert "INCOMPLETE" in capsys.readouterr().out
    assert json.loads((broken / "metrics_eval.json").read_text())["complete"] is False
    test_det.main([*data, "--eval-only", str(base / "a")])
    assert json.loads((base / "a" / "metrics_eval.json").read_text())["complete"] is True


def test_ensemble_refuses_an_incomplete_folder_unless_allowed(result_folders, tmp_path, capsys):
    root, base = result_folders
    broken = mark_incomplete(base / "a", tmp_path / "broken")
    data = ["--voc-root", str(root), "--split", "test"]
    with pytest.raises(SystemExit) as stop:
        ensemble.main([*data, str(broken), str(base / "b"), "--out", str(tmp_path / "m")])
    assert str(broken) in str(stop.value.code) and "incomplete" in str(stop.value.code)
    assert not (tmp_path / "m").exists()
    capsys.readouterr()
    ensemble.main([*data, str(broken), str(base / "b"), "--out", str(tmp_path / "m"), "--allow-incomplete"])
    assert f"{broken} is INCOMPLETE" in capsys.readouterr().out
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["incomplete_inputs"] == [str(broken)]
