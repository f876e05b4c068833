"""R-CNN's feature path on the same trunk, head and windows: one trunk pass per window.

It exists to measure SPP-net's speed-up honestly on this machine (``detector.analysis.modes``) and
to compare accuracy (``--mode rcnn``): only the way a window becomes a pooled feature changes,
everything after it (fc head, SVMs, box regression, NMS) is shared with SPP mode.

Context crop, as R-CNN's ``rcnn_im_crop`` (``padding = 16``, warp mode), in our continuous box
convention (``detector.core.boxes``):
1. Each window is scaled about its centre by ``size / (size - 2 * pad)``, so that once warped to
   ``size x size`` there are ``pad`` pixels of context on each side, and its edges are rounded
   (half up) to whole pixels: R-CNN cropped pixel arrays.  R-CNN's centre is half a pixel off
   (1-based arithmetic); we use the true centre.
2. It is clipped to the image.  The part cut off becomes padding with the mean pixel, i.e.
   zero after normalisation: the left/top padding is ``round(cut * size / expanded side)``
   frame pixels, the clipped part fills ``round(clipped side * size / expanded side)`` frame
   pixels after it (at least one, capped to the frame), the rest is padding too.
3. The clipped part is warped anisotropically into its rectangle of the frame, with bilinear
   sampling at pixel centres and no antialiasing (R-CNN's ``imresize(..., 'bilinear',
   'antialiasing', false)``, OpenCV's ``INTER_LINEAR``).

Batched warp: one bilinear ``torch.nn.functional.grid_sample`` per batch of windows on the
normalised image (``align_corners=False``, border clamping: OpenCV's sampling rule).  The warp is
separable, so each window is an affine sampling grid: ``plan_warps`` chooses the grid so that
its samples fall exactly where crop-then-resize samples the window's rectangle of the frame,
and a mask zeroes the padding.  One difference from cropping first: an output pixel whose
sample lies beyond the crop's outermost pixel centres (within half a source pixel of the crop's
edge, which an upsampled crop stretches over several frame pixels) interpolates with the true
neighbouring image pixel, where resizing a cropped array repeats the crop's edge pixel
(``tests/test_rcnn.py`` checks every other pixel against a per-window cv2 reference).  ``torchvision.ops.roi_align`` (``sampling_ratio=1``,
``aligned=True``) samples the same points but took 2.5 ms per window here against 1.6 ms.

Trunk: batches of ``batch_size`` windows under ``torch.inference_mode``, channels-last (on
this CPU, 224 x 224 batches of EfficientNet-Lite0 ran 15-35% faster than in contiguous NCHW:
oneDNN's depthwise convolutions want channels last).  Small batches are the fastest per window
on a CPU, as a batch's activations stay in cache: with one thread, 41-45 ms per window at
batches of 4-8, 46-57 at 1-2, 52-70 at 16-32 (``Config.rcnn_batch_size`` defaults to 8).  Each
window's whole map is then pyramid-pooled by ``SpatialPyramidPooling.forward``, so the pooled
dimension is SPP mode's.

Timing: warp and trunk count as stage ``conv`` (with ``warp`` and ``trunk`` detail entries in
the timer, outside ``detector.inference.detect.STAGES``), pyramid pooling as ``pooling``.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import ContextManager

import numpy as np
import torch
import torch.nn.functional as F

from detector.config import Config
from detector.core.images import load_image
from detector.core.records import ImageRecord
from detector.core.timing import StageTimer
from detector.features.backbones import Backbone, input_memory_format
from detector.features.spp import SpatialPyramidPooling


@dataclass(frozen=True)
class WarpPlan:
    """Where each window's ``size x size`` frame samples the image.

    ``sample_boxes`` (N x 4 float64): continuous boxes; frame pixel ``(v, u)`` samples the image
    bilinearly at ``(x1 + (u + 0.5) * (x2 - x1) / size, y1 + (v + 0.5) * (y2 - y1) / size)``.
    ``frames`` (N x 4 int64, ``(x0, y0, x1, y1)``, end exclusive): the rectangle of the frame
    holding image content; outside it is padding.
    """

    sample_boxes: np.ndarray
    frames: np.ndarray
    size: int

    def __len__(self) -> int:
        return len(self.frames)

    def rows(self, start: int, stop: int) -> "WarpPlan":
        """The plan of windows ``start .. stop - 1``."""
        return WarpPlan(self.sample_boxes[start:stop], self.frames[start:stop], self.size)


def _round_half_up(values: np.ndarray) -> np.ndarray:
    return np.floor(values + 0.5)


def plan_warps(boxes: np.ndarray, width: int, height: int, context_pad: int = 16,
               size: int = 224) -> WarpPlan:
    """R-CNN's context crop of each window (module docstring, steps 1-3) as a sampling plan."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not 0 <= context_pad < size / 2:
        raise ValueError(f"context_pad must be in [0, {size / 2}) for a {size} px frame, "
                         f"got {context_pad}")
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bad.any():
        raise ValueError(f"{int(bad.sum())} window(s) are empty or not finite, "
                         f"e.g. {boxes[bad][0].tolist()}")
    grow = size / (size - 2 * context_pad)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * grow
    low = _round_half_up(centre - half)
    high = np.maximum(_round_half_up(centre + half), low + 1)
    limit = np.array([width, height], dtype=np.float64)
    clipped_low = np.clip(low, 0, limit - 1)
    clipped_high = np.minimum(np.maximum(high, clipped_low + 1), limit)
    scale = size / (high - low)  # frame pixels per image pixel
    pad = np.minimum(_round_half_up((clipped_low - low) * scale), size - 1)
    extent = np.clip(_round_half_up((clipped_high - clipped_low) * scale), 1, size - pad)
    step = (clipped_high - clipped_low) / extent  # image pixels per frame pixel
    start = clipped_low - pad * step
    sample_boxes = np.concatenate([start, start + size * step], axis=1)
    frames = np.concatenate([pad, pad + extent], axis=1).astype(np.int64)
    return WarpPlan(sample_boxes, frames, size)


def warp_windows(image: torch.Tensor, plan: WarpPlan) -> torch.Tensor:
    """Warped windows: N x 3 x size x size from a 1 x 3 x H x W normalised image."""
    count, size = len(plan), plan.size
    height, width = image.shape[-2:]
    boxes = torch.from_numpy(plan.sample_boxes).to(image.device, torch.float64)
    centres = (torch.arange(size, dtype=torch.float64, device=image.device) + 0.5) / size
    # grid_sample's coordinates (align_corners=False): -1 and 1 are the image's outer edges
    grid_x = (boxes[:, 0:1] + centres * (boxes[:, 2:3] - boxes[:, 0:1])) * (2 / width) - 1
    grid_y = (boxes[:, 1:2] + centres * (boxes[:, 3:4] - boxes[:, 1:2])) * (2 / height) - 1
    grid = torch.stack([grid_x[:, None, :].expand(count, size, size),
                        grid_y[:, :, None].expand(count, size, size)], dim=3).to(image.dtype)
    crops = F.grid_sample(image.expand(count, -1, -1, -1), grid, mode="bilinear",
                          padding_mode="border", align_corners=False)
    frames = torch.from_numpy(plan.frames).to(image.device)
    pixel = torch.arange(size, device=image.device)
    inside_x = (pixel >= frames[:, 0:1]) & (pixel < frames[:, 2:3])
    inside_y = (pixel >= frames[:, 1:2]) & (pixel < frames[:, 3:4])
    mask = inside_y[:, :, None] & inside_x[:, None, :]
    return crops.mul_(mask[:, None].to(crops.dtype))


def _stage(timer: StageTimer | None, name: str) -> ContextManager:
    return timer.stage(name) if timer is not None else nullcontext()


@dataclass
class RCNNFeatures:
    """The R-CNN feature path of one trunk: context crop, warp, trunk per window, whole-map SPP."""

    backbone: Backbone
    spp: SpatialPyramidPooling
    context_pad: int = 16
    batch_size: int = 8
    device: str = "cpu"

    @classmethod
    def from_config(cls, backbone: Backbone, spp: SpatialPyramidPooling,
                    config: Config) -> "RCNNFeatures":
        """The path with the configuration's context, batch size and device."""
        return cls(backbone, spp, config.rcnn.context_pad, config.rcnn.batch_size, config.device)

    def pool(self, image: np.ndarray, boxes: np.ndarray, flip: bool = False,
             timer: StageTimer | None = None) -> torch.Tensor:
        """Pooled features (N x C * bins, float32) of windows of an RGB uint8 image.

        ``flip`` mirrors the image; ``boxes`` are in the coordinates of the image the trunk sees
        (already mirrored when ``flip``), as for ``detector.features.pooling.pool_boxes``.
        """
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        out = torch.empty((len(boxes), self.spp.output_size(self.backbone.channels)),
                          dtype=torch.float32)
        if not len(boxes):
            return out
        height, width = image.shape[:2]
        with torch.inference_mode():
            with _stage(timer, "conv"), _stage(timer, "warp"):
                normalised = self.backbone.prepare(image, 1.0, flip=flip).to(self.device)
                plan = plan_warps(boxes, width, height, self.context_pad, self.backbone.input_size)
            for start in range(0, len(boxes), self.batch_size):
                stop = min(start + self.batch_size, len(boxes))
                with _stage(timer, "conv"):
                    with _stage(timer, "warp"):
                        crops = warp_windows(normalised, plan.rows(start, stop))
                        crops = crops.contiguous(memory_format=input_memory_format(self.device))
                    with _stage(timer, "trunk"):
                        maps = self.backbone(crops)
                with _stage(timer, "pooling"):
                    out[start:stop] = self.spp(maps).float().cpu()
        return out

    def pool_record(self, record: ImageRecord, boxes: np.ndarray, flip: bool = False,
                    timer: StageTimer | None = None, image: np.ndarray | None = None) -> torch.Tensor:
        """``pool`` on the image of ``record`` (decoded in stage ``conv``, as SPP mode does,
        unless its RGB pixels are given as ``image``)."""
        with _stage(timer, "conv"):
            image = load_image(record.path) if image is None else image
        return self.pool(image, boxes, flip, timer)
