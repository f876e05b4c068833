"""One lock per cache item, so that runs sharing a cache share its work instead of repeating it.

A process about to compute a cache entry (one image's proposals, one image's conv maps) takes an
exclusive ``fcntl.flock`` on ``<entry>.lock`` beside it, then looks at the cache again: a second
run on the same cache waits while the first computes that item and then reads the first run's
file instead of computing it too.  The entry itself is still written atomically, so a reader
without the lock sees the old file or the new one, never a torn one.  ``flock`` locks are
released by the kernel when a process dies, so a killed run never leaves a stale lock; the empty
``.lock`` files stay (a few bytes each).  On file systems without ``flock`` (some network mounts)
the lock is skipped with a debug line, as before this module.
"""
from __future__ import annotations

import fcntl
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


@contextmanager
def item_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` for the block (waits while another process holds it)."""
    lock_path = Path(f"{path}.lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise OSError(error.errno, f"cannot write {lock_path}: {error.strerror or error}") from error
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as error:  # no flock on this file system: go on unlocked
            log.debug("no lock on %s (%s)", lock_path, error)
        yield
    finally:
        os.close(fd)  # closing releases the lock
