"""Test images drawn with their detections judged against ground truth (``test_det.py --show-dir``).

Only detections scoring at least the predictor's default threshold for the model's scorer
(``detector.inference.predictor.default_score_threshold``) are drawn: the low-scored ones kept
for AP would bury every picture.  They are judged by the evaluation's own matching
(``voc_eval.match_image``: IoU >= 0.5 with a GT box of the class, the first come takes it,
difficult GT ignored), run among the drawn detections.  ``--show-errors`` draws the images with
the most false positives plus missed objects instead of the first ones, the worst first.
"""
from __future__ import annotations

import heapq
import logging
from collections.abc import Sequence
from pathlib import Path

from detector.core.detections import ImageDetections
from detector.core.images import load_image
from detector.core.records import ImageRecord
from detector.evaluation.voc_eval import match_image
from detector.visualization.draw import draw_evaluation, save_image

log = logging.getLogger(__name__)


class KeepForShow:
    """Forwards ``process`` to an evaluator and keeps ``count`` images to draw: the first ones, or,
    with ``errors``, those with the most mistakes among their drawn detections (false positives
    plus missed GT, ``mistakes``), the worst first (ties: the earlier image)."""

    def __init__(self, evaluator: object, count: int, threshold: float = 0.0, errors: bool = False) -> None:
        self.evaluator, self.count, self.threshold, self.errors = evaluator, count, threshold, errors
        self._heap: list[tuple[int, int, ImageRecord, ImageDetections]] = []
        self._seen = 0
        self.images_with_errors = 0  # with ``errors``: the split's images with at least one mistake

    def process(self, record: ImageRecord, found: ImageDetections) -> None:
        self.evaluator.process(record, found)
        index, self._seen = self._seen, self._seen + 1
        if self.count <= 0 or (not self.errors and index >= self.count):
            return
        wrong = mistakes(record, found, self.threshold) if self.errors else 0
        self.images_with_errors += wrong > 0
        item = (wrong, -index, record, found)
        if len(self._heap) < self.count:
            heapq.heappush(self._heap, item)
        elif item[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, item)

    def summary(self) -> str:
        """What was kept, in one line: with ``errors``, how many of the kept images have a mistake."""
        kept = len(self._heap)
        if not self.errors:
            return f"the first {kept} images"
        erring = sum(1 for wrong, *_ in self._heap if wrong > 0)
        return (f"the {kept} images with the most mistakes: {erring} of them have any ({self.images_with_errors} of "
                f"the split's {self._seen} images do)" + ("; the others have none" if erring < kept else ""))

    @property
    def kept(self) -> list[tuple[ImageRecord, ImageDetections]]:
        """The kept images, worst first (``errors``) or in the split's order."""
        return [(record, found) for _, _, record, found in sorted(self._heap, key=lambda item: item[:2],
                                                                  reverse=True)]


def mistakes(record: ImageRecord, found: ImageDetections, threshold: float) -> int:
    """False positives plus missed GT among the detections scoring at least ``threshold``."""
    rows = found.scores >= threshold
    match = match_image(record, found.boxes[rows], found.scores[rows], found.labels[rows])
    return int((~match.tp & ~match.ignored).sum() + match.missed.sum())


def draw_test_images(kept: Sequence[tuple[ImageRecord, ImageDetections]], classes: Sequence[str],
                     threshold: float, out_dir: str | Path, ranked: bool = False) -> list[Path]:
    """Draw each image's detections above ``threshold`` and its GT into ``out_dir/<id>.jpg``
    (``ranked``: ``out_dir/<rank>_<id>.jpg``, so that a file listing shows them in ``kept``'s order)."""
    out_dir = Path(out_dir)
    written = []
    for rank, (record, found) in enumerate(kept, 1):
        rows = found.scores >= threshold
        boxes, scores, labels = found.boxes[rows], found.scores[rows], found.labels[rows]
        match = match_image(record, boxes, scores, labels)
        picture = draw_evaluation(load_image(record.path), boxes, scores, labels, classes, match.tp, match.ignored,
                                  record.boxes, record.labels, match.missed)
        name = f"{record.image_id.replace('/', '_')}.jpg"
        path = out_dir / (f"{rank:03d}_{name}" if ranked else name)
        save_image(path, picture)
        written.append(path)
    log.info("drew %d test images in %s (detections scoring >= %g)", len(written), out_dir, threshold)
    return written
