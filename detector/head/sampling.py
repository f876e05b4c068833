"""Mini-batch sampling for fine-tuning: 25% foreground windows, the rest background.

Foreground: IoU >= ``fg_iou`` with a GT box, labelled with that box's class (1..K).
Background: IoU in [``bg_low``, ``bg_high``), label 0.  When an image has no window in the
background band (e.g. an image without GT, or a clean synthetic image) its background comes
from [0, ``bg_high``) instead, so every image still contributes negatives.
"""
from __future__ import annotations

import numpy as np

from detector.config import SamplingConfig
from detector.core.windows import ImageWindows


def sample_windows(windows: ImageWindows, config: SamplingConfig,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the sampled windows and their labels (0 = background, c + 1 = class c)."""
    fg = np.flatnonzero(windows.max_iou >= config.fg_iou)
    bg = np.flatnonzero((windows.max_iou >= config.bg_low) & (windows.max_iou < config.bg_high))
    if len(bg) == 0:
        bg = np.flatnonzero(windows.max_iou < config.bg_high)
    n_fg = min(int(round(config.fg_fraction * config.windows_per_image)), len(fg))
    n_bg = min(config.windows_per_image - n_fg, len(bg))
    fg = rng.choice(fg, n_fg, replace=False) if n_fg else fg[:0]
    bg = rng.choice(bg, n_bg, replace=False) if n_bg else bg[:0]
    indices = np.concatenate([fg, bg]).astype(np.int64)
    labels = np.zeros(len(indices), dtype=np.int64)
    labels[:n_fg] = windows.gt_labels[fg] + 1
    return indices, labels
