"""Per-class ridge box regressors on pooled conv5 (SPP) features.

Training data flows in image by image through :class:`BoxRegressorTrainer.add`, which
keeps only the training pairs (see :mod:`bbox_regression.training_pairs`) and their
targets (:func:`bbox_regression.transforms.encode`); :meth:`BoxRegressorTrainer.fit`
then fits one multi-output ``sklearn.linear_model.Ridge`` per class.

Decisions:
- Ridge with ``alpha`` = lambda = 1000 (DESIGN; R-CNN's value; SPP-net's released code used
  4000 with whitened targets), ``fit_intercept=True`` so the bias is not shrunk.
- Features are multiplied by one stored factor that makes the mean L2 norm of the kept
  training pairs' features ``feature_norm`` (20, as for the SVMs and in R-CNN), so lambda
  means the same whatever the backbone's feature magnitude.  The factor lives in the model.
- Targets are standardised per class and coordinate (mean subtracted, divided by the std;
  both stored and undone at predict), so one lambda regularises dx, dy, dw, dh alike.  A
  coordinate with (near) zero spread keeps std 1.
- A class with fewer than ``min_pairs`` (10) pairs gets no regressor: too few to fit
  anything better than the input box, so its boxes (and those of classes never seen) pass
  through unchanged.  Fitting logs a warning naming each such class.
- Memory: pairs are kept per class as a uniform random subsample of at most
  ``max_pairs_per_class`` (10000) rows (reservoir sampling, seeded: the result depends only
  on the seed and the order of ``add`` calls), with features stored as float16 (half of
  float32; pooled conv5 activations need far less than float16's 3 significant digits for
  a ridge fit).  Worst case 20 classes x 10000 x 16000 dims x 2 bytes = 6.4 GB; each class
  is converted to float32 only while it is being fitted.  A feature beyond float16's range
  (65504) is refused rather than silently saturated.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import Ridge
from tqdm import tqdm

from bbox_regression.config import BoxRegressorConfig
from bbox_regression.training_pairs import select_training_pairs
from bbox_regression.transforms import decode, encode
from detector.core.boxes import clip_boxes
from detector.core.integrity import tensors_as_arrays

log = logging.getLogger(__name__)

_STORAGE_DTYPE = np.float16
_NORM_CHUNK_ROWS = 4096  # rows converted to float32 at a time when measuring feature norms


class _PairReservoir:
    """Uniform random subsample (Algorithm R) of at most ``capacity`` pairs of one class."""

    def __init__(self, capacity: int, feature_dim: int) -> None:
        self.capacity = capacity
        self.features = np.empty((0, feature_dim), dtype=_STORAGE_DTYPE)
        self.targets = np.empty((0, 4), dtype=np.float64)
        self.size = 0
        self.seen = 0

    def add(self, features: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> None:
        count = len(features)
        filled = min(self.capacity - self.size, count)
        if filled > 0:
            self._grow(self.size + filled)
            self.features[self.size:self.size + filled] = features[:filled]
            self.targets[self.size:self.size + filled] = targets[:filled]
            self.size += filled
        if filled < count:
            # Item number t (0-based, over the whole stream) replaces a uniform slot in
            # [0, t] when that slot exists; a later item wins a slot contested in one batch.
            ordinal = self.seen + np.arange(filled, count)
            slots = rng.integers(0, ordinal + 1)
            sources = np.flatnonzero(slots < self.capacity) + filled
            slots = slots[sources - filled]
            _, last_from_end = np.unique(slots[::-1], return_index=True)
            last = len(slots) - 1 - last_from_end
            self.features[slots[last]] = features[sources[last]]
            self.targets[slots[last]] = targets[sources[last]]
        self.seen += count

    def _grow(self, required: int) -> None:
        if required <= len(self.features):
            return
        rows = min(self.capacity, max(required, 2 * len(self.features)))
        features = np.empty((rows, self.features.shape[1]), dtype=_STORAGE_DTYPE)
        targets = np.empty((rows, 4), dtype=np.float64)
        features[:self.size] = self.features[:self.size]
        targets[:self.size] = self.targets[:self.size]
        self.features, self.targets = features, targets


@dataclass(frozen=True, eq=False)
class BoxRegressor:
    """Fitted per-class regressors; row ``k`` of every array belongs to ``classes[k]``.

    ``deltas = ((feature_scale * x) @ weights[k].T + intercepts[k]) * target_std[k]
    + target_mean[k]``, then :func:`decode`.  Classes not in ``classes`` pass through.
    """

    feature_scale: float
    classes: np.ndarray  # int64 (C,)
    weights: np.ndarray  # float32 (C, 4, D)
    intercepts: np.ndarray  # float64 (C, 4)
    target_mean: np.ndarray  # float64 (C, 4)
    target_std: np.ndarray  # float64 (C, 4)
    num_pairs: np.ndarray  # int64 (C,): training pairs each regressor was fitted on

    def __post_init__(self) -> None:
        count = len(self.classes)
        if self.classes.shape != (count,) or self.num_pairs.shape != (count,):
            raise ValueError("BoxRegressor: classes and num_pairs must be 1-D of equal length")
        if self.weights.ndim != 3 or self.weights.shape[:2] != (count, 4):
            raise ValueError(f"BoxRegressor: weights must be ({count}, 4, D), got {self.weights.shape}")
        for name in ("intercepts", "target_mean", "target_std"):
            if getattr(self, name).shape != (count, 4):
                raise ValueError(f"BoxRegressor: {name} must be ({count}, 4), got {getattr(self, name).shape}")
        if len(np.unique(self.classes)) != count:
            raise ValueError(f"BoxRegressor: repeated class in {self.classes.tolist()}")
        if not (np.isfinite(self.feature_scale) and self.feature_scale > 0):
            raise ValueError(f"BoxRegressor: feature_scale must be finite and > 0, got {self.feature_scale}")

    @property
    def feature_dim(self) -> int:
        return int(self.weights.shape[2])

    def predict(self, features: np.ndarray, boxes: np.ndarray, class_index: int | np.ndarray,
                feature_rows: np.ndarray | None = None) -> np.ndarray:
        """Regressed boxes (float32, M x 4) for ``boxes`` (M x 4).

        Box ``i`` is described by row ``feature_rows[i]`` of ``features`` (default: row ``i``),
        so a window kept by several classes is not copied once per class: each distinct row
        goes through one product with every class's weights.  ``class_index`` is one class for
        every box or one per box.  Boxes whose class has no regressor come back unchanged.
        Nothing is clipped (see :meth:`apply`).
        """
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        features = np.asarray(features)
        rows = np.arange(len(boxes)) if feature_rows is None else np.asarray(feature_rows, np.int64)
        if rows.shape != (len(boxes),) or (len(rows) and not 0 <= rows.min() <= rows.max() < len(features)):
            raise ValueError(f"feature_rows must give one row of features ({len(features)}) per box ({len(boxes)})")
        if features.ndim != 2 or features.shape[1] != self.feature_dim or (
                feature_rows is None and len(features) != len(boxes)):
            raise ValueError(
                f"features have shape {features.shape}, expected ({len(boxes)}, {self.feature_dim})"
            )
        classes = np.asarray(class_index)
        if classes.ndim not in (0, 1) or (classes.ndim == 1 and len(classes) != len(boxes)):
            raise ValueError(
                f"class_index must be an int or one per box ({len(boxes)}), got shape {classes.shape}"
            )
        classes = np.broadcast_to(classes.astype(np.int64), (len(boxes),))
        regressor_of_class = np.full(max(int(self.classes.max(initial=-1)), int(classes.max(initial=-1))) + 1,
                                     -1, np.int64)
        regressor_of_class[self.classes] = np.arange(len(self.classes))
        regressor = np.where(classes >= 0, regressor_of_class[np.maximum(classes, 0)], -1)
        regressed = boxes.copy()
        moved = np.flatnonzero(regressor >= 0)
        if len(moved) == 0:
            return regressed
        distinct, slot = np.unique(rows[moved], return_inverse=True)
        weights = self.weights.reshape(-1, self.feature_dim)  # (C * 4) x D
        raw = (features[distinct].astype(np.float32, copy=False) @ weights.T).reshape(len(distinct), -1, 4)
        k = regressor[moved]
        deltas = (raw[slot, k] * self.feature_scale + self.intercepts[k]) * self.target_std[k] + self.target_mean[k]
        regressed[moved] = decode(boxes[moved], deltas)
        return regressed

    def apply(
        self,
        features: np.ndarray,
        boxes: np.ndarray,
        class_indices: int | np.ndarray,
        width: int,
        height: int,
        feature_rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """:meth:`predict`, then clip the boxes to a ``width`` x ``height`` image."""
        return clip_boxes(self.predict(features, boxes, class_indices, feature_rows), width, height)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays (``np.savez`` / ``torch.save`` friendly, no pickled objects)."""
        return {
            "feature_scale": np.array(self.feature_scale, dtype=np.float64),
            "classes": self.classes.copy(),
            "weights": self.weights.copy(),
            "intercepts": self.intercepts.copy(),
            "target_mean": self.target_mean.copy(),
            "target_std": self.target_std.copy(),
            "num_pairs": self.num_pairs.copy(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray]) -> BoxRegressor:
        """Inverse of :meth:`state_dict`; a missing key or a bad shape raises ValueError."""
        missing = sorted({"feature_scale", "classes", "weights", "intercepts", "target_mean",
                          "target_std", "num_pairs"} - set(state))
        if missing:
            raise ValueError(f"box regressor state is missing {missing}")
        state = tensors_as_arrays(state)  # tensors as a file holds them, arrays as a trainer made them
        return cls(
            feature_scale=float(np.asarray(state["feature_scale"])),
            classes=np.asarray(state["classes"], dtype=np.int64).copy(),
            weights=np.asarray(state["weights"], dtype=np.float32).copy(),
            intercepts=np.asarray(state["intercepts"], dtype=np.float64).copy(),
            target_mean=np.asarray(state["target_mean"], dtype=np.float64).copy(),
            target_std=np.asarray(state["target_std"], dtype=np.float64).copy(),
            num_pairs=np.asarray(state["num_pairs"], dtype=np.int64).copy(),
        )


class BoxRegressorTrainer:
    """Accumulates training pairs image by image, then fits a :class:`BoxRegressor`."""

    def __init__(self, config: BoxRegressorConfig | None = None, class_names: Sequence[str] | None = None) -> None:
        """``class_names``: the names used in log messages (default: the class numbers)."""
        self.config = config or BoxRegressorConfig()
        self.class_names = list(class_names) if class_names is not None else None
        self._rng = np.random.default_rng(self.config.seed)
        self._reservoirs: dict[int, _PairReservoir] = {}
        self._feature_dim: int | None = None

    def pairs_seen(self) -> dict[int, int]:
        """Training pairs offered so far per class (before the per-class cap)."""
        return {cls: r.seen for cls, r in sorted(self._reservoirs.items())}

    def pairs_kept(self) -> dict[int, int]:
        """Training pairs held per class (at most ``max_pairs_per_class``)."""
        return {cls: r.size for cls, r in sorted(self._reservoirs.items())}

    def add(self, features: np.ndarray, boxes: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray) -> int:
        """Keep the training pairs among ``boxes`` (M x 4, features M x D) of one image.

        ``gt_boxes`` / ``gt_labels`` are that image's objects.  Passing only the rows that
        are training pairs gives the same result (their IoU does not change), which lets a
        caller compute features for those rows alone.  Returns the number of pairs found.
        """
        boxes = np.asarray(boxes).reshape(-1, 4)
        gt_boxes = np.asarray(gt_boxes).reshape(-1, 4)
        gt_labels = np.asarray(gt_labels)
        features = np.asarray(features)
        if features.ndim != 2 or len(features) != len(boxes):
            raise ValueError(f"features have shape {features.shape}, expected ({len(boxes)}, D)")
        if self._feature_dim is not None and features.shape[1] != self._feature_dim:
            raise ValueError(f"features have {features.shape[1]} dims, earlier images had {self._feature_dim}")
        if gt_labels.size and (not np.issubdtype(gt_labels.dtype, np.integer) or gt_labels.min() < 0):
            raise ValueError(f"gt_labels must be non-negative class indices, got {gt_labels}")
        indices, matched = select_training_pairs(boxes, gt_boxes, gt_labels, self.config.min_iou)
        self._feature_dim = features.shape[1]
        if len(indices) == 0:
            return 0
        pair_features = features[indices]
        if not np.all(np.isfinite(pair_features)):
            raise ValueError("features of training pairs contain NaN or infinity")
        largest = float(np.abs(pair_features).max())
        if largest > float(np.finfo(_STORAGE_DTYPE).max):
            raise ValueError(f"feature magnitude {largest:g} exceeds float16 storage range")
        pair_features = pair_features.astype(_STORAGE_DTYPE)
        targets = encode(boxes[indices].astype(np.float64), gt_boxes[matched].astype(np.float64))
        labels = gt_labels[matched]
        for cls in np.unique(labels):
            rows = labels == cls
            reservoir = self._reservoirs.setdefault(
                int(cls), _PairReservoir(self.config.max_pairs_per_class, self._feature_dim)
            )
            reservoir.add(pair_features[rows], targets[rows], self._rng)
        return len(indices)

    def _name(self, label: int) -> str:
        """A class's name for log messages (its number when no names were given)."""
        return self.class_names[label] if self.class_names is not None and 0 <= label < len(self.class_names) \
            else str(label)

    def fit(self, progress: bool = True) -> BoxRegressor:
        """One ridge regressor per class with at least ``min_pairs`` pairs."""
        if not self._reservoirs:
            raise ValueError("no training pairs were added: nothing to fit a box regressor on")
        feature_scale = self.config.feature_norm / self._mean_feature_norm()
        parts: dict[str, list] = {name: [] for name in ("classes", "weights", "intercepts", "target_mean",
                                                        "target_std", "num_pairs")}
        for cls, reservoir in tqdm(sorted(self._reservoirs.items()), desc="box regressors", leave=False,
                                    disable=not progress):
            if reservoir.size < self.config.min_pairs:
                log.warning(
                    "class %s: %d training pairs < min_pairs=%d, no box regressor; its boxes pass through unchanged",
                    self._name(cls), reservoir.size, self.config.min_pairs,
                )
                continue
            targets = reservoir.targets[:reservoir.size]
            mean = targets.mean(axis=0)
            std = targets.std(axis=0)
            std = np.where(std > 1e-6, std, 1.0)
            features = reservoir.features[:reservoir.size].astype(np.float32) * np.float32(feature_scale)
            # copy_X=False: Ridge may centre ``features`` in place, it is our own temporary.
            ridge = Ridge(alpha=self.config.alpha, fit_intercept=True, copy_X=False)
            ridge.fit(features, (targets - mean) / std)
            for name, value in (("classes", cls), ("weights", ridge.coef_), ("intercepts", ridge.intercept_),
                                ("target_mean", mean), ("target_std", std), ("num_pairs", reservoir.size)):
                parts[name].append(value)
            log.info("class %s: box regressor fitted on %d pairs (of %d seen)", self._name(cls), reservoir.size, reservoir.seen)
        return BoxRegressor(
            feature_scale=feature_scale,
            classes=np.array(parts["classes"], dtype=np.int64),
            weights=np.array(parts["weights"], dtype=np.float32).reshape(-1, 4, self._feature_dim),
            intercepts=np.array(parts["intercepts"], dtype=np.float64).reshape(-1, 4),
            target_mean=np.array(parts["target_mean"], dtype=np.float64).reshape(-1, 4),
            target_std=np.array(parts["target_std"], dtype=np.float64).reshape(-1, 4),
            num_pairs=np.array(parts["num_pairs"], dtype=np.int64),
        )

    def _mean_feature_norm(self) -> float:
        total, count = 0.0, 0
        for reservoir in self._reservoirs.values():
            for start in range(0, reservoir.size, _NORM_CHUNK_ROWS):
                chunk = reservoir.features[start:min(start + _NORM_CHUNK_ROWS, reservoir.size)]
                total += float(np.linalg.norm(chunk.astype(np.float32), axis=1).sum())
                count += len(chunk)
        mean_norm = total / count
        if not mean_norm > 0:
            raise ValueError("the training pairs' features are all zero: cannot scale them")
        return mean_norm
