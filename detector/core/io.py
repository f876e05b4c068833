"""Atomic file writes: every cache entry and stage output goes through ``atomic_write``.

A writer fills a temporary file in the target's own folder (same file system, so the final
``os.replace`` is atomic), then renames it over the target: a killed run leaves either the
complete old file, the complete new one, or no file, never a torn one.  A failed write removes
its temporary file and re-raises with the target path named (a full disk or a read-only folder
is reported as the path it could not write, not as a bare ``OSError``).
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator


def _umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; it replaces ``path`` on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:50]}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make every output private to its writer
    except OSError as error:
        raise OSError(error.errno, f"cannot write {path}: {error.strerror or error}") from error
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise OSError(error.errno, f"cannot write {path}: {error.strerror or error}") from error
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w") as handle:
        handle.write(text)


def write_json_atomic(path: str | Path, payload: object, allow_nan: bool = False) -> None:
    """Write ``payload`` as indented JSON atomically; NaN is refused unless allowed (strict JSON
    readers reject it; metrics turn undefined values into null first)."""
    write_text_atomic(path, json.dumps(payload, indent=1, allow_nan=allow_nan, default=str) + "\n")


def save_atomic(path: str | Path, save: Callable[[IO], Any]) -> None:
    """Call ``save(handle)`` on a binary temporary file that then replaces ``path``
    (``save`` is ``torch.save`` or ``np.savez`` bound to its payload)."""
    with atomic_write(path, "wb") as handle:
        save(handle)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """``torch.save`` a checkpoint or model file atomically.  Torch's zip writer reports a failed
    write (a full disk) as a ``RuntimeError`` ("enforce fail at inline_container.cc"): it becomes
    the ``OSError`` naming ``path`` that every other failed write is (ENOSPC when under 1 MiB is
    left)."""
    import torch

    def save(handle: IO) -> None:
        try:
            torch.save(state, handle)
        except RuntimeError as error:
            space = os.fstatvfs(handle.fileno())
            if space.f_bavail * space.f_frsize < 2**20:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from error
            raise OSError(errno.EIO, f"torch's writer failed: {str(error).splitlines()[0][:160]}") from error

    save_atomic(path, save)
