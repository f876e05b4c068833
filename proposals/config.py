"""Settings of the proposal stage (the ``proposals`` section of the config)."""
from __future__ import annotations

from dataclasses import dataclass

MODES = ("fast", "quality", "opencv-fast")  # selective search modes (proposals.selective_search)


@dataclass(frozen=True)
class ProposalConfig:
    """Selective search, or boxes from elsewhere (``proposals/``)."""

    method: str = "fast"  # selective search mode: fast, quality or opencv-fast
    max_side: int = 500  # images are searched with their long side at most this, boxes mapped back
    workers: int = 2  # processes computing missing proposals
    # None: selective search (above); else a folder of per-image files or one JSON file of boxes
    # from elsewhere, read and checked by proposals.external (format in its docstring)
    source: str | None = None

    def __post_init__(self) -> None:
        if self.method not in MODES:
            raise ValueError(f"proposals.method must be one of {MODES}, not {self.method!r}")
        if self.max_side < 32 or self.workers < 0:
            raise ValueError(f"proposals.max_side must be >= 32 and proposals.workers >= 0, got "
                             f"{self.max_side}, {self.workers}")
