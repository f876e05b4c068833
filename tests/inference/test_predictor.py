"""Detector.predict and the predict command on the tiny trained detector (tests/conftest.py)."""
import json
import shutil

import cv2
import numpy as np
import pytest

from detector import Detector
from detector.cli.predict import main as predict_main
from detector.core.boxes import iou_matrix
from detector.core.images import load_image
from detector.core.timing import StageTimer
from detector.data.voc import load_voc
from detector.inference.detect import detect
from detector.inference.predictor import DEFAULT_SOFTMAX_THRESHOLD, DEFAULT_SVM_THRESHOLD, Prediction
from detector.model.detector import load_model


@pytest.fixture(scope="module")
def detector(tiny_trained):
    return Detector.load(tiny_trained[1] / "model.pt", device="cpu")


def test_predict_finds_the_drawn_shapes(tiny_trained, detector):
    """The best detection of each synthetic training image is one of its drawn shapes, of its class."""
    records = load_voc(tiny_trained[0], "train").records
    found = 0
    for record in records:
        result = detector.predict(load_image(record.path))
        assert isinstance(result, Prediction) and (result.scores >= DEFAULT_SVM_THRESHOLD).all()
        assert list(result.scores) == sorted(result.scores, reverse=True)
        if len(result):
            overlaps = iou_matrix(result.boxes[:1], record.boxes)[0]
            same_class = record.labels == result.labels[0]
            found += bool((overlaps[same_class] >= 0.5).any())
    assert found >= len(records) - 1, f"the top detection is a drawn shape in {found} of {len(records)} images"


def test_an_array_a_path_and_the_test_pipeline_give_the_same_detections(tiny_trained, detector, tmp_path):
    record = load_voc(tiny_trained[0], "train").records[3]
    image = load_image(record.path)
    proposals = detector.proposals(image)
    # a copy outside the dataset: no cache may be read or written for it
    copy = tmp_path / "photo.jpg"
    shutil.copy(record.path, copy)
    cache_files = sorted(tiny_trained[2].rglob("*"))
    from_path = detector.predict(copy, score_threshold=-np.inf)
    from_array, again = detector.predict([image, image], score_threshold=-np.inf)
    assert sorted(tiny_trained[2].rglob("*")) == cache_files
    reference = detect(detector.model, record, proposals, StageTimer())  # reads the file, no cache
    for result in (from_path, from_array, again):
        np.testing.assert_array_equal(result.boxes, reference.boxes)
        np.testing.assert_array_equal(result.scores, reference.scores)
        assert result.class_names == [detector.classes[k] for k in reference.labels]
        assert (result.width, result.height) == (record.width, record.height)
    # given proposals replace selective search: the GT boxes as the only windows
    given = detector.predict(image, score_threshold=-np.inf, proposals=record.boxes)
    assert len(given) and iou_matrix(given.boxes, record.boxes).max(axis=1).min() > 0.3


def test_default_threshold_follows_the_scorer(tiny_trained):
    path = tiny_trained[1] / "model.pt"
    assert Detector.load(path).default_threshold == DEFAULT_SVM_THRESHOLD
    softmax = Detector.load(path, overrides={"test.scorer": "softmax"})
    assert softmax.default_threshold == DEFAULT_SOFTMAX_THRESHOLD
    result = softmax.predict(load_image(load_voc(tiny_trained[0], "train").records[0].path))
    assert ((result.scores >= 0.5) & (result.scores <= 1)).all()
    with pytest.raises(ValueError, match="RGB uint8"):
        softmax.predict(np.zeros((10, 10), np.float32))


def test_predict_command_writes_json_and_drawn_images(tiny_trained, detector, tmp_path, capsys):
    records = load_voc(tiny_trained[0], "train").records
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(records[0].path, folder / "a.jpg")
    png = load_image(records[1].path)[:150, :200]  # another size and format
    cv2.imwrite(str(folder / "b.png"), png[:, :, ::-1])
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not an input")
    predict_main(["--model", str(tiny_trained[1] / "model.pt"), str(folder), str(records[2].path),
                  "--out", str(tmp_path / "out")])
    assert "broken.jpg" in capsys.readouterr().err
    written = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert [r["file"] for r in written] == [str(folder / "a.jpg"), str(folder / "b.png"), str(records[2].path)]
    for entry in written:
        image = load_image(entry["file"])
        assert (entry["height"], entry["width"]) == image.shape[:2]
        assert load_image(tmp_path / "out" / entry["drawn"]).shape == image.shape
        expected = detector.predict(image)
        assert entry["boxes"] == expected.boxes.tolist() and entry["scores"] == expected.scores.tolist()
        assert entry["class_names"] == expected.class_names
    assert [r["drawn"] for r in written] == ["a.jpg", "b.png", f"{records[2].path.stem}.jpg"]
    with pytest.raises(SystemExit, match="no image could be read"):
        predict_main(["--model", str(tiny_trained[1] / "model.pt"), str(folder / "broken.jpg"),
                      "--out", str(tmp_path / "none")])


def test_predict_command_at_other_scales_predicts_as_the_detector_at_them(tiny_trained, tmp_path):
    record = load_voc(tiny_trained[0], "train").records[0]
    predict_main(["--model", str(tiny_trained[1] / "model.pt"), str(record.path), "--scales", "160", "288",
                  "--out", str(tmp_path / "out"), "--quiet"])
    written = json.loads((tmp_path / "out" / "detections.json").read_text())[0]
    two = Detector.load(tiny_trained[1] / "model.pt", overrides={"scales": (160, 288)})
    one = Detector.load(tiny_trained[1] / "model.pt")
    image = load_image(record.path)
    assert written["scores"] == two.predict(image).scores.tolist()
    assert written["scores"] != one.predict(image).scores.tolist()  # the option changed what was computed
    with pytest.raises(SystemExit, match="max_side"):
        predict_main(["--model", str(tiny_trained[1] / "model.pt"), str(record.path), "--scales", "100000",
                      "--out", str(tmp_path / "big")])


def test_load_model_and_detector_share_the_weights(tiny_trained, detector):
    model = load_model(tiny_trained[1] / "model.pt")
    assert model.classes == detector.classes and detector.model.conv_maps.cache is None


def test_predict_command_takes_proposals_by_file_name_and_refuses_bad_ones(tiny_trained, detector, tmp_path,
                                                                           capsys):
    record = load_voc(tiny_trained[0], "train").records[4]
    shutil.copy(record.path, tmp_path / "shot.jpg")
    (tmp_path / "boxes.json").write_text(json.dumps({"shot": record.boxes.tolist()}))
    predict_main(["--model", str(tiny_trained[1] / "model.pt"), str(tmp_path / "shot.jpg"), "--out",
                  str(tmp_path / "out"), "--proposals", str(tmp_path / "boxes.json"), "--score-threshold", "-100"])
    written = json.loads((tmp_path / "out" / "detections.json").read_text())[0]
    expected = detector.predict(tmp_path / "shot.jpg", score_threshold=-100, proposals=record.boxes)
    assert written["scores"] == expected.scores.tolist() and len(written["scores"]) > 0
    (tmp_path / "bad.json").write_text(json.dumps({"shot": [[0, 0, record.width + 1, 5]]}))
    with pytest.raises(SystemExit, match="no image could be read"):
        predict_main(["--model", str(tiny_trained[1] / "model.pt"), str(tmp_path / "shot.jpg"), "--out",
                      str(tmp_path / "out2"), "--proposals", str(tmp_path / "bad.json")])
    assert f"{tmp_path / 'bad.json'}, image id 'shot'" in capsys.readouterr().err


def test_box_regression_can_be_switched_off_at_test(tiny_trained):
    path = tiny_trained[1] / "model.pt"
    record = load_voc(tiny_trained[0], "train").records[2]
    # box voting off in both: it moves boxes too (the cpu preset's 0.5 would hide what is tested)
    on = load_model(path, "cpu", overrides={"test.box_voting": 0.0})
    off = load_model(path, "cpu", overrides={"test.bbox_regression": False, "test.box_voting": 0.0})
    assert on.regressor is not None and not off.config.test.bbox_regression
    proposals = Detector.load(path).proposals(load_image(record.path))
    moved, kept = detect(on, record, proposals, StageTimer()), detect(off, record, proposals, StageTimer())
    # without regression every detection is one of the proposals, unmoved; with it, some move
    assert iou_matrix(kept.boxes, proposals).max(axis=1).min() == pytest.approx(1.0)
    assert iou_matrix(moved.boxes, proposals).max(axis=1).min() < 1.0 - 1e-6


def test_svms_on_pool5_read_the_pooled_pyramid(tiny_trained, tmp_path, monkeypatch):
    """The paper's pool5 ablation: SVMs trained and applied on the pooled features, no fc layer."""
    from detector.config import make_config
    from detector.engine.train import train_detector
    from tests.conftest import TRAINED_TINY

    root, run, cache = tiny_trained
    monkeypatch.setenv("SPPNET_CACHE", str(cache))
    shutil.copy(run / "finetune.pt", tmp_path / "finetune.pt")  # the same head: only the SVMs change
    path = train_detector(load_voc(root, "train"), make_config("cpu", {**TRAINED_TINY, "svm.features": "pool5"}),
                          tmp_path, progress=False)
    model = load_model(path, "cpu")
    assert model.config.svm.features == "pool5"
    assert model.svm.weights.shape[1] == model.spp.output_size(model.backbone.channels) != model.config.fc_width
    records = load_voc(root, "train").records
    found = 0
    for record in records:
        proposals = Detector.load(path).proposals(load_image(record.path))
        result = detect(model, record, proposals, StageTimer())
        overlaps = iou_matrix(result.boxes[:1], record.boxes)[0] if len(result.boxes) else np.zeros(1)
        found += bool(len(result.boxes) and (overlaps[record.labels == result.labels[0]] >= 0.5).any())
    assert found >= len(records) // 2, f"the top pool5 detection is a drawn shape in {found} of {len(records)}"
    with pytest.raises(ValueError, match="features must be one of"):
        make_config("cpu", {"svm.features": "conv5"})


def test_box_voting_moves_boxes_but_keeps_scores_and_classes(tiny_trained):
    path = tiny_trained[1] / "model.pt"
    record = load_voc(tiny_trained[0], "train").records[2]
    proposals = Detector.load(path).proposals(load_image(record.path))
    results = {iou: detect(load_model(path, "cpu", overrides={"test.box_voting": iou}), record, proposals,
                           StageTimer()) for iou in (0.0, 1.0, 0.5)}
    off = results[0.0]
    assert len(off.scores) > 0
    for result in results.values():
        np.testing.assert_array_equal(result.scores, off.scores)
        np.testing.assert_array_equal(result.labels, off.labels)
    # at IoU 1 only a box's exact duplicates vote: nothing moves; at 0.5 its neighbours pull it
    np.testing.assert_allclose(results[1.0].boxes, off.boxes, atol=1e-3)
    assert np.abs(results[0.5].boxes - off.boxes).max() > 0.5


def test_test_command_overrides_reach_the_model(tiny_trained):
    """test_det.py --scales / --box-voting / --scorer change only what they name; the rest stays the model's."""
    from detector.cli.test_det import model_overrides, parse_args

    path = tiny_trained[1] / "model.pt"
    args = parse_args(["--model", str(path), "--out", "o", "--scales", "160", "288", "--box-voting", "0.5"])
    overrides = model_overrides(args)
    assert overrides == {"test.scales": (160, 288), "test.box_voting": 0.5}
    base, model = load_model(path, "cpu"), load_model(path, "cpu", overrides=overrides)
    assert model.test_scales == (160, 288) and model.config.test.box_voting == 0.5
    assert model.scales == base.scales == (224,)  # the training scales stay the model's
    assert model.config.test.scorer == base.config.test.scorer and model.config.fc_width == base.config.fc_width
    record = load_voc(tiny_trained[0], "train").records[2]
    proposals = Detector.load(path).proposals(load_image(record.path))
    result = detect(model, record, proposals, StageTimer())
    assert len(result.scores) > 0 and np.isfinite(result.boxes).all()


def test_photos_are_read_turned_by_their_exif_orientation(tiny_trained, tmp_path):
    """A phone photo stored 60 x 40 with EXIF orientation 6 (turn 90 degrees clockwise) is shown 40 x
    60 by viewers: predict works and draws in that grid; datasets keep the stored grid."""
    from PIL import Image

    from detector.cli import predict as predict_tool
    from detector.core.images import image_size, load_image
    _, run, _ = tiny_trained
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:, :30] = 255  # left half white in the stored grid: the top half once turned
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    shown = load_image(tmp_path / "phone.jpg", exif_orientation=True)
    assert shown.shape == (60, 40, 3) and shown[:25].mean() > 200 and shown[35:].mean() < 50
    assert load_image(tmp_path / "phone.jpg").shape == (40, 60, 3) and image_size(tmp_path / "phone.jpg") == (60, 40)
    predict_tool.main(["--model", str(run / "model.pt"), str(tmp_path / "phone.jpg"), "--out", str(tmp_path / "out")])
    record = json.loads((tmp_path / "out" / "detections.json").read_text())[0]
    assert (record["width"], record["height"]) == (40, 60)
    assert load_image(tmp_path / "out" / "phone.jpg").shape == (60, 40, 3)


def test_predict_help_imports_neither_torch_nor_numba():
    import subprocess
    import sys
    code = ("import sys; from detector.cli.predict import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'numba', 'cv2', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--score-threshold" in done.stdout and done.stdout.strip().splitlines()[-1] == "[]"


def test_an_interrupted_folder_run_keeps_the_records_written_so_far(tiny_trained, tmp_path, monkeypatch):
    from detector.cli import predict as predict_tool
    root, run, _ = tiny_trained
    real = Detector.predict
    calls = {"n": 0}

    def third_interrupts(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Detector, "predict", third_interrupts)
    with pytest.raises(SystemExit) as stop:
        predict_tool.main(["--model", str(run / "model.pt"), str(root / "JPEGImages"), "--out", str(tmp_path / "p"),
                           "--quiet"])
    assert stop.value.code == 130
    lines = (tmp_path / "p" / "detections.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["drawn"] for line in lines)
    assert not (tmp_path / "p" / "detections.json").exists()  # only a finished run writes the list


def test_an_image_without_detections_says_so_on_its_drawn_copy(tiny_trained, tmp_path):
    from detector.cli import predict as predict_tool
    root, run, _ = tiny_trained
    image = sorted((root / "JPEGImages").iterdir())[0]
    predict_tool.main(["--model", str(run / "model.pt"), str(image), "--out", str(tmp_path / "high"),
                       "--score-threshold", "1e9", "--quiet"])
    predict_tool.main(["--model", str(run / "model.pt"), str(image), "--out", str(tmp_path / "plain"),
                       "--score-threshold", "1e9", "--quiet"])
    record = json.loads((tmp_path / "high" / "detections.json").read_text())[0]
    assert record["boxes"] == []
    drawn = load_image(tmp_path / "high" / record["drawn"])
    original = load_image(image)
    changed = np.abs(drawn.astype(int) - original.astype(int)).sum(axis=2) > 60
    assert changed[: drawn.shape[0] // 4].any() and not changed[drawn.shape[0] // 2:].any()  # a caption at the top


def test_draw_channels_and_checked_proposals(tiny_trained, detector):
    from detector.visualization.draw import draw_detections
    record = load_voc(tiny_trained[0], "train").records[1]
    rgb = load_image(record.path)
    result = detector.predict(rgb, score_threshold=-100, proposals=record.boxes)
    assert len(result) > 0
    expected = draw_detections(rgb, result.boxes, result.scores, result.labels, detector.classes)
    assert np.array_equal(result.draw(), expected) and np.array_equal(result.draw(record.path), expected)
    assert not np.array_equal(result.draw(), rgb)
    with pytest.raises(ValueError, match="the prediction was made on"):
        result.draw(rgb[:10])
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # what cv2.imread gives
    as_bgr = detector.predict(bgr, score_threshold=-100, proposals=record.boxes, channels="BGR")
    assert np.array_equal(as_bgr.scores, result.scores) and np.array_equal(as_bgr.boxes, result.boxes)
    assert not np.array_equal(detector.predict(bgr, score_threshold=-100, proposals=record.boxes).scores,
                              result.scores)  # the channel order matters: why the argument exists
    with pytest.raises(ValueError, match="channels must be 'RGB' or 'BGR'"):
        detector.predict(rgb, channels="bgr")
    inverted = record.boxes.copy()
    inverted[0] = inverted[0][[2, 1, 0, 3]]
    with pytest.raises(ValueError, match="proposals= of the image array: 1 box"):
        detector.predict(rgb, proposals=inverted)
