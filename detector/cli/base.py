"""What every tool needs before it parses its arguments, importing nothing heavy (no torch), so
that ``--help`` answers at once: one-line errors, and a ``main`` that ends non-zero naming the stage
when SIGTERM or SIGINT stops it."""
from __future__ import annotations

import argparse
import functools
import os
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


class PixelLimit(argparse.Action):
    """``--max-image-pixels N``: sets ``SPPNET_MAX_IMAGE_PIXELS`` when parsed, for this process and
    the workers it starts (``detector.core.images.max_image_pixels``)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: str,
                 option: str | None = None) -> None:
        try:
            pixels = int(float(value))
        except ValueError:
            pixels = 0
        if pixels < 1:
            parser.error(f"{option}: expected a positive number of pixels, got {value!r}")
        os.environ["SPPNET_MAX_IMAGE_PIXELS"] = str(pixels)
        setattr(namespace, self.dest, pixels)


def add_pixel_limit_argument(parser: argparse.ArgumentParser) -> None:
    """``--max-image-pixels N`` (``PixelLimit``)."""
    parser.add_argument("--max-image-pixels", action=PixelLimit, metavar="N",
                        help="refuse images of more than N pixels from their header, before decoding "
                             "(default: $SPPNET_MAX_IMAGE_PIXELS, else 100 million)")


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
    """Decorate a tool's ``main``: run it ``interruptible(tool)``, and end it with one line naming
    the tool when it raises a ``ValueError`` or ``OSError`` (bad input, an unwritable path: the
    message names the value or file) or ends with ``SystemExit("TOOL: ...")``.  The line names the
    command as the user typed it (``sppnet-predict`` for the console script, ``predict.py`` for
    ``tools/predict.py``; ``typed_name``)."""
    def decorate(main: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> None:
            typed = typed_name(tool)
            try:
                with interruptible(typed):
                    main(argv)
            except (ValueError, OSError) as error:
                raise SystemExit(f"{typed}: {error_line(error)}") from error
            except SystemExit as stop:
                if typed != tool and isinstance(stop.code, str) and stop.code.startswith(f"{tool}: "):
                    raise SystemExit(f"{typed}: {stop.code[len(tool) + 2:]}") from stop.__cause__
                raise
        return run
    return decorate


def elastic_record(main: Callable[..., None]) -> Callable[..., None]:
    """``torch.distributed.elastic``'s ``@record`` for a tool that runs under ``torchrun``: a failing
    rank's traceback goes to the agent's report.  It is applied only under ``torchrun``
    (``TORCHELASTIC_ERROR_FILE`` set), where it has a report to write, so that a plain run's
    ``--help`` never imports torch."""
    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> None:
        if "TORCHELASTIC_ERROR_FILE" not in os.environ:
            return main(argv)
        from torch.distributed.elastic.multiprocessing.errors import record
        return record(main)(argv)
    return run


def typed_name(tool: str) -> str:
    """How the user called ``tool``: its console script's name (``sppnet-predict``) when run as one,
    else ``tool`` (``predict.py``)."""
    typed = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else tool
    return typed if typed.startswith("sppnet-") else tool
