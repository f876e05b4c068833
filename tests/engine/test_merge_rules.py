"""The three merge rules of tools/ensemble.py against plain-loop references on random inputs with ties,
and a model merged with itself under each rule."""
from __future__ import annotations

import numpy as np
import pytest

from detector.core.detections import Detections
from detector.engine.merge import RULES, merge_average, merge_nms, merge_rule


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def _rows(parts):
    """Every detection as (score, model, index within the model, image, box), best first; ties by
    model, then index."""
    rows = [(float(s), k, n, str(i), [float(v) for v in b]) for k, part in enumerate(parts)
            for n, (i, s, b) in enumerate(zip(part.image_ids, part.scores, part.boxes))]
    return sorted(rows, key=lambda r: (-r[0], r[1], r[2]))


def _weights(scores):
    low = min(scores)
    return list(scores) if low >= 0 else [s - low for s in scores]


def _mean(boxes, weights):
    total = sum(weights)
    if total <= 0:
        return boxes[0]
    return [sum(w * b[c] for w, b in zip(weights, boxes)) / total for c in range(4)]


def vote_reference(parts, nms_iou, vote_iou):
    """NMS across models, then each dropped detection joins the most-overlapping kept box of another
    model (IoU >= vote_iou), and kept boxes become the weighted mean of their members; plain loops."""
    rows = _rows(parts)
    out = []
    for image in sorted({r[3] for r in rows}):
        mine = [r for r in rows if r[3] == image]
        weights = _weights([r[0] for r in mine])
        kept = []
        for i, (_, k, _, _, box) in enumerate(mine):
            if not any(mine[j][1] != k and _iou(box, mine[j][4]) > nms_iou for j in kept):
                kept.append(i)
        members = {i: [i] for i in kept}
        for i in range(len(mine)):
            if i in kept:
                continue
            best, best_iou = None, -1.0
            for j in kept:
                overlap = _iou(mine[i][4], mine[j][4])
                if mine[j][1] != mine[i][1] and overlap > best_iou:
                    best, best_iou = j, overlap
            if best is not None and best_iou >= vote_iou:
                members[best].append(i)
        for j in kept:
            box = _mean([mine[i][4] for i in members[j]], [weights[i] for i in members[j]]) if vote_iou > 0 else mine[j][4]
            out.append((image, round(mine[j][0], 9), tuple(round(v, 3) for v in box)))
    return sorted(out)


def average_reference(parts, match_iou):
    """Greedy matching, best first, each to the best-scored free detection of every other model
    overlapping it by IoU >= match_iou; the group's score is the mean over all models (missing: 0)
    and its box the weighted mean of its members; plain loops."""
    rows = _rows(parts)
    out = []
    for image in sorted({r[3] for r in rows}):
        mine = [r for r in rows if r[3] == image]
        taken = [False] * len(mine)
        for i, (score, k, _, _, box) in enumerate(mine):
            if taken[i]:
                continue
            group = [i]
            for other in range(len(parts)):
                if other == k:
                    continue
                for j, row in enumerate(mine):
                    if not taken[j] and row[1] == other and _iou(box, row[4]) >= match_iou:
                        group.append(j)
                        break
            for j in group:
                taken[j] = True
            scores = [mine[j][0] for j in group]
            merged = _mean([mine[j][4] for j in group], _weights(scores))
            out.append((image, round(sum(scores) / len(parts), 9), tuple(round(v, 3) for v in merged)))
    return sorted(out)


def random_parts(rng, models: int, negative: bool = False):
    parts = []
    for _ in range(models):
        n = int(rng.integers(0, 25))
        xy = rng.uniform(0, 60, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], 1).astype(np.float32)
        scores = np.round(rng.uniform(-1 if negative else 0, 1, n), 1)  # ties on purpose
        parts.append(Detections(rng.choice(["a", "b", "c"], n), scores, boxes))
    return parts


def _got(merged: Detections):
    return sorted((str(i), round(float(s), 9), tuple(round(float(v), 3) for v in b))
                  for i, s, b in zip(merged.image_ids, merged.scores, merged.boxes))


@pytest.mark.parametrize("negative", [False, True])
def test_vote_matches_a_loop_reference(negative):
    rng = np.random.default_rng(1)
    for trial in range(25):
        parts = random_parts(rng, int(rng.integers(1, 4)), negative)
        assert _got(merge_nms(parts, 0.3, 0.5)) == vote_reference(parts, 0.3, 0.5), trial


@pytest.mark.parametrize("negative", [False, True])
def test_average_matches_a_loop_reference(negative):
    rng = np.random.default_rng(2)
    for trial in range(25):
        parts = random_parts(rng, int(rng.integers(1, 4)), negative)
        assert _got(merge_average(parts, 0.5)) == average_reference(parts, 0.5), trial


def test_nms_without_voting_is_the_reference_without_voting():
    rng = np.random.default_rng(3)
    for trial in range(25):
        parts = random_parts(rng, int(rng.integers(1, 4)))
        assert _got(merge_nms(parts, 0.3)) == vote_reference(parts, 0.3, 0.0), trial


@pytest.mark.parametrize("rule", RULES)
def test_a_model_merged_with_itself_gives_itself_back(rule):
    rng = np.random.default_rng(4)
    for trial in range(10):
        (part,) = random_parts(rng, 1)
        moved = Detections(part.image_ids, part.scores * 0.5, part.boxes + 2)  # its own overlapping pairs
        model = Detections.concat([part, moved])
        assert _got(merge_rule(rule)([model, model])) == _got(model), (rule, trial)


def test_average_counts_a_missed_object_as_zero():
    box = np.array([[10, 10, 50, 50]], np.float32)
    merged = merge_average([Detections(["x"], np.array([0.8]), box), Detections.empty()], 0.5)
    assert merged.scores.tolist() == [0.4]
    merged = merge_average([Detections(["x"], np.array([0.8]), box), Detections(["x"], np.array([0.4]), box + 4)], 0.5)
    assert merged.scores.tolist() == pytest.approx([0.6])
    assert merged.boxes[0].tolist() == pytest.approx((box[0] + 4 / 3).tolist())  # weights 0.8 and 0.4


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="merge rule must be one of"):
        merge_rule("max")
