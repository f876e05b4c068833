"""Test images drawn with their detections judged against ground truth (``test_det.py --show-dir``).

Only detections scoring at least the predictor's default threshold for the model's scorer
(``detector.inference.predictor.default_score_threshold``) are drawn: the low-scored ones kept
for AP would bury every picture.  They are judged by the evaluation's own matching
(``voc_eval.match_image``: IoU >= 0.5 with a GT box of the class, the first come takes it,
difficult GT ignored), run among the drawn detections.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from detector.core.detections import ImageDetections
from detector.core.images import load_image
from detector.core.records import ImageRecord
from detector.evaluation.voc_eval import match_image
from detector.visualization.draw import draw_evaluation, save_image

log = logging.getLogger(__name__)


class KeepFirst:
    """Forwards ``process`` to an evaluator and keeps the first ``count`` images' detections."""

    def __init__(self, evaluator: object, count: int) -> None:
        self.evaluator, self.count = evaluator, count
        self.kept: list[tuple[ImageRecord, ImageDetections]] = []

    def process(self, record: ImageRecord, found: ImageDetections) -> None:
        self.evaluator.process(record, found)
        if len(self.kept) < self.count:
            self.kept.append((record, found))


def draw_test_images(kept: Sequence[tuple[ImageRecord, ImageDetections]], classes: Sequence[str],
                     threshold: float, out_dir: str | Path) -> list[Path]:
    """Draw each image's detections above ``threshold`` and its GT into ``out_dir/<id>.jpg``."""
    out_dir = Path(out_dir)
    written = []
    for record, found in kept:
        rows = found.scores >= threshold
        boxes, scores, labels = found.boxes[rows], found.scores[rows], found.labels[rows]
        match = match_image(record, boxes, scores, labels)
        picture = draw_evaluation(load_image(record.path), boxes, scores, labels, classes, match.tp, match.ignored,
                                  record.boxes, record.labels, match.missed)
        path = out_dir / f"{record.image_id.replace('/', '_')}.jpg"
        save_image(path, picture)
        written.append(path)
    log.info("drew %d test images in %s (detections scoring >= %g)", len(written), out_dir, threshold)
    return written
