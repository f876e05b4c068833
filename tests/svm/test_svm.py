"""Tests of svm/: feature scale, negative selection, linear SVM, hard negative mining."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from sklearn.metrics import average_precision_score

from detector.core.boxes import iou_matrix
from svm.feature_scale import estimate_feature_scale
from svm.features import ImageFeatures
from svm.linear_svm import SVMModel, svm_objective, train_linear_svm
from svm.mining import (
    ClassMiningStats,
    HardNegativeMiner,
    MiningStats,
    NegativeCache,
    SVMConfig,
    failing_classes,
    train_svms,
)
from svm.negatives import select_negatives

NUM_CLASSES, DIM = 3, 48


# ---------------------------------------------------------------- synthetic detection world

def random_boxes(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
    """``n`` boxes of side in [low, high) inside a 500 x 400 image."""
    wh = rng.uniform(low, high, size=(n, 2))
    x1 = rng.uniform(0, 500 - wh[:, 0])
    y1 = rng.uniform(0, 400 - wh[:, 1])
    return np.stack([x1, y1, x1 + wh[:, 0], y1 + wh[:, 1]], axis=1).astype(np.float32)


def make_world(seed: int) -> dict[str, np.ndarray]:
    """Class means and, per class, a look-alike direction shared by rare background clutter."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(NUM_CLASSES, DIM))
    lookalikes = rng.normal(size=(NUM_CLASSES, DIM))
    return {
        "means": means * 10.0 / np.linalg.norm(means, axis=1, keepdims=True),
        "lookalikes": lookalikes * 8.0 / np.linalg.norm(lookalikes, axis=1, keepdims=True),
        "base": rng.normal(size=DIM) * 0.5,
    }


def make_image(rng: np.random.Generator, image_id: str, world: dict, num_windows: int = 300) -> ImageFeatures:
    """A window's feature is ``base + IoU * mean[class of best GT] + noise``; 5% of the
    background windows are look-alikes ``0.9 * mean[k] + lookalike[k]``: rare hard negatives
    that random negatives seldom contain but hard negative mining finds."""
    num_gt = int(rng.integers(1, 3))
    gt_boxes = random_boxes(rng, num_gt, 80, 250)
    gt_labels = rng.integers(0, NUM_CLASSES, num_gt)
    gt_difficult = rng.random(num_gt) < 0.1
    num_jittered = 30
    source = gt_boxes[rng.integers(0, num_gt, num_jittered)]
    jittered = source + rng.normal(scale=0.3, size=(num_jittered, 4)) * np.tile(source[:, 2:] - source[:, :2], 2)
    jittered[:, 0] = np.minimum(jittered[:, 0], jittered[:, 2] - 5)
    jittered[:, 1] = np.minimum(jittered[:, 1], jittered[:, 3] - 5)
    background = random_boxes(rng, num_windows - num_gt - num_jittered, 20, 300)
    boxes = np.concatenate([gt_boxes, jittered.astype(np.float32), background])
    iou = iou_matrix(boxes, gt_boxes)
    best_iou = iou.max(axis=1)
    features = world["base"] + rng.normal(size=(len(boxes), DIM))
    features += best_iou[:, None] * world["means"][gt_labels[iou.argmax(axis=1)]]
    clutter = np.flatnonzero((best_iou < 0.1) & (np.arange(len(boxes)) >= num_gt))
    lookalike_rows = clutter[rng.random(len(clutter)) < 0.05]
    lookalike_class = rng.integers(0, NUM_CLASSES, len(lookalike_rows))
    features[lookalike_rows] += 0.9 * world["means"][lookalike_class] + world["lookalikes"][lookalike_class]
    return ImageFeatures(image_id, features.astype(np.float32), boxes, gt_boxes, gt_labels, gt_difficult)


def make_images(seed: int, count: int, world: dict) -> list[ImageFeatures]:
    rng = np.random.default_rng(seed)
    return [make_image(rng, f"s{seed}_{index:03d}", world) for index in range(count)]


def mean_ap(model: SVMModel, images: list[ImageFeatures]) -> float:
    """Mean over classes of the AP of ranking proposals, positive = IoU >= 0.5 with a GT of the class."""
    scores, overlaps = [], []
    for windows in images:
        proposals = windows.boxes[windows.num_gt:]
        iou = iou_matrix(proposals, windows.gt_boxes)
        overlaps.append(np.stack([(iou * (windows.gt_labels == k)).max(axis=1) for k in range(NUM_CLASSES)], 1))
        scores.append(model.scores(windows.features[windows.num_gt:]))
    scores, overlaps = np.concatenate(scores), np.concatenate(overlaps)
    return float(np.mean([average_precision_score(overlaps[:, k] >= 0.5, scores[:, k]) for k in range(NUM_CLASSES)]))


@pytest.fixture(scope="module")
def world() -> dict:
    return make_world(0)


@pytest.fixture(scope="module")
def train_images(world: dict) -> list[ImageFeatures]:
    return make_images(1, 40, world)


@pytest.fixture(scope="module")
def feature_scale(train_images: list[ImageFeatures]) -> float:
    return estimate_feature_scale(np.concatenate([w.features for w in train_images[:10]]))


def decode_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cache keys -> (image ordinals in order of first appearance, window rows)."""
    return keys >> 32, keys & 0xFFFFFFFF


def check_miner_state(miner: HardNegativeMiner, images: list[ImageFeatures]) -> None:
    """Invariants of the caches under the miner's current model (between two images)."""
    config = miner.config
    for label, cache in enumerate(miner.caches):
        assert cache.size <= config.max_cache_per_class
        scores = cache.features.astype(np.float64) @ miner.weights[label].astype(np.float64) + miner.biases[label]
        # Fresh rows scored > hard_threshold, older ones survived eviction by this model.
        assert np.all(scores >= config.evict_threshold - 1e-4)
        np.testing.assert_allclose(cache.scores, scores, atol=2e-2)
        assert len(np.unique(cache.keys)) == cache.size
        image_indices, rows = decode_keys(cache.keys)
        for image_index in np.unique(image_indices):
            windows = images[image_index]
            image_rows = rows[image_indices == image_index]
            assert np.all(image_rows >= windows.num_gt), "a GT row entered a negative cache"
            gt_of_class = windows.gt_boxes[windows.gt_labels == label]
            assert np.all(iou_matrix(windows.boxes[image_rows], gt_of_class).max(axis=1, initial=0.0) < config.neg_iou)


def weight_and_bias(fit) -> tuple[np.ndarray, float]:
    return fit.weight, fit.bias


# ---------------------------------------------------------------- feature scale

def test_feature_scale_makes_mean_norm_target() -> None:
    rng = np.random.default_rng(0)
    sample = np.maximum(rng.normal(size=(500, 64)), 0).astype(np.float32) * 3.7
    scale = estimate_feature_scale(sample, target_norm=20.0)
    assert np.linalg.norm(sample.astype(np.float64) * scale, axis=1).mean() == pytest.approx(20.0, rel=1e-12)
    assert estimate_feature_scale(sample * 2, target_norm=20.0) == pytest.approx(scale / 2, rel=1e-12)


@pytest.mark.parametrize("bad", [np.zeros((0, 4)), np.zeros((3, 4)), np.ones(4)])
def test_feature_scale_rejects_bad_samples(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        estimate_feature_scale(bad)


# ---------------------------------------------------------------- negatives

def naive_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def naive_select_negatives(boxes, gt_boxes, iou_threshold, max_overlap) -> list[int]:
    boxes = boxes.astype(np.float64)
    gt_boxes = gt_boxes.astype(np.float64)
    kept: list[int] = []
    for index, box in enumerate(boxes):
        if any(naive_iou(box, gt) >= iou_threshold for gt in gt_boxes):
            continue
        if any(naive_iou(box, boxes[other]) > max_overlap for other in kept):
            continue
        kept.append(index)
    return kept


@pytest.mark.parametrize("seed", range(4))
def test_select_negatives_matches_naive_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    centres = random_boxes(rng, 40, 30, 200)
    # Clusters of near-duplicates so that the 0.7 overlap rule matters.
    boxes = np.repeat(centres, 6, axis=0) + rng.normal(scale=8, size=(240, 4)).astype(np.float32)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 2)
    gt_boxes = boxes[rng.choice(len(boxes), int(rng.integers(0, 4)), replace=False)] + 3
    iou_threshold, max_overlap = [(0.3, 0.7), (0.5, 0.5), (0.1, 0.9), (0.3, 0.3)][seed]
    result = select_negatives(boxes, gt_boxes, iou_threshold, max_overlap)
    expected = naive_select_negatives(boxes, gt_boxes, iou_threshold, max_overlap)
    assert result.dtype == np.int64
    assert result.tolist() == expected
    assert 0 < len(expected) < len(boxes)


def test_select_negatives_empty_inputs() -> None:
    assert select_negatives(np.zeros((0, 4)), np.zeros((2, 4))).tolist() == []
    whole = np.array([[0, 0, 100, 100]], np.float32)
    assert select_negatives(whole, whole).tolist() == []
    assert select_negatives(whole, np.zeros((0, 4))).tolist() == [0]


# ---------------------------------------------------------------- linear SVM

def reference_svm(pos, neg, C, pos_weight, intercept_scaling) -> tuple[np.ndarray, float]:
    """The documented problem solved from its dual with L-BFGS-B (float64, small data)."""
    features = np.concatenate([pos, neg]).astype(np.float64)
    augmented = np.hstack([features, np.full((len(features), 1), intercept_scaling)])
    labels = np.concatenate([np.ones(len(pos)), -np.ones(len(neg))])
    upper = C * np.where(labels > 0, pos_weight, 1.0)
    signed = augmented * labels[:, None]
    gram = signed @ signed.T
    result = minimize(
        lambda alpha: (0.5 * alpha @ gram @ alpha - alpha.sum(), gram @ alpha - 1.0),
        np.zeros(len(labels)), jac=True, method="L-BFGS-B",
        bounds=list(zip(np.zeros(len(labels)), upper)), options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000},
    )
    full = signed.T @ result.x
    return full[:-1], float(full[-1] * intercept_scaling)


def test_train_linear_svm_matches_reference_solution() -> None:
    rng = np.random.default_rng(3)
    pos = rng.normal(loc=1.0, size=(20, 3))
    neg = rng.normal(loc=-0.5, size=(50, 3))
    w, b = weight_and_bias(train_linear_svm(pos, neg, C=0.05, pos_weight=2.0, intercept_scaling=10.0, tol=1e-10, max_iter=100_000))
    w_ref, b_ref = reference_svm(pos, neg, C=0.05, pos_weight=2.0, intercept_scaling=10.0)
    np.testing.assert_allclose(w, w_ref, atol=1e-3)
    assert b == pytest.approx(b_ref, abs=1e-3)
    # Not a tautology: no weight, or the weight on the negatives (C 0.1 and 0.05 on the
    # positives), is a different solution.
    for w_other, b_other in (reference_svm(pos, neg, 0.05, 1.0, 10.0), reference_svm(pos, neg, 0.1, 0.5, 10.0)):
        assert np.abs(np.r_[w, b] - np.r_[w_other, b_other]).max() > 1e-2


def test_train_linear_svm_separates_gaussian_clouds() -> None:
    rng = np.random.default_rng(0)
    direction = rng.normal(size=16)
    direction /= np.linalg.norm(direction)
    pos, neg = rng.normal(size=(200, 16)) + 4 * direction, rng.normal(size=(300, 16)) - 4 * direction
    w, b = weight_and_bias(train_linear_svm(pos, neg, C=1e-2))
    assert w.dtype == np.float32 and w.shape == (16,)
    assert np.all(pos @ w + b > 0) and np.all(neg @ w + b < 0)
    fresh_pos, fresh_neg = rng.normal(size=(500, 16)) + 4 * direction, rng.normal(size=(500, 16)) - 4 * direction
    assert np.mean(fresh_pos @ w + b > 0) > 0.99 and np.mean(fresh_neg @ w + b < 0) > 0.99


def test_pos_weight_moves_boundary_towards_negatives() -> None:
    # Overlapping, imbalanced clouds at the feature norm the SVMs see (~14), paper's C.
    rng = np.random.default_rng(1)
    pos = rng.normal(loc=1.0, size=(50, 2)) * 10
    neg = rng.normal(loc=-1.0, size=(500, 2)) * 10
    everything = np.concatenate([pos, neg])
    predicted_pos, biases = [], []
    for pos_weight in (1.0, 2.0, 4.0):
        w, b = weight_and_bias(train_linear_svm(pos, neg, C=1e-3, pos_weight=pos_weight))
        predicted_pos.append(int(np.sum(everything @ w + b > 0)))
        biases.append(b)
    assert predicted_pos[0] < predicted_pos[1] < predicted_pos[2]
    assert biases[0] < biases[1] < biases[2]


def test_train_linear_svm_rejects_one_class() -> None:
    with pytest.raises(ValueError, match="positives and negatives"):
        train_linear_svm(np.ones((3, 2)), np.zeros((0, 2)))


# ---------------------------------------------------------------- model

def test_svm_model_scores_and_state_dict() -> None:
    rng = np.random.default_rng(0)
    model = SVMModel(rng.normal(size=(4, 10)), rng.normal(size=4), feature_scale=0.37)
    features = rng.normal(size=(25, 10)).astype(np.float32)
    expected = (features.astype(np.float64) * 0.37) @ model.weights.T.astype(np.float64) + model.biases
    np.testing.assert_allclose(model.scores(features), expected, rtol=1e-5, atol=1e-5)
    restored = SVMModel.from_state_dict(model.state_dict())
    np.testing.assert_array_equal(restored.weights, model.weights)
    np.testing.assert_array_equal(restored.biases, model.biases)
    assert restored.feature_scale == model.feature_scale
    with pytest.raises(ValueError, match="feature_scale"):
        SVMModel.from_state_dict({"weights": model.weights, "biases": model.biases})
    with pytest.raises(ValueError, match="features must be"):
        model.scores(np.zeros((2, 11), np.float32))


def test_image_windows_checks_contract() -> None:
    gt = np.array([[0, 0, 10, 10]], np.float32)
    boxes = np.concatenate([gt, [[5, 5, 20, 20]]])
    ImageFeatures("a", np.zeros((2, 3)), boxes, gt, [1], [False])
    with pytest.raises(ValueError, match="GT boxes"):
        ImageFeatures("a", np.zeros((2, 3)), boxes[::-1], gt, [1], [False])
    with pytest.raises(ValueError, match="feature rows"):
        ImageFeatures("a", np.zeros((3, 3)), boxes, gt, [1], [False])


# ---------------------------------------------------------------- cache

def test_negative_cache_cap_keeps_highest_scores() -> None:
    rng = np.random.default_rng(0)
    cache = NegativeCache(dim=4, max_size=50, dtype=np.float32)
    all_scores, all_keys = [], []
    for start in range(0, 200, 30):
        scores = rng.normal(size=30).astype(np.float32)
        keys = np.arange(start, start + 30)
        dropped = cache.add(np.repeat(scores[:, None], 4, axis=1), keys, scores)
        all_scores.append(scores)
        all_keys.append(keys)
        assert cache.size == min(start + 30, 50)
        assert dropped == max(0, start + 30 - 50) - max(0, start - 50)
        # The cache holds exactly the best rows seen so far, with rows, keys and scores aligned.
        seen_scores, seen_keys = np.concatenate(all_scores), np.concatenate(all_keys)
        best = seen_keys[np.argsort(-seen_scores)[: cache.size]]
        assert sorted(cache.keys.tolist()) == sorted(best.tolist())
        np.testing.assert_array_equal(cache.features[:, 0], cache.scores)
        np.testing.assert_array_equal(cache.scores, seen_scores[np.searchsorted(seen_keys, cache.keys)])
    threshold = float(np.median(cache.scores))
    num_low = int(np.sum(cache.scores < threshold))
    assert 0 < num_low < cache.size
    assert cache.evict_below(threshold) == num_low
    assert cache.size == 50 - num_low and np.all(cache.scores >= threshold)
    np.testing.assert_array_equal(cache.features[:, 0], cache.scores)
    np.testing.assert_array_equal(cache.scores, seen_scores[np.searchsorted(seen_keys, cache.keys)])


# ---------------------------------------------------------------- mining

class CountingImages:
    """``images()`` for the miner: counts its calls and checks the miner between images."""

    def __init__(self, images: list[ImageFeatures], miner: HardNegativeMiner | None = None) -> None:
        self.images = images
        self.miner = miner
        self.calls = 0
        self.checks = 0

    def __call__(self):
        self.calls += 1
        return self._iterate()

    def _iterate(self):
        for windows in self.images:
            if self.miner is not None and self.miner.weights is not None:
                check_miner_state(self.miner, self.images)
                self.checks += 1
            yield windows


def random_negative_model(images, miner: HardNegativeMiner, config: SVMConfig, scale: float) -> SVMModel:
    """Same positives, as many negatives as the mined caches, drawn uniformly from all negatives."""
    rng = np.random.default_rng(0)
    weights = np.zeros((NUM_CLASSES, DIM), np.float32)
    biases = np.zeros(NUM_CLASSES, np.float32)
    for label in range(NUM_CLASSES):
        pos = np.concatenate([
            w.features[: w.num_gt][(w.gt_labels == label) & ~w.gt_difficult] for w in images
        ])
        neg = np.concatenate([
            w.features[w.num_gt + select_negatives(w.boxes[w.num_gt:], w.gt_boxes[w.gt_labels == label])]
            for w in images
        ])
        neg = neg[rng.choice(len(neg), miner.caches[label].size, replace=False)]
        weights[label], biases[label] = weight_and_bias(train_linear_svm(pos * scale, neg * scale, C=config.C))
    return SVMModel(weights, biases, scale)


def test_mining_beats_random_negatives_and_keeps_invariants(world, train_images, feature_scale) -> None:
    config = SVMConfig(retrain_every=300, max_cache_per_class=3000)
    miner = HardNegativeMiner(NUM_CLASSES, feature_scale, config)
    images = CountingImages(train_images, miner)
    model = miner.run(images, progress=False, positives=lambda: iter(train_images))
    assert images.calls == 1 and images.checks == len(train_images)
    check_miner_state(miner, train_images)  # after the end-of-pass retrain and eviction
    np.testing.assert_array_equal(model.weights, miner.weights)

    stats = model.training_stats
    for label, class_stats in enumerate(stats["classes"]):
        expected_positives = sum(
            int(np.sum((w.gt_labels == label) & ~w.gt_difficult)) for w in train_images
        )
        assert class_stats["num_positives"] == expected_positives > 0
        assert class_stats["cache_size"] == miner.caches[label].size > 0
        assert 2 <= class_stats["retrains"] <= class_stats["hard_added"] // config.retrain_every + 1
        assert class_stats["hard_added"] == class_stats["cache_size"] + class_stats["evicted"]
        # the record of the last retrain is that of the returned SVM
        weight = model.weights[label]
        assert class_stats["weight_norm"] == pytest.approx(float(np.linalg.norm(weight)), rel=1e-6)
        assert class_stats["bias"] == pytest.approx(float(model.biases[label]), abs=1e-6)
        positives = np.concatenate(miner.positives[label]).astype(np.float32)
        assert class_stats["positives_correct"] == pytest.approx(
            float(np.mean(positives @ weight + model.biases[label] > 0)))
        assert 0.5 < class_stats["positives_correct"] <= 1 and 0.5 < class_stats["negatives_correct"] <= 1
    assert 0 < stats["peak_cache_bytes"] and stats["images_per_pass"] == [len(train_images)]

    held_out = make_images(2, 30, world)
    mined_ap = mean_ap(model, held_out)
    random_ap = mean_ap(random_negative_model(train_images, miner, config, feature_scale), held_out)
    assert mined_ap > random_ap + 0.1, (mined_ap, random_ap)


def test_mining_cap_and_second_pass(train_images, feature_scale) -> None:
    config = SVMConfig(retrain_every=100, max_cache_per_class=60, passes=2)
    miner = HardNegativeMiner(NUM_CLASSES, feature_scale, config)
    images = CountingImages(train_images, miner)
    model = miner.run(images, progress=False, positives=lambda: iter(train_images))
    assert images.calls == 2
    check_miner_state(miner, train_images)
    stats = model.training_stats
    assert stats["passes"] == 2 and stats["images_per_pass"] == [40, 40]
    assert all(c["dropped_by_cap"] > 0 and c["cache_size"] <= 60 for c in stats["classes"])
    # Positives are collected once, not once per pass.
    assert stats["classes"][0]["num_positives"] == sum(
        int(np.sum((w.gt_labels == 0) & ~w.gt_difficult)) for w in train_images
    )
    # Memory bound: caches and positives only, never all windows.
    all_windows_bytes = sum(w.features.nbytes for w in train_images)
    assert stats["peak_cache_bytes"] < all_windows_bytes / 10


def test_float16_cache_gives_the_float32_model(train_images, feature_scale) -> None:
    models = {
        dtype: train_svms(lambda: iter(train_images[:20]), NUM_CLASSES, feature_scale,
                          SVMConfig(retrain_every=300, cache_dtype=dtype), progress=False)
        for dtype in ("float16", "float32")
    }
    features = np.concatenate([w.features for w in train_images[20:]])
    difference = np.abs(models["float16"].scores(features) - models["float32"].scores(features))
    # a negative scored within float16's rounding of the hard threshold may enter one cache and not
    # the other: a few scores move by a few hundredths, nearly all by far less
    assert difference.max() < 6e-2 and np.mean(difference > 2e-2) < 0.02 and difference.mean() < 5e-3


def test_mining_rejects_bad_input(train_images, feature_scale) -> None:
    twice = [train_images[0], train_images[0]]
    with pytest.raises(ValueError, match="appears twice"):
        train_svms(lambda: iter(twice), NUM_CLASSES, feature_scale, SVMConfig(), progress=False)
    with pytest.raises(ValueError, match="outside"):
        train_svms(lambda: iter(train_images), 1, feature_scale, SVMConfig(), progress=False)
    with pytest.raises(ValueError, match="evict_threshold"):
        SVMConfig(hard_threshold=-1.0, evict_threshold=-0.5)


def test_messages_name_classes_not_numbers(train_images, feature_scale, caplog) -> None:
    names = ["cat", "dog", "bird", "unicorn"]  # no image has a unicorn
    svm = train_svms(lambda: train_images[:10], NUM_CLASSES + 1, feature_scale,
                     SVMConfig(retrain_every=1000), progress=False, class_names=names)
    assert svm.weights.shape[0] == NUM_CLASSES + 1
    assert "SVM class unicorn has 0 positive" in caplog.text and "SVM class 3" not in caplog.text
    with pytest.raises(ValueError, match="3 class names for 4 classes"):
        HardNegativeMiner(NUM_CLASSES + 1, feature_scale, SVMConfig(), names[:3])


def test_the_fit_reports_the_primal_objective_and_convergence() -> None:
    rng = np.random.default_rng(3)
    pos = rng.normal(loc=1.0, size=(20, 3))
    neg = rng.normal(loc=-0.5, size=(50, 3))
    fit = train_linear_svm(pos, neg, C=0.05, pos_weight=2.0, intercept_scaling=10.0, tol=1e-10, max_iter=100_000)
    w_ref, b_ref = reference_svm(pos, neg, C=0.05, pos_weight=2.0, intercept_scaling=10.0)
    optimum = svm_objective(w_ref, b_ref, pos, neg, 0.05, 2.0, 10.0)
    assert fit.converged and fit.objective == pytest.approx(optimum, rel=1e-5)
    assert svm_objective(fit.weight * 1.1, fit.bias, pos, neg, 0.05, 2.0, 10.0) > optimum  # a minimum
    stopped = train_linear_svm(pos, neg, C=50.0, max_iter=2)  # far from its optimum after 2 sweeps
    assert not stopped.converged and stopped.iterations == 2


def brute_force_hard_negatives(model: SVMModel, images, label: int, threshold: float) -> set[int]:
    """Keys (image ordinal << 32 | row) of every candidate negative of ``label`` scoring above
    ``threshold`` under ``model``, by scoring every window of every image."""
    found = set()
    for ordinal, windows in enumerate(images):
        rows = windows.num_gt + select_negatives(windows.boxes[windows.num_gt:],
                                                 windows.gt_boxes[windows.gt_labels == label])
        scores = model.scores(windows.features[rows])[:, label]
        found |= {(ordinal << 32) | int(row) for row in rows[scores > threshold]}
    return found


def test_mining_until_converged_misses_no_hard_negative(train_images, feature_scale) -> None:
    config = SVMConfig(retrain_every=300, max_cache_per_class=100_000, passes=10, cache_dtype="float32")
    miner = HardNegativeMiner(NUM_CLASSES, feature_scale, config)
    model = miner.run(lambda: iter(train_images), progress=False)
    stats = model.training_stats
    assert stats["converged"] and 2 <= stats["passes"] < 10 and stats["hard_added_per_pass"][-1] == 0
    for label, cache in enumerate(miner.caches):
        above = brute_force_hard_negatives(model, train_images, label, config.hard_threshold + 1e-3)
        assert above and above <= set(cache.keys.tolist()), label
    # one pass (the paper's) leaves some out: what the later passes are for
    single = HardNegativeMiner(NUM_CLASSES, feature_scale, SVMConfig(retrain_every=300, max_cache_per_class=100_000,
                                                                   cache_dtype="float32"))
    one_pass = single.run(lambda: iter(train_images), progress=False)
    assert any(brute_force_hard_negatives(one_pass, train_images, label, config.hard_threshold + 1e-3)
               - set(single.caches[label].keys.tolist()) for label in range(NUM_CLASSES))


def test_positives_are_all_collected_before_the_first_retrain(train_images, feature_scale) -> None:
    seen = []
    miner = HardNegativeMiner(NUM_CLASSES, feature_scale, SVMConfig(retrain_every=300),
                              on_retrain=lambda row: seen.append(row["positives"]))
    miner.run(lambda: iter(train_images), progress=False)
    totals = [sum(int(np.sum((w.gt_labels == k) & ~w.gt_difficult)) for w in train_images) for k in range(NUM_CLASSES)]
    assert seen and set(seen) <= set(totals)  # every retrain, the first included, sees every positive


def test_the_collapse_check_names_a_failing_class_and_is_quiet_on_good_ones(world, train_images, feature_scale,
                                                                           caplog) -> None:
    good = train_svms(lambda: iter(train_images), NUM_CLASSES, feature_scale, SVMConfig(retrain_every=300),
                      progress=False, class_names=["cat", "dog", "bird"])
    assert good.training_stats["failing_classes"] == {} and "fails its check" not in caplog.text
    # class 0's "positives" are background windows: nothing tells them from its negatives
    rng = np.random.default_rng(5)
    scrambled = []
    for windows in train_images:
        features = windows.features.copy()
        background = np.flatnonzero(iou_matrix(windows.boxes, windows.gt_boxes).max(axis=1) < 0.1)
        for row in np.flatnonzero(windows.gt_labels == 0):
            features[row] = features[rng.choice(background)]
        scrambled.append(ImageFeatures(windows.image_id, features, windows.boxes, windows.gt_boxes,
                                       windows.gt_labels, windows.gt_difficult))
    bad = train_svms(lambda: iter(scrambled), NUM_CLASSES, feature_scale, SVMConfig(retrain_every=300),
                     progress=False, class_names=["cat", "dog", "bird"])
    assert list(bad.training_stats["failing_classes"]) == ["cat"]
    assert "SVM class cat fails its check on its own training data" in caplog.text


def test_the_check_names_collapse_and_bad_ranking_but_not_a_regularised_svm_that_ranks_well() -> None:
    """The patterns of real runs: at C = 1e-3 a hard class can put few of its own positives above 0
    with ordinary weights and still rank well (dev_val: level with its softmax); that is not named."""
    def stats(**found) -> ClassMiningStats:
        return ClassMiningStats(**{"num_positives": 100, "cache_size": 1000, "retrains": 5, "weight_norm": 0.3,
                                   "positives_correct": 0.8, "negatives_above_positive_median": 0.0, **found})

    classes = {
        "regularised": stats(positives_correct=0.0, negatives_above_positive_median=0.03),
        "collapsed": stats(positives_correct=0.0, weight_norm=0.01),
        "misranking": stats(negatives_above_positive_median=0.08),
        "unconverged": stats(converged=False),
        "no positives": stats(num_positives=0, retrains=0, weight_norm=0.0, positives_correct=0.0),
    }
    failing = failing_classes(MiningStats(list(classes.values())), list(classes))
    assert list(failing) == ["collapsed", "misranking", "unconverged"]
    assert "collapsed toward a constant" in failing["collapsed"][0]
    assert "8.0% of its 1000 cached hard negatives" in failing["misranking"][0]


def test_refit_retrains_every_class_on_its_final_cache_at_another_C(train_images, feature_scale) -> None:
    config = SVMConfig(retrain_every=300)
    miner = HardNegativeMiner(NUM_CLASSES, feature_scale, config)
    mined = train_svms(lambda: iter(train_images), NUM_CLASSES, feature_scale, config, progress=False, miner=miner)
    same, looser = miner.refit(1e-3), miner.refit(1e-1)
    for label in range(NUM_CLASSES):  # each class: liblinear on exactly its positives and final cache
        fit = train_linear_svm(np.concatenate(miner.positives[label]), miner.caches[label].features, C=1e-1,
                               pos_weight=2.0, intercept_scaling=10.0, seed=0)
        np.testing.assert_allclose(looser.weights[label], fit.weight, rtol=1e-5, atol=1e-6)
        assert looser.biases[label] == pytest.approx(fit.bias, abs=1e-5)
    # at the mining C the refit is the final model up to the negatives evicted after its last retrain
    features = np.concatenate([w.features for w in train_images])
    correlation = [np.corrcoef(same.scores(features)[:, k], mined.scores(features)[:, k])[0, 1]
                   for k in range(NUM_CLASSES)]
    assert min(correlation) > 0.99
    assert np.all(np.linalg.norm(looser.weights, axis=1) > np.linalg.norm(same.weights, axis=1))


def test_the_miner_keeps_the_svms_of_every_pass(train_images, feature_scale) -> None:
    config = SVMConfig(retrain_every=300, passes=3)
    miner = HardNegativeMiner(NUM_CLASSES, feature_scale, config)
    final = train_svms(lambda: iter(train_images), NUM_CLASSES, feature_scale, config, progress=False, miner=miner)
    assert len(miner.pass_models) == final.training_stats["passes"] >= 2
    np.testing.assert_array_equal(miner.pass_models[-1].weights, final.weights)
    assert not np.array_equal(miner.pass_models[0].weights, final.weights)  # the second pass retrained


def test_a_feature_replay_gives_back_what_it_recorded(tmp_path):
    from svm.features import FeatureReplay, ImageFeatures
    rng = np.random.default_rng(0)
    images = []
    for k, rows in enumerate((5, 0, 3)):
        gt = np.array([[1, 1, 9, 9]], np.float32)[: min(rows, 1)]
        boxes = np.concatenate([gt, rng.uniform(0, 20, (rows - len(gt), 4)).astype(np.float32)])
        images.append(ImageFeatures(f"im{k}", rng.normal(size=(rows, 6)) * 30, boxes, gt, np.zeros(len(gt), int),
                                    np.zeros(len(gt), bool)))
    replay = FeatureReplay(tmp_path / "f16")
    with pytest.raises(ValueError, match="nothing recorded"):
        next(replay.replay())
    recorded = list(replay.record(iter(images)))
    for passed, again, original in zip(recorded, replay.replay(), images, strict=True):
        assert passed.image_id == again.image_id == original.image_id
        np.testing.assert_array_equal(passed.features, again.features)
        np.testing.assert_array_equal(again.features, original.features.astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(again.boxes, original.boxes)
        np.testing.assert_array_equal(again.gt_labels, original.gt_labels)
    cut = replay.record(iter(images))
    next(cut)  # a recording stopped after one image is not replayed
    with pytest.raises(ValueError, match="cut short"):
        next(replay.replay())
