"""What every tool needs before it parses its arguments, importing nothing heavy (no torch), so
that ``--help`` answers at once: one-line errors, and a ``main`` that ends non-zero naming the stage
when SIGTERM or SIGINT stops it."""
from __future__ import annotations

import argparse
import functools
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every tool's help: its docstring as written, and each option's default where it has one that
    its help does not state already (argparse's ``ArgumentDefaultsHelpFormatter`` would also print
    "(default: None)" and repeat the defaults our help texts give)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, False, argparse.SUPPRESS) or not action.option_strings
                or default == []):
            return text
        return f"{text} (default: %(default)s)"


def tool_main(tool: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorate a tool's ``main`` to run it ``interruptible(tool)``; a one-line error the tool ends
    with (``SystemExit("TOOL: ...")``) names the command as the user typed it (``sppnet-predict``
    for the console script, ``predict.py`` for ``tools/predict.py``)."""
    def decorate(main: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> None:
            typed = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else tool
            try:
                with interruptible(typed if typed.startswith("sppnet-") else tool):
                    main(argv)
            except SystemExit as stop:
                if (typed.startswith("sppnet-") and isinstance(stop.code, str)
                        and stop.code.startswith(f"{tool}: ")):
                    raise SystemExit(f"{typed}: {stop.code[len(tool) + 2:]}") from stop.__cause__
                raise
        return run
    return decorate
