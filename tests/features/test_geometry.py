"""Tests of detector.features.geometry: derived trunk geometry, window projection, scale choice."""
from __future__ import annotations

import math

import numpy as np
import pytest
from torch import nn

from detector.features.geometry import (
    LayerSpec,
    TrunkGeometry,
    derive_geometry,
    image_scale_factor,
    layer_specs,
    project_boxes,
    resized_size,
    select_scales,
)

ZF5_LAYERS = [LayerSpec(7, 2, 1), LayerSpec(3, 2, 0), LayerSpec(5, 2, 0), LayerSpec(3, 2, 0),
              LayerSpec(3, 1, 1), LayerSpec(3, 1, 1), LayerSpec(3, 1, 1)]
ZF5 = TrunkGeometry(stride=16, offset0=21.0, margin=6.5)


def released_projection(box_1based, offset0, margin, stride, map_height, map_width):
    """The released C++ code, literally: Python floats, int() truncation, 1-based cells."""
    left, top, right, bottom = box_1based
    x0 = int(math.floor((left - offset0 + margin) / stride + 0.5) + 1)
    y0 = int(math.floor((top - offset0 + margin) / stride + 0.5) + 1)
    x1 = int(math.ceil((right - offset0 - margin) / stride - 0.5) + 1)
    y1 = int(math.ceil((bottom - offset0 - margin) / stride - 0.5) + 1)
    if x0 > x1:
        x0 = x1 = int((x0 + x1) / 2)  # C++ integer division truncates toward zero
    if y0 > y1:
        y0 = y1 = int((y0 + y1) / 2)
    clamp = lambda value, limit: min(limit, max(1, value))  # noqa: E731
    return clamp(x0, map_width), clamp(y0, map_height), clamp(x1, map_width), clamp(y1, map_height)


def random_windows(rng: np.random.Generator, count: int, width: float, height: float) -> np.ndarray:
    """Continuous windows inside a width x height image: tiny to full-size, some on each border."""
    size_w = np.exp(rng.uniform(np.log(0.5), np.log(width), count))
    size_h = np.exp(rng.uniform(np.log(0.5), np.log(height), count))
    x1 = rng.uniform(0, 1, count) * (width - size_w)
    y1 = rng.uniform(0, 1, count) * (height - size_h)
    border = rng.integers(0, 8, count)  # 0..3: on the left, top, right, bottom border
    x1[border == 0] = 0
    y1[border == 1] = 0
    x1[border == 2] = width - size_w[border == 2]
    y1[border == 3] = height - size_h[border == 3]
    boxes = np.stack([x1, y1, x1 + size_w, y1 + size_h], axis=1)
    on_corners = rng.uniform(size=count) < 0.5  # pixel-corner coordinates, as in VOC boxes
    boxes[on_corners] = np.round(boxes[on_corners])
    boxes[:, 2] = np.maximum(boxes[:, 2], boxes[:, 0] + 0.5)
    boxes[:, 3] = np.maximum(boxes[:, 3], boxes[:, 1] + 0.5)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)
    return boxes.astype(np.float32)


def test_zf5_geometry_matches_released_constants():
    assert derive_geometry(ZF5_LAYERS) == ZF5


def test_derive_geometry_recursion_by_hand():
    # conv k3 s1 p0 moves the centre by 1; a following k2 s2 pool by 0.5 * 1; then k3 s1 p1 by 0.
    geometry = derive_geometry([LayerSpec(3, 1, 0), LayerSpec(2, 2, 0), LayerSpec(3, 1, 1)])
    assert geometry == TrunkGeometry(stride=2, offset0=2.5, margin=-0.5)
    with pytest.raises(ValueError):
        derive_geometry([])


def test_layer_specs_walks_convs_pools_and_folds_zero_padding():
    trunk = nn.Sequential(
        nn.Conv2d(3, 8, 7, stride=2, padding=1), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, ceil_mode=True),
        nn.ZeroPad2d((2, 1, 2, 1)), nn.Conv2d(8, 8, 5, stride=2),
        nn.Conv2d(8, 8, 1),  # 1x1, stride 1: no geometry, skipped
        nn.AvgPool2d(2), nn.Conv2d(8, 8, 3, padding="same", dilation=2))
    assert layer_specs(trunk) == [LayerSpec(7, 2, 1), LayerSpec(3, 2, 0), LayerSpec(5, 2, 2),
                                  LayerSpec(2, 2, 0), LayerSpec(5, 1, 2)]


def test_layer_specs_reads_padding_child_of_a_conv():
    class StaticSamePadConv(nn.Conv2d):  # like efficientnet's Conv2dStaticSamePadding
        def __init__(self):
            super().__init__(3, 4, 3, stride=2)
            self.static_padding = nn.ZeroPad2d((0, 1, 0, 1))

    trunk = nn.Sequential(StaticSamePadConv(), nn.Conv2d(4, 4, 3, padding=1))
    assert layer_specs(trunk) == [LayerSpec(3, 2, 0), LayerSpec(3, 1, 1)]


def test_layer_specs_rejects_rectangular_kernels():
    with pytest.raises(ValueError, match="non-square"):
        layer_specs(nn.Sequential(nn.Conv2d(3, 4, (3, 5))))


def test_project_boxes_equals_released_formula_on_random_windows():
    rng = np.random.default_rng(0)
    # (geometry, image height, width, map height, width): ZF-5's real map sizes, a map smaller
    # than the image reaches (clamping at the far side), and strides 32 and 16 of other trunks
    cases = [(ZF5, 600, 800, 36, 49), (ZF5, 480, 1200, 25, 60),
             (TrunkGeometry(32, 8.5, 14.5), 688, 917, 22, 29),
             (TrunkGeometry(16, 16.0, 6.5), 224, 224, 13, 13)]
    for geometry, height, width, map_height, map_width in cases:
        boxes = random_windows(rng, 4000, width, height)
        cells = project_boxes(boxes, geometry, map_height, map_width)
        assert cells.dtype == np.int64 and cells.shape == (len(boxes), 4)
        expected = np.array([released_projection(
            (float(b[0]) + 1, float(b[1]) + 1, float(b[2]), float(b[3])), geometry.offset0,
            geometry.margin, geometry.stride, map_height, map_width) for b in boxes]) - 1
        np.testing.assert_array_equal(cells, expected)
        # the windows include collapsed ones (smaller than a cell) and ones clamped on every side
        widths = boxes[:, 2] - boxes[:, 0]
        assert (widths < geometry.stride / 2).sum() > 100
        assert (cells[:, :2] == 0).any(axis=0).all()
        assert (cells[:, 2] == map_width - 1).any() and (cells[:, 3] == map_height - 1).any()


def test_project_boxes_keeps_cells_whose_centre_is_inside_the_widened_window():
    # margin = S/2 - 1.5 turns the released rounding into: keep the cells whose centre lies
    # strictly inside (x1 - 1, x2 + 1), before collapsing and clamping.
    rng = np.random.default_rng(1)
    geometry = ZF5
    boxes = random_windows(rng, 3000, 900, 700).astype(np.float64)
    cells = project_boxes(boxes, geometry, 10**6, 10**6)  # no clamping at the far side
    centres = geometry.offset0 - 0.5 + geometry.stride * np.arange(200)
    for box, cell in zip(boxes, cells):
        inside_x = np.flatnonzero((centres > box[0] - 1) & (centres < box[2] + 1))
        inside_y = np.flatnonzero((centres > box[1] - 1) & (centres < box[3] + 1))
        if len(inside_x):
            assert (cell[0], cell[2]) == (inside_x[0], inside_x[-1])
        else:
            assert cell[0] == cell[2]
        if len(inside_y):
            assert (cell[1], cell[3]) == (inside_y[0], inside_y[-1])
        else:
            assert cell[1] == cell[3]


def test_project_boxes_collapses_and_clamps():
    # a 2-pixel window maps to one cell; a window past the image edge is clamped to the map
    cells = project_boxes(np.array([[100, 100, 102, 102], [-50, -50, 5000, 5000]], np.float32), ZF5, 10, 12)
    assert cells[0, 0] == cells[0, 2] and cells[0, 1] == cells[0, 3]
    np.testing.assert_array_equal(cells[1], [0, 0, 11, 9])
    assert project_boxes(np.zeros((0, 4), np.float32), ZF5, 3, 3).shape == (0, 4)
    with pytest.raises(ValueError):
        project_boxes(np.zeros((1, 4)), ZF5, 0, 3)


def test_image_scale_factor_short_side_and_long_side_cap():
    assert image_scale_factor(375, 500, 688) == pytest.approx(688 / 375)
    assert image_scale_factor(500, 375, 480) == pytest.approx(480 / 375)
    # elongated: the short side cannot reach the scale without the long side passing max_side
    factor = image_scale_factor(100, 2000, 688, max_side=2000)
    assert factor == pytest.approx(1.0)
    assert resized_size(100, 2000, factor) == (100, 2000)
    factor = image_scale_factor(2000, 100, 1200, max_side=1000)
    assert max(resized_size(2000, 100, factor)) == 1000
    with pytest.raises(ValueError):
        image_scale_factor(0, 10, 600)


def test_select_scales_equals_naive_loop():
    rng = np.random.default_rng(2)
    scales = (480, 576, 688, 864, 1200)
    for height, width in ((375, 500), (500, 333), (100, 2000)):
        boxes = random_windows(rng, 3000, width, height)
        chosen = select_scales(boxes, height, width, scales, max_side=2000)
        expected = []
        for x1, y1, x2, y2 in boxes.tolist():
            area = (x2 - x1) * (y2 - y1)
            best, best_distance = 0, float("inf")
            for index, scale in enumerate(scales):
                factor = min(scale / min(height, width), 2000 / max(height, width))
                distance = abs(area * factor * factor - 224.0 ** 2)
                if distance < best_distance:
                    best, best_distance = index, distance
            expected.append(best)
        np.testing.assert_array_equal(chosen, expected)
        assert chosen.dtype == np.int64
    # small windows go to large scales, large windows to small ones
    picks = select_scales(np.array([[0, 0, 20, 20], [0, 0, 480, 360]], np.float32), 375, 500, scales)
    assert picks[0] == len(scales) - 1 and picks[1] == 0
