"""Hyper-parameters of SVM training with hard negative mining (the ``svm`` section of the config)."""
from __future__ import annotations

from dataclasses import dataclass

CACHE_DTYPES = ("float16", "float32")
SVM_FEATURES = ("fc7", "pool5")


@dataclass(frozen=True)
class SVMConfig:
    """Hyper-parameters of SVM training (defaults: the paper / released code)."""

    # what the SVMs read: "fc7" (the fine-tuned fc7, the paper's detector) or "pool5" (the
    # pooled pyramid itself, no fc layer: the paper's pool5 ablation)
    features: str = "fc7"
    # short-side scales the SVMs' (and box regressors') training windows are pooled at, each window
    # at its best one as at test; empty: the model's training ``scales`` (the paper)
    scales: tuple[int, ...] = ()
    C: float = 1e-3  # the paper's liblinear -c
    pos_weight: float = 2.0  # weight of a positive's hinge loss against a negative's (the released code's)
    intercept_scaling: float = 10.0  # the bias feature's value (liblinear -B), so the bias is less regularised
    hard_threshold: float = -1.0  # a negative scoring above this is hard: it enters its class's cache
    evict_threshold: float = -1.2  # a cached negative scoring below this after a retrain is evicted
    neg_iou: float = 0.3  # negatives: windows whose IoU with every GT box of the class is below this
    # proposals overlapping a non-difficult GT box by IoU >= pos_iou are positives of its class
    # too (ImageWindows.near_gt); 1: the GT boxes alone (the paper)
    pos_iou: float = 1.0
    neg_overlap: float = 0.7  # a negative overlapping a kept negative by more than this IoU is dropped
    passes: int = 1  # mining passes over the training images (the paper: one)
    # also the GT boxes of the horizontally flipped training images as positives (twice the
    # positives for a pass over their GT boxes alone; negatives are mined on the images as they are)
    flip_positives: bool = False
    retrain_every: int = 2000  # retrain a class after this many new hard negatives entered its cache
    max_cache_per_class: int = 20_000  # rows a class's cache holds at most (the easiest are dropped first)
    cache_dtype: str = "float16"  # dtype of the cached feature rows: float16 or float32
    seed: int = 0  # liblinear's seed (the config's top-level seed)

    def __post_init__(self) -> None:
        if not (self.C > 0 and self.pos_weight > 0 and self.intercept_scaling > 0):
            raise ValueError(
                f"SVMConfig: C, pos_weight and intercept_scaling must be positive, got "
                f"{self.C}, {self.pos_weight}, {self.intercept_scaling}"
            )
        if not self.evict_threshold < self.hard_threshold:
            raise ValueError(
                f"SVMConfig: evict_threshold ({self.evict_threshold}) must be below "
                f"hard_threshold ({self.hard_threshold}), or fresh hard negatives get evicted"
            )
        if not (0 < self.neg_iou <= 1 and 0 < self.neg_overlap <= 1):
            raise ValueError(
                f"SVMConfig: neg_iou and neg_overlap must be in (0, 1], got "
                f"{self.neg_iou}, {self.neg_overlap}"
            )
        if not self.neg_iou < self.pos_iou <= 1:
            raise ValueError(f"SVMConfig: pos_iou must be in (neg_iou, 1], got {self.pos_iou} (neg_iou {self.neg_iou})")
        if self.passes < 1 or self.retrain_every < 1 or self.max_cache_per_class < 1:
            raise ValueError(
                f"SVMConfig: passes, retrain_every and max_cache_per_class must be >= 1, got "
                f"{self.passes}, {self.retrain_every}, {self.max_cache_per_class}"
            )
        if any(scale < 1 for scale in self.scales):
            raise ValueError(f"SVMConfig: scales must be positive, got {self.scales}")
        if self.features not in SVM_FEATURES:
            raise ValueError(f"SVMConfig: features must be one of {SVM_FEATURES}, got {self.features!r}")
        if self.cache_dtype not in CACHE_DTYPES:
            raise ValueError(
                f"SVMConfig: cache_dtype must be one of {sorted(CACHE_DTYPES)}, got {self.cache_dtype!r}"
            )
