"""One linear SVM per class (liblinear through scikit-learn) and the K-class model.

``train_linear_svm`` solves what R-CNN / SPP-net solved with liblinear ``-s 3 -w1 2 -c 1e-3
-B 10``: L2-regularised L1-loss (hinge) SVM in the dual, with

    min  0.5 * (|w|^2 + v^2) + C * sum_i c_i * max(0, 1 - y_i (w . x_i + s v)),

labels y = +1 (positives) / -1 (negatives), c_i = ``pos_weight`` for positives and 1 for
negatives (scikit-learn's ``class_weight[label]`` multiplies C for that label), and the
bias ``b = s v`` learned through a constant synthetic feature ``s = intercept_scaling``
(so the bias is regularised ten times less than a unit-norm feature would be).
scikit-learn's ``loss="hinge"`` exists only for ``dual=True`` (liblinear solver 3).
The solver gets float64 data (liblinear's own type), built in one copy from the caches.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from detector.core.integrity import tensors_as_arrays


@dataclass
class LinearFit:
    """One class's SVM: ``weight`` (D, float32), ``bias``, liblinear's iterations, whether it reached
    its tolerance, and the primal objective of the fit on its training data."""

    weight: np.ndarray
    bias: float
    iterations: int
    converged: bool
    objective: float


def svm_objective(weight: np.ndarray, bias: float, pos: np.ndarray, neg: np.ndarray, C: float,
                  pos_weight: float, intercept_scaling: float) -> float:
    """liblinear's primal objective (its ``-s 3`` problem with ``-B intercept_scaling``):
    ``0.5 |w|^2 + 0.5 (b / B)^2 + C (pos_weight * sum hinge(pos) + sum hinge(neg))``, in float64."""
    weight = np.asarray(weight, np.float64)
    hinge_pos = np.maximum(0.0, 1.0 - (np.asarray(pos, np.float64) @ weight + bias)).sum()
    hinge_neg = np.maximum(0.0, 1.0 + (np.asarray(neg, np.float64) @ weight + bias)).sum()
    return float(0.5 * weight @ weight + 0.5 * (bias / intercept_scaling) ** 2
                 + C * (pos_weight * hinge_pos + hinge_neg))


def train_linear_svm(
    pos: np.ndarray,
    neg: np.ndarray,
    C: float = 1e-3,
    pos_weight: float = 2.0,
    intercept_scaling: float = 10.0,
    seed: int = 0,
    max_iter: int = 10_000,
    tol: float = 1e-4,
) -> LinearFit:
    """Fit one class's SVM on already scaled features (liblinear's dual solver, whose
    ``ConvergenceWarning`` is not raised but recorded in ``LinearFit.converged``)."""
    pos = np.asarray(pos)
    neg = np.asarray(neg)
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[1] != neg.shape[1]:
        raise ValueError(f"pos and neg must be N x D with the same D, got {pos.shape} and {neg.shape}")
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"an SVM needs positives and negatives, got {len(pos)} and {len(neg)}")
    features = np.concatenate([pos, neg], axis=0, dtype=np.float64)
    labels = np.concatenate([np.ones(len(pos)), -np.ones(len(neg))])
    svm = LinearSVC(
        C=C,
        class_weight={1: pos_weight, -1: 1.0},
        intercept_scaling=intercept_scaling,
        loss="hinge",
        dual=True,
        fit_intercept=True,
        tol=tol,
        max_iter=max_iter,
        random_state=seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # recorded below instead
        svm.fit(features, labels)
    iterations = int(np.max(svm.n_iter_))
    # classes_ is sorted, so [-1, 1]: coef_ scores the +1 class.
    weight, bias = svm.coef_[0].astype(np.float32), float(svm.intercept_[0])
    return LinearFit(weight, bias, iterations, iterations < max_iter,
                     svm_objective(svm.coef_[0], bias, features[:len(pos)], features[len(pos):], C, pos_weight,
                                   intercept_scaling))


@dataclass
class SVMModel:
    """K linear SVMs on fc7 features scaled by ``feature_scale``.

    ``training_stats`` is the mining record (plain, JSON-able dict) when the model comes
    from ``svm.mining.train_svms``; it is not part of ``state_dict``.
    """

    weights: np.ndarray
    biases: np.ndarray
    feature_scale: float
    training_stats: dict | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.weights = np.asarray(self.weights, dtype=np.float32)
        self.biases = np.asarray(self.biases, dtype=np.float32).reshape(-1)
        self.feature_scale = float(self.feature_scale)
        if self.weights.ndim != 2 or len(self.biases) != len(self.weights):
            raise ValueError(
                f"SVMModel needs weights K x D and K biases, got {self.weights.shape} "
                f"and {self.biases.shape}"
            )
        if not (np.isfinite(self.feature_scale) and self.feature_scale > 0):
            raise ValueError(f"SVMModel feature_scale must be positive, got {self.feature_scale}")

    @property
    def num_classes(self) -> int:
        return len(self.weights)

    def scores(self, features_unscaled: np.ndarray) -> np.ndarray:
        """SVM scores (M x K, float32) of unscaled fc7 features (M x D): one matrix product."""
        features_unscaled = np.asarray(features_unscaled, dtype=np.float32)
        if features_unscaled.ndim != 2 or features_unscaled.shape[1] != self.weights.shape[1]:
            raise ValueError(
                f"features must be M x {self.weights.shape[1]}, got {features_unscaled.shape}"
            )
        # (s x) . w == s (x . w): scale the K columns, not the M x D features.
        return (features_unscaled @ self.weights.T) * np.float32(self.feature_scale) + self.biases

    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain arrays, e.g. for ``np.savez``."""
        return {
            "weights": self.weights.copy(),
            "biases": self.biases.copy(),
            "feature_scale": np.array(self.feature_scale, dtype=np.float64),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray]) -> SVMModel:
        missing = {"weights", "biases", "feature_scale"} - set(state)
        if missing:
            raise ValueError(f"SVM state is missing {sorted(missing)}")
        state = tensors_as_arrays(state)  # tensors as a file holds them, tensors_as_arrays as a trainer made them
        return cls(
            weights=np.array(state["weights"], dtype=np.float32),
            biases=np.array(state["biases"], dtype=np.float32),
            feature_scale=float(np.asarray(state["feature_scale"])),
        )
