"""The embedded demo dataset: deterministic, complete, tight boxes, reused, built atomically."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import detector.data.demo as demo
from detector.core.images import load_image
from detector.data.demo import DEMO_CLASSES, default_demo_root, make_demo_dataset
from detector.data.voc import load_voc

N_TRAIN, N_TEST = 8, 6


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "demo_voc"
    return make_demo_dataset(root, n_train=N_TRAIN, n_test=N_TEST, seed=5)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_builds_are_byte_identical(built: Path, tmp_path: Path) -> None:
    again = make_demo_dataset(tmp_path / "elsewhere", n_train=N_TRAIN, n_test=N_TEST, seed=5)
    first, second = _files(built), _files(again)
    assert len(first) == 2 * (N_TRAIN + N_TEST) + 3  # images, XMLs, two split files, manifest
    assert first == second
    other_seed = make_demo_dataset(tmp_path / "seed6", n_train=N_TRAIN, n_test=N_TEST, seed=6)
    assert _files(other_seed)["JPEGImages/train_00000.jpg"] != first["JPEGImages/train_00000.jpg"]


def test_reader_loads_it_with_counts_classes_and_boxes_inside(built: Path) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    for split, size in (("train", N_TRAIN), ("test", N_TEST)):
        dataset = load_voc(built, split, DEMO_CLASSES)
        assert dataset.problems == [] and len(dataset.records) == size
        assert len(DEMO_CLASSES) >= 5
        labels = np.concatenate([r.labels for r in dataset.records])
        assert set(labels.tolist()) == set(range(len(DEMO_CLASSES)))  # every class present
        assert manifest["counts"][split]["objects"] == len(labels)
        for record in dataset.records:
            assert 1 <= len(record.boxes) <= 4 and not record.difficult.any()
            assert 320 <= record.width <= 480 and 240 <= record.height <= 360
            assert (record.boxes[:, :2] >= 0).all() and (record.boxes[:, 2] <= record.width).all()
            assert (record.boxes[:, 3] <= record.height).all()
            sides = np.concatenate([record.boxes[:, 2] - record.boxes[:, 0],
                                    record.boxes[:, 3] - record.boxes[:, 1]])
            assert sides.min() >= 28 and sides.max() <= 200
            assert load_image(record.path).shape == (record.height, record.width, 3)


def test_occlusion_by_later_objects_stays_below_30_percent(built: Path) -> None:
    """Naive pixel-grid check of the placement rule, on the written annotations (drawing order)."""
    for split in ("train", "test"):
        for record in load_voc(built, split, DEMO_CLASSES).records:
            boxes = record.boxes.astype(int)
            for i, (x1, y1, x2, y2) in enumerate(boxes):
                grid = np.zeros((record.height, record.width), bool)
                for bx1, by1, bx2, by2 in boxes[i + 1 :]:
                    grid[by1:by2, bx1:bx2] = True
                assert grid[y1:y2, x1:x2].mean() <= 0.3


@pytest.mark.parametrize("name", DEMO_CLASSES)
def test_every_shape_fills_its_box_tightly(name: str) -> None:
    rng = np.random.default_rng(0)
    for width, height in ((28, 28), (200, 100), (57, 140)):
        mask = demo._shape_mask(name, rng, width, height)
        assert mask.shape == (height, width)
        # each border row / column is touched, and the shape covers a fair part of its box
        assert min(mask[0].max(), mask[-1].max(), mask[:, 0].max(), mask[:, -1].max()) > 0.1
        assert mask.min() >= 0 and mask.max() <= 1 and mask.mean() > 0.2
        assert mask[height // 2, width // 2] == (0 if name == "ring" else 1)  # only the ring has a hole


def test_second_call_reuses_without_rebuilding(built: Path, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("rebuilt a complete dataset")

    monkeypatch.setattr(demo, "_write_dataset", fail)
    assert make_demo_dataset(built, n_train=N_TRAIN, n_test=N_TEST, seed=5) == built


def test_other_parameters_or_incomplete_dataset_rebuild(tmp_path: Path) -> None:
    root = make_demo_dataset(tmp_path / "d", n_train=3, n_test=2, seed=0)
    assert len(list((root / "JPEGImages").iterdir())) == 5
    make_demo_dataset(root, n_train=4, n_test=2, seed=0)
    assert json.loads((root / "manifest.json").read_text())["params"]["n_train"] == 4
    assert len(list((root / "JPEGImages").iterdir())) == 6
    (root / "JPEGImages" / "test_00001.jpg").unlink()  # damaged by hand: no longer complete
    make_demo_dataset(root, n_train=4, n_test=2, seed=0)
    assert (root / "JPEGImages" / "test_00001.jpg").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no build folders left beside it


def test_failed_build_leaves_nothing_that_looks_complete(tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    real = demo.render_demo_image

    def dies_midway(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(demo, "render_demo_image", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        make_demo_dataset(tmp_path / "d", n_train=4, n_test=2)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_a_folder_that_is_not_a_demo_dataset(tmp_path: Path) -> None:
    precious = tmp_path / "VOC2007"
    precious.mkdir()
    (precious / "data.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a demo dataset"):
        make_demo_dataset(precious, n_train=2, n_test=1)
    assert (precious / "data.txt").read_text() == "keep me"


def test_default_root_honours_sppnet_cache(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPPNET_CACHE", str(tmp_path))
    assert default_demo_root() == tmp_path / "demo_voc"
    monkeypatch.delenv("SPPNET_CACHE")
    assert default_demo_root() == Path("~/.cache/sppnet").expanduser() / "demo_voc"
