"""Tests of bbox_regression: transforms, training pairs, per-class ridge regressors."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bbox_regression.ridge import BoxRegressor, BoxRegressorConfig, BoxRegressorTrainer, _PairReservoir
from bbox_regression.training_pairs import select_training_pairs
from bbox_regression.transforms import MAX_LOG_SCALE, decode, encode
from detector.core.boxes import clip_boxes, iou_matrix

IMAGE_W, IMAGE_H = 500, 375
SIGNAL_DIMS, NOISE_DIMS = 200, 100


def random_boxes(rng: np.random.Generator, count: int, min_size: float = 8.0) -> np.ndarray:
    x1 = rng.uniform(0, IMAGE_W - 60, count)
    y1 = rng.uniform(0, IMAGE_H - 60, count)
    w = rng.uniform(min_size, IMAGE_W - x1)
    h = rng.uniform(min_size, IMAGE_H - y1)
    return np.stack([x1, y1, x1 + w, y1 + h], axis=1)


def naive_encode(p, g):
    pw, ph = p[2] - p[0], p[3] - p[1]
    gw, gh = g[2] - g[0], g[3] - g[1]
    px, py = p[0] + pw / 2, p[1] + ph / 2
    gx, gy = g[0] + gw / 2, g[1] + gh / 2
    return [(gx - px) / pw, (gy - py) / ph, math.log(gw / pw), math.log(gh / ph)]


def naive_decode(b, d):
    w, h = b[2] - b[0], b[3] - b[1]
    cx, cy = b[0] + w / 2 + d[0] * w, b[1] + h / 2 + d[1] * h
    nw, nh = w * math.exp(min(d[2], math.log(1000 / 16))), h * math.exp(min(d[3], math.log(1000 / 16)))
    return [cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2]


def naive_iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# ---------------------------------------------------------------- transforms


def test_encode_matches_naive_loop():
    rng = np.random.default_rng(0)
    p, g = random_boxes(rng, 300), random_boxes(rng, 300)
    expected = np.array([naive_encode(a, b) for a, b in zip(p, g)])
    np.testing.assert_allclose(encode(p, g), expected, rtol=1e-12, atol=1e-12)


def test_decode_matches_naive_loop_and_inverts_encode():
    rng = np.random.default_rng(1)
    p, g = random_boxes(rng, 300), random_boxes(rng, 300)
    deltas = rng.normal(0, 0.5, (300, 4))
    expected = np.array([naive_decode(b, d) for b, d in zip(p, deltas)])
    np.testing.assert_allclose(decode(p, deltas), expected, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(decode(p, encode(p, g)), g, rtol=0, atol=1e-9)


def test_decode_clamps_log_scale_and_keeps_float32():
    boxes = np.array([[10, 20, 30, 60]], dtype=np.float32)
    out = decode(boxes, np.array([[0, 0, 1e4, 1e4]], dtype=np.float32))
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0, 2] - out[0, 0], 20 * math.exp(MAX_LOG_SCALE), rtol=1e-5)
    np.testing.assert_allclose(out[0, 3] - out[0, 1], 40 * 1000 / 16, rtol=1e-5)


def test_encode_rejects_empty_box():
    with pytest.raises(ValueError, match="proposal box 1"):
        encode(np.array([[0, 0, 5, 5], [3, 3, 3, 9]]), np.array([[0, 0, 5, 5], [0, 0, 5, 5]]))


# ---------------------------------------------------------------- training pairs


def test_select_training_pairs_matches_naive_loop():
    rng = np.random.default_rng(2)
    for _ in range(20):
        gt = random_boxes(rng, int(rng.integers(1, 5)), min_size=30)
        labels = rng.integers(0, 20, len(gt))
        jittered = decode(np.repeat(gt, 15, axis=0), rng.normal(0, 0.2, (15 * len(gt), 4)))
        boxes = np.concatenate([jittered, random_boxes(rng, 40), gt])
        indices, matched = select_training_pairs(boxes, gt, labels)
        expected_idx, expected_gt = [], []
        for i, box in enumerate(boxes):
            ious = [naive_iou(box, g) for g in gt]
            best = int(np.argmax(ious))
            if ious[best] > 0.5:
                expected_idx.append(i)
                expected_gt.append(best)
        assert indices.tolist() == expected_idx
        assert matched.tolist() == expected_gt
        assert set(range(len(boxes) - len(gt), len(boxes))) <= set(indices.tolist())  # GT boxes kept


def test_select_training_pairs_threshold_is_strict_and_handles_empty():
    gt = np.array([[0, 0, 10, 10]], dtype=np.float32)
    boxes = np.array([[0, 0, 10, 20], [0, 0, 10, 19]], dtype=np.float32)  # IoU 0.5 and 100/190
    indices, matched = select_training_pairs(boxes, gt, np.array([3]))
    assert indices.tolist() == [1] and matched.tolist() == [0]
    indices, matched = select_training_pairs(boxes, np.zeros((0, 4)), np.zeros(0, dtype=np.int64))
    assert len(indices) == 0 and len(matched) == 0
    with pytest.raises(ValueError, match="gt_labels"):
        select_training_pairs(boxes, gt, np.array([1, 2]))


# ---------------------------------------------------------------- ridge regressors


def class_mixing_matrices(seed: int = 3, classes: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, (SIGNAL_DIMS, 4)) for _ in range(classes)]


def synthetic_image(rng: np.random.Generator, mixing: list[np.ndarray], labels: np.ndarray):
    """(features, proposals, GT boxes, labels): features = A_class @ true offsets + noise.

    Class 1's proposals are biased to be too wide, so the per-class target mean matters.
    Background proposals (far from every object) carry pure-noise features.
    """
    gt = random_boxes(rng, len(labels), min_size=40).astype(np.float32)
    per_object = 12
    owner = np.repeat(np.arange(len(gt)), per_object)
    jitter = rng.normal(0, [0.12, 0.12, 0.2, 0.2], (len(owner), 4))
    jitter[labels[owner] == 1, 2] += 0.25
    proposals = decode(gt[owner].astype(np.float64), jitter)
    proposals = np.clip(proposals, 0, [IMAGE_W, IMAGE_H, IMAGE_W, IMAGE_H])
    offsets = encode(proposals, gt[owner].astype(np.float64))
    signal = np.stack([mixing[c] @ t for c, t in zip(labels[owner], offsets / 0.2)])
    features = np.concatenate(
        [signal + rng.normal(0, 1, signal.shape), rng.normal(0, 1, (len(owner), NOISE_DIMS))], axis=1
    )
    background = np.array([[0, 0, 6, 6], [IMAGE_W - 6, IMAGE_H - 6, IMAGE_W, IMAGE_H]], dtype=np.float64)
    features = np.concatenate([features, rng.normal(0, 1, (2, features.shape[1]))]) + 0.5
    return features.astype(np.float32), np.concatenate([proposals, background]).astype(np.float32), gt, labels


def mean_iou(boxes: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean(np.diag(iou_matrix(boxes, gt))))


@pytest.fixture(scope="module")
def trained():
    """A regressor fitted on 150 synthetic images (classes 0, 1) plus 3 pairs of class 2."""
    mixing = class_mixing_matrices()
    rng = np.random.default_rng(4)
    trainer = BoxRegressorTrainer(BoxRegressorConfig())
    for _ in range(150):
        trainer.add(*synthetic_image(rng, mixing, rng.integers(0, 2, 2)))
    features, _, gt, _ = synthetic_image(rng, mixing, np.array([2]))
    trainer.add(features[:3], np.repeat(gt, 3, axis=0), gt, np.array([2]))
    return trainer, trainer.fit(), mixing


def held_out_pairs(mixing, seed: int = 5, images: int = 60):
    rng = np.random.default_rng(seed)
    features, boxes, targets, classes = [], [], [], []
    for _ in range(images):
        labels = rng.integers(0, 2, 2)
        f, b, gt, _ = synthetic_image(rng, mixing, labels)
        idx, matched = select_training_pairs(b, gt, labels)
        features.append(f[idx]), boxes.append(b[idx]), targets.append(gt[matched]), classes.append(labels[matched])
    return np.concatenate(features), np.concatenate(boxes), np.concatenate(targets), np.concatenate(classes)


def test_regressor_improves_held_out_localisation(trained):
    trainer, regressor, mixing = trained
    assert trainer.pairs_kept()[2] == 3
    features, boxes, gt, classes = held_out_pairs(mixing)
    before = mean_iou(boxes, gt)
    after = mean_iou(regressor.predict(features, boxes, classes), gt)
    wrong_class = mean_iou(regressor.predict(features, boxes, 1 - classes), gt)
    assert after > before + 0.1, (before, after)
    assert after > 0.85 and wrong_class < after - 0.1, (after, wrong_class)


def test_per_row_classes_match_single_class_calls(trained):
    _, regressor, mixing = trained
    features, boxes, _, classes = held_out_pairs(mixing, seed=6, images=10)
    together = regressor.predict(features, boxes, classes)
    for cls in (0, 1):
        rows = classes == cls
        # Equal up to float32 summation order (the product's blocking depends on the row count).
        np.testing.assert_allclose(together[rows], regressor.predict(features[rows], boxes[rows], cls), rtol=0, atol=1e-3)


def test_shared_feature_rows_match_a_float64_per_box_reference(trained):
    """Detection regresses one window for several classes through ``feature_rows``."""
    _, regressor, mixing = trained
    features, boxes, _, _ = held_out_pairs(mixing, seed=10, images=10)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(features), 300)
    classes = rng.integers(0, 4, 300)  # 2 and 3 have no regressor
    shared = regressor.predict(features, boxes[rows], classes, feature_rows=rows)
    row_of_class = {int(c): k for k, c in enumerate(regressor.classes)}
    for i, (row, cls) in enumerate(zip(rows, classes)):
        k = row_of_class.get(int(cls))
        if k is None:
            np.testing.assert_array_equal(shared[i], boxes[row])
            continue
        raw = features[row].astype(np.float64) @ regressor.weights[k].astype(np.float64).T
        deltas = (raw * regressor.feature_scale + regressor.intercepts[k]) * regressor.target_std[k] \
            + regressor.target_mean[k]
        expected = decode(boxes[row][None].astype(np.float64), deltas[None])[0]
        np.testing.assert_allclose(shared[i], expected, rtol=1e-4, atol=1e-2)
    with pytest.raises(ValueError, match="feature_rows"):
        regressor.predict(features, boxes[:2], 0, feature_rows=np.array([0, len(features)]))


def test_class_without_enough_pairs_returns_boxes_unchanged(trained):
    _, regressor, mixing = trained
    assert regressor.classes.tolist() == [0, 1]
    features, boxes, _, _ = held_out_pairs(mixing, seed=7, images=5)
    for cls in (2, 17):  # too few pairs; never seen
        np.testing.assert_array_equal(regressor.predict(features, boxes, cls), boxes)


def test_state_dict_round_trip_through_npz(trained, tmp_path):
    _, regressor, mixing = trained
    np.savez(tmp_path / "bbox.npz", **regressor.state_dict())
    with np.load(tmp_path / "bbox.npz", allow_pickle=False) as stored:
        restored = BoxRegressor.from_state_dict(dict(stored))
    features, boxes, _, classes = held_out_pairs(mixing, seed=8, images=10)
    np.testing.assert_array_equal(restored.predict(features, boxes, classes), regressor.predict(features, boxes, classes))
    with pytest.raises(ValueError, match="missing"):
        BoxRegressor.from_state_dict({"classes": regressor.classes})


def test_apply_clips_to_image(trained):
    _, regressor, mixing = trained
    features, boxes, _, classes = held_out_pairs(mixing, seed=9, images=10)
    boxes = boxes.copy()
    boxes[:, [0, 1]] -= 30  # push windows past the top-left corner
    boxes[:, [2, 3]] += 30
    clipped = regressor.apply(features, boxes, classes, IMAGE_W, IMAGE_H)
    raw = regressor.predict(features, boxes, classes)
    assert (raw[:, 0] < 0).any() and (raw[:, 2] > IMAGE_W).any()
    assert clipped.min() >= 0 and np.all(clipped[:, [0, 2]] <= IMAGE_W) and np.all(clipped[:, [1, 3]] <= IMAGE_H)
    np.testing.assert_array_equal(clipped, clip_boxes(raw, IMAGE_W, IMAGE_H))


def test_predict_rejects_wrong_feature_width(trained):
    _, regressor, _ = trained
    with pytest.raises(ValueError, match="features have shape"):
        regressor.predict(np.zeros((2, 7), dtype=np.float32), np.zeros((2, 4)), 0)


def test_trainer_caps_pairs_per_class_deterministically():
    mixing = class_mixing_matrices()

    def run() -> tuple[BoxRegressorTrainer, BoxRegressor]:
        rng = np.random.default_rng(10)
        trainer = BoxRegressorTrainer(BoxRegressorConfig(max_pairs_per_class=50, seed=1))
        for _ in range(20):
            trainer.add(*synthetic_image(rng, mixing, np.array([0])))
        return trainer, trainer.fit()

    (trainer, first), (_, second) = run(), run()
    assert trainer.pairs_kept() == {0: 50} and trainer.pairs_seen()[0] > 150
    assert first.num_pairs.tolist() == [50]
    np.testing.assert_array_equal(first.weights, second.weights)


def test_reservoir_keeps_a_uniform_subsample():
    """Every item of a 1000-long stream fed in uneven batches is kept with probability 1/10."""
    trials, stream, capacity = 300, 1000, 100
    rng = np.random.default_rng(11)
    kept_count = np.zeros(stream)
    cuts = np.array([0, 7, 90, 100, 101, 350, 351, 700, 1000])
    for _ in range(trials):
        reservoir = _PairReservoir(capacity, feature_dim=1)
        for start, stop in zip(cuts[:-1], cuts[1:]):
            items = np.arange(start, stop, dtype=np.float64)
            reservoir.add(items[:, None], np.repeat(items[:, None], 4, axis=1), rng)
        kept = reservoir.targets[:reservoir.size, 0].astype(int)
        assert reservoir.size == capacity and reservoir.seen == stream and len(set(kept)) == capacity
        kept_count[kept] += 1
    frequency = kept_count / trials
    for block in np.split(frequency, 10):  # each block of 100 items: expected 0.1, sd about 0.0017
        assert abs(block.mean() - 0.1) < 0.01, block.mean()


def test_trainer_refuses_bad_input():
    trainer = BoxRegressorTrainer()
    with pytest.raises(ValueError, match="no training pairs"):
        trainer.fit()
    gt = np.array([[0, 0, 10, 10]], dtype=np.float32)
    with pytest.raises(ValueError, match="float16"):
        trainer.add(np.full((1, 3), 1e6, dtype=np.float32), gt, gt, np.array([0]))
    with pytest.raises(ValueError, match="features have shape"):
        trainer.add(np.zeros((2, 3), dtype=np.float32), gt, gt, np.array([0]))
    with pytest.raises(ValueError, match="alpha"):
        BoxRegressorConfig(alpha=0)


def test_regressor_without_any_class_passes_everything_through():
    gt = np.array([[10, 10, 60, 80]], dtype=np.float32)
    features = np.random.default_rng(12).normal(0, 1, (3, 5)).astype(np.float32)
    trainer = BoxRegressorTrainer()
    assert trainer.add(features, np.repeat(gt, 3, axis=0), gt, np.array([4])) == 3
    regressor = BoxRegressor.from_state_dict(trainer.fit().state_dict())
    assert regressor.classes.size == 0 and regressor.feature_dim == 5
    np.testing.assert_array_equal(regressor.predict(features, np.repeat(gt, 3, axis=0), 4), np.repeat(gt, 3, axis=0))
