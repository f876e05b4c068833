"""The window bank fine-tuning draws its mini-batches from: a sample of every training image's
windows (and its mirror image's), each pooled once from a random scale of the frozen conv maps.

The conv maps never change, so a window's pooled feature never changes either: like the released
code (which fine-tuned on cached pool5 features), every training image gives a fixed sample of
windows, 25% foreground, pooled once into a float16 bank, and an iteration then costs only the fc
layers.  Every random draw is made first, in the order of one process, so the bank does not depend
on how many processes pool it (``build_window_bank``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from detector.config import SamplingConfig
from detector.core import distributed
from detector.core.boxes import flip_boxes
from detector.core.windows import ImageWindows
from detector.features.convmaps import ConvMapProvider
from detector.features.geometry import TrunkGeometry
from detector.features.pooling import pool_boxes
from detector.features.rcnn import RCNNFeatures
from detector.features.spp import SpatialPyramidPooling
from detector.head.sampling import sample_windows

log = logging.getLogger(__name__)


@dataclass
class PoolingContext:
    """What turns windows of an image into pooled pyramid features."""

    provider: ConvMapProvider
    spp: SpatialPyramidPooling
    geometry: TrunkGeometry
    scales: tuple[int, ...]
    normalise: bool = True  # False for trunks whose pretrained fc6 expects raw pooled features
    rcnn: RCNNFeatures | None = None  # R-CNN mode: each window warped and run through the trunk


def pool_training_windows(context: PoolingContext, windows: ImageWindows, indices: np.ndarray,
                          flip: bool, rng: np.random.Generator) -> torch.Tensor:
    """Pool the chosen windows of one image, each from a random scale (or, in R-CNN mode, each
    from its own warped trunk pass)."""
    return pool_planned_windows(context, windows, indices, flip, draw_scales(context, len(indices), rng))


def draw_scales(context: PoolingContext, count: int, rng: np.random.Generator) -> np.ndarray | None:
    """The random scale index of each of ``count`` windows (SPP mode; None in R-CNN mode, which
    draws nothing)."""
    return None if context.rcnn is not None else rng.integers(len(context.scales), size=count)


def pool_planned_windows(context: PoolingContext, windows: ImageWindows, indices: np.ndarray,
                         flip: bool, scale_index: np.ndarray | None) -> torch.Tensor:
    """Pool the chosen windows of one image from the scales already drawn (``draw_scales``)."""
    record = windows.record
    if context.rcnn is not None:
        boxes = windows.boxes[indices]
        return context.rcnn.pool_record(record, flip_boxes(boxes, record.width) if flip else boxes, flip)
    used = sorted(set(scale_index.tolist()))
    loaded = context.provider.get_scales(record, [context.scales[k] for k in used], flip)
    maps = [None] * len(context.scales)
    for k, conv_map in zip(used, loaded):
        maps[k] = conv_map
    boxes = windows.boxes[indices]
    if flip:
        boxes = flip_boxes(boxes, record.width)
    return pool_boxes(context.spp, context.geometry, maps, boxes, scale_index)


@dataclass
class WindowBank:
    """Pooled features (float16, N x D) and labels (0 = background) of the sampled windows."""

    features: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        labels = self.labels.numpy()
        self.foreground = np.flatnonzero(labels > 0)
        self.background = np.flatnonzero(labels == 0)

    def draw(self, batch_size: int, fg_fraction: float, rng: np.random.Generator
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """A mini-batch across all images: ``fg_fraction`` foreground, the rest background."""
        n_fg = min(int(round(fg_fraction * batch_size)), len(self.foreground))
        n_bg = batch_size - n_fg
        rows = np.concatenate([rng.choice(self.foreground, n_fg, replace=False),
                               rng.choice(self.background, n_bg, replace=len(self.background) < n_bg)])
        rows_t = torch.from_numpy(rows)
        return self.features[rows_t].float(), self.labels[rows_t]


@dataclass
class PlannedPooling:
    """One image (and flip) of the bank: which windows, their labels and drawn scales."""

    windows: ImageWindows
    flip: bool
    indices: np.ndarray
    labels: np.ndarray
    scale_index: np.ndarray | None


def build_window_bank(context: PoolingContext, train: Sequence[ImageWindows],
                      sampling: SamplingConfig, flips: Sequence[bool], rng: np.random.Generator,
                      progress: bool = True) -> WindowBank:
    """Pool a sample of every training image's windows once, each from a random scale.

    The conv maps are frozen, so a window's pooled feature never changes: pooling a fixed
    sample per image (and per flip) once, then drawing mini-batches of 128 across all
    images from it, is what the released code did with its cached pool5 features, and it
    keeps the per-iteration cost to the fc layers alone.

    Every random draw (windows, then scales, image by image) is made first, in the order of a
    single process, so the bank does not depend on how many processes pool it: under ``torchrun``
    the pooling is split across ranks (``distributed.ordered_stream``) and every rank receives
    the whole bank (each rank holds a copy: its memory is the bank's size on every rank).
    """
    plan = []
    for windows in train:
        for flip in flips:
            indices, window_labels = sample_windows(windows, sampling, rng)
            if len(indices):
                plan.append(PlannedPooling(windows, flip, indices, window_labels,
                                           draw_scales(context, len(indices), rng)))
    capacity = sum(len(item.indices) for item in plan)
    features: torch.Tensor | None = None  # filled in place: a list joined by torch.cat would
    labels = torch.empty(capacity, dtype=torch.int64)  # hold every row twice at its peak
    filled = 0
    bar = tqdm(total=len(plan), desc="pooling training windows", disable=not progress or not distributed.is_main(),
               unit="img")
    # 16 images per rank and round: pooling one image's sample takes milliseconds, so fewer, larger
    # rounds (about 1 MB per image at 32 windows of 16000 float16) keep the ranks from waiting on each other
    for item, pooled in distributed.ordered_stream(plan, lambda item: _pool_or_skip(context, item), per_round=16):
        bar.update(1)
        if pooled is None:
            continue
        if features is None:
            features = torch.empty((capacity, pooled.shape[1]), dtype=torch.float16)
        features[filled:filled + len(item.indices)] = pooled
        labels[filled:filled + len(item.indices)] = torch.from_numpy(item.labels)
        filled += len(item.indices)
    bar.close()
    if features is None:
        raise ValueError("no training window could be sampled (no image has proposals)")
    return WindowBank(features[:filled], labels[:filled])


def _pool_or_skip(context: PoolingContext, item: PlannedPooling) -> torch.Tensor | None:
    """The planned windows pooled (float16, as the bank keeps them), or None when this image fails
    (logged); an ``OSError`` (an unwritable cache) stops the run, its message naming the path."""
    try:
        return pool_planned_windows(context, item.windows, item.indices, item.flip, item.scale_index).half()
    except OSError:
        raise
    except Exception as error:  # this image only (decode, trunk or pooling failure)
        log.error("fine-tuning: skipping image %s (%s): %s", item.windows.record.image_id,
                  item.windows.record.path, error)
        return None


def bank_generator(seed: int, index: int) -> np.random.Generator:
    """The generator of the ``index``-th window sample (the first is ``default_rng(seed)``, as before
    resampling existed)."""
    return np.random.default_rng(seed if index == 0 else [seed, index])
