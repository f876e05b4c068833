"""Seconds per pipeline stage, summed over images: where a test run's time goes."""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

STAGES = ("proposals", "conv", "pooling", "fc", "scoring", "regression", "nms")


@dataclass
class StageTimer:
    """Seconds spent per pipeline stage, summed over images."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    images: int = 0
    skipped: int = 0  # images left out after a failure (named in the log)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the seconds spent inside the block to stage ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def per_image(self) -> dict[str, float]:
        """Mean seconds per image for every stage, plus the total."""
        n = max(self.images, 1)
        table = {name: self.seconds.get(name, 0.0) / n for name in STAGES}
        table["total"] = sum(table.values())
        return table
