"""Process settings for long CPU runs.

glibc returns every freed block above its mmap threshold (at most 32 MB, raised as it goes) to
the system at once, so each large activation of a conv pass comes back as fresh pages that the
kernel must zero on first touch.  On a 688 x 917 image with EfficientNet-Lite0 (one thread)
that was 0.24 s of system time on top of 0.35 s of computing per map; keeping freed memory in
the process (mmap threshold and trim threshold 1 GiB) brought it to 0.003 s.  The process keeps
up to 1 GiB of freed heap for reuse instead of handing it back.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import resource
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 2**30
_kept = False  # whether keep_freed_memory() is in force


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, or None where the C library is another one."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        libc = None
    if libc is None or not all(hasattr(libc, name) for name in ("mallopt", "malloc_trim")):
        log.debug("not glibc: allocator settings and trims are skipped")
        return None
    return libc


def _set_thresholds(threshold: int) -> bool:
    """Blocks of at least ``threshold`` bytes get their own mapping, and at most that much
    free heap is kept at the top; False where that is not glibc."""
    libc = _glibc()
    return libc is not None and (libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(threshold)) == 1
                                 and libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(threshold)) == 1)


def keep_freed_memory() -> bool:
    """Ask glibc to reuse freed memory instead of unmapping it; False where that is not glibc."""
    global _kept
    _kept = _set_thresholds(_KEEP_BYTES)
    return _kept


@contextmanager
def mapping_large_blocks(threshold: int = 32 * 2**20) -> Iterator[None]:
    """Within the block, give every allocation of at least ``threshold`` bytes its own mapping
    (returned to the system when freed), then go back to :func:`keep_freed_memory`.

    For stages without conv passes whose large buffers grow while per-image temporaries come
    and go (the SVM stage's hard-negative caches and regression pairs): in the kept heap the
    buffers a growing array leaves behind become holes that later temporaries touch again, so
    the resident size creeps up between trims.  Mapped, a freed buffer leaves nothing behind.
    Without :func:`keep_freed_memory` in force nothing changes: glibc's own threshold already
    maps blocks above 32 MB.
    """
    if not _kept:
        yield
        return
    _set_thresholds(threshold)
    release_freed_memory()
    try:
        yield
    finally:
        keep_freed_memory()


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def release_freed_memory() -> None:
    """Hand the freed heap back to the system (glibc ``malloc_trim``), holes included.

    Kept memory (:func:`keep_freed_memory`) saves page faults within a stage, but images of
    different sizes leave holes that only grow: on VOC dev_train the conv-map stage ended with
    4.9 GB resident, all of it carried into fine-tuning.  The long loops go through
    :func:`releasing_freed_memory` and the training stages call this at their ends: one pass's worth of page
    faults each time.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(ctypes.c_size_t(0))


def releasing_freed_memory(items: Iterable[T], every: int = 100) -> Iterator[T]:
    """Yield ``items``, handing the freed heap back (:func:`release_freed_memory`) every ``every``."""
    for index, item in enumerate(items):
        if index and index % every == 0:
            release_freed_memory()
        yield item


def check_device(device: str) -> None:
    """Refuse, in one line, a device name this machine cannot run on (``cuda`` without a GPU)."""
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise ValueError(f"device {device!r} is not a device name (use cpu or cuda)") from error
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported (use cpu or cuda)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA GPU is available here; use --device cpu")
