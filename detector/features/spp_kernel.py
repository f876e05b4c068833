"""The compiled inner loop of window pooling: table gathers, maxima and the output layout in one pass.

``detector.features.spp`` builds the block table and, per window, the table rows covering each bin; this
loop then reads those rows, takes their channel-wise max, derives coarser levels from finer ones
in a small per-window buffer and writes every bin straight into its place in the flattened
``C x n x n`` output.  Done with torch ops instead, the gathered rows, their maxima and the
transposed copy each travel through memory separately; 79% of that path's time was the copies
(``tools/bench_spp.py`` profile).  Numba compiles the loop once per dtype and caches it on disk, in
``$SPPNET_CACHE/numba`` (``detector.core.paths.cache_base``) unless ``NUMBA_CACHE_DIR`` says
otherwise: numba's default, a ``__pycache__`` beside the installed source, fails or warns on a
read-only install.
"""
from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit

from detector.core.paths import cache_base

if not os.environ.get("NUMBA_CACHE_DIR"):
    numba.config.CACHE_DIR = str(cache_base() / "numba")  # read when each function below is decorated


@njit(cache=True, nogil=True, inline="always")
def _max_of_rows(target: np.ndarray, table: np.ndarray, row_ids: np.ndarray) -> None:
    """``target[:] = max over i of table[row_ids[i]]``, channel by channel."""
    first = table[row_ids[0]]
    for c in range(target.shape[0]):
        target[c] = first[c]
    for i in range(1, row_ids.shape[0]):
        other = table[row_ids[i]]
        for c in range(target.shape[0]):
            target[c] = max(target[c], other[c])


@njit(cache=True, nogil=True)
def pool_from_table(rows: np.ndarray, corners: np.ndarray, queried_bins: np.ndarray,
                    reduced_bins: np.ndarray, source_start: np.ndarray, sources: np.ndarray,
                    level_first: np.ndarray, level_size: np.ndarray, channel0: int,
                    out: np.ndarray) -> None:
    """Fill ``out[k, C * level_first[l] + (channel0 + c) * level_size[l] + t]`` (``C``: all the
    output's channels) with bin ``level_first[l] + t`` for every window k, level l and channel c
    of ``rows``' channel group.

    ``rows``: R x c table rows.  ``corners[k, j]``: the rows whose max is queried bin
    ``queried_bins[j]`` of window k.  Reduced bin ``reduced_bins[i]`` is the max of the bins
    ``sources[source_start[i]:source_start[i + 1]]``, all computed before it.
    """
    bins = level_first[-1] + level_size[-1]
    all_channels = out.shape[1] // bins
    channels = rows.shape[1]
    buffer = np.empty((bins, channels), dtype=out.dtype)
    for k in range(corners.shape[0]):
        for j in range(queried_bins.shape[0]):
            _max_of_rows(buffer[queried_bins[j]], rows, corners[k, j])
        for i in range(reduced_bins.shape[0]):
            _max_of_rows(buffer[reduced_bins[i]], buffer, sources[source_start[i]:source_start[i + 1]])
        row = out[k]
        for level in range(level_first.shape[0]):
            first, size = level_first[level], level_size[level]
            for c in range(channels):  # contiguous writes, strided reads of the small buffer
                start = all_channels * first + (channel0 + c) * size
                for t in range(size):
                    row[start + t] = buffer[first + t, c]
