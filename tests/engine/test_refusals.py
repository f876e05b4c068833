"""Outputs never overwrite inputs, and misuse ends in one line naming the path, before any work."""
import json
import shutil

import pytest
import torch
from conftest import TINY

from detector.cli import ensemble, predict, test_det, train_det
from detector.core import io as io_module
from detector.core.io import save_checkpoint
from detector.inference.predictor import Detector


def never_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the refusal")


def test_predict_refuses_an_out_that_holds_its_inputs_before_loading_the_model(tiny_trained, tmp_path, monkeypatch):
    root, run, _ = tiny_trained
    photos = tmp_path / "photos"
    shutil.copytree(root / "JPEGImages", photos)
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    monkeypatch.setattr(Detector, "load", never_load)
    one = sorted(photos.iterdir())[0]
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for inputs, out, expected in [([photos], photos, f"--out {photos} holds the input {photos}"),
                                  ([one], photos, f"--out {photos} holds the input {one}"),
                                  ([photos], tmp_path, f"--out {tmp_path} holds the input {photos}"),
                                  ([photos], blocker / "out", f"cannot write in {blocker / 'out'}")]:
        with pytest.raises(SystemExit) as stop:
            predict.main(["--model", str(run / "model.pt"), *map(str, inputs), "--out", str(out)])
        message = str(stop.value.code)
        assert message.startswith("predict.py: ") and expected in message and "\n" not in message
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before


def test_predict_stops_in_one_line_when_a_drawn_copy_cannot_be_written(tiny_trained, tmp_path, monkeypatch):
    root, run, _ = tiny_trained

    def full_disk(path, data):
        raise OSError(28, f"cannot write {path}: No space left on device")
    monkeypatch.setattr("detector.visualization.draw.write_bytes_atomic", full_disk)
    with pytest.raises(SystemExit, match=f"predict.py: cannot write {tmp_path / 'p'}.*No space left"):
        predict.main(["--model", str(run / "model.pt"), str(sorted((root / "JPEGImages").iterdir())[0]),
                      "--out", str(tmp_path / "p")])


def test_eval_only_on_a_folder_without_result_files_is_refused(tiny_demo, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as stop:
        test_det.main(["--voc-root", str(tiny_demo), "--split", "test", "--eval-only", str(tmp_path / "empty")])
    assert str(stop.value.code) == (f"test_det.py: {tmp_path / 'empty'} holds no result file comp4_det_test_<class>.txt "
                                    "for any of the 5 classes; write them with tools/test_det.py --out")
    assert list((tmp_path / "empty").iterdir()) == []  # no metrics, no curves


def test_ensemble_tool_refuses_one_folder_twice(tiny_demo, tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(SystemExit, match=f"ensemble.py: result folder {tmp_path / 'a'} is given twice"):
        ensemble.main(["--voc-root", str(tiny_demo), "--split", "test", str(tmp_path / "a"), str(tmp_path / "a"),
                       "--out", str(tmp_path / "m")])
    assert not (tmp_path / "m").exists()


def test_a_full_disk_while_saving_a_state_file_names_it(tiny_demo, tmp_path, monkeypatch):
    def zip_writer_fails(state, handle):  # what torch raises when the disk fills under its zip writer
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    monkeypatch.setattr(torch, "save", zip_writer_fails)
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'x.pt'}: torch's writer failed: .enforce fail"):
        save_checkpoint(tmp_path / "x.pt", {"a": 1})
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind
    monkeypatch.setattr(io_module.os, "fstatvfs", lambda fd: type("Full", (), {"f_bavail": 0, "f_frsize": 4096})())
    text = ",".join
    with pytest.raises(SystemExit) as stop:
        train_det.main(["--voc-root", str(tiny_demo), "--out", str(tmp_path / "run"), "--quiet", "--force", "--set",
                        *(f"{k}={text(map(str, v)) if isinstance(v, tuple) else v}" for k, v in TINY.items())])
    assert str(stop.value.code) == f"train_det.py: cannot write {tmp_path / 'run' / 'finetune.pt'}: No space left on device"


@pytest.mark.parametrize("name", ["../../../ESCAPED", "cat/dog", "..", "a\\b", "tab\there", ""])
def test_names_that_would_leave_a_folder_are_refused_where_they_become_paths(tmp_path, name):
    from detector.core.paths import check_name
    from detector.evaluation.voc_eval import read_classes_file, result_file
    with pytest.raises(ValueError, match="class name .* cannot be part of a file name"):
        result_file(tmp_path, "test", name)
    with pytest.raises(ValueError, match="split .* cannot be part of a file name"):
        result_file(tmp_path, name, "cat")
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["cat", name], "split": "test"}))
    with pytest.raises(ValueError, match=f"{tmp_path / 'classes.json'} is not a readable class list"):
        read_classes_file(tmp_path)
    assert check_name("person", "class name") == "person" and check_name("2008_000123", "image id")


def test_unsafe_ids_classes_and_model_classes_are_refused(tiny_demo, tiny_trained, tmp_path, caplog):
    from detector.core.integrity import read_state, seal
    from detector.data.voc import load_voc, read_split_ids
    from detector.model.detector import load_model
    root = tmp_path / "voc"
    shutil.copytree(tiny_demo, root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "000061.xml").write_text("<annotation>never parsed</annotation>")
    ids = read_split_ids(root, "train")
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(["../../outside/000061", *ids]) + "\n")
    assert read_split_ids(root, "train") == ids
    assert "image id '../../outside/000061' cannot be part of a file name" in caplog.text
    with pytest.raises(ValueError, match="split '../x' cannot"):
        load_voc(root, "../x")
    with pytest.raises(ValueError, match="class name 'cat/dog' cannot"):
        load_voc(root, "train", classes=["cat/dog"])
    first = root / "Annotations" / f"{ids[0]}.xml"
    text = first.read_text()
    name = text.split("<name>")[1].split("</name>")[0]
    first.write_text(text.replace(f"<name>{name}</name>", "<name>../../../ESCAPED</name>", 1))
    with pytest.raises(ValueError, match="class name .in the annotations.*'../../../ESCAPED' cannot"):
        load_voc(root, "train")
    _, run, _ = tiny_trained
    state = read_state(run / "model.pt")
    state = seal({**{k: v for k, v in state.items() if k != "checksum"}, "classes": ["../x", *state["classes"][1:]]})
    torch.save(state, tmp_path / "model.pt")
    with pytest.raises(ValueError, match=f"{tmp_path / 'model.pt'}: class name '../x' cannot"):
        load_model(tmp_path / "model.pt")


def test_help_shows_defaults_and_errors_name_the_command_as_typed(tiny_demo, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        ensemble.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.3)" in text and "(default: voc07)" in text and "(default: None)" not in text
    monkeypatch.setattr("sys.argv", ["/usr/local/bin/sppnet-ensemble"])
    with pytest.raises(SystemExit, match="^sppnet-ensemble: result folder .* is given twice"):
        ensemble.main(["--voc-root", str(tiny_demo), "--split", "test", str(tmp_path), str(tmp_path),
                       "--out", str(tmp_path / "m")])
    monkeypatch.setattr("sys.argv", ["tools/ensemble.py"])
    with pytest.raises(SystemExit, match="^ensemble.py: result folder"):
        ensemble.main(["--voc-root", str(tiny_demo), "--split", "test", str(tmp_path), str(tmp_path),
                       "--out", str(tmp_path / "m")])


def test_testing_without_split_takes_test_and_never_falls_back_to_training_images(tiny_trained, tmp_path, capsys,
                                                                                   monkeypatch):
    root, run, cache = tiny_trained
    monkeypatch.setenv("SPPNET_CACHE", str(cache))
    copy = tmp_path / "voc"
    shutil.copytree(root, copy)
    (copy / "ImageSets" / "Main" / "test.txt").unlink()
    with pytest.raises(SystemExit, match=f"{copy} has no 'test' split .*name one with --split .train"):
        test_det.main(["--voc-root", str(copy), "--model", str(run / "model.pt"), "--out", str(tmp_path / "t")])
    assert not (tmp_path / "t").exists()
    test_det.main(["--voc-root", str(root), "--model", str(run / "model.pt"), "--out", str(tmp_path / "t2"),
                   "--quiet", "--images", "1"])
    assert capsys.readouterr().out.splitlines()[0] == (f"testing {run / 'model.pt'} on {root} split 'test' "
                                                       "(1 images), svm scorer, scales 224")
