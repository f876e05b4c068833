"""Receptive-field geometry of a conv trunk and the projection of windows onto its map.

Everything here is a pure function of a trunk's layer list (kernel, stride, padding of each
layer), never a per-model constant: a new backbone gets its geometry by construction.

Coordinates.  The released SPP-net code works in 1-based inclusive pixels; a window given
in our continuous convention ``(x1, y1, x2, y2)`` (see ``detector.core.boxes``) covers the 1-based
pixels ``x1 + 1 .. x2``, so its released-code edges are ``l = x1 + 1`` and ``r = x2``.

Geometry of a trunk (``derive_geometry``).  Walking the layers in forward order with the
running stride ``S`` (product of the strides so far), the centre of map cell 0 moves by
``((k - 1) / 2 - p) * S`` at every layer of kernel ``k`` and left/top padding ``p``.  For the
released ZF-5 this gives ``S = 16`` and centre 20 (0-based), i.e. ``offset0 = 21`` in 1-based
pixels: the released constant.  Cell ``i`` (0-based) is centred on 1-based pixel
``offset0 + i * S``.

Margin.  The released code shifts each window edge inward by ``margin = 6.5`` before
rounding to the nearest cell (Appendix A of the paper, refined).  We derive it as
``margin = S / 2 - 1.5``: 6.5 for ZF-5, and with it the released rounding becomes an exact,
stride-independent rule.  Substituting it into the released formulas gives (0-based
cells, continuous coordinates, cell centre ``c_i = offset0 - 0.5 + i * S``)
``left = min{i : c_i > x1 - 1}`` and ``right = max{i : c_i < x2 + 1}``: a window keeps exactly
the cells whose receptive-field centre lies inside it, widened by one pixel on each side.
That is Appendix A's ``floor(x / S) + 1`` / ``ceil(x / S) - 1`` measured from the true centre
of cell 0, which is why it transfers to any trunk (``tests/test_geometry.py`` checks the
identity).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from torch import nn

from detector.core.boxes import box_areas


@dataclass(frozen=True)
class LayerSpec:
    """One spatial layer: kernel (dilation folded in), stride and the left/top padding applied."""

    kernel: int
    stride: int
    padding: int


@dataclass(frozen=True)
class TrunkGeometry:
    """Map geometry: total stride, centre of cell 0 (1-based pixels) and the edge margin."""

    stride: int
    offset0: float
    margin: float


def derive_geometry(layers: Sequence[LayerSpec]) -> TrunkGeometry:
    """Stride, ``offset0`` and margin of a trunk from its layers in forward order (see module doc)."""
    if not layers:
        raise ValueError("derive_geometry needs at least one layer")
    stride = 1
    centre = 0.0  # 0-based pixel index of the centre of map cell 0
    for layer in layers:
        if layer.kernel < 1 or layer.stride < 1 or layer.padding < 0:
            raise ValueError(f"invalid layer {layer}")
        centre += ((layer.kernel - 1) / 2 - layer.padding) * stride
        stride *= layer.stride
    return TrunkGeometry(stride=stride, offset0=centre + 1.0, margin=stride / 2 - 1.5)


def _square(value, what: str, module: nn.Module) -> int:
    """The single value of an int or an equal pair; rectangular geometry is not supported."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(set(values)) != 1:
        raise ValueError(f"{type(module).__name__} has a non-square {what} {values}; "
                         "the window projection assumes square kernels, strides and paddings")
    return int(values[0])


def _zero_pad_left(module: nn.ZeroPad2d) -> int:
    left, _, top, _ = module.padding
    if left != top:
        raise ValueError(f"ZeroPad2d pads left {left} but top {top}; the window projection "
                         "needs equal left and top padding")
    return int(left)


def _own_padding(module: nn.Module, kernel: int) -> int:
    padding = module.padding
    if isinstance(padding, str):  # nn.Conv2d(padding="same" | "valid")
        return (kernel - 1) // 2 if padding == "same" else 0
    return _square(padding, "padding", module)


def layer_specs(module: nn.Module) -> list[LayerSpec]:
    """Spatial layers of a trunk in registration order (forward order for our trunks).

    Collects ``nn.Conv2d``, ``nn.MaxPool2d`` and ``nn.AvgPool2d``.  A ``nn.ZeroPad2d`` adds its
    left padding to the layer it feeds: a child of a conv/pool (the efficientnet package's
    ``Conv2dStaticSamePadding`` keeps its fixed "same" padding, computed once for 224 inputs,
    as a ``static_padding`` child applied before the convolution) or, standing alone, the
    next collected layer.  Layers with kernel 1, stride 1 and no padding are skipped: they do
    not move the geometry, and this is how the 1x1 convs of squeeze-excitation (applied to a
    globally pooled 1x1 map, off the spatial path) stay out.
    """
    specs: list[LayerSpec] = []
    pending = 0  # left padding of stand-alone ZeroPad2d layers not yet folded
    owned: set[int] = set()  # ZeroPad2d children already folded into their parent
    for layer in module.modules():
        if isinstance(layer, nn.ZeroPad2d):
            if id(layer) not in owned:
                pending += _zero_pad_left(layer)
            continue
        if isinstance(layer, nn.Conv2d):
            kernel = _square(layer.kernel_size, "kernel", layer)
            dilation = _square(layer.dilation, "dilation", layer)
            kernel = dilation * (kernel - 1) + 1
        elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
            kernel = _square(layer.kernel_size, "kernel", layer)
            dilation = _square(getattr(layer, "dilation", 1), "dilation", layer)
            kernel = dilation * (kernel - 1) + 1
        else:
            continue
        stride = _square(layer.stride, "stride", layer)  # pools store stride = kernel when unset
        padding = _own_padding(layer, kernel) + pending
        pending = 0
        for child in layer.children():
            if isinstance(child, nn.ZeroPad2d):
                padding += _zero_pad_left(child)
                owned.add(id(child))
        if kernel == 1 and stride == 1 and padding == 0:
            continue
        specs.append(LayerSpec(kernel=kernel, stride=stride, padding=padding))
    if not specs:
        raise ValueError(f"{type(module).__name__} has no conv or pooling layer")
    return specs


def project_boxes(boxes: np.ndarray, geometry: TrunkGeometry, map_height: int,
                  map_width: int) -> np.ndarray:
    """Map cells covered by each window: int64 N x 4 ``(x1c, y1c, x2c, y2c)``, 0-based inclusive.

    ``boxes`` are continuous boxes already scaled to the resized image the map was computed
    from.  Released formula on 1-based edges (float64, same operation order):
    ``left = floor((l - offset0 + margin) / S + 0.5) + 1``,
    ``right = ceil((r - offset0 - margin) / S - 0.5) + 1``.  A window whose left passes its
    right collapses to their middle ``(left + right) // 2``; the released C++ code divides
    integers (truncation), which differs from floor only for negative sums, and those clamp
    to the first cell either way.  Both edges are then clamped to the map.
    """
    if map_height < 1 or map_width < 1:
        raise ValueError(f"map size must be positive, got {map_height} x {map_width}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    stride, offset0, margin = float(geometry.stride), geometry.offset0, geometry.margin
    first = np.floor((boxes[:, :2] + 1.0 - offset0 + margin) / stride + 0.5).astype(np.int64) + 1
    last = np.ceil((boxes[:, 2:] - offset0 - margin) / stride - 0.5).astype(np.int64) + 1
    crossed = first > last
    middle = (first + last) // 2
    first = np.where(crossed, middle, first)
    last = np.where(crossed, middle, last)
    limits = np.array([map_width, map_height], dtype=np.int64)
    first = np.clip(first, 1, limits)
    last = np.clip(last, 1, limits)
    return np.concatenate([first, last], axis=1) - 1


def image_scale_factor(height: int, width: int, scale: int, max_side: int = 2000) -> float:
    """Resize factor giving a short side of ``scale``, reduced so the long side stays <= ``max_side``."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    if scale < 1 or max_side < 1:
        raise ValueError(f"scale and max_side must be positive, got {scale} and {max_side}")
    return min(scale / min(height, width), max_side / max(height, width))


def resized_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """(height, width) of an image resized by ``factor``: rounded, at least one pixel."""
    return max(1, int(round(height * factor))), max(1, int(round(width * factor)))


def select_scales(boxes: np.ndarray, height: int, width: int, scales: Sequence[int],
                  max_side: int = 2000, target: int = 224) -> np.ndarray:
    """Per window, the index of the scale whose scaled window area is closest to ``target**2``.

    The paper's rule.  (The released code compared scales linearly against
    ``208 * short_side / sqrt(area)``; we follow the paper.)  Ties go to the smaller index.
    """
    if len(scales) == 0:
        raise ValueError("select_scales needs at least one scale")
    areas = box_areas(boxes)
    factors = np.array([image_scale_factor(height, width, s, max_side) for s in scales])
    distance = np.abs(areas[:, None] * factors[None, :] ** 2 - float(target) ** 2)
    return np.argmin(distance, axis=1).astype(np.int64)

