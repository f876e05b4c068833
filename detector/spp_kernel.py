"""The compiled inner loop of window pooling: table gathers, maxima and the output layout in one pass.

``detector.spp`` builds the block table and, per window, the table rows covering each bin; this
loop then reads those rows, takes their channel-wise max, derives coarser levels from finer ones
in a small per-window buffer and writes every bin straight into its place in the flattened
``C x n x n`` output.  Done with torch ops instead, the gathered rows, their maxima and the
transposed copy each travel through memory separately; 79% of that path's time was the copies
(``tools/bench_spp.py`` profile).  Numba compiles the loop once per dtype and caches it on disk.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def pool_from_table(rows: np.ndarray, corners: np.ndarray, queried_bins: np.ndarray,
                    reduced_bins: np.ndarray, source_start: np.ndarray, sources: np.ndarray,
                    level_first: np.ndarray, level_size: np.ndarray, level_offset: np.ndarray,
                    channel0: int, out: np.ndarray) -> None:
    """Fill ``out[k, level_offset[l] + (channel0 + c) * level_size[l] + t]`` with bin
    ``level_first[l] + t`` of channel c for every window k, level l and channel c of ``rows``'
    channel group.

    ``rows``: R x C table rows.  ``corners[k, j]``: the rows whose max is queried bin
    ``queried_bins[j]`` of window k.  Reduced bin ``reduced_bins[i]`` is the max of the bins
    ``sources[source_start[i]:source_start[i + 1]]``, all computed before it.
    """
    windows, queried, corner_count = corners.shape
    channels = rows.shape[1]
    buffer = np.empty((level_first[-1] + level_size[-1], channels), dtype=out.dtype)
    for k in range(windows):
        for j in range(queried):
            target = buffer[queried_bins[j]]
            first = rows[corners[k, j, 0]]
            for c in range(channels):
                target[c] = first[c]
            for m in range(1, corner_count):
                other = rows[corners[k, j, m]]
                for c in range(channels):
                    target[c] = max(target[c], other[c])
        for i in range(reduced_bins.shape[0]):
            target = buffer[reduced_bins[i]]
            first = buffer[sources[source_start[i]]]
            for c in range(channels):
                target[c] = first[c]
            for s in range(source_start[i] + 1, source_start[i + 1]):
                other = buffer[sources[s]]
                for c in range(channels):
                    target[c] = max(target[c], other[c])
        row = out[k]
        for level in range(level_first.shape[0]):
            first, size = level_first[level], level_size[level]
            for c in range(channels):  # contiguous writes, strided reads of the small buffer
                start = level_offset[level] + (channel0 + c) * size
                for t in range(size):
                    row[start + t] = buffer[first + t, c]
