"""Pooling an image's windows once per distinct (scale, cells) group gives exactly the
per-window results: in pooled features, in fc7, and in the detections built on them."""
import cv2
import numpy as np
import pytest
import torch
from random_windows import random_boxes

from detector.config import make_config
from detector.core.records import ImageRecord
from detector.core.timing import StageTimer
from detector.features.backbones import build_backbone
from detector.features.convmaps import ConvMap, ConvMapCache, ConvMapProvider
from detector.features.geometry import TrunkGeometry, select_scales
from detector.features.pooling import distinct_windows, pool_boxes, pool_cells, window_cells
from detector.features.spp import SpatialPyramidPooling, naive_pool_windows
from detector.head.fc import SPPHead
from detector.model.detector import DetectorModel
from detector.model.features import window_features


def test_distinct_windows_pool_to_the_per_window_loop_on_random_maps():
    rng = np.random.default_rng(0)
    geometry = TrunkGeometry(stride=32, offset0=32.0, margin=14.5)
    maps = [ConvMap(rng.standard_normal((6, h, w)).astype(np.float16), f)
            for h, w, f in ((5, 7, 0.4), (11, 13, 0.9))]
    boxes = random_boxes(rng, 400, 400, 300)
    boxes = np.concatenate([boxes, boxes[:50] + rng.uniform(-3, 3, (50, 4)).astype(np.float32)])
    scale_index = rng.integers(0, 2, len(boxes))
    spp = SpatialPyramidPooling((3, 2, 1))
    keyed = window_cells(geometry, maps, boxes, scale_index)
    distinct, index = distinct_windows(keyed)
    assert len(distinct) < len(boxes)  # the nudged copies and the coarse maps make groups
    assert np.array_equal(distinct[index], keyed)
    grouped = pool_cells(spp, maps, distinct)[torch.from_numpy(index)]
    for k, conv_map in enumerate(maps):  # reference: naive loop, float64, window by window
        rows = np.flatnonzero(scale_index == k)
        expected = naive_pool_windows(torch.from_numpy(conv_map.features).double(), keyed[rows, 1:],
                                      spp.levels)
        assert torch.equal(grouped[rows].double(), expected)
    assert torch.equal(grouped, pool_boxes(spp, geometry, maps, boxes, scale_index))  # rows of a scale apart


def test_pool_windows_writes_into_out_or_refuses_it():
    rng = np.random.default_rng(2)
    spp = SpatialPyramidPooling((2, 1))
    feature_map = torch.from_numpy(rng.standard_normal((3, 6, 8)).astype(np.float16))
    cells = torch.tensor([[0, 0, 7, 5], [2, 1, 3, 4]])
    out = torch.full((4, 15), -7.0)
    assert spp.pool_windows(feature_map, cells, out=out[1:3]).data_ptr() == out[1:3].data_ptr()
    assert torch.equal(out[1:3], spp.pool_windows(feature_map, cells)) and torch.all(out[[0, 3]] == -7.0)
    for bad in (torch.empty(3, 15), torch.empty(2, 15, dtype=torch.float64), torch.empty(15, 2).t()):
        with pytest.raises(ValueError, match="out must be a contiguous"):
            spp.pool_windows(feature_map, cells, out=bad)


def test_pool_cells_accepts_maps_missing_for_unused_scales():
    rng = np.random.default_rng(1)
    conv_map = ConvMap(rng.standard_normal((4, 6, 8)).astype(np.float16), 1.0)
    cells = np.array([[1, 0, 0, 7, 5], [1, 2, 1, 3, 4]], np.int64)
    pooled = pool_cells(SpatialPyramidPooling((2, 1)), [None, conv_map], cells)
    assert torch.equal(pooled.double(), naive_pool_windows(torch.from_numpy(conv_map.features).double(),
                                                           cells[:, 1:], (2, 1)))


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("efficientnet_lite0")


@pytest.mark.parametrize("scales", [(224,), (160, 288)])
def test_window_features_match_pooling_every_window_on_its_own(backbone, tmp_path, scales):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (180, 240, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), image[:, :, ::-1])
    record = ImageRecord("img", path, 240, 180, np.zeros((0, 4), np.float32),
                         np.zeros(0, np.int64), np.zeros(0, bool))
    boxes = random_boxes(rng, 300, 240, 180)
    spp = SpatialPyramidPooling(backbone.levels)
    head = SPPHead(spp.output_size(backbone.channels), 16, 2).eval()
    config = make_config("cpu", {"scales": scales})
    model = DetectorModel(["a", "b"], config, backbone, spp, head, None, None,
                          ConvMapProvider(backbone, ConvMapCache(tmp_path / "maps"), config.max_side))
    features = window_features(model, record, boxes, StageTimer())
    assert len(features.pooled) < len(boxes) and features.rows.shape == (len(boxes),)
    maps = model.conv_maps.get_scales(record, scales, flip=False)
    scale_index = select_scales(boxes, 180, 240, scales, config.max_side)
    one_by_one = torch.cat([pool_boxes(spp, backbone.geometry, maps, boxes[i:i + 1], scale_index[i:i + 1])
                            for i in range(len(boxes))])
    assert torch.equal(features.window_pooled(), one_by_one)
    with torch.inference_mode():
        torch.testing.assert_close(features.window_fc7(), head.features(one_by_one), rtol=0, atol=1e-5)
