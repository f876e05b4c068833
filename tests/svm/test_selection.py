"""Tests of svm.selection (choosing C by held-out AP on training images) and its use in mining."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score
from sklearn.svm import LinearSVC

from svm.feature_scale import estimate_feature_scale
from svm.linear_svm import train_linear_svm
from svm.mining import HardNegativeMiner, SVMConfig
from svm.selection import choose_c, held_out_ap
from tests.svm.test_svm import NUM_CLASSES, make_images, make_world


def naive_held_out_ap(pos, pos_images, neg, neg_images, c, folds):
    """Loop over folds with scikit-learn directly: fit on rows of other images, AP on the rest."""
    values = []
    for fold in range(folds):
        train_pos = [row for row, image in zip(pos, pos_images) if image % folds != fold]
        train_neg = [row for row, image in zip(neg, neg_images) if image % folds != fold]
        test_pos = [row for row, image in zip(pos, pos_images) if image % folds == fold]
        test_neg = [row for row, image in zip(neg, neg_images) if image % folds == fold]
        svm = LinearSVC(C=c, class_weight={1: 2.0, -1: 1.0}, intercept_scaling=10.0, loss="hinge", dual=True,
                        tol=1e-4, max_iter=10_000, random_state=0)
        svm.fit(np.array(train_pos + train_neg, dtype=np.float64),
                np.r_[np.ones(len(train_pos)), -np.ones(len(train_neg))])
        scores = np.array(test_pos + test_neg, dtype=np.float64) @ svm.coef_[0] + svm.intercept_[0]
        values.append(average_precision_score(np.r_[np.ones(len(test_pos)), np.zeros(len(test_neg))], scores))
    return float(np.mean(values))


def test_held_out_ap_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    pos = rng.normal(0.3, 1.0, size=(60, 8)).astype(np.float32)
    neg = rng.normal(-0.3, 1.0, size=(200, 8)).astype(np.float32)
    pos_images, neg_images = rng.integers(0, 30, 60), rng.integers(0, 30, 200)
    candidates = (1e-3, 1e-1)
    ours = held_out_ap(pos, pos_images, neg, neg_images, candidates, 3, 2.0, 10.0)
    for value, c in zip(ours, candidates):
        assert value == pytest.approx(naive_held_out_ap(pos, pos_images, neg, neg_images, c, 3), rel=1e-4)


def test_held_out_ap_is_nan_without_both_labels_in_two_folds():
    pos = np.ones((4, 3), np.float32)
    neg = -np.ones((4, 3), np.float32)
    result = held_out_ap(pos, np.zeros(4, np.int64), neg, np.arange(4), (1e-2,), 2, 2.0, 10.0)
    assert np.isnan(result).all()
    with pytest.raises(ValueError, match="2 folds"):
        held_out_ap(pos, np.arange(4), neg, np.arange(4), (1e-2,), 1, 2.0, 10.0)


def test_choose_c_takes_the_best_mean_over_usable_classes():
    table = [np.array([0.5, 0.7, 0.6]), np.array([0.6, 0.6, 0.9]), np.array([np.nan, np.nan, np.nan])]
    best, record = choose_c(table, (1e-3, 1e-2, 1e-1), ["a", "b", "c"])
    assert best == 1e-1  # means 0.55, 0.65, 0.75
    assert record["a"] == [0.5, 0.7, 0.6] and set(record) == {"a", "b", "c"}
    with pytest.raises(ValueError, match="cannot choose C"):
        choose_c([np.array([np.nan])], (1.0,), ["a"])


def test_mining_with_candidates_retrains_every_class_with_the_chosen_c():
    world = make_world(0)
    images = make_images(1, 30, world)
    scale = estimate_feature_scale(np.concatenate([w.features for w in images[:10]]))
    config = SVMConfig(retrain_every=300, max_cache_per_class=3000, C_candidates=(1e-5, 1e-3, 1e-1))
    miner = HardNegativeMiner(NUM_CLASSES, scale, config)
    model = miner.run(lambda: iter(images), progress=False)
    stats = model.training_stats
    assert stats["chosen_C"] in config.C_candidates and miner.C == stats["chosen_C"]
    assert set(stats["c_table"]) == {str(k) for k in range(NUM_CLASSES)}
    # a C so small that the SVM barely moves from w = 0 ranks worse than the others
    means = np.nanmean(np.array(list(stats["c_table"].values())), axis=0)
    assert means[0] < means.max() and stats["chosen_C"] != 1e-5
    for label in range(NUM_CLASSES):  # the final SVMs are those of the chosen C on the final caches
        weight, bias = train_linear_svm(np.concatenate(miner.positives[label]), miner.caches[label].features,
                                        C=stats["chosen_C"])
        np.testing.assert_allclose(model.weights[label], weight, atol=1e-5)
    with pytest.raises(ValueError, match="C_candidates"):
        SVMConfig(C_candidates=(0.0,))
