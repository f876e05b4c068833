"""Recall of ground-truth boxes by proposals: the figure that says whether proposals are good enough.

Decisions:
- Every GT box counts, ``difficult`` ones included (a detector cannot find what no
  proposal covers, whatever the evaluation later ignores).
- A GT box is recalled when some proposal overlaps it with IoU >= ``iou_threshold``
  (``detector.core.boxes.iou_matrix``, the devkit's IoU).
- ``max_proposals`` keeps only each image's first (best-ranked) proposals.
- An image with no proposals available (missing from the mapping, or missing or broken in
  the cache) counts all its GT boxes as missed and is counted in ``missing_images``; it
  is not part of ``mean_proposals``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from detector.core.boxes import iou_matrix
from detector.core.records import ImageRecord
from proposals.cache import ProposalCache


@dataclass(frozen=True)
class RecallStats:
    """Proposal recall over a set of images."""

    recall: float  # recalled GT boxes / all GT boxes (0 when there is no GT box)
    num_gt: int
    num_recalled: int
    mean_proposals: float  # per image with proposals available
    num_images: int
    missing_images: int


def _proposals_of(source: Mapping[str, np.ndarray] | ProposalCache, record: ImageRecord) -> np.ndarray | None:
    """An image's proposals from a mapping or a cache, or None when unavailable."""
    if isinstance(source, ProposalCache):
        return source.load(record.image_id, (record.width, record.height))
    boxes = source.get(record.image_id)
    return None if boxes is None else np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def proposal_recall(
    records: Sequence[ImageRecord],
    proposals: Mapping[str, np.ndarray] | ProposalCache,
    iou_threshold: float = 0.5,
    max_proposals: int | None = None,
) -> RecallStats:
    """Fraction of GT boxes covered by a proposal at IoU >= ``iou_threshold`` (see module notes)."""
    if max_proposals is not None and max_proposals < 1:
        raise ValueError(f"max_proposals must be positive or None, got {max_proposals}")
    num_gt = num_recalled = missing = 0
    counts = []
    for record in records:
        boxes = _proposals_of(proposals, record)
        num_gt += len(record.boxes)
        if boxes is None:
            missing += 1
            continue
        boxes = boxes[:max_proposals]
        counts.append(len(boxes))
        if len(record.boxes) and len(boxes):
            best = iou_matrix(record.boxes, boxes).max(axis=1)
            num_recalled += int((best >= iou_threshold).sum())
    return RecallStats(
        recall=num_recalled / num_gt if num_gt else 0.0,
        num_gt=num_gt,
        num_recalled=num_recalled,
        mean_proposals=float(np.mean(counts)) if counts else 0.0,
        num_images=len(records),
        missing_images=missing,
    )
