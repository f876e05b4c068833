"""Fine-tuning fc6/fc7/fc8 on windows pooled from the cached conv maps (conv frozen).

The conv maps never change, so a window's pooled feature never changes either: like the
released code (which fine-tuned on cached pool5 features), every training image (and its
mirror image when flipping is on) gives a fixed sample of windows, 25% foreground, each
pooled once from a random scale into a float16 bank (``detector.head.window_bank``).  Mini-batches of 128 windows, 25%
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

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from detector.config import Config, stage_settings, upgrade_legacy
from detector.core import distributed
from detector.core.integrity import load_checked, seal
from detector.core.io import save_checkpoint
from detector.core.provenance import make_provenance, reusable_state, training_data_digest
from detector.core.windows import ImageWindows
from detector.features.convmaps import backbone_fingerprint
from detector.head.fc import SPPHead
from detector.head.window_bank import PoolingContext, WindowBank, bank_generator, build_window_bank

log = logging.getLogger(__name__)


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


CHECKPOINT_REMEDY = "delete it (or run with --force) to fine-tune again"


def finetune_provenance(context: PoolingContext, train: Sequence[ImageWindows], classes: Sequence[str],
                    config: Config) -> dict:
    """The provenance record a fine-tuning run with these inputs writes (module docstring)."""
    trunk = backbone_fingerprint(context.rcnn.backbone if context.rcnn is not None else context.provider.backbone)
    return make_provenance(stage_settings(config, "finetune"), list(classes), trunk,
                       {"training_data": training_data_digest(train)})


def read_finetune_checkpoint(path: Path) -> dict:
    """The checked contents of ``finetune.pt`` (a corrupt file is refused by name)."""
    return load_checked(path, "fine-tuning checkpoint", CHECKPOINT_REMEDY, unsealed_ok=_old_checkpoint)


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


class FineTuning:
    """One fine-tuning run of a head: its optimiser, schedule, generators and checkpoint file
    (``finetune`` drives it: resume, loop, checkpoint)."""

    def __init__(self, head: SPPHead, context: PoolingContext, train: Sequence[ImageWindows],
                 classes: Sequence[str], config: Config, checkpoint_path: Path) -> None:
        self.head, self.context, self.train, self.config = head, context, train, config
        self.classes, self.checkpoint_path = list(classes), checkpoint_path
        self.device = torch.device(config.device)
        self.world = distributed.world_size()
        if config.finetune.batch_size % self.world:
            raise ValueError(f"finetune.batch_size={config.finetune.batch_size} does not split evenly over "
                             f"{self.world} processes; use a batch size that is a multiple of {self.world}")
        head.to(self.device)
        params = [p for name, p in head.named_parameters() if name.startswith(("fc6", "fc7", "fc8"))]
        # fused: one kernel per step instead of a chain of foreach ops, the same update; on this
        # 2-core CPU a 16000 x 1024 fc6 step went from 244 ms to 158 ms per iteration
        self.optimizer = torch.optim.SGD(params, lr=config.finetune.lr, momentum=config.finetune.momentum,
                                         weight_decay=config.finetune.weight_decay, fused=True)
        self.schedule = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, list(config.finetune.lr_steps),
                                                             config.finetune.lr_gamma)
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.provenance = finetune_provenance(context, train, classes, config)
        self.flips = (False, True) if config.sampling.flip else (False,)
        self.bank_seconds = 0.0

    def sample_bank(self, iteration: int, progress: bool) -> WindowBank:
        """The window bank in use at ``iteration``: sample ``iteration // resample_every``, each drawn
        from its own generator, so a resumed run pools the same windows."""
        began = time.perf_counter()
        every = self.config.finetune.resample_every
        index = iteration // every if every else 0
        bank = build_window_bank(self.context, self.train, self.config.sampling, self.flips,
                                 bank_generator(self.config.seed, index), progress)
        self.bank_seconds += time.perf_counter() - began
        return bank

    def restore(self, state: dict) -> None:
        """Take up a checkpoint's head, optimiser, schedule and generators."""
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        log.info("fine-tuning: resuming from %s at iteration %d", self.checkpoint_path, state["iteration"])

    def kept(self) -> str:
        """What a diverged run leaves behind, for its message."""
        if self.checkpoint_path.exists():
            return f"{self.checkpoint_path} keeps its last finite state and is not complete"
        return f"no checkpoint was written yet (finetune.checkpoint_every={self.config.finetune.checkpoint_every})"

    def checkpoint(self, iteration: int) -> str:
        """Save a sealed checkpoint (never of a non-finite head); returns its checksum."""
        if not _finite(self.head):
            raise ValueError(f"fine-tuning diverged before iteration {iteration}: the fc weights are not "
                             f"finite; lower finetune.lr (now {self.config.finetune.lr}); {self.kept()}")
        sealed = seal({
            "head": self.head.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "iteration": iteration,
            "numpy_rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "classes": self.classes, "backbone": self.config.backbone,
            "levels": tuple(self.context.spp.levels), "scales": tuple(self.context.scales),
            "config": self.config.to_dict(), "stage": self.provenance})
        if distributed.is_main():
            save_checkpoint(self.checkpoint_path, sealed)
        # rank 0's checksum (its torch RNG state differs from the others'), once its file is complete
        return distributed.broadcast_from_main(sealed["checksum"])

    def network(self) -> torch.nn.Module:
        """The head in training mode, under ``DistributedDataParallel`` on several ranks."""
        self.head.train()
        if self.world == 1:
            return self.head
        device = self.device
        return torch.nn.parallel.DistributedDataParallel(
            self.head, device_ids=[device.index if device.index is not None else torch.cuda.current_device()]
            if device.type == "cuda" else None)

    def step(self, net: torch.nn.Module, bank: WindowBank, iteration: int) -> tuple[float, tuple[int, ...]]:
        """One SGD step on a mini-batch drawn from ``bank``: the whole batch's loss and its counts
        (right windows, windows, right foreground, foreground)."""
        tune = self.config.finetune
        x, y = bank.draw(tune.batch_size, self.config.sampling.fg_fraction, self.rng)  # the same on every rank
        if self.world > 1:
            me = distributed.rank()
            x, y = x[me::self.world], y[me::self.world]
        x, y = x.to(self.device), y.to(self.device)
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        hits = logits.argmax(1) == y
        if self.world == 1:
            loss_value, counts = loss.item(), (int(hits.sum()), len(y), int(hits[y > 0].sum()), int((y > 0).sum()))
        else:
            loss_value, counts = _sum_over_ranks(loss, hits, y)
        if not math.isfinite(loss_value):
            raise ValueError(f"fine-tuning diverged at iteration {iteration + 1}: loss is {loss_value}; "
                             f"lower finetune.lr (now {tune.lr}); {self.kept()}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        return loss_value, counts

    def loop(self, bank: WindowBank, start: int, progress: bool,
             on_progress: Callable[[dict], None] | None) -> tuple[WindowBank, list[float]]:
        """Iterations ``start`` to the end: resample, step, report, checkpoint; returns the last bank
        and every iteration's loss."""
        tune = self.config.finetune
        net = self.network()
        losses: list[float] = []
        counts = np.zeros(4, dtype=np.int64)  # right, seen, right foreground, foreground since the last report
        bar = tqdm(range(start, tune.iterations), desc="fine-tuning", disable=not progress or not distributed.is_main(),
                   initial=start, total=tune.iterations, unit="it")
        with sliced_dropout(self.head):  # N ranks: the dropout masks of one process (module docstring)
            for iteration in bar:
                if tune.resample_every and iteration % tune.resample_every == 0 and iteration != start:
                    del bank  # freed before the next is pooled: one bank's memory at a time
                    bank = self.sample_bank(iteration, progress)
                loss_value, step_counts = self.step(net, bank, iteration)
                losses.append(loss_value)
                counts += step_counts
                if (iteration + 1) % tune.history_every == 0:
                    row = {"iteration": iteration + 1, "loss": float(np.mean(losses[-tune.history_every:])),
                           "fg_accuracy": int(counts[2]) / max(int(counts[3]), 1),
                           "accuracy": int(counts[0]) / max(int(counts[1]), 1),
                           "lr": float(self.schedule.get_last_lr()[0])}
                    bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.3f}", lr=f"{row['lr']:.0e}")
                    if on_progress is not None:
                        on_progress(row)
                    counts[:] = 0
                if (iteration + 1) % tune.checkpoint_every == 0:
                    self.checkpoint(iteration + 1)
        return bank, losses


def finetune(head: SPPHead, context: PoolingContext, train: Sequence[ImageWindows],
             classes: Sequence[str], config: Config, checkpoint_path: Path,
             progress: bool = True, policy: str = "auto",
             on_progress: Callable[[dict], None] | None = None) -> dict:
    """Train the head; reuses or resumes ``checkpoint_path`` when its record matches (module
    docstring; ``policy`` auto, resume or force). Returns run statistics with the file's checksum.
    ``on_progress`` gets ``{"iteration", "loss", "fg_accuracy", "accuracy", "lr"}`` every
    ``finetune.history_every`` iterations (means over those iterations)."""
    run = FineTuning(head, context, train, classes, config, checkpoint_path)
    state = reusable_state(checkpoint_path, read_finetune_checkpoint, run.provenance, policy, "fine-tuning")
    if state is not None and state["iteration"] >= config.finetune.iterations:
        head.load_state_dict(state["head"])
        head.eval()
        log.info("fine-tuning: %s is complete (%d iterations) and made with these settings; reusing it",
                 checkpoint_path, state["iteration"])
        return {"iterations": 0, "seconds": 0.0, "reused": str(checkpoint_path),
                "checksum": state["checksum"], "provenance": run.provenance}
    started = time.perf_counter()
    start = state["iteration"] if state is not None else 0
    bank = run.sample_bank(start, progress)
    if len(bank.foreground) == 0:
        raise ValueError("fine-tuning: no window overlaps a GT box by IoU >= "
                         f"{config.sampling.fg_iou}; check the annotations and proposals")
    if state is not None:
        run.restore(state)
    elif context.normalise:
        head.set_normalisation(bank.features[:20000])
    bank, losses = run.loop(bank, start, progress, on_progress)
    checksum = run.checkpoint(config.finetune.iterations)
    head.eval()
    return {"checksum": checksum, "provenance": run.provenance, "iterations": config.finetune.iterations - start,
            "seconds": time.perf_counter() - started, "bank_seconds": run.bank_seconds,
            "bank_windows": len(bank.labels), "bank_foreground": len(bank.foreground),
            "final_loss": float(np.mean(losses[-50:])) if losses else float("nan")}
