"""R-CNN mode: context crop geometry, batched warp against a per-window cv2 reference, equality
with SPP mode on a whole-image window, a tiny train + test run with ``--feature-path rcnn``; the
benchmark's pixel ratio and tables."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from random_windows import random_boxes

from detector.analysis.modes import benchmark_modes, format_benchmark, fresh_model, trunk_pixels
from detector.config import make_config
from detector.core.records import ImageRecord
from detector.core.timing import StageTimer
from detector.data.demo import make_demo_dataset
from detector.data.voc import load_voc
from detector.features.backbones import build_backbone
from detector.features.convmaps import ConvMapCache, ConvMapProvider
from detector.features.rcnn import RCNNFeatures, plan_warps, warp_windows
from detector.features.spp import SpatialPyramidPooling
from detector.head.fc import SPPHead
from detector.head.finetune import check_compatible
from detector.model.detector import DetectorModel
from detector.model.features import window_features

ROOT = Path(__file__).resolve().parents[2]
SIZE = 224


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("efficientnet_lite0")


def round_half_up(value):
    return math.floor(value + 0.5)


def reference_warp(image, box, pad):
    """R-CNN's rcnn_im_crop for one window, written out: expand, round, clip, crop, resize, pad.

    ``image`` is H x W x 3 float32 (normalised).  Returns the size x size x 3 frame, the mask of
    its padding and, per axis, the frame pixels whose sample lies beyond the crop's outer pixel
    centres inside the image (there, resizing a cropped array repeats its edge pixel; the
    batched warp reads the true neighbour).
    """
    height, width = image.shape[:2]
    grow = SIZE / (SIZE - 2 * pad)
    edges, skip = [], []
    for lo, hi, limit in ((box[0], box[2], width), (box[1], box[3], height)):
        centre, half = (lo + hi) / 2, (hi - lo) / 2 * grow
        start, stop = round_half_up(centre - half), round_half_up(centre + half)
        stop = max(stop, start + 1)
        clip_start = min(max(start, 0), limit - 1)
        clip_stop = min(max(stop, clip_start + 1), limit)
        scale = SIZE / (stop - start)
        offset = min(round_half_up((clip_start - start) * scale), SIZE - 1)
        extent = min(max(round_half_up((clip_stop - clip_start) * scale), 1), SIZE - offset)
        edges.append((clip_start, clip_stop, offset, extent))
        step = (clip_stop - clip_start) / extent
        outside = set()
        for u in range(offset, offset + extent):
            sample = clip_start + (u - offset + 0.5) * step - 0.5  # pixel index coordinate
            if (sample < clip_start and clip_start > 0) or (sample > clip_stop - 1 and clip_stop < limit):
                outside.add(u)
        assert len(outside) <= 2 * (0.5 / step + 1)  # the outer half source pixel on each side
        skip.append(outside)
    (x0, x1, px, cw), (y0, y1, py, ch) = edges
    frame = np.zeros((SIZE, SIZE, 3), np.float32)
    frame[py:py + ch, px:px + cw] = cv2.resize(image[y0:y1, x0:x1], (cw, ch),
                                               interpolation=cv2.INTER_LINEAR).reshape(ch, cw, 3)
    padding = np.ones((SIZE, SIZE), bool)
    padding[py:py + ch, px:px + cw] = False
    return frame, padding, skip


@pytest.mark.parametrize("pad", [16, 0])
def test_batched_warp_matches_a_per_window_cv2_reference(backbone, pad):
    rng = np.random.default_rng(pad)
    height, width = 157, 203
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    normalised = backbone.prepare(image, 1.0)
    boxes = np.concatenate([random_boxes(rng, 10, width, height),
                            [[0, 0, width, height], [3.2, 150.1, 4.4, 157], [190.5, 0.3, 203, 9.8]]])
    warped = warp_windows(normalised, plan_warps(boxes, width, height, pad, SIZE))
    pixels = normalised[0].permute(1, 2, 0).numpy()
    compared = content = 0
    for box, got in zip(boxes, warped.permute(0, 2, 3, 1).numpy()):
        expected, padding, (skip_x, skip_y) = reference_warp(pixels, box, pad)
        assert not got[padding].any()  # the mean pixel: exactly zero after normalisation
        keep = ~padding
        keep[list(skip_y), :] = False
        keep[:, list(skip_x)] = False
        np.testing.assert_allclose(got[keep], expected[keep], atol=1e-3)
        compared += keep.sum()
        content += (~padding).sum()
    assert compared > 0.8 * content


def test_context_is_pad_pixels_on_each_side_after_warping():
    rng = np.random.default_rng(1)
    width, height = 500, 375
    boxes = random_boxes(rng, 300, width, height)
    plan = plan_warps(boxes, width, height, 16, SIZE)
    step = (plan.sample_boxes[:, 2:] - plan.sample_boxes[:, :2]) / SIZE
    inside = np.all(plan.frames == [0, 0, SIZE, SIZE], axis=1)
    assert inside.sum() > 20
    # frame pixels 16 and 208 are the window's own edges, up to R-CNN's rounding to whole pixels
    near = plan.sample_boxes[inside, :2] + 16 * step[inside]
    far = plan.sample_boxes[inside, :2] + (SIZE - 16) * step[inside]
    assert np.abs(near - boxes[inside, :2]).max() <= 0.5 + 1e-6
    assert np.abs(far - boxes[inside, 2:]).max() <= 0.5 + 1e-6
    # a window cut by the border keeps its scale: padding fills the frame where the image ends
    cut = plan_warps([[0, 100, 60, 220]], width, height, 16, SIZE)
    assert cut.frames[0, 0] > 0 and cut.frames[0, 2] == SIZE
    with pytest.raises(ValueError, match="context_pad"):
        plan_warps(boxes, width, height, 112, SIZE)
    with pytest.raises(ValueError, match="empty"):
        plan_warps([[5, 5, 5, 9]], width, height)


def test_whole_image_window_without_context_is_the_image(backbone):
    image = np.random.default_rng(2).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    normalised = backbone.prepare(image, 1.0)
    warped = warp_windows(normalised, plan_warps([[0, 0, SIZE, SIZE]], SIZE, SIZE, 0, SIZE))
    torch.testing.assert_close(warped, normalised, rtol=0, atol=1e-4)


def test_spp_and_rcnn_modes_give_the_same_features_on_a_whole_image_window(backbone, tmp_path):
    image = np.random.default_rng(3).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), image[:, :, ::-1])
    record = ImageRecord("img", path, SIZE, SIZE, np.zeros((0, 4), np.float32),
                         np.zeros(0, np.int64), np.zeros(0, bool))
    box = np.array([[0, 0, SIZE, SIZE]], np.float32)
    spp = SpatialPyramidPooling(backbone.levels)
    head = SPPHead(spp.output_size(backbone.channels), 32, 2)
    pooled = {}
    for mode in ("spp", "rcnn"):
        config = make_config("cpu", {"scales": (SIZE,), "feature_path": mode, "rcnn.context_pad": 0})
        model = DetectorModel(["a", "b"], config, backbone, spp, head, None, None,
                              ConvMapProvider(backbone, ConvMapCache(tmp_path / "maps"), config.max_side))
        pooled[mode] = window_features(model, record, box, StageTimer()).window_pooled()
    with torch.inference_mode():  # SPP mode before the float16 cache: the trunk on the image
        exact = spp(backbone(backbone.prepare(image, 1.0)))
    # the warp's sampling grid is float32 (inputs equal to 2e-5): features up to ~18 agree to 2e-4
    torch.testing.assert_close(pooled["rcnn"], exact, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(pooled["spp"], exact, rtol=1e-3, atol=1e-3)  # float16 cache: 2^-11
    torch.testing.assert_close(pooled["rcnn"], pooled["spp"], rtol=1e-3, atol=1e-3)
    assert pooled["rcnn"].shape == (1, spp.output_size(backbone.channels))


def test_batch_size_and_flip_do_not_change_features(backbone):
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    boxes = random_boxes(rng, 5, 130, 90)
    spp = SpatialPyramidPooling(backbone.levels)
    one = RCNNFeatures(backbone, spp, batch_size=1).pool(image, boxes)
    three = RCNNFeatures(backbone, spp, batch_size=3).pool(image, boxes)
    torch.testing.assert_close(one, three, rtol=1e-4, atol=1e-4)
    mirrored = np.ascontiguousarray(image[:, ::-1])
    flipped = RCNNFeatures(backbone, spp, batch_size=3).pool(image, boxes, flip=True)
    torch.testing.assert_close(flipped, RCNNFeatures(backbone, spp, batch_size=3).pool(mirrored, boxes))
    assert RCNNFeatures(backbone, spp).pool(image, np.zeros((0, 4))).shape == (0, spp.output_size(backbone.channels))


def test_feature_path_is_checked_in_config_and_checkpoints():
    with pytest.raises(ValueError, match="feature_path"):
        make_config("cpu", {"feature_path": "fast"})
    with pytest.raises(ValueError, match="rcnn.batch_size"):
        make_config("cpu", {"rcnn.batch_size": 0})
    state = {"classes": ["a"], "backbone": "zf5", "config": {"feature_path": "spp"}}
    check_compatible(state, ["a"], "zf5", "spp")
    check_compatible({**state, "config": {"mode": "spp"}}, ["a"], "zf5", "spp")  # an old checkpoint's flat key
    with pytest.raises(ValueError, match="'spp' mode"):
        check_compatible(state, ["a"], "zf5", "rcnn")


@pytest.fixture
def tiny_demo(tmp_path, monkeypatch):
    monkeypatch.setenv("SPPNET_CACHE", str(tmp_path / "cache"))
    return make_demo_dataset(tmp_path / "demo", n_train=2, n_test=1, seed=3)


def test_pixel_ratio_of_the_issue():
    record = ImageRecord("a", Path("a.jpg"), 500, 375, np.zeros((0, 4), np.float32),
                         np.zeros(0, np.int64), np.zeros(0, bool))
    rcnn, spp = trunk_pixels(record, 2000, (688,), 2000, SIZE)
    assert rcnn == 2000 * SIZE * SIZE and spp == 688 * 917
    assert 150 <= rcnn / spp <= 160  # "about 150x"
    rcnn, spp = trunk_pixels(record, 2000, (480, 576, 688, 864, 1200), 2000, SIZE)
    assert 22 <= rcnn / spp <= 25  # "about 24x at 5 scales"


def test_benchmark_tables_on_a_tiny_demo(tiny_demo):
    dataset = load_voc(tiny_demo, "test")
    config = make_config("cpu", {"fc_width": 32, "proposals.max_side": 40, "proposals.workers": 1})
    model = fresh_model(dataset.classes, config)
    results = benchmark_modes(model, dataset, images=1, scale_sets={"1": (224,), "2": (160, 224)},
                              progress=False, fc6_rank=8)
    assert set(results) == {"1", "2"}
    json.dumps(results, allow_nan=False)  # plain JSON
    for key, table in results.items():
        assert {"feature_speedup", "test_speedup", "pixel_ratio", "spp", "rcnn"} <= set(table)
        for mode in ("spp", "rcnn"):
            assert table[mode]["conv"] > 0 and table[mode]["total"] >= table[mode]["conv"]
        record = dataset.records[0]
        rcnn, spp = trunk_pixels(record, int(table["windows_per_image"]), table["scales"],
                                 config.max_side, SIZE)
        assert table["pixel_ratio"] == pytest.approx(rcnn / spp)
        speedup = (table["rcnn"]["conv"] + table["rcnn"]["pooling"]) / (table["spp"]["conv"] +
                                                                       table["spp"]["pooling"])
        assert table["feature_speedup"] == pytest.approx(speedup)
        assert table["conv_map_cache_bytes_per_image"] > 0
        if sys.platform.startswith("linux"):  # peaks from the separate memory pass
            assert all(table["memory"][mode]["peak_rss_mb"] >= table["memory"][mode]["rise_mb"] > 0
                       for mode in ("spp", "rcnn"))
        svd = table["svd"]  # the compressed head, timed in the same turns
        assert svd["fc6_rank"] == 8 and table["spp_svd"]["fc"] > 0
        assert svd["test_speedup"] == pytest.approx(
            (table["rcnn"]["total"] - table["rcnn"]["proposals"])
            / (table["spp_svd"]["total"] - table["spp_svd"]["proposals"]))
    assert "pooling_fc_scoring_nms_at_most_conv_with_svd_fc6" in results["1"]["targets"]
    assert results["1"]["rcnn"] == results["2"]["rcnn"]  # R-CNN does not use the scales
    text = format_benchmark(results)
    assert "pixel_ratio" in text and "with fc6 at rank 8" in text


def test_benchmark_of_scale_sets_without_rcnn(tiny_demo, capsys):
    dataset = load_voc(tiny_demo, "test")
    config = make_config("cpu", {"fc_width": 32, "proposals.max_side": 40, "proposals.workers": 1})
    model = fresh_model(dataset.classes, config)
    results = benchmark_modes(model, dataset, images=2, scale_sets={"a": (224,), "b": (160, 224)},
                              progress=False, rcnn=False)
    json.dumps(results, allow_nan=False)
    for table in results.values():
        assert table["rcnn"] is None and table["feature_speedup"] is None
        per_scale = table["conv_per_scale"]
        assert set(per_scale) == {str(s) for s in table["scales"]} and min(per_scale.values()) > 0
        assert sum(per_scale.values()) == pytest.approx(table["spp"]["conv"], rel=0.05)  # the rest: a loop
    assert results["a"]["total_vs_first_set"] == 1.0
    assert results["b"]["total_vs_first_set"] == pytest.approx(results["b"]["spp"]["total"] / results["a"]["spp"]["total"])
    text = format_benchmark(results)
    assert "R-CNN" not in text and "the first scale set's" in text and "conv per scale: 160" in text


def test_train_and_test_with_mode_rcnn_through_the_tools(tiny_demo, tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "SPPNET_CACHE": str(cache)}
    root = tiny_demo
    settings = ["fc_width=32", "finetune.iterations=20", "finetune.lr_steps=15", "finetune.checkpoint_every=10",
                "sampling.flip=false", "proposals.max_side=40", "proposals.workers=1", "sampling.windows_per_image=16"]
    subprocess.run([sys.executable, str(ROOT / "tools" / "train_det.py"), "--voc-root", str(root),
                    "--split", "train", "--out", str(tmp_path / "run"), "--feature-path", "rcnn", "--quiet",
                    "--set", *settings], check=True, capture_output=True, env=env)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["config"]["feature_path"] == "rcnn" and summary["conv_map_bytes_per_image"] == 0
    assert not list(cache.glob("*/convmaps"))  # R-CNN mode computes no conv maps
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "test_det.py"), "--voc-root", str(root),
                             "--split", "test", "--model", str(tmp_path / "run" / "model.pt"),
                             "--out", str(tmp_path / "test"), "--quiet"],
                            check=True, capture_output=True, env=env, text=True)
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert 0.0 <= metrics["mAP"] <= 1.0 and metrics["seconds_per_image"]["conv"] > 0
    assert "mAP" in result.stdout
    # --feature-path overrides the model's: the same model tested in SPP mode pools from
    # conv maps, which it computes into the cache
    subprocess.run([sys.executable, str(ROOT / "tools" / "test_det.py"), "--voc-root", str(root),
                    "--split", "test", "--model", str(tmp_path / "run" / "model.pt"),
                    "--out", str(tmp_path / "test_spp"), "--feature-path", "spp", "--quiet"],
                   check=True, capture_output=True, env=env)
    assert list(cache.glob("*/convmaps")) and (tmp_path / "test_spp" / "metrics.json").is_file()
