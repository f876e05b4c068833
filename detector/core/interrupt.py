"""Interrupted runs end non-zero, naming the stage they were in.

A long run killed by SIGTERM (a scheduler, ``timeout``, a torchrun agent) used to die silently by
the signal's default action; under ``/usr/bin/time`` its report even reads "Exit status: 0" (the
status field of a process ended by a signal), which a chained ``train && test`` misreads.
``raising_on_signals`` turns SIGTERM into an ``Interrupted`` exception in the process that installed
it (SIGINT is Python's ``KeyboardInterrupt`` already), so ``finally`` blocks and atomic writers
clean up as they do for any error; the tools then print one line naming ``current_stage()`` and
exit with 128 + the signal's number, as a shell reports a killed command.  Library stages name
themselves with ``set_stage``.  A process forked from the installer (a worker pool's) keeps the
default action: its parent decides.
"""
from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from typing import Iterator

_stage = "start-up"


class Interrupted(BaseException):
    """A run stopped by a signal (``signum``); a ``BaseException`` so that ``except Exception`` in
    a stage does not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


def set_stage(name: str) -> None:
    """Name the stage the process is in from now on (what an interruption reports)."""
    global _stage
    _stage = name


def current_stage() -> str:
    """The stage last named by ``set_stage``."""
    return _stage


@contextmanager
def raising_on_signals(signals: tuple[int, ...] = (signal.SIGTERM,)) -> Iterator[None]:
    """Within the block, ``signals`` raise ``Interrupted`` in this process (module docstring)."""
    owner = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != owner:  # a forked worker: die by the default action
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Interrupted(signum)

    previous = {number: signal.signal(number, handler) for number in signals}
    try:
        yield
    finally:
        for number, action in previous.items():
            signal.signal(number, action)
