"""One global scale for fc7 features before the SVMs (R-CNN / SPP-net practice).

The SVM hyper-parameters (C = 1e-3, bias scaled by 10) were tuned for features whose mean
L2 norm is 20, so the factor is estimated once from a sample of training windows and
stored in the model, which applies it to every feature it scores.
"""
from __future__ import annotations

import numpy as np

TARGET_NORM = 20.0  # the mean L2 norm of the SVMs' (scaled) features


def estimate_feature_scale(sample: np.ndarray, target_norm: float = TARGET_NORM) -> float:
    """Factor that makes the mean L2 norm of the rows of ``sample`` (N x D) ``target_norm``."""
    sample = np.asarray(sample)
    if sample.ndim != 2 or len(sample) == 0:
        raise ValueError(f"feature sample must be a non-empty N x D array, got shape {sample.shape}")
    if not target_norm > 0:
        raise ValueError(f"target_norm must be positive, got {target_norm}")
    norms = np.linalg.norm(sample.astype(np.float64, copy=False), axis=1)
    mean_norm = float(norms.mean())
    if not np.isfinite(mean_norm) or mean_norm <= 0:
        raise ValueError(f"feature sample has mean L2 norm {mean_norm}: cannot scale it")
    return target_norm / mean_norm
