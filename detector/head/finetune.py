"""Fine-tuning fc6/fc7/fc8 on windows pooled from the cached conv maps (conv frozen).

The conv maps never change, so a window's pooled feature never changes either: like the
released code (which fine-tuned on cached pool5 features), every training image (and its
mirror image when flipping is on) gives a fixed sample of windows, 25% foreground, each
pooled once from a random scale into a float16 bank.  Mini-batches of 128 windows, 25%
foreground, are then drawn across all images of the bank, so an iteration costs only the fc
layers.  SGD with momentum and weight decay, a step schedule, and a checkpoint every
``checkpoint_every`` iterations holding the head, optimiser, schedule position, RNG state,
class list, backbone, levels, scales and feature normalisation: a killed run resumes from it
(the bank is rebuilt identically from the seed).  The last snapshot is the result: no
snapshot is ever chosen by its score on an evaluation split.

With ``finetune.resample_every`` = K > 0 the bank is drawn afresh every K iterations (a new sample
of every image's windows, the old bank freed first): over the schedule the mini-batches then come
from far more of each image's windows than one sample holds, closer to the paper's sampling from
all windows, at the memory of one bank and about one bank's pooling time per resample.

Stage keying: the checkpoint holds a provenance record (``detector.core.provenance``): the
settings fine-tuning depends on (``detector.config.stage_settings(config, "finetune")``, which
include ``finetune.iterations``), the class list, the trunk fingerprint and a digest of the
training data (image ids, image bytes, boxes).  A checkpoint with an equal record is reused when
complete and resumed when not; any other (another setting, an older file without a record) is
logged with the keys that differ and fine-tuning starts afresh (``policy="auto"``), or the run is
refused naming the file (``policy="resume"``); ``policy="force"`` always starts afresh.  The file is
sealed (``detector.core.integrity``): a corrupt or truncated one is refused by name.  A loss or
weight that is not finite stops fine-tuning with a ``ValueError`` naming the iteration; such a
state is never checkpointed.

Several processes (``torchrun``, ``detector.core.distributed``): the bank is pooled by all ranks
together and held whole by each (``build_window_bank``); the head runs under
``DistributedDataParallel``.  Every rank draws the same mini-batch of ``batch_size`` windows from
the same rank-independent generator and trains on its slice ``rank::world`` (``batch_size`` must be
a multiple of the number of ranks); DDP averages the slices' gradients, and with the mean loss on
equal slices that is the gradient of the whole mini-batch, so the total batch and the schedule are
those of one process.  Dropout too: every rank draws the whole mini-batch's masks from the same
torch generator state, as one process does, and applies its rows (``SlicedDropout``), so N ranks
compute what one process computes, up to the float rounding of the gradient sum, and every rank's
generator stays in step.  Rank 0 alone writes the checkpoint (the unwrapped head, so a checkpoint
does not depend on the number of ranks and resumes on any number), and every rank waits for it.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from detector.config import Config, SamplingConfig, stage_settings, upgrade_legacy
from detector.core import distributed
from detector.core.boxes import flip_boxes
from detector.core.images import image_digest
from detector.core.integrity import load_checked, seal
from detector.core.io import save_checkpoint
from detector.core.provenance import make_record, reusable_state
from detector.core.windows import ImageWindows
from detector.features.convmaps import ConvMapProvider, backbone_fingerprint
from detector.features.geometry import TrunkGeometry
from detector.features.pooling import pool_windows
from detector.features.rcnn import RCNNFeatures
from detector.features.spp import SpatialPyramidPooling
from detector.head.fc import SPPHead
from detector.head.sampling import sample_windows

log = logging.getLogger(__name__)


@dataclass
class PoolingContext:
    """What turns windows of an image into pooled pyramid features."""

    provider: ConvMapProvider
    spp: SpatialPyramidPooling
    geometry: TrunkGeometry
    scales: tuple[int, ...]
    normalise: bool = True  # False for trunks whose pretrained fc6 expects raw pooled features
    rcnn: RCNNFeatures | None = None  # R-CNN mode: each window warped and run through the trunk


def pool_training_windows(context: PoolingContext, windows: ImageWindows, indices: np.ndarray,
                          flip: bool, rng: np.random.Generator) -> torch.Tensor:
    """Pool the chosen windows of one image, each from a random scale (or, in R-CNN mode, each
    from its own warped trunk pass)."""
    return pool_planned_windows(context, windows, indices, flip, draw_scales(context, len(indices), rng))


def draw_scales(context: PoolingContext, count: int, rng: np.random.Generator) -> np.ndarray | None:
    """The random scale index of each of ``count`` windows (SPP mode; None in R-CNN mode, which
    draws nothing)."""
    return None if context.rcnn is not None else rng.integers(len(context.scales), size=count)


def pool_planned_windows(context: PoolingContext, windows: ImageWindows, indices: np.ndarray,
                         flip: bool, scale_index: np.ndarray | None) -> torch.Tensor:
    """Pool the chosen windows of one image from the scales already drawn (``draw_scales``)."""
    record = windows.record
    if context.rcnn is not None:
        boxes = windows.boxes[indices]
        return context.rcnn.pool_record(record, flip_boxes(boxes, record.width) if flip else boxes, flip)
    used = sorted(set(scale_index.tolist()))
    loaded = context.provider.get_scales(record, [context.scales[k] for k in used], flip)
    maps = [None] * len(context.scales)
    for k, conv_map in zip(used, loaded):
        maps[k] = conv_map
    boxes = windows.boxes[indices]
    if flip:
        boxes = flip_boxes(boxes, record.width)
    return pool_windows(context.spp, context.geometry, maps, boxes, scale_index)


@dataclass
class WindowBank:
    """Pooled features (float16, N x D) and labels (0 = background) of the sampled windows."""

    features: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        labels = self.labels.numpy()
        self.foreground = np.flatnonzero(labels > 0)
        self.background = np.flatnonzero(labels == 0)

    def draw(self, batch_size: int, fg_fraction: float, rng: np.random.Generator
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """A mini-batch across all images: ``fg_fraction`` foreground, the rest background."""
        n_fg = min(int(round(fg_fraction * batch_size)), len(self.foreground))
        n_bg = batch_size - n_fg
        rows = np.concatenate([rng.choice(self.foreground, n_fg, replace=False),
                               rng.choice(self.background, n_bg, replace=len(self.background) < n_bg)])
        rows_t = torch.from_numpy(rows)
        return self.features[rows_t].float(), self.labels[rows_t]


@dataclass
class PlannedPooling:
    """One image (and flip) of the bank: which windows, their labels and drawn scales."""

    windows: ImageWindows
    flip: bool
    indices: np.ndarray
    labels: np.ndarray
    scale_index: np.ndarray | None


def build_window_bank(context: PoolingContext, train: Sequence[ImageWindows],
                      sampling: SamplingConfig, flips: Sequence[bool], rng: np.random.Generator,
                      progress: bool = True) -> WindowBank:
    """Pool a sample of every training image's windows once, each from a random scale.

    The conv maps are frozen, so a window's pooled feature never changes: pooling a fixed
    sample per image (and per flip) once, then drawing mini-batches of 128 across all
    images from it, is what the released code did with its cached pool5 features, and it
    keeps the per-iteration cost to the fc layers alone.

    Every random draw (windows, then scales, image by image) is made first, in the order of a
    single process, so the bank does not depend on how many processes pool it: under ``torchrun``
    the pooling is split across ranks (``distributed.ordered_stream``) and every rank receives
    the whole bank (each rank holds a copy: its memory is the bank's size on every rank).
    """
    plan = []
    for windows in train:
        for flip in flips:
            indices, window_labels = sample_windows(windows, sampling, rng)
            if len(indices):
                plan.append(PlannedPooling(windows, flip, indices, window_labels,
                                           draw_scales(context, len(indices), rng)))
    capacity = sum(len(item.indices) for item in plan)
    features: torch.Tensor | None = None  # filled in place: a list joined by torch.cat would
    labels = torch.empty(capacity, dtype=torch.int64)  # hold every row twice at its peak
    filled = 0
    bar = tqdm(total=len(plan), desc="pooling training windows", disable=not progress or not distributed.is_main(),
               unit="img")
    # 16 images per rank and round: pooling one image's sample takes milliseconds, so fewer, larger
    # rounds (about 1 MB per image at 32 windows of 16000 float16) keep the ranks from waiting on each other
    for item, pooled in distributed.ordered_stream(plan, lambda item: _pool_or_skip(context, item), per_round=16):
        bar.update(1)
        if pooled is None:
            continue
        if features is None:
            features = torch.empty((capacity, pooled.shape[1]), dtype=torch.float16)
        features[filled:filled + len(item.indices)] = pooled
        labels[filled:filled + len(item.indices)] = torch.from_numpy(item.labels)
        filled += len(item.indices)
    bar.close()
    if features is None:
        raise ValueError("no training window could be sampled (no image has proposals)")
    return WindowBank(features[:filled], labels[:filled])


def _pool_or_skip(context: PoolingContext, item: PlannedPooling) -> torch.Tensor | None:
    """The planned windows pooled (float16, as the bank keeps them), or None when this image fails
    (logged); an ``OSError`` (an unwritable cache) stops the run, its message naming the path."""
    try:
        return pool_planned_windows(context, item.windows, item.indices, item.flip, item.scale_index).half()
    except OSError:
        raise
    except Exception as error:  # this image only (decode, trunk or pooling failure)
        log.error("fine-tuning: skipping image %s (%s): %s", item.windows.record.image_id,
                  item.windows.record.path, error)
        return None


def bank_generator(seed: int, index: int) -> np.random.Generator:
    """The generator of the ``index``-th window sample (the first is ``default_rng(seed)``, as before
    resampling existed)."""
    return np.random.default_rng(seed if index == 0 else [seed, index])


def check_compatible(state: dict, classes: Sequence[str], backbone: str, mode: str = "spp") -> None:
    """Refuse a checkpoint made for another class list, backbone or mode, naming the difference."""
    if list(state["classes"]) != list(classes):
        raise ValueError(f"checkpoint was trained for classes {list(state['classes'])}, "
                         f"but this dataset has {list(classes)}; use another --out folder")
    if state["backbone"] != backbone:
        raise ValueError(f"checkpoint was trained with backbone {state['backbone']!r}, "
                         f"not {backbone!r}; use another --out folder")
    trained_mode = upgrade_legacy(state.get("config", {})).get("feature_path", "spp")
    if trained_mode != mode:
        raise ValueError(f"checkpoint was trained in {trained_mode!r} mode, not {mode!r}; "
                         "use another --out folder")


REMEDY = "delete it (or run with --force) to fine-tune again"


def training_data_digest(train: Sequence[ImageWindows]) -> str:
    """Digest of the training images' ids, bytes (``image_digest``), GT boxes, labels and flags."""
    digest = hashlib.sha256()
    for windows in train:
        record = windows.record
        digest.update(f"{record.image_id}\0{image_digest(record.path)}\0".encode())
        for array in (record.boxes, record.labels, record.difficult):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:32]


def finetune_record(context: PoolingContext, train: Sequence[ImageWindows], classes: Sequence[str],
                    config: Config) -> dict:
    """The provenance record a fine-tuning run with these inputs writes (module docstring)."""
    trunk = backbone_fingerprint(context.rcnn.backbone if context.rcnn is not None else context.provider.backbone)
    return make_record(stage_settings(config, "finetune"), list(classes), trunk,
                       {"training_data": training_data_digest(train)})


def read_finetune_checkpoint(path: Path) -> dict:
    """The checked contents of ``finetune.pt`` (a corrupt file is refused by name)."""
    return load_checked(path, "fine-tuning checkpoint", REMEDY, unsealed_ok=_old_checkpoint)


def _old_checkpoint(state: dict) -> bool:
    """True for a checkpoint written before checkpoints were sealed and keyed (read, then retrained)."""
    return {"head", "iteration", "classes"} <= set(state) and "stage" not in state


def _finite(head: SPPHead) -> bool:
    """True when every parameter of the head is finite."""
    return all(bool(torch.isfinite(p).all()) for p in head.parameters())


class SlicedDropout(torch.nn.Module):
    """Dropout of rank ``rank``'s rows ``rank::world`` of a mini-batch: the masks of the whole batch
    are drawn (the generator moves as in one process) and this rank's rows applied, with the
    arithmetic of ``torch.nn.functional.dropout`` on CPU (mask, divided by 1 - p, times the input)."""

    def __init__(self, p: float, rank: int, world: int) -> None:
        super().__init__()
        self.p, self.rank, self.world = p, rank, world

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        noise = torch.empty((x.shape[0] * self.world, *x.shape[1:]), dtype=x.dtype, device=x.device)
        noise.bernoulli_(1 - self.p).div_(1 - self.p)
        return x * noise[self.rank::self.world]


@contextmanager
def sliced_dropout(head: SPPHead) -> Iterator[None]:
    """Within the block, on N > 1 ranks, the head's dropout is ``SlicedDropout`` (nothing changes on
    one process); the head gets its own dropout back afterwards."""
    world = distributed.world_size()
    if world == 1:
        yield
        return
    own = head.dropout
    head.dropout = SlicedDropout(own.p, distributed.rank(), world)
    try:
        yield
    finally:
        head.dropout = own


def _sum_over_ranks(loss: torch.Tensor, hits: torch.Tensor, labels: torch.Tensor
                    ) -> tuple[float, tuple[int, int, int, int]]:
    """The whole mini-batch's loss (the mean of the ranks' equal slices) and its counts of right
    windows, windows, right foreground and foreground, the same on every rank (so every rank takes
    the same decision on a loss that is not finite)."""
    size = torch.tensor(float(len(labels)), device=hits.device)
    stats = torch.stack([loss.detach().double(), hits.sum().double(), size.double(),
                         hits[labels > 0].sum().double(), (labels > 0).sum().double()])
    torch.distributed.all_reduce(stats)
    values = stats.cpu().tolist()
    return values[0] / distributed.world_size(), (int(values[1]), int(values[2]), int(values[3]), int(values[4]))


def finetune(head: SPPHead, context: PoolingContext, train: Sequence[ImageWindows],
             classes: Sequence[str], config: Config, checkpoint_path: Path,
             progress: bool = True, policy: str = "auto",
             on_progress: Callable[[dict], None] | None = None) -> dict:
    """Train the head; reuses or resumes ``checkpoint_path`` when its record matches (module
    docstring; ``policy`` auto, resume or force). Returns run statistics with the file's checksum.
    ``on_progress`` gets ``{"iteration", "loss", "fg_accuracy", "accuracy", "lr"}`` every
    ``finetune.history_every`` iterations (means over those iterations)."""
    device = torch.device(config.device)
    world = distributed.world_size()
    if config.finetune.batch_size % world:
        raise ValueError(f"finetune.batch_size={config.finetune.batch_size} does not split evenly over {world} "
                         f"processes; use a batch size that is a multiple of {world}")
    head.to(device)
    params = [p for name, p in head.named_parameters() if name.startswith(("fc6", "fc7", "fc8"))]
    # fused: one kernel per step instead of a chain of foreach ops, the same update; on this
    # 2-core CPU a 16000 x 1024 fc6 step went from 244 ms to 158 ms per iteration
    optimizer = torch.optim.SGD(params, lr=config.finetune.lr, momentum=config.finetune.momentum,
                                weight_decay=config.finetune.weight_decay, fused=True)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.finetune.lr_steps), config.finetune.lr_gamma)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    record = finetune_record(context, train, classes, config)
    state = reusable_state(checkpoint_path, read_finetune_checkpoint, record, policy, "fine-tuning")
    if state is not None and state["iteration"] >= config.finetune.iterations:
        head.load_state_dict(state["head"])
        head.eval()
        log.info("fine-tuning: %s is complete (%d iterations) and made with these settings; reusing it",
                 checkpoint_path, state["iteration"])
        return {"iterations": 0, "seconds": 0.0, "reused": str(checkpoint_path),
                "checksum": state["checksum"], "record": record}
    started = time.perf_counter()
    flips = (False, True) if config.sampling.flip else (False,)
    every = config.finetune.resample_every
    start = state["iteration"] if state is not None else 0

    def sample_bank(iteration: int) -> WindowBank:
        """The window bank in use at ``iteration``: sample ``iteration // resample_every``, each drawn
        from its own generator, so a resumed run pools the same windows."""
        index = iteration // every if every else 0
        return build_window_bank(context, train, config.sampling, flips, bank_generator(config.seed, index),
                                 progress)

    bank = sample_bank(start)
    bank_seconds = time.perf_counter() - started
    if len(bank.foreground) == 0:
        raise ValueError("fine-tuning: no window overlaps a GT box by IoU >= "
                         f"{config.sampling.fg_iou}; check the annotations and proposals")
    if state is not None:
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        log.info("fine-tuning: resuming from %s at iteration %d", checkpoint_path, start)
    elif context.normalise:
        head.set_normalisation(bank.features[:20000])
    head.train()
    net: torch.nn.Module = head
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            head, device_ids=[device.index if device.index is not None else torch.cuda.current_device()]
            if device.type == "cuda" else None)

    def kept() -> str:
        """What a diverged run leaves behind, for its message."""
        if checkpoint_path.exists():
            return f"{checkpoint_path} keeps its last finite state and is not complete"
        return f"no checkpoint was written yet (finetune.checkpoint_every={config.finetune.checkpoint_every})"

    def checkpoint(iteration: int) -> str:
        """Save a sealed checkpoint (never of a non-finite head); returns its checksum."""
        if not _finite(head):
            raise ValueError(f"fine-tuning diverged before iteration {iteration}: the fc weights are not "
                             f"finite; lower finetune.lr (now {config.finetune.lr}); {kept()}")
        sealed = seal({
            "head": head.state_dict(), "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(), "iteration": iteration,
            "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "classes": list(classes), "backbone": config.backbone,
            "levels": tuple(context.spp.levels), "scales": tuple(context.scales),
            "config": config.to_dict(), "stage": record})
        if distributed.is_main():
            save_checkpoint(checkpoint_path, sealed)
        # rank 0's checksum (its torch RNG state differs from the others'), once its file is complete
        return distributed.broadcast_from_main(sealed["checksum"])

    losses: list[float] = []
    correct = seen = fg_correct = fg_seen = 0
    bar = tqdm(range(start, config.finetune.iterations), desc="fine-tuning",
               disable=not progress or not distributed.is_main(),
               initial=start, total=config.finetune.iterations, unit="it")
    me = distributed.rank()
    with sliced_dropout(head):  # N ranks: the dropout masks of one process (module docstring)
        for iteration in bar:
            if every and iteration % every == 0 and iteration != start:
                del bank  # freed before the next is pooled: one bank's memory at a time
                began = time.perf_counter()
                bank = sample_bank(iteration)
                bank_seconds += time.perf_counter() - began
            x, y = bank.draw(config.finetune.batch_size, config.sampling.fg_fraction, rng)  # the same on every rank
            if world > 1:
                x, y = x[me::world], y[me::world]
            x, y = x.to(device), y.to(device)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            hits = logits.argmax(1) == y
            if world == 1:
                loss_value, counts = loss.item(), (int(hits.sum()), len(y), int(hits[y > 0].sum()), int((y > 0).sum()))
            else:
                loss_value, counts = _sum_over_ranks(loss, hits, y)
            if not math.isfinite(loss_value):
                raise ValueError(f"fine-tuning diverged at iteration {iteration + 1}: loss is {loss_value}; "
                                 f"lower finetune.lr (now {config.finetune.lr}); {kept()}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss_value)
            correct += counts[0]
            seen += counts[1]
            fg_correct += counts[2]
            fg_seen += counts[3]
            if (iteration + 1) % config.finetune.history_every == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-config.finetune.history_every:]):.3f}",
                                acc=f"{correct / max(seen, 1):.3f}",
                                lr=f"{schedule.get_last_lr()[0]:.0e}")
                if on_progress is not None:
                    on_progress({"iteration": iteration + 1,
                                 "loss": float(np.mean(losses[-config.finetune.history_every:])),
                                 "fg_accuracy": fg_correct / max(fg_seen, 1), "accuracy": correct / max(seen, 1),
                                 "lr": float(schedule.get_last_lr()[0])})
                correct = seen = fg_correct = fg_seen = 0
            if (iteration + 1) % config.finetune.checkpoint_every == 0:
                checkpoint(iteration + 1)
    checksum = checkpoint(config.finetune.iterations)
    head.eval()
    return {"checksum": checksum, "record": record, "iterations": config.finetune.iterations - start, "seconds": time.perf_counter() - started,
            "bank_seconds": bank_seconds, "bank_windows": len(bank.labels),
            "bank_foreground": len(bank.foreground),
            "final_loss": float(np.mean(losses[-50:])) if losses else float("nan")}
