"""Pooling the windows of one image from its conv maps: one map per scale, one SPP call per scale."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from detector.convmaps import ConvMap
from detector.geometry import TrunkGeometry, project_boxes
from detector.spp import SpatialPyramidPooling


def pool_windows(spp: SpatialPyramidPooling, geometry: TrunkGeometry, maps: Sequence[ConvMap],
                 boxes: np.ndarray, scale_index: np.ndarray) -> torch.Tensor:
    """Pyramid-pool each window from the map of its scale: N x (C * bins), float32.

    ``boxes`` are in the coordinates of the image the maps were computed from (already
    mirrored for mirrored maps); ``scale_index[i]`` picks the map of window i.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scale_index = np.asarray(scale_index, dtype=np.int64).reshape(-1)
    channels = maps[0].features.shape[0]
    out = torch.empty((len(boxes), spp.output_size(channels)), dtype=torch.float32)
    for k in np.unique(scale_index):
        rows = np.flatnonzero(scale_index == k)
        conv_map = maps[k]
        _, height, width = conv_map.features.shape
        cells = project_boxes(boxes[rows] * conv_map.factor, geometry, height, width)
        feature_map = torch.from_numpy(conv_map.features)
        out[torch.from_numpy(rows)] = spp.pool_windows(feature_map, torch.from_numpy(cells))
    return out
