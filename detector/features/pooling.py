"""Pooling the windows of one image from its conv maps: one map per scale, one SPP call per scale.

At stride 32 many proposals of an image cover the same map cells at the same scale (a third of
them on VOC at s = 688): their pooled features, and so everything computed from them, are
identical.  :func:`distinct_windows` finds those groups so that pooling, the fc layers and the
scorers run once per distinct window; the results are exactly those of the per-window path.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from detector.features.convmaps import ConvMap
from detector.features.geometry import TrunkGeometry, project_boxes
from detector.features.spp import SpatialPyramidPooling


def window_cells(geometry: TrunkGeometry, maps: Sequence[ConvMap | None], boxes: np.ndarray,
                 scale_index: np.ndarray) -> np.ndarray:
    """Per window, ``(scale index, x1c, y1c, x2c, y2c)``: the map and cells it is pooled from.

    ``boxes`` are in the coordinates of the image the maps were computed from (already
    mirrored for mirrored maps); ``scale_index[i]`` picks the map of window i.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scale_index = np.asarray(scale_index, dtype=np.int64).reshape(-1)
    keyed = np.empty((len(boxes), 5), dtype=np.int64)
    keyed[:, 0] = scale_index
    for k in np.unique(scale_index):
        rows = np.flatnonzero(scale_index == k)
        _, height, width = maps[k].features.shape
        keyed[rows, 1:] = project_boxes(boxes[rows] * maps[k].factor, geometry, height, width)
    return keyed


def pool_cells(spp: SpatialPyramidPooling, maps: Sequence[ConvMap | None],
               keyed_cells: np.ndarray) -> torch.Tensor:
    """Pyramid-pool each ``(scale index, x1c, y1c, x2c, y2c)`` row: N x (C * bins), float32.

    The rows of one scale are pooled straight into their place when they are consecutive, as
    ``distinct_windows`` orders them (scale first), else gathered and scattered."""
    channels = next(m for m in maps if m is not None).features.shape[0]
    out = torch.empty((len(keyed_cells), spp.output_size(channels)), dtype=torch.float32)
    for k in np.unique(keyed_cells[:, 0]):
        rows = np.flatnonzero(keyed_cells[:, 0] == k)
        feature_map = torch.from_numpy(maps[k].features)
        cells = torch.from_numpy(keyed_cells[rows, 1:])
        if rows[-1] - rows[0] + 1 == len(rows):
            spp.pool_windows(feature_map, cells, out=out[rows[0]:rows[-1] + 1])
        else:
            out[torch.from_numpy(rows)] = spp.pool_windows(feature_map, cells)
    return out


def pool_boxes(spp: SpatialPyramidPooling, geometry: TrunkGeometry, maps: Sequence[ConvMap | None],
               boxes: np.ndarray, scale_index: np.ndarray) -> torch.Tensor:
    """Pyramid-pool each box (image pixels) from the map of its scale: N x (C * bins), float32.
    (``SpatialPyramidPooling.pool_windows`` pools windows already given as cells of one map.)"""
    return pool_cells(spp, maps, window_cells(geometry, maps, boxes, scale_index))


def distinct_windows(keyed_cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(distinct rows, index)`` with ``distinct[index] == keyed_cells``: one row per group of
    windows pooled from the same cells of the same map."""
    distinct, index = np.unique(np.asarray(keyed_cells, np.int64).reshape(-1, 5), axis=0,
                                return_inverse=True)
    return distinct, index.reshape(-1).astype(np.int64)
