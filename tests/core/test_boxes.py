"""Box voting against a loop-per-box reference on random boxes."""
import numpy as np
import pytest

from detector.core.boxes import vote_boxes


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _vote_reference(kept, kept_classes, candidates, weights, classes, threshold):
    out = []
    for box, cls in zip(kept, kept_classes):
        total, acc = 0.0, np.zeros(4)
        for other, weight, other_cls in zip(candidates, weights, classes):
            if other_cls == cls and _iou(box, other) >= threshold:
                total += weight
                acc += weight * np.asarray(other, dtype=np.float64)
        out.append(acc / total if total > 0 else np.asarray(box, dtype=np.float64))
    return np.array(out).reshape(-1, 4)


def _random_boxes(rng, n):
    xy = rng.uniform(0, 80, size=(n, 2))
    wh = rng.uniform(5, 60, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


@pytest.mark.parametrize("seed", range(5))
def test_vote_boxes_equals_the_loop_reference(seed):
    rng = np.random.default_rng(seed)
    candidates = _random_boxes(rng, 60)
    classes = rng.integers(0, 3, size=60)
    weights = rng.uniform(0, 1, size=60)
    weights[rng.random(60) < 0.2] = 0.0  # some windows weigh nothing
    pick = rng.choice(60, size=12, replace=False)
    kept = candidates[pick] + rng.normal(0, 2, size=(12, 4)).astype(np.float32)  # not exactly a candidate
    kept[:3] = [[200, 200, 210, 210]] * 3  # overlaps nothing: stays as it is
    voted = vote_boxes(kept, classes[pick], candidates, weights, classes, 0.5)
    expected = _vote_reference(kept, classes[pick], candidates, weights, classes, 0.5)
    assert voted.dtype == np.float32 and voted.shape == (12, 4)
    np.testing.assert_allclose(voted, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(voted[:3], kept[:3])


def test_vote_boxes_averages_overlapping_boxes_of_the_same_class_only():
    kept = np.array([[0, 0, 10, 10]], np.float32)
    candidates = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    voted = vote_boxes(kept, np.array([1]), candidates, np.array([1.0, 3.0, 5.0, 7.0]),
                       np.array([1, 1, 2, 1]), 0.5)
    np.testing.assert_allclose(voted, [[1.5, 0, 11.5, 10]])  # (1 * box0 + 3 * box1) / 4


def test_vote_boxes_refuses_negative_or_missing_weights():
    boxes = np.array([[0, 0, 10, 10]], np.float32)
    with pytest.raises(ValueError, match="weight"):
        vote_boxes(boxes, [0], boxes, np.array([-1.0]), [0], 0.5)
    with pytest.raises(ValueError, match="weight"):
        vote_boxes(boxes, [0], boxes, np.array([1.0, 2.0]), [0], 0.5)
