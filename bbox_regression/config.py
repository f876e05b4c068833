"""Settings of box-regression training (the ``bbox`` section of the config); the reasons for the
defaults are in ``bbox_regression.ridge``."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BoxRegressorConfig:
    """Settings of box-regression training (see the module docstring for the reasons)."""

    alpha: float = 1000.0  # ridge lambda (R-CNN's; the released SPP-net code used 4000 with whitened targets)
    min_iou: float = 0.5  # training pairs: proposals overlapping a GT box by IoU above this
    feature_norm: float = 20.0  # features are scaled so the training pairs' mean L2 norm is this
    min_pairs: int = 10  # a class with fewer pairs gets no regressor (its boxes pass unchanged)
    max_pairs_per_class: int = 10000  # pairs kept per class at most (a seeded uniform subsample)
    seed: int = 0  # the subsample's seed (the config's top-level seed)

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ValueError(f"BoxRegressorConfig: alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.min_iou < 1.0:
            raise ValueError(f"BoxRegressorConfig: min_iou must be in [0, 1), got {self.min_iou}")
        if not self.feature_norm > 0:
            raise ValueError(f"BoxRegressorConfig: feature_norm must be > 0, got {self.feature_norm}")
        if self.min_pairs < 2:
            raise ValueError(f"BoxRegressorConfig: min_pairs must be >= 2, got {self.min_pairs}")
        if self.max_pairs_per_class < self.min_pairs:
            raise ValueError(
                f"BoxRegressorConfig: max_pairs_per_class ({self.max_pairs_per_class}) "
                f"must be >= min_pairs ({self.min_pairs})"
            )
