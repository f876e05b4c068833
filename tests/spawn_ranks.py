"""Run a function on a 2-process gloo group on this machine, as ``torchrun`` would start it.

``run_ranks(fn, world, *args)`` spawns ``world`` processes (``torch.multiprocessing.spawn``); each
sets the variables ``torchrun`` sets (``MASTER_ADDR``, ``MASTER_PORT`` of a free local port,
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), one thread, joins the group through
``detector.core.distributed.init_from_env`` and calls ``fn(*args)``.  An exception in a rank stops
every rank and is raised here (``torch.multiprocessing.ProcessRaisedException``, naming the process).
``fn`` must be importable by name (a module-level function of a test module or of this one).
"""
from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp

from detector.core import distributed


def free_port() -> int:
    """A TCP port free on this machine right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, fn, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1", SPPNET_DIST_TIMEOUT_S="120")
    torch.set_num_threads(1)
    with distributed.failure_logged():
        distributed.init_from_env("cpu")
        try:
            fn(*args)
        finally:
            distributed.shutdown()


def run_ranks(fn, world: int, *args) -> None:
    """Run ``fn(*args)`` on ``world`` ranks of a gloo group (module docstring)."""
    mp.spawn(_rank_main, args=(world, free_port(), fn, args), nprocs=world, join=True)
