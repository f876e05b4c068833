"""The SVMs' positives: GT boxes, proposals near them (svm.pos_iou), mirrored copies (svm.flip_positives)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from detector.core.boxes import flip_boxes
from detector.core.images import load_image
from detector.core.records import ImageRecord
from detector.core.timing import StageTimer
from detector.core.windows import build_windows
from detector.data.voc import load_voc
from detector.engine.train import mine_classifiers, training_windows
from detector.model.detector import load_model
from detector.model.features import window_features
from svm.config import SVMConfig


def _iou(a, b) -> float:
    """IoU of two continuous boxes (the project's convention), plain Python."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("seed", range(5))
def test_near_gt_windows_match_a_naive_loop(seed):
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, 80, (4, 2))
    gt = np.concatenate([corners, corners + rng.uniform(20, 40, (4, 2))], axis=1)
    jittered = gt[rng.integers(0, 4, 60)] + rng.normal(0, 4, (60, 4))
    anywhere = rng.uniform(0, 100, (20, 2))
    proposals = np.concatenate([jittered, np.concatenate([anywhere, anywhere + rng.uniform(5, 50, (20, 2))], 1)])
    proposals[:, 2:] = np.maximum(proposals[:, 2:], proposals[:, :2] + 1)
    labels, difficult = np.array([3, 1, 3, 0]), np.array([False, False, True, False])
    record = ImageRecord("im", Path("im.jpg"), 200, 200, gt.astype(np.float32), labels, difficult)
    windows = build_windows(record, proposals.astype(np.float32))
    for min_iou in (0.5, 0.7, 1.0):
        rows = windows.near_gt(min_iou)
        expected_rows, expected_classes = [], []
        for i, p in enumerate(windows.boxes[4:].astype(np.float64)):
            overlaps = [_iou(p, g) for g in windows.boxes[:4].astype(np.float64)]
            best = int(np.argmax(overlaps))
            if min_iou < 1 and overlaps[best] >= min_iou and not difficult[best]:
                expected_rows.append(4 + i)
                expected_classes.append(labels[best])
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_array_equal(windows.gt_labels[rows], expected_classes)
        if min_iou == 0.7:
            assert 0 < len(rows) < 60  # the test reaches both sides of the threshold


def test_pos_iou_must_lie_above_neg_iou():
    with pytest.raises(ValueError, match="pos_iou"):
        SVMConfig(pos_iou=0.3)
    with pytest.raises(ValueError, match="pos_iou"):
        SVMConfig(pos_iou=1.2)


def test_features_of_the_flipped_image_are_those_of_its_mirror_copy(tiny_trained, monkeypatch):
    root, run, cache = tiny_trained
    monkeypatch.setenv("SPPNET_CACHE", str(cache))
    model = load_model(run / "model.pt")
    model = model.with_config(model.config, None)  # maps computed here, from the pixels given
    record = load_voc(root, "train").records[0]
    image = load_image(record.path)
    boxes = np.concatenate([record.boxes, [[2, 3, 40, 30], [10, 5, 60, 58]]]).astype(np.float32)
    mirrored = np.ascontiguousarray(image[:, ::-1])
    flipped = window_features(model, record, flip_boxes(boxes, record.width), StageTimer(), image=image, flip=True)
    expected = window_features(model, record, flip_boxes(boxes, record.width), StageTimer(), image=mirrored)
    torch.testing.assert_close(flipped.window_fc7(), expected.window_fc7(), rtol=1e-5, atol=1e-5)
    unflipped = window_features(model, record, boxes, StageTimer(), image=image)
    assert not torch.allclose(flipped.window_fc7(), unflipped.window_fc7(), atol=1e-3)


def test_pos_iou_adds_the_proposals_near_gt_boxes(tiny_trained, monkeypatch):
    root, run, cache = tiny_trained
    monkeypatch.setenv("SPPNET_CACHE", str(cache))
    model = load_model(run / "model.pt")
    windows = training_windows(load_voc(root, "train"), model.config, progress=False)
    near = model.with_config(model.config.replace(**{"svm.pos_iou": 0.7}), cache / "maps-pos-test")
    _, _, stats, _ = mine_classifiers(near, windows, progress=False)
    expected = np.zeros(len(model.classes), dtype=int)
    for w in windows:
        record = w.record
        np.add.at(expected, record.labels[~record.difficult], 1)
        np.add.at(expected, w.gt_labels[w.near_gt(0.7)], 1)
    assert [c["num_positives"] for c in stats["classes"]] == expected.tolist()
    assert expected.sum() > sum(int((~w.record.difficult).sum()) for w in windows)  # proposals were added


def test_flip_positives_doubles_every_class_positives(tiny_trained, monkeypatch):
    root, run, cache = tiny_trained
    monkeypatch.setenv("SPPNET_CACHE", str(cache))
    model = load_model(run / "model.pt")
    windows = training_windows(load_voc(root, "train"), model.config, progress=False)
    counts = {}
    for flip in (False, True):
        flipped = model.with_config(model.config.replace(**{"svm.flip_positives": flip}),
                                    cache / "maps-flip-test")
        _, _, stats, miner = mine_classifiers(flipped, windows, progress=False)
        counts[flip] = [c["num_positives"] for c in stats["classes"]]
        if flip:
            for label, parts in enumerate(miner.positives):
                if parts:  # the mirrored copies are new rows, not the same features twice
                    rows = np.concatenate(parts)
                    assert len(np.unique(rows.round(3), axis=0)) == len(rows)
    expected = [2 * sum(int(np.sum((w.record.labels == k) & ~w.record.difficult)) for w in windows)
                for k in range(len(model.classes))]
    assert counts[True] == [2 * n for n in counts[False]] == expected and sum(expected) > 0



def test_svm_scales_pool_the_svm_windows_at_those_scales(tiny_trained, monkeypatch):
    root, run, cache = tiny_trained
    monkeypatch.setenv("SPPNET_CACHE", str(cache))
    model = load_model(run / "model.pt")
    windows = training_windows(load_voc(root, "train"), model.config, progress=False)[:2]
    other = (288,)  # the tiny model trains at 224
    assert model.config.scales != other
    svm_model = model.with_config(model.config.replace(**{"svm.scales": other}), cache / "maps-svm-scales")
    _, _, _, miner = mine_classifiers(svm_model, windows, progress=False)
    stored = np.concatenate([np.concatenate(parts) for parts in miner.positives if parts]).astype(np.float64)

    def gt_fc7(scales):
        rows = []
        for w in windows:
            features = window_features(svm_model, w.record, w.record.boxes, StageTimer(), scales=scales)
            rows.append(features.window_fc7().numpy()[~w.record.difficult])
        by_class = np.concatenate([w.record.labels[~w.record.difficult] for w in windows])
        return np.concatenate(rows)[np.argsort(by_class, kind="stable")].astype(np.float64)

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    assert len(stored) > 0
    np.testing.assert_allclose(unit(stored), unit(gt_fc7(other)), atol=2e-3)  # float16 cache
    assert np.abs(unit(stored) - unit(gt_fc7(model.config.scales))).max() > 1e-2


def test_svm_scales_are_checked():
    with pytest.raises(ValueError, match="scales"):
        SVMConfig(scales=(0,))
