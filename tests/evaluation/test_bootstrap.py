"""The paired bootstrap's weighted mAP against the evaluator on resampled copies of the images."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from detector.core.detections import ImageDetections
from detector.core.records import ImageRecord
from detector.evaluation.bootstrap import bootstrap_draws, paired_bootstrap, per_image, rank_matches
from detector.evaluation.evaluator import VOCEvaluator

NUM_CLASSES = 4


def random_images(rng: np.random.Generator, n: int, noise: float) -> tuple[list[ImageRecord], list[ImageDetections]]:
    """Images with 0-4 GT boxes (some difficult) and detections: jittered GT (``noise`` pixels),
    duplicates and random boxes, with continuous scores (no ties) that favour the near ones."""
    records, found = [], []
    for i in range(n):
        m = int(rng.integers(0, 5))
        xy = rng.uniform(0, 150, (m, 2))
        gt = np.concatenate([xy, xy + rng.uniform(20, 100, (m, 2))], 1).astype(np.float32)
        labels = rng.integers(0, NUM_CLASSES, m)
        records.append(ImageRecord(f"im{i}", Path(f"im{i}.jpg"), 256, 256, gt, labels, rng.random(m) < 0.15))
        near = np.repeat(np.arange(m), rng.integers(0, 3, m))
        k = int(rng.integers(0, 6))
        xy = rng.uniform(0, 200, (k, 2))
        boxes = np.concatenate([gt[near] + rng.normal(0, noise, (len(near), 4)),
                                np.concatenate([xy, xy + rng.uniform(10, 60, (k, 2))], 1)]).astype(np.float32)
        det_labels = np.concatenate([labels[near], rng.integers(0, NUM_CLASSES, k)])
        scores = np.concatenate([rng.uniform(0.3, 1.0, len(near)), rng.uniform(0.0, 0.7, k)])
        found.append(ImageDetections(boxes, scores, det_labels))
    return records, found


def evaluated(records, found, draw, use_07_metric=True) -> dict:
    """VOCEvaluator's result on the images ``draw`` (indices, repeats allowed), copies renamed."""
    evaluator = VOCEvaluator([f"c{k}" for k in range(NUM_CLASSES)], use_07_metric=use_07_metric, coco=False)
    for j, i in enumerate(draw):
        evaluator.process(dataclasses.replace(records[i], image_id=f"{records[i].image_id}#{j}"), found[i])
    return evaluator.evaluate()


def evaluator_map(records, found, draw, use_07_metric) -> float:
    """mAP of the images ``draw`` through VOCEvaluator."""
    return evaluated(records, found, draw, use_07_metric)["mAP"]


def class_ap(records, found, draw, k) -> float:
    """AP of class k on the images ``draw`` through VOCEvaluator."""
    return evaluated(records, found, draw)["ap"][f"c{k}"]


@pytest.mark.parametrize("use_07_metric", [True, False])
def test_weighted_map_equals_the_evaluator_on_resampled_copies(use_07_metric):
    rng = np.random.default_rng(3)
    records, found = random_images(rng, 40, noise=6.0)
    ranked = rank_matches(records, found, NUM_CLASSES)
    for _ in range(6):
        draw = rng.integers(0, len(records), len(records))
        weights = np.bincount(draw, minlength=len(records)).astype(np.float64)
        assert ranked.mean_ap(weights, use_07_metric) == pytest.approx(
            evaluator_map(records, found, draw, use_07_metric), abs=1e-12)
    everything = np.arange(len(records))
    assert ranked.mean_ap(np.ones(len(records)), use_07_metric) == pytest.approx(
        evaluator_map(records, found, everything, use_07_metric), abs=1e-12)


def test_paired_bootstrap_sees_no_difference_between_equals_and_a_clear_one():
    rng = np.random.default_rng(5)
    records, good = random_images(rng, 60, noise=2.0)
    ranked_good = rank_matches(records, good, NUM_CLASSES)
    same = paired_bootstrap(ranked_good, ranked_good, resamples=50)
    for difference in (same.mAP, *same.classes):
        assert (difference.observed, difference.mean, difference.low, difference.high) == (0, 0, 0, 0)
        assert difference.share_above == 0 and difference.resamples == 50
    # the same images with every score shuffled within its image: the ranking is lost
    shuffled = [dataclasses.replace(d, scores=rng.permutation(d.scores) if len(d.scores) else d.scores) for d in good]
    worse = paired_bootstrap(ranked_good, rank_matches(records, shuffled, NUM_CLASSES), resamples=200)
    assert worse.mAP.observed > 0 and worse.mAP.low > 0 and worse.mAP.share_above > 0.95
    assert worse.mAP.low <= worse.mAP.mean <= worse.mAP.high
    everything = np.arange(len(records))
    assert [d.observed for d in worse.classes] == pytest.approx(
        [100 * (class_ap(records, good, everything, k) - class_ap(records, shuffled, everything, k))
         for k in range(NUM_CLASSES)])
    assert worse.mAP.observed == pytest.approx(np.mean([d.observed for d in worse.classes]))
    again = paired_bootstrap(ranked_good, rank_matches(records, shuffled, NUM_CLASSES), resamples=200)
    assert again == worse  # seeded


def test_worst_class_by_chance_against_the_evaluator_on_resampled_copies():
    rng = np.random.default_rng(11)
    records, good = random_images(rng, 30, noise=2.0)
    noisy = [dataclasses.replace(d, scores=d.scores + rng.normal(0, 0.3, len(d.scores))) for d in good]
    compared = paired_bootstrap(rank_matches(records, good, NUM_CLASSES), rank_matches(records, noisy, NUM_CLASSES),
                                resamples=12, seed=4)
    everything = np.arange(len(records))

    def gaps(draw):  # AP(good) - AP(noisy) per class in points through the evaluator; NaN: no positives
        a, b = evaluated(records, good, draw)["ap"], evaluated(records, noisy, draw)["ap"]
        return np.array([math.nan if a[f"c{k}"] is None else 100 * (a[f"c{k}"] - b[f"c{k}"])
                         for k in range(NUM_CLASSES)])

    observed = gaps(everything)
    expected = [np.nanmin(gaps(draw) - observed) for draw in bootstrap_draws(len(records), 12, seed=4)]
    assert compared.chance_worst == pytest.approx(expected, abs=1e-9)
    assert min(expected) < 0  # the noisy scorer's classes do move between resamples
    for margin in (0.0, 1.0, 5.0, 1000.0):
        assert compared.chance_some_class_below(margin) == pytest.approx(np.mean(np.array(expected) < -margin))
    assert compared.chance_worst_bound() == pytest.approx(np.percentile(expected, 5))
    same = paired_bootstrap(rank_matches(records, good, NUM_CLASSES), rank_matches(records, good, NUM_CLASSES),
                            resamples=12)
    assert same.chance_worst == (0.0,) * 12 and same.chance_some_class_below(0.0) == 0.0


def test_result_folders_compare_as_the_detections_they_hold(tmp_path):
    rng = np.random.default_rng(7)
    records, good = random_images(rng, 30, noise=2.0)
    shuffled = [dataclasses.replace(d, scores=rng.permutation(d.scores) if len(d.scores) else d.scores) for d in good]
    classes = [f"c{k}" for k in range(NUM_CLASSES)]
    sets = []
    for found in (good, shuffled):
        evaluator = VOCEvaluator(classes, coco=False)
        for record, dets in zip(records, found):
            evaluator.process(record, dets)
        sets.append(evaluator.detection_set())
    back = per_image(sets[0], records, classes)  # result files hold this; the split is undone
    for original, split_back in zip(good, back):
        order = np.lexsort((original.scores, original.labels))
        again = np.lexsort((split_back.scores, split_back.labels))
        assert np.array_equal(original.labels[order], split_back.labels[again])
        assert np.allclose(original.boxes[order], split_back.boxes[again])
    expected = paired_bootstrap(rank_matches(records, good, NUM_CLASSES),
                                rank_matches(records, shuffled, NUM_CLASSES), resamples=30)
    got = paired_bootstrap(*(rank_matches(records, per_image(s, records, classes), NUM_CLASSES) for s in sets),
                           resamples=30)
    assert got.mAP.observed == pytest.approx(expected.mAP.observed)
    with pytest.raises(ValueError, match="not in the records"):
        per_image(sets[0], records[:3], classes)


def test_paired_bootstrap_refuses_different_images():
    rng = np.random.default_rng(1)
    records, found = random_images(rng, 10, noise=3.0)
    with pytest.raises(ValueError, match="different images"):
        paired_bootstrap(rank_matches(records, found, NUM_CLASSES),
                         rank_matches(records[:5], found[:5], NUM_CLASSES))
    with pytest.raises(ValueError, match="records but"):
        rank_matches(records, found[:3], NUM_CLASSES)
