"""Choosing the SVMs' C on training images: cross-validation on the mined training set.

After hard negative mining, each class's training set is its positives and its cache of hard
negatives, every row tagged with the image it came from.  ``choose_c`` splits each class's
images into ``folds`` groups (image ordinal modulo ``folds``, so rows of one image never sit
on both sides), fits the class's SVM on the other groups for every candidate C, and scores the
held-out rows by average precision (``sklearn.metrics.average_precision_score``: positives
ranked above the hard negatives, which is what detection AP asks of a window scorer).  The C
with the best mean held-out AP over classes and folds is chosen for every class (one C, as in
R-CNN and SPP-net; a per-class choice would rest on a few dozen positives for some classes).

The held-out negatives are the hard ones the mining kept, not all windows: the score is a
ranking of positives against the negatives that matter, not a detection AP.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score

from svm.linear_svm import train_linear_svm

logger = logging.getLogger(__name__)


def held_out_ap(positives: np.ndarray, positive_images: np.ndarray, negatives: np.ndarray,
                negative_images: np.ndarray, candidates: Sequence[float], folds: int, pos_weight: float,
                intercept_scaling: float, seed: int = 0) -> np.ndarray:
    """Mean held-out AP (len(candidates),) of one class, NaN where no fold has both labels held out.

    ``positives``/``negatives``: scaled feature rows (P x D, N x D); ``*_images``: their image
    ordinals (P,), (N,); fold of a row = its image ordinal % ``folds``.
    """
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    totals = np.zeros(len(candidates))
    counts = np.zeros(len(candidates))
    for fold in range(folds):
        pos_out, neg_out = positive_images % folds == fold, negative_images % folds == fold
        if not (pos_out.any() and neg_out.any() and (~pos_out).any() and (~neg_out).any()):
            continue
        held_out = np.concatenate([positives[pos_out], negatives[neg_out]]).astype(np.float32)
        labels = np.concatenate([np.ones(pos_out.sum()), np.zeros(neg_out.sum())])
        for index, c in enumerate(candidates):
            weight, bias = train_linear_svm(positives[~pos_out], negatives[~neg_out], C=c, pos_weight=pos_weight,
                                            intercept_scaling=intercept_scaling, seed=seed)
            totals[index] += average_precision_score(labels, held_out @ weight + bias)
            counts[index] += 1
    with np.errstate(invalid="ignore"):
        return totals / counts


def choose_c(per_class: Sequence[np.ndarray], candidates: Sequence[float],
             class_names: Sequence[str]) -> tuple[float, dict[str, list[float]]]:
    """The candidate with the best mean over classes of ``held_out_ap`` rows (classes with NaN left
    out), and the table ``{class: [AP per candidate]}`` it was chosen from."""
    table = np.array(per_class, dtype=np.float64).reshape(len(per_class), len(candidates))
    usable = ~np.isnan(table).any(axis=1)
    if not usable.any():
        raise ValueError("no class has positives and negatives in two folds: cannot choose C")
    means = table[usable].mean(axis=0)
    best = float(candidates[int(np.argmax(means))])
    logger.info("SVM C by %d-class held-out AP: %s -> C = %g", int(usable.sum()),
                ", ".join(f"{c:g}: {m:.4f}" for c, m in zip(candidates, means)), best)
    return best, {name: [round(float(v), 4) for v in row] for name, row in zip(class_names, table)}
