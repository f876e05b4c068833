"""What every tool needs before it parses its arguments, importing nothing heavy (no torch), so
that ``--help`` answers at once: one-line errors, and a ``main`` that ends non-zero naming the stage
when SIGTERM or SIGINT stops it."""
from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from detector.core.interrupt import Interrupted, current_stage, raising_on_signals


def error_line(error: Exception) -> str:
    """One line for an error a tool reports: an ``OSError``'s message and path without its errno prefix."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    return str(error)


@contextmanager
def interruptible(tool: str) -> Iterator[None]:
    """SIGTERM or SIGINT inside the block end ``tool`` with one line naming the stage it was in and
    exit status 128 + the signal's number (``detector.core.interrupt``)."""
    try:
        with raising_on_signals():
            yield
    except (Interrupted, KeyboardInterrupt) as error:
        signum = error.signum if isinstance(error, Interrupted) else signal.SIGINT
        print(f"{tool}: interrupted by {signal.Signals(signum).name} during {current_stage()}; "
              "rerun the same command to resume", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum) from None


def tool_main(tool: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorate a tool's ``main`` to run it ``interruptible(tool)``."""
    def decorate(main: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> None:
            with interruptible(tool):
                main(argv)
        return run
    return decorate
