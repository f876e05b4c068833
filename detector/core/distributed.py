"""Several processes through PyTorch's own distributed engine (``torch.distributed``, started by
``torchrun``), and the pass-throughs that make one process behave exactly as before.

Under ``torchrun`` every process (a *rank*) runs the same tool on the same arguments; the
environment says who it is (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``).  ``init_from_env`` joins the process group (gloo on CPU, nccl on CUDA, the
CUDA device picked by ``LOCAL_RANK``) with a finite timeout, so a rank waiting on a dead one
stops with an error instead of hanging.  Without those variables (or with ``WORLD_SIZE`` 1)
nothing is initialised and every helper here is a pass-through: ``shard`` returns all items,
``ordered_stream`` computes item by item in this process, ``barrier`` does nothing.

How the work is split (each helper keeps every rank's view of the data identical):

- ``shard(items)``: the strided slice ``items[rank::world]`` (neighbouring images go to different
  ranks, so a cache half full from an earlier run still splits evenly).  Per-image stages that
  write a shared cache (proposals, conv maps) compute their shard, then ``barrier()``, then every
  rank reads the whole cache.
- ``ordered_stream(items, compute)``: rounds of ``world`` items (times ``per_round``), rank ``r``
  computing item ``round * world + r`` (and every ``world``-th after it in the round); the round's
  results are all-gathered and yielded, in the original order, on every rank.  A stage that must see every item in order on every rank (SVM hard negative
  mining, the fine-tuning window bank) consumes this stream and stays identical on all ranks.
- ``gather_to_main(obj)``: every rank's object, in rank order, on rank 0 (None elsewhere).

Failure: ``failure_logged(rank)`` logs ``rank R failed: <cause>`` before re-raising; under
``torchrun`` the agent then stops the other ranks and names the failing one (the tools wrap their
``main`` with ``torch.distributed.elastic.multiprocessing.errors.record``, so its traceback is in
the report).  A rank left waiting in a collective on a dead peer gets an error from gloo, or at
worst the process group's timeout (``SPPNET_DIST_TIMEOUT_S``, default 1800 s).
"""
from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

DEFAULT_TIMEOUT_S = 1800.0


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset): what ``torchrun`` asked for."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_initialized() -> bool:
    """True when this process is in a process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0, the rank that writes a run's outputs and prints."""
    return rank() == 0


def init_from_env(device: str | None = "cpu") -> bool:
    """Join the process group ``torchrun`` describes in the environment; returns True when one
    was joined (``WORLD_SIZE`` > 1), False when this is a single process (nothing is done).

    Backend gloo for ``device`` cpu, nccl for cuda (then ``LOCAL_RANK`` picks the GPU).  Threads:
    ``torchrun`` sets ``OMP_NUM_THREADS`` (1 unless given) but torch may have started with its
    default, so ``torch.set_num_threads`` follows the variable."""
    if is_initialized():
        return True
    if env_world_size() <= 1:
        return False
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))
    timeout = datetime.timedelta(seconds=float(os.environ.get("SPPNET_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S)))
    backend = "gloo"
    if device is not None and str(device).startswith("cuda"):
        backend = "nccl"
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timeout)
    log.info("rank %d of %d joined the process group (%s, %d thread(s))", rank(), world_size(), backend,
             torch.get_num_threads())
    return True


def shutdown() -> None:
    """Leave the process group, if any."""
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (nothing without a process group)."""
    if world_size() > 1:
        dist.barrier()


def shard(items: Sequence[T], rank_: int | None = None, world: int | None = None) -> list[T]:
    """This rank's share of ``items``: ``items[rank::world]`` (all items on one process)."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    return list(items[rank_::world])


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0; None on the other ranks."""
    if world_size() == 1:
        return [obj]
    gathered: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def ordered_stream(items: Sequence[T], compute: Callable[[T], R], per_round: int = 1) -> Iterator[tuple[T, R]]:
    """``(item, compute(item))`` for every item, in order, on every rank, each item computed by one
    rank only (module docstring).  A round holds ``per_round`` items per rank (rank ``r`` computes
    the round's items ``r, r + world, ...``): more items per round even out the ranks' waits on one
    slow item, at the memory of ``world * per_round`` results.  Every rank must call it with the
    same ``items``.  ``compute`` reports an item that fails by returning None (as the per-image
    stages do); an exception stops this rank (and so the run).  One process: computed lazily, item
    by item, as a plain loop."""
    world = world_size()
    if world == 1:
        for item in items:
            yield item, compute(item)
        return
    me, size = rank(), world * max(1, per_round)
    for start in range(0, len(items), size):
        mine = [compute(items[i]) for i in range(start + me, min(start + size, len(items)), world)]
        parts = all_gather_objects(mine)
        for index in range(start, min(start + size, len(items))):
            offset = index - start
            yield items[index], parts[offset % world][offset // world]


def merge_counts(values: Iterable[dict[str, float]]) -> dict[str, float]:
    """Key-wise sum of numeric dicts (per-rank counters and seconds)."""
    total: dict[str, float] = {}
    for value in values:
        for key, number in value.items():
            total[key] = total.get(key, 0) + number
    return total


@contextmanager
def failure_logged() -> Iterator[None]:
    """Log ``rank R failed: <cause>`` (on a process group) for an exception leaving the block, then
    re-raise it: ``torchrun`` stops the other ranks and its report names this one."""
    try:
        yield
    except BaseException as error:
        if world_size() > 1 or env_world_size() > 1:
            log.error("rank %d failed: %s: %s", rank() if is_initialized() else int(os.environ.get("RANK", "0")),
                      type(error).__name__, error)
        raise
