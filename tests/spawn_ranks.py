"""Run a function on a 2-process gloo group on this machine, as ``torchrun`` would start it.

``run_ranks(fn, world, *args)`` spawns ``world`` processes (``torch.multiprocessing.spawn``); each
sets the variables ``torchrun`` sets (``MASTER_ADDR``, ``MASTER_PORT`` of a free local port,
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), one thread, joins the group through
``detector.core.distributed.init_from_env`` and calls ``fn(*args)``.  An exception in a rank stops
every rank; the peers of a failed rank fail too (their collective loses its peer), so, as
``torchrun``'s report does, ``run_ranks`` names the first failure by time: it raises
``RanksFailed("rank R failed: <cause>")`` from the ``torch.multiprocessing.ProcessRaisedException``
(``"rank R was killed (SIGKILL)"`` for a rank killed by a signal).
``fn`` must be importable by name (a module-level function of a test module or of this one).
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from detector.core import distributed


def free_port() -> int:
    """A TCP port free on this machine right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RanksFailed(RuntimeError):
    """A rank of ``run_ranks`` failed; the message names the first one to fail and its cause."""


def _rank_main(rank: int, world: int, port: int, errors: str, fn, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1", SPPNET_DIST_TIMEOUT_S="120")
    torch.set_num_threads(1)
    distributed.init_from_env("cpu")
    try:
        with distributed.failure_logged():
            fn(*args)
    except BaseException as error:  # recorded with its time (before this rank leaves the group, so before
        Path(errors, f"rank{rank}.json").write_text(json.dumps(  # its peers can fail), as torchrun's @record does
            {"rank": rank, "time": time.time(), "cause": f"{type(error).__name__}: {error}"}))
        raise
    finally:
        distributed.shutdown()


def run_ranks(fn, world: int, *args) -> None:
    """Run ``fn(*args)`` on ``world`` ranks of a gloo group (module docstring)."""
    with tempfile.TemporaryDirectory() as errors:
        try:
            mp.spawn(_rank_main, args=(world, free_port(), errors, fn, args), nprocs=world, join=True)
        except mp.ProcessExitedException as error:  # killed: it could not record anything
            if error.signal_name is None:
                raise
            raise RanksFailed(f"rank {error.error_index} was killed ({error.signal_name})") from error
        except mp.ProcessRaisedException as error:
            failures = sorted((json.loads(p.read_text()) for p in Path(errors).glob("rank*.json")),
                              key=lambda f: f["time"])
            if not failures:
                raise
            first = failures[0]
            raise RanksFailed(f"rank {first['rank']} failed: {first['cause']}") from error
