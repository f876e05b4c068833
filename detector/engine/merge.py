"""The rules that merge several models' detections of one class into one set (``tools/ensemble.py``).

Each model's detections have been through its own NMS at 0.3 (and box voting); a rule combines
them per image:
- ``nms``: NMS *across* models (``merge_nms``): in order of score, a detection is dropped when a
  kept detection of another model overlaps it by IoU > ``nms_iou``; overlaps within one model are
  left as that model's test made them.  A plain NMS over the union would do the test's NMS again
  on boxes box voting has moved (which may now overlap their own neighbours), dropping 31-38% of a
  model's own detections and taking the same folder twice from 7.2 to 3.0 mAP.
- ``vote``: ``nms``, then box voting across models (as MR-CNN votes within one): every detection
  the NMS dropped joins the kept box of another model it overlaps most, if by IoU >= ``vote_iou``,
  and each kept box moves to the score-weighted mean of itself and the detections that joined it,
  its score unchanged.  A model's own boxes never vote for each other here (they did at its test).
- ``average``: detections of different models that overlap by IoU >= ``match_iou`` are matched
  (greedily, best score first, each to the best-scored unmatched detection of each other model);
  a group's score is the mean over *all* models, a model without a detection in the group counting
  0, and its box the score-weighted mean of the group's boxes.  Meaningful on calibrated scores
  (probabilities), which ``tools/ensemble.py`` merges when every input has them.

Ties in score are broken by model order, then by order within a model, so a model merged with
itself gives itself back (``nms``, ``vote``; ``average`` gives its boxes with the same scores).
Voting weights are the scores themselves when none is negative (probabilities), else the scores
minus the group's lowest (raw SVM margins).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from detector.core.boxes import iou_matrix
from detector.core.detections import Detections

RULES = ("nms", "vote", "average")


def _by_image(parts: Sequence[Detections]) -> Iterator[tuple[np.ndarray, Detections, np.ndarray]]:
    """Per image: the rows of the union (``Detections.concat(parts)``) of that image, best score first
    (ties: the earlier model, then the earlier row), with the union and each row's model."""
    merged = Detections.concat(parts)
    model = np.concatenate([np.full(len(part), k) for k, part in enumerate(parts)]) if parts else np.zeros(0, int)
    if len(merged) == 0:
        return
    _, image_index = np.unique(merged.image_ids, return_inverse=True)
    for rows in np.split(np.argsort(image_index, kind="stable"), np.cumsum(np.bincount(image_index))[:-1]):
        rows = rows[np.lexsort((rows, model[rows], -merged.scores[rows]))]
        yield rows, merged, model


def _weights(scores: np.ndarray) -> np.ndarray:
    """Voting weights of ``scores`` (module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    return scores if not len(scores) or scores.min() >= 0 else scores - scores.min()


def _sorted(image_ids: list, scores: list, boxes: list, positions: list) -> Detections:
    """The detections gathered image by image, best score first overall; ties in the order of the
    union (``positions``: each detection's row in it, or its group's first row)."""
    if not scores:
        return Detections.empty()
    ids, score, box, position = (np.concatenate(image_ids), np.concatenate(scores), np.concatenate(boxes),
                                 np.concatenate(positions))
    order = np.lexsort((position, -score))
    return Detections(ids[order], score[order], box[order].astype(np.float32))


def merge_nms(parts: Sequence[Detections], nms_iou: float = 0.3, vote_iou: float = 0.0) -> Detections:
    """NMS across models (module docstring); with ``vote_iou`` > 0, then box voting across models."""
    ids, scores, boxes, positions = [], [], [], []
    for rows, merged, model in _by_image(parts):
        overlaps = iou_matrix(merged.boxes[rows], merged.boxes[rows])
        kept = np.zeros(len(rows), dtype=bool)
        for i in range(len(rows)):
            kept[i] = not (kept & (model[rows] != model[rows[i]]) & (overlaps[i] > nms_iou)).any()
        chosen = merged.boxes[rows[kept]].astype(np.float64)
        if vote_iou > 0:
            chosen = _vote(merged.boxes[rows].astype(np.float64), merged.scores[rows], model[rows], kept,
                           overlaps, vote_iou)
        ids.append(merged.image_ids[rows[kept]])
        scores.append(merged.scores[rows[kept]])
        boxes.append(chosen)
        positions.append(rows[kept])
    return _sorted(ids, scores, boxes, positions)


def _vote(boxes: np.ndarray, scores: np.ndarray, model: np.ndarray, kept: np.ndarray, overlaps: np.ndarray,
          vote_iou: float) -> np.ndarray:
    """One image's kept boxes after voting: every detection not kept joins the kept box of another
    model it overlaps most, if by IoU >= ``vote_iou``; a kept box becomes the weighted mean of itself
    and the detections that joined it."""
    weights = _weights(scores)
    kept_rows = np.flatnonzero(kept)
    cluster = np.arange(len(boxes))  # each kept box is its own cluster's head
    for r in np.flatnonzero(~kept):
        ious = np.where(model[kept_rows] != model[r], overlaps[r, kept_rows], -1.0)
        if len(ious) and ious.max() >= vote_iou:
            cluster[r] = kept_rows[int(np.argmax(ious))]
    voted = []
    for head in kept_rows:
        members = np.flatnonzero(cluster == head)
        total = weights[members].sum()
        voted.append(weights[members] @ boxes[members] / total if total > 0 else boxes[head])
    return np.asarray(voted, dtype=np.float64).reshape(-1, 4)


def merge_average(parts: Sequence[Detections], match_iou: float = 0.5) -> Detections:
    """Score averaging of matched detections, a missing model counting 0 (module docstring)."""
    ids, scores, boxes, positions = [], [], [], []
    for rows, merged, model in _by_image(parts):
        matches = iou_matrix(merged.boxes[rows], merged.boxes[rows]) >= match_iou
        of_model = [model[rows] == other for other in range(len(parts))]  # computed once per image
        taken = np.zeros(len(rows), dtype=bool)
        group_scores, group_boxes, leaders = [], [], []
        for i in range(len(rows)):
            if taken[i]:
                continue
            group = [i]
            for other in range(len(parts)):
                if other == model[rows[i]]:
                    continue
                free = np.flatnonzero(~taken & of_model[other] & matches[i])
                if len(free):
                    group.append(int(free[0]))  # rows are best first: the best-scored free match
            taken[group] = True
            members = rows[group]
            weight = _weights(merged.scores[members])
            total = weight.sum()
            group_boxes.append(weight @ merged.boxes[members].astype(np.float64) / total if total > 0
                               else merged.boxes[members[0]].astype(np.float64))
            group_scores.append(merged.scores[members].sum() / len(parts))
            leaders.append(members[0])
        ids.append(merged.image_ids[np.asarray(leaders)])
        scores.append(np.asarray(group_scores, dtype=np.float64))
        boxes.append(np.asarray(group_boxes, dtype=np.float64).reshape(-1, 4))
        positions.append(np.asarray(leaders))
    return _sorted(ids, scores, boxes, positions)


def merge_rule(rule: str, nms_iou: float = 0.3, vote_iou: float = 0.5,
               match_iou: float = 0.5) -> Callable[[Sequence[Detections]], Detections]:
    """The merge of one class's detections by ``rule`` (one of ``RULES``)."""
    if rule == "nms":
        return lambda parts: merge_nms(parts, nms_iou)
    if rule == "vote":
        return lambda parts: merge_nms(parts, nms_iou, vote_iou)
    if rule == "average":
        return lambda parts: merge_average(parts, match_iou)
    raise ValueError(f"merge rule must be one of {RULES}, not {rule!r}")


def merge_sets(sets: Sequence[dict[str, Detections]], classes: Sequence[str], rule: str, max_per_image: int = 100,
               nms_iou: float = 0.3, vote_iou: float = 0.5, match_iou: float = 0.5) -> dict[str, Detections]:
    """Several models' detection sets merged class by class by ``rule``, then capped per image."""
    merge = merge_rule(rule, nms_iou, vote_iou, match_iou)
    return cap_per_image({c: merge([s[c] for s in sets]) for c in classes}, max_per_image)


def cap_per_image(detection_set: dict[str, Detections], max_per_image: int) -> dict[str, Detections]:
    """Keep each image's ``max_per_image`` best-scored detections over all classes."""
    names = list(detection_set)
    sizes = [len(detection_set[n]) for n in names]
    if not sum(sizes):
        return dict(detection_set)
    ids = np.concatenate([detection_set[n].image_ids for n in names])
    scores = np.concatenate([detection_set[n].scores for n in names])
    order = np.lexsort((-scores, ids))  # grouped by image, best first within an image
    sorted_ids = ids[order]
    rank = np.arange(len(order)) - np.searchsorted(sorted_ids, sorted_ids, side="left")
    keep = np.zeros(len(ids), dtype=bool)
    keep[order[rank < max_per_image]] = True
    out, start = {}, 0
    for name, size in zip(names, sizes):
        rows = np.flatnonzero(keep[start:start + size])
        found = detection_set[name]
        out[name] = Detections(found.image_ids[rows], found.scores[rows], found.boxes[rows])
        start += size
    return out
