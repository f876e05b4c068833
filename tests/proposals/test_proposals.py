"""Selective search, the proposal cache and proposal recall."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

import proposals.cache as cache_module
from detector.core.boxes import iou_matrix
from detector.core.records import ImageRecord
from proposals.cache import (
    ProposalCache,
    compute_proposals,
    default_cache_folder,
    escape_image_id,
    load_or_compute_proposals,
    search_timings,
)
from proposals.recall import proposal_recall
from proposals.selective_search import selective_search, unique_rounded

RECTANGLES = [(20, 30, 90, 100), (130, 20, 190, 70), (110, 100, 180, 140)]  # x1, y1, x2, y2
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230)]


def synthetic_image(width: int = 200, height: int = 150, seed: int = 0) -> np.ndarray:
    """Grey, slightly noisy background with three solid rectangles (``RECTANGLES``)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(118, 138, size=(height, width, 3)).astype(np.uint8)
    for (x1, y1, x2, y2), colour in zip(RECTANGLES, COLOURS):
        image[y1:y2, x1:x2] = colour
    return image


def assert_valid_boxes(boxes: np.ndarray, width: int, height: int) -> None:
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert len(boxes) > 0
    assert np.isfinite(boxes).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


# ---------------------------------------------------------------- selective search


@pytest.mark.parametrize("scale, max_side", [(1, 500), (3, 200)])
def test_selective_search_finds_solid_rectangles(scale: int, max_side: int) -> None:
    """Each rectangle is found, also when the image is searched smaller and mapped back."""
    image = cv2.resize(synthetic_image(), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    boxes = selective_search(image, max_side=max_side)
    assert_valid_boxes(boxes, image.shape[1], image.shape[0])
    truth = np.array(RECTANGLES, np.float32) * scale
    assert (iou_matrix(truth, boxes).max(axis=1) > 0.7).all()
    assert len(unique_rounded(boxes)) == len(boxes)


def test_selective_search_is_deterministic() -> None:
    image = synthetic_image(seed=3)
    np.testing.assert_array_equal(selective_search(image), selective_search(image))


def gray_as_rgb() -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(synthetic_image(), cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


@pytest.mark.parametrize(
    "make_image",
    [
        lambda: np.random.default_rng(1).integers(0, 256, (8, 8, 3)).astype(np.uint8),
        lambda: np.full((8, 8, 3), 77, np.uint8),
        lambda: cv2.resize(synthetic_image(), (2000, 100), interpolation=cv2.INTER_NEAREST),
        lambda: cv2.resize(synthetic_image(), (100, 2000), interpolation=cv2.INTER_NEAREST),
        gray_as_rgb,
        lambda: cv2.cvtColor(synthetic_image(), cv2.COLOR_RGB2GRAY),
    ],
    ids=["tiny-noise", "tiny-flat", "wide", "tall", "gray-as-rgb", "gray-2d"],
)
def test_selective_search_odd_images(make_image) -> None:
    image = make_image()
    boxes = selective_search(image)
    assert_valid_boxes(boxes, image.shape[1], image.shape[0])


def test_selective_search_drops_tiny_boxes() -> None:
    image = synthetic_image()
    boxes = selective_search(image, min_box_size=25)
    assert_valid_boxes(boxes, image.shape[1], image.shape[0])
    assert (boxes[:, 2:] - boxes[:, :2] >= 25).all()


def test_selective_search_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="dtype float64"):
        selective_search(np.zeros((10, 10, 3)))
    with pytest.raises(ValueError, match="shape"):
        selective_search(np.zeros((10, 10, 4), np.uint8))
    with pytest.raises(ValueError, match="unknown selective search mode"):
        selective_search(synthetic_image(), mode="slow")


def test_selective_search_without_opencv_contrib_names_the_package(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With plain OpenCV (no ximgproc) the module still imports and the search says what to install."""
    without_contrib = "import cv2; del cv2.ximgproc; import proposals.selective_search"
    subprocess.run([sys.executable, "-c", without_contrib], check=True, cwd=Path(__file__).parents[2])
    monkeypatch.delattr(cv2, "ximgproc")
    with pytest.raises(RuntimeError, match="opencv-contrib-python"):
        selective_search(synthetic_image())


def test_unique_rounded_matches_naive_loop() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 50, (40, 4)).astype(np.float32)
    boxes = np.concatenate([base, base[rng.integers(0, 40, 30)] + rng.uniform(-0.3, 0.3, (30, 4))])
    boxes = boxes[rng.permutation(len(boxes))].astype(np.float32)
    seen, expected = set(), []
    for box in boxes:
        key = tuple(np.round(box.astype(np.float64)))
        if key not in seen:
            seen.add(key)
            expected.append(box)
    np.testing.assert_array_equal(unique_rounded(boxes), np.array(expected))


# ---------------------------------------------------------------- cache


def test_escape_image_id_is_safe_and_distinct(tmp_path: Path) -> None:
    ids = ["000012", "a/b", "a%2Fb", "..", ".", "x y", "é", "A", "%41", "a\\b", "x" * 500, "x" * 499 + "y"]
    names = [escape_image_id(i) for i in ids]
    assert len(set(names)) == len(ids)
    assert names[0] == "000012"
    cache = ProposalCache(tmp_path)
    for image_id in ids:
        path = cache.path(image_id)
        assert path.parent == tmp_path and len(path.name) <= 210
        cache.save(image_id, np.array([[0, 0, 5, 5]], np.float32), (10, 10))
    for image_id in ids:
        np.testing.assert_array_equal(cache.load(image_id), [[0, 0, 5, 5]])
    with pytest.raises(ValueError, match="empty"):
        escape_image_id("")


def test_cache_round_trip(tmp_path: Path) -> None:
    cache = ProposalCache(tmp_path / "nested" / "folder")
    boxes = np.array([[0, 0, 10, 20], [1.5, 2.5, 30, 40]], np.float32)
    cache.save("img", boxes, (30, 40), seconds=1.25, cpu_seconds=1.0)
    entry = cache.read("img", (30, 40))
    np.testing.assert_array_equal(entry.boxes, boxes)
    assert entry.boxes.dtype == np.float32
    assert entry.image_size == (30, 40) and entry.seconds == 1.25 and entry.cpu_seconds == 1.0
    assert cache.load("missing") is None
    empty = np.zeros((0, 4), np.float32)
    cache.save("empty", empty, (30, 40))
    assert cache.load("empty").shape == (0, 4)


def test_cache_refuses_to_save_invalid_boxes(tmp_path: Path) -> None:
    cache = ProposalCache(tmp_path)
    with pytest.raises(ValueError, match="outside"):
        cache.save("img", np.array([[0, 0, 31, 5]], np.float32), (30, 40))
    with pytest.raises(ValueError, match="float32"):
        cache.save("img", np.array([[0, 0, 3, 5]], np.float64), (30, 40))
    assert not cache.path("img").exists()


def test_cache_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that dies half way leaves the previous file intact and no temporary file."""
    cache = ProposalCache(tmp_path)
    old = np.array([[0, 0, 5, 5]], np.float32)
    cache.save("img", old, (10, 10))

    def dying_savez(handle, **arrays):
        handle.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module.np, "savez", dying_savez)
    with pytest.raises(KeyboardInterrupt):
        cache.save("img", np.array([[1, 1, 6, 6]], np.float32), (10, 10))
    monkeypatch.undo()
    np.testing.assert_array_equal(cache.load("img"), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.npz"]


def write_raw_entry(path: Path, boxes, image_size=(10, 10)) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, boxes=np.asarray(boxes), image_size=np.array(image_size, np.int64),
                 seconds=np.float64(0), cpu_seconds=np.float64(0))


@pytest.mark.parametrize(
    "corrupt, reason",
    [
        (lambda p: p.write_bytes(b"not a zip file"), "unreadable"),
        (lambda p: p.write_bytes(b""), "unreadable"),
        (lambda p: p.write_bytes(p.read_bytes()[:40]), "unreadable"),
        (lambda p: np.savez(p, boxes=np.zeros((1, 4), np.float32)), "unreadable"),
        (lambda p: write_raw_entry(p, np.zeros((2, 3), np.float32)), "invalid"),
        (lambda p: write_raw_entry(p, np.array([[0, 0, 5, 5]], np.float64)), "invalid"),
        (lambda p: write_raw_entry(p, np.array([[0, 0, np.nan, 5]], np.float32)), "invalid"),
        (lambda p: write_raw_entry(p, np.array([[0, 0, 11, 5]], np.float32)), "invalid"),
        (lambda p: write_raw_entry(p, np.array([[-1, 0, 5, 5]], np.float32)), "invalid"),
        (lambda p: write_raw_entry(p, np.array([[5, 0, 5, 5]], np.float32)), "invalid"),
        (lambda p: write_raw_entry(p, np.array([[0, 0, 5, 5]], np.float32), (12, 10)), "invalid"),
    ],
    ids=["garbage", "empty", "truncated", "missing-keys", "shape", "dtype", "nan", "outside", "negative",
         "empty-box", "size-mismatch"],
)
def test_cache_detects_broken_files(tmp_path: Path, caplog: pytest.LogCaptureFixture, corrupt, reason: str) -> None:
    cache = ProposalCache(tmp_path)
    cache.save("img", np.array([[0, 0, 5, 5]], np.float32), (10, 10))
    path = cache.path("img")
    corrupt(path)
    with caplog.at_level(logging.WARNING, logger="proposals.cache"):
        assert cache.load("img", (10, 10)) is None
    assert str(path) in caplog.text and reason in caplog.text


class FakeSearch:
    """Stands in for selective search: counts calls, returns the image's top-left quarter."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, image: np.ndarray, mode: str, max_side: int) -> np.ndarray:
        height, width = image.shape[:2]
        self.calls.append((width, height))
        return np.array([[0, 0, width / 2, height / 2]], np.float32)


def image_records(folder: Path, count: int) -> list[ImageRecord]:
    """``count`` small PNG images on disk with their records (sizes differ per image)."""
    records = []
    for i in range(count):
        width, height = 40 + 4 * i, 30 + 2 * i
        path = folder / f"im{i}.png"
        cv2.imwrite(str(path), np.full((height, width, 3), 40 * i, np.uint8))
        records.append(ImageRecord(f"id/{i}", path, width, height))
    return records


def test_compute_proposals_resumes_and_recomputes_broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSearch()
    monkeypatch.setattr(cache_module, "selective_search", fake)
    records = image_records(tmp_path, 4)
    cache = ProposalCache(tmp_path / "cache")

    first = compute_proposals(records, cache, workers=1, progress=False)
    assert (first.computed, first.skipped, first.failed) == (4, 0, [])
    assert len(fake.calls) == 4
    for record in records:
        np.testing.assert_array_equal(cache.load(record.image_id, (record.width, record.height)),
                                      [[0, 0, record.width / 2, record.height / 2]])

    second = compute_proposals(records, cache, workers=1, progress=False)
    assert (second.computed, second.skipped) == (0, 4) and len(fake.calls) == 4

    cache.path(records[1].image_id).write_bytes(b"broken")
    cache.path(records[2].image_id).unlink()
    third = compute_proposals(records, cache, workers=1, progress=False)
    assert (third.computed, third.skipped) == (2, 2)
    assert fake.calls[4:] == [(records[1].width, records[1].height), (records[2].width, records[2].height)]
    assert all(cache.load(r.image_id) is not None for r in records)
    assert search_timings(records, cache).images == 4


def test_compute_proposals_goes_on_after_a_bad_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cache_module, "selective_search", FakeSearch())
    records = image_records(tmp_path, 3)
    records[0] = ImageRecord("gone", tmp_path / "gone.jpg", 10, 10)
    records[1].path.write_bytes(b"not an image")
    records[2].width += 1  # the record disagrees with the file
    (tmp_path / "good").mkdir()
    good = image_records(tmp_path / "good", 1)  # one that works, after the failures
    cache = ProposalCache(tmp_path / "cache")
    with caplog.at_level(logging.ERROR, logger="proposals.cache"):
        report = compute_proposals(records + good, cache, workers=1, progress=False)
    assert report.computed == 1 and sorted(report.failed) == sorted(["gone", "id/1", "id/2"])
    assert "gone.jpg" in caplog.text and "im1.png" in caplog.text and "record says" in caplog.text
    assert cache.load(good[0].image_id) is not None


def test_compute_proposals_with_a_process_pool(tmp_path: Path) -> None:
    """Real selective search in two spawned workers, each writing its own files."""
    records = []
    for i in range(2):
        path = tmp_path / f"pool{i}.png"
        image = synthetic_image(100, 75, seed=i)
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        records.append(ImageRecord(f"pool{i}", path, 100, 75))
    cache = ProposalCache(tmp_path / "cache")
    report = compute_proposals(records, cache, workers=2, progress=False)
    assert (report.computed, report.failed, report.workers) == (2, [], 2)
    for i, record in enumerate(records):
        expected = selective_search(synthetic_image(100, 75, seed=i))
        np.testing.assert_array_equal(cache.load(record.image_id, (100, 75)), expected)


def test_load_or_compute_proposals_uses_the_default_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPPNET_CACHE", str(tmp_path / "caches"))
    monkeypatch.setattr(cache_module, "selective_search", FakeSearch())
    records = image_records(tmp_path, 2)
    records[1] = ImageRecord("missing", tmp_path / "missing.png", 10, 10)
    dataset = SimpleNamespace(root=tmp_path, records=records)
    proposals = load_or_compute_proposals(dataset.root, dataset.records, "fast", 500, workers=1, progress=False)
    assert list(proposals) == ["id/0"]
    folder = default_cache_folder(tmp_path, "fast", 500)
    assert str(folder).startswith(str(tmp_path / "caches")) and folder.name.startswith(f"fast-500-v{cache_module.CACHE_VERSION}-")
    assert default_cache_folder(tmp_path, "quality", 500).name.split("-")[-1] != folder.name.split("-")[-1]
    assert ProposalCache(folder).path("id/0").is_file()


# ---------------------------------------------------------------- recall


def record_with(image_id: str, boxes) -> ImageRecord:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return ImageRecord(image_id, Path(f"{image_id}.jpg"), 100, 100, boxes,
                       np.zeros(len(boxes), np.int64), np.zeros(len(boxes), bool))


def test_recall_hand_computed() -> None:
    records = [
        record_with("a", [[0, 0, 10, 10], [50, 50, 70, 70]]),
        record_with("b", [[0, 0, 10, 10]]),
        record_with("c", [[10, 10, 20, 20]]),  # no proposals for this image
        record_with("d", []),
    ]
    records[0].difficult[1] = True  # difficult boxes count too
    proposals = {
        "a": np.array([[0, 0, 10, 21], [0, 0, 10, 20], [50, 50, 70, 70]], np.float32),  # IoU 100/210, 0.5, 1
        "b": np.array([[0, 0, 10, 21], [5, 0, 15, 10]], np.float32),  # IoU 100/210, 50/150
        "d": np.zeros((0, 4), np.float32),
    }
    stats = proposal_recall(records, proposals)
    assert (stats.num_gt, stats.num_recalled, stats.missing_images, stats.num_images) == (4, 2, 1, 4)
    assert stats.recall == pytest.approx(0.5)
    assert stats.mean_proposals == pytest.approx((3 + 2 + 0) / 3)

    first_only = proposal_recall(records, proposals, max_proposals=1)
    assert first_only.num_recalled == 0 and first_only.mean_proposals == pytest.approx(2 / 3)
    assert proposal_recall(records, proposals, iou_threshold=0.3).num_recalled == 3
    assert proposal_recall([records[3]], proposals).recall == 0.0
    with pytest.raises(ValueError, match="max_proposals"):
        proposal_recall(records, proposals, max_proposals=0)


def test_recall_matches_naive_reference_and_reads_a_cache(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def random_boxes(n: int) -> np.ndarray:
        xy = rng.uniform(0, 60, (n, 2))
        return np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], axis=1).astype(np.float32)

    records = [record_with(f"r{i}", random_boxes(int(rng.integers(0, 6)))) for i in range(30)]
    proposals = {r.image_id: random_boxes(int(rng.integers(0, 50))) for r in records}

    def naive_iou(a, b) -> float:
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    for threshold, limit in [(0.5, None), (0.7, None), (0.5, 10)]:
        hits = sum(
            any(naive_iou(g.astype(np.float64), p.astype(np.float64)) >= threshold
                for p in proposals[r.image_id][:limit])
            for r in records for g in r.boxes
        )
        stats = proposal_recall(records, proposals, threshold, limit)
        assert stats.num_recalled == hits and stats.num_gt == sum(len(r.boxes) for r in records)

    cache = ProposalCache(tmp_path)
    for record in records:
        cache.save(record.image_id, proposals[record.image_id], (record.width, record.height))
    assert proposal_recall(records, cache) == proposal_recall(records, proposals)
