"""The features of an image's windows: each pooled from its best scale's conv map (or warped and
run through the trunk, in R-CNN mode), then fc6 -> fc7.  Test, the SVM and box-regression stage
and the analysis tools all read windows through ``window_features``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from detector.core.records import ImageRecord
from detector.core.timing import StageTimer
from detector.features.geometry import select_scales
from detector.features.pooling import distinct_windows, pool_cells, window_cells
from detector.features.rcnn import RCNNFeatures
from detector.model.detector import DetectorModel
from svm.config import SVM_FEATURES


@dataclass
class WindowFeatures:
    """Pooled pyramid features and fc7 features of an image's distinct windows (see
    :func:`detector.features.pooling.distinct_windows`): window ``i`` is row ``rows[i]``."""

    pooled: torch.Tensor
    fc7: torch.Tensor
    rows: np.ndarray

    def window_fc7(self, windows: np.ndarray | slice = slice(None)) -> torch.Tensor:
        """fc7 features of the given windows (default: all), one row per window."""
        return self.fc7[torch.from_numpy(self.rows[windows])]

    def window_pooled(self, windows: np.ndarray | slice = slice(None)) -> torch.Tensor:
        """Pooled features of the given windows (default: all), one row per window."""
        return self.pooled[torch.from_numpy(self.rows[windows])]

    def svm_input(self, source: str) -> torch.Tensor:
        """The distinct windows' features an SVM of ``svm.features`` = ``source`` reads."""
        if source not in SVM_FEATURES:
            raise ValueError(f"SVM features are one of {SVM_FEATURES}, not {source!r}")
        return self.fc7 if source == "fc7" else self.pooled

    def window_svm_input(self, source: str, windows: np.ndarray | slice = slice(None)) -> torch.Tensor:
        """``svm_input(source)`` of the given windows (default: all), one row per window."""
        return self.svm_input(source)[torch.from_numpy(self.rows[windows])]


def window_features(model: DetectorModel, record: ImageRecord, boxes: np.ndarray,
                    timer: StageTimer, batch: int = 1024, image: np.ndarray | None = None,
                    scales: Sequence[int] | None = None, flip: bool = False) -> WindowFeatures:
    """Pooled pyramid features and fc7 features of the windows, each at its best scale among
    ``scales`` (None: the training scales, ``model.scales``) and computed once per distinct
    window (SPP mode), or each from its own warped trunk pass (R-CNN mode); ``image``: the
    record's RGB pixels when already in memory; ``flip``: of the left-right mirrored image, the
    boxes given in its coordinates (``flip_boxes``)."""
    scales = model.scales if scales is None else tuple(scales)
    if model.config.feature_path == "rcnn":
        pooled = RCNNFeatures.from_config(model.backbone, model.spp, model.config).pool_record(
            record, boxes, flip, timer=timer, image=image)
        rows = np.arange(len(pooled), dtype=np.int64)
    else:
        with timer.stage("conv"):
            maps = model.conv_maps.get_scales(record, scales, flip=flip, image=image, timer=timer)
        with timer.stage("pooling"):
            scale_index = select_scales(boxes, record.height, record.width, scales,
                                        model.config.max_side)
            distinct, rows = distinct_windows(window_cells(model.backbone.geometry, maps, boxes,
                                                           scale_index))
            pooled = pool_cells(model.spp, maps, distinct)
    with timer.stage("fc"), torch.inference_mode():
        device = next(model.head.parameters()).device
        fc7 = torch.cat([model.head.features(pooled[i:i + batch].to(device)).cpu()
                         for i in range(0, len(pooled), batch)]) if len(pooled) else \
            torch.zeros((0, model.head.fc7.out_features))
    return WindowFeatures(pooled, fc7, rows)
