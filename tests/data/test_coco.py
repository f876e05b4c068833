"""Datasets in COCO JSON: the same records as the VOC layout gives, bad input named, results in the
file's own ids and COCOeval on the file itself."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TRAINED_TINY
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.cli import make_demo_data, test_det
from detector.config import make_config
from detector.core.paths import cache_root
from detector.data.coco import image_key, load_coco, write_coco
from detector.data.demo import make_demo_dataset
from detector.data.voc import load_voc
from detector.engine.train import train_detector
from detector.model.detector import read_model_file


def same_records(a, b) -> None:
    assert [r.image_id for r in a] == [r.image_id for r in b]
    for x, y in zip(a, b):
        assert Path(x.path).resolve() == Path(y.path).resolve() and (x.width, x.height) == (y.width, y.height)
        assert x.boxes.dtype == y.boxes.dtype and np.array_equal(x.boxes, y.boxes), x.image_id
        assert np.array_equal(x.labels, y.labels) and np.array_equal(x.difficult, y.difficult), x.image_id


def test_the_demo_written_as_coco_reads_back_as_the_same_records(tmp_path, capsys):
    root = tmp_path / "demo"
    make_demo_data.main(["--root", str(root), "--train", "8", "--test", "6", "--format", "coco"])
    assert f"--coco {root / 'coco' / 'train.json'}" in capsys.readouterr().out
    for split in ("train", "test"):
        voc, coco = load_voc(root, split), load_coco(root / "coco" / f"{split}.json", root / "JPEGImages")
        assert coco.classes == voc.classes and coco.split == split
        same_records(voc.records, coco.records)
    assert cache_root(root) == cache_root(root / "JPEGImages")  # one cache for both formats


def coco_file(path: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture()
def pictures(tmp_path):
    """Three demo images under tmp/images (one in a sub-folder)."""
    root = make_demo_dataset(tmp_path / "demo", n_train=3, n_test=1, seed=2)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    names = ["a.jpg", "b.jpg", "sub/c.jpg"]
    for name, source in zip(names, sorted((root / "JPEGImages").iterdir())):
        shutil.copy(source, folder / name)
    return folder, names


def test_boxes_categories_crowds_and_background_images(tmp_path, pictures):
    folder, names = pictures
    images = [{"id": 10 + k, "file_name": name} for k, name in enumerate(names)]
    categories = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]  # any ids, not contiguous, out of order
    annotations = [{"id": 1, "image_id": 10, "category_id": 7, "bbox": [10.5, 20, 30, 40.25], "iscrowd": 0},
                   {"id": 2, "image_id": 10, "category_id": 3, "bbox": [0, 0, 15, 15], "iscrowd": 1},
                   {"id": 3, "image_id": 12, "category_id": 3, "bbox": [5, 6, 7, 8]}]
    dataset = load_coco(coco_file(tmp_path / "val.json", images, annotations, categories), folder)
    assert dataset.classes == ["cat", "dog"] and dataset.split == "val"
    a, b, c = dataset.records
    assert (a.image_id, b.image_id, c.image_id) == ("a", "b", "sub/c") and c.path == folder / "sub/c.jpg"
    assert a.boxes.tolist() == [[10.5, 20.0, 40.5, 60.25], [0.0, 0.0, 15.0, 15.0]]  # [x, y, w, h] -> x1 y1 x2 y2
    assert a.labels.tolist() == [1, 0] and a.difficult.tolist() == [False, True]  # iscrowd: ignored as difficult
    assert len(b.boxes) == 0  # an image without annotations: kept, a background image
    assert dataset.coco.image_ids == {"a": 10, "b": 11, "sub/c": 12} and dataset.coco.category_ids == [3, 7]
    only_dogs = load_coco(tmp_path / "val.json", folder, classes=["dog"])
    assert only_dogs.classes == ["dog"] and only_dogs.records[0].labels.tolist() == [0]
    assert len(only_dogs.records[2].boxes) == 0 and only_dogs.coco.category_ids == [7]
    assert image_key("x y%.png") == "x%20y%25"


def test_bad_input_is_named_and_skipped_or_refused(tmp_path, pictures):
    folder, names = pictures
    categories = [{"id": 1, "name": "dog"}]
    images = [{"id": 1, "file_name": names[0]}, {"id": 2, "file_name": "missing.jpg"},
              {"id": 1, "file_name": names[1]}, {"id": 3, "file_name": names[2]}]
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 0, 5]},
                   {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5000, 10, 20, 20]},
                   {"id": 3, "image_id": 1, "category_id": 9, "bbox": [10, 10, 20, 20]},
                   {"id": 4, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, "x"]},
                   {"id": 5, "image_id": 3, "category_id": 1, "bbox": [-5, 10, 20, 20]},
                   {"id": 6, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}]
    dataset = load_coco(coco_file(tmp_path / "bad.json", images, annotations, categories), folder)
    assert [r.image_id for r in dataset.records] == ["a", "sub/c"] and dataset.skipped == 2
    problems = "\n".join(dataset.problems)
    for expected in ("missing.jpg", "repeats an earlier image's", "width or height <= 0", "lies outside",
                     "unknown category id 9", "is not four numbers", "extends outside"):
        assert expected in problems, expected
    assert dataset.records[0].boxes.tolist() == [[1, 2, 4, 6]] and dataset.records[1].boxes.tolist() == [[0, 10, 15, 30]]
    (tmp_path / "broken.json").write_text('{"images": [')
    with pytest.raises(ValueError, match="broken.json is not readable JSON"):
        load_coco(tmp_path / "broken.json", folder)
    with pytest.raises(ValueError, match="not a COCO annotation file"):
        load_coco(coco_file(tmp_path / "odd.json", images, annotations, {"dog": 1}), folder)
    with pytest.raises(ValueError, match="slash.json: category 1 name"):
        load_coco(coco_file(tmp_path / "slash.json", images[:1], [], [{"id": 1, "name": "a/b"}]), folder)


@pytest.fixture(scope="module")
def both_formats(tmp_path_factory):
    """The tiny demo trained and tested from its VOC layout and from its COCO files."""
    cache = tmp_path_factory.mktemp("cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("SPPNET_CACHE", str(cache))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = make_demo_dataset(cache / "demo", n_train=6, n_test=4, seed=3)
        classes = load_voc(root, "train").classes  # every category listed in both files, as COCO files do
        for split in ("train", "test"):
            write_coco(load_voc(root, split, classes), root / "coco" / f"{split}.json", root / "JPEGImages")
        runs = tmp_path_factory.mktemp("runs")
        config = make_config("cpu", TRAINED_TINY)
        train_detector(load_voc(root, "train"), config, runs / "voc", progress=False)
        maps = sorted(p.name for p in cache.rglob("*.npz"))
        train_detector(load_coco(root / "coco" / "train.json", root / "JPEGImages"), config, runs / "coco",
                       progress=False)
        assert sorted(p.name for p in cache.rglob("*.npz")) == maps  # nothing new: the cache was shared
        for name, data in (("voc", ["--voc-root", str(root)]),
                           ("coco", ["--coco", str(root / "coco" / "test.json"), "--image-dir", str(root / "JPEGImages")])):
            test_det.main([*data, "--split", "test", "--model", str(runs / name / "model.pt"),
                           "--out", str(runs / name / "test"), "--quiet"])
        yield root, runs
    finally:
        torch.set_num_threads(threads)
        patch.undo()


def test_both_formats_give_the_same_stages_and_the_same_ap(both_formats):
    root, runs = both_formats
    voc, coco = (read_model_file(runs / name / "model.pt") for name in ("voc", "coco"))
    assert voc["stages"] == coco["stages"] and voc["classes"] == coco["classes"]
    a, b = (json.loads((runs / name / "test" / "metrics.json").read_text()) for name in ("voc", "coco"))
    assert a["mAP"] == b["mAP"] and a["ap"] == b["ap"]
    assert "coco_ap50" in b and "coco_ap50" not in a


def test_coco_metrics_are_cocoeval_on_the_users_file(both_formats):
    root, runs = both_formats
    metrics = json.loads((runs / "coco" / "test" / "metrics.json").read_text())
    detections = json.loads((runs / "coco" / "test" / "detections_coco.json").read_text())
    truth = json.loads((root / "coco" / "test.json").read_text())
    assert {d["image_id"] for d in detections} <= {i["id"] for i in truth["images"]}
    assert {d["category_id"] for d in detections} <= {c["id"] for c in truth["categories"]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools, called directly, as a user would
        gt = COCO(str(root / "coco" / "test.json"))
        evaluation = COCOeval(gt, gt.loadRes(str(runs / "coco" / "test" / "detections_coco.json")), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    for name, index in (("AP", 0), ("AP50", 1), ("AP75", 2), ("APs", 3), ("APm", 4), ("APl", 5)):
        expected = evaluation.stats[index]
        assert metrics["coco"][name] == (pytest.approx(expected) if expected >= 0 else None), name
    precision = evaluation.eval["precision"][0, :, :, 0, -1]
    for k, category in enumerate(evaluation.params.catIds):
        name = next(c["name"] for c in truth["categories"] if c["id"] == category)
        values = precision[:, k][precision[:, k] > -1]
        expected = values.mean() if len(values) else None  # a class without GT in the file: undefined
        assert metrics["coco_ap50"][name] == (pytest.approx(expected) if expected is not None else None), name
