"""The SPP layer's window pooling against its references, timed on one random map.

``tools/bench_spp.py`` runs it; the results' equality with the float64 loop is checked on every
call, so a fast path that drifts fails here as in the tests (``tests/features/test_spp.py``).
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch

from detector.core.runtime import mapping_large_blocks
from detector.features.spp import SpatialPyramidPooling, naive_pool_windows, random_cells


def benchmark_pool_windows(channels: int = 112, height: int = 43, width: int = 57,
                           windows: int = 2000, max_side: int = 30, repeats: int = 3,
                           levels: Sequence[int] = (6, 3, 2, 1), seed: int = 0) -> dict[str, float]:
    """Median wall-clock seconds of four ways to pool ``windows`` random windows of one map.

    ``naive``: the float64 loop over bins (``naive_pool_windows``); ``per_window``: a Python
    loop calling ``forward`` on each window's crop; ``roi_pool``: torchvision's
    ``roi_pool`` per level; ``pool_windows``: the layer's table path, in the caller's allocator
    settings (the tools keep freed memory, :func:`detector.core.runtime.keep_freed_memory`);
    ``pool_windows_fresh_pages``: the same with every large block freshly mapped, so the
    result's first-touch page faults are paid on every call.  The map is float16, as read from
    the conv-map cache.  All results are checked equal.
    """
    from torchvision.ops import roi_pool

    def fresh_pages() -> torch.Tensor:
        with mapping_large_blocks():
            return spp.pool_windows(fmap, cells)

    generator = torch.Generator().manual_seed(seed)
    fmap = torch.randn((channels, height, width), generator=generator).half()
    cells = random_cells(windows, height, width, max_side, generator)
    spp = SpatialPyramidPooling(levels)
    full = fmap.float()[None]
    rois = torch.cat([torch.zeros((windows, 1)), cells.float()], dim=1)
    methods = {
        "naive": lambda: naive_pool_windows(fmap, cells, levels).float(),
        "per_window": lambda: torch.cat([spp(full[:, :, y1:y2 + 1, x1:x2 + 1])
                                         for x1, y1, x2, y2 in cells.tolist()]),
        "roi_pool": lambda: torch.cat([roi_pool(full, rois, n, 1.0).flatten(1) for n in levels], 1),
        "pool_windows": lambda: spp.pool_windows(fmap, cells),
        "pool_windows_fresh_pages": fresh_pages,
    }
    seconds: dict[str, float] = {}
    expected = None
    for name, method in methods.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            result = method()
            times.append(time.perf_counter() - start)
        if expected is None:
            expected = result
        elif not torch.equal(result, expected):
            raise AssertionError(f"{name} disagrees with the naive loop")
        seconds[name] = float(np.median(times))
    return seconds
