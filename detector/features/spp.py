"""Spatial pyramid pooling: a fixed-length vector from a map of any size, or from many windows.

Binning (the paper's, and torch's adaptive pooling): over an extent of ``a`` cells, bin ``i``
of ``n`` spans ``[floor(i * a / n), ceil((i + 1) * a / n))``.  Bins are never empty and never
more than ``n`` (the paper's sliding-window form, ``win = ceil(a / n)``, ``stride = floor(a /
n)``, gives 5 bins for ``a = 11, n = 4``).  Output of each level: torch's ``N x C x n x n``
flattened (channels outermost, bins row-major); levels concatenated in the given order.  For
``levels = (6, 3, 2, 1)`` the first ``C * 36`` values are therefore laid out exactly like a
6x6 pool5 flattened for fc6.

Windows on one map (``pool_windows``) are pooled without a loop per window, from a
range-maximum table built once per map: ``T[a, b, y, x]`` is the channel-wise max over a block
of rows ``[y, y + h_a)`` and columns ``[x, x + 2^b)``.  Any bin is covered by at most four such
blocks anchored at its corners (blocks of the largest size that fits overlap inside it), so
its max costs a few row gathers of ``C`` contiguous values, whatever its area.  Row heights
``h_a`` are exact (``1, 2, ..., H``, one block per bin height, two gathers per bin) when the
tallest bin is at most ``_EXACT_ROWS`` cells, else powers of two (a sparse table, four
gathers); columns always use powers of two.  A level that divides a finer level is not
queried but reduced from it: bins ``j*g .. j*g + g - 1`` of level ``n*g`` cover exactly bin
``j`` of level ``n`` (consecutive bins touch or overlap, so their union is ``[floor(j a / n),
ceil((j + 1) a / n))``).  The table is built with torch ops; the per-window gathers, maxima,
reductions and the write in output layout run in one compiled loop
(:mod:`detector.features.spp_kernel`).

Why not ``torchvision.ops.roi_pool``: for integer cells (``spatial_scale=1``) it computes the
same bins (the tests use it as a second reference), but its CPU kernel visits every cell of
every bin in scalar code.  ``tools/bench_spp.py`` (2000 windows, one thread, float16 map):
roi_pool per level is ~8x faster than the naive loop, this path 73x on a 112 x 43 x 57 map
and 60x on a 320 x 22 x 29 one.

Precision: a float16 (the conv-map cache) or bfloat16 map is converted to float32 before
the table is built, which is exact, and the result is float32 (float64 for a float64 map).
Max pooling only compares and copies values, so the result equals the float64 loop's
(the tests check it).  The window path is inference only (the conv trunk is frozen,
nothing upstream needs gradients).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detector.features.spp_kernel import pool_from_table

# Memory budget (elements) of the block table: channels are split into groups beyond it.
# Results never depend on it.
_TABLE_ELEMENTS = 2**24
# Exact row heights while the tallest bin is at most this many cells: twice the table rows of
# a power-of-two table at most, half the gathers.
_EXACT_ROWS = 8


def _bin_edges(first: torch.Tensor, last: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Start (inclusive) and end (exclusive) cells of the ``n`` bins of each extent: K x n."""
    extent = (last - first + 1)[:, None]
    i = torch.arange(n, dtype=torch.int64)[None, :]
    start = first[:, None] + torch.div(i * extent, n, rounding_mode="floor")
    end = first[:, None] - torch.div(-(i + 1) * extent, n, rounding_mode="floor")
    return start, end


def _floor_log2(values: torch.Tensor) -> torch.Tensor:
    """floor(log2(v)) of positive integers, exactly (frexp's exponent, no rounding involved)."""
    return torch.frexp(values.to(torch.float64)).exponent.to(torch.int64) - 1


def _block_cover(start: torch.Tensor, end: torch.Tensor,
                 exact: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Table level and anchors of the blocks covering each range ``[start, end)``.

    Exact sizes: one block of the range's size (level = size - 1).  Powers of two: the two
    blocks of size ``2^floor(log2 size)`` anchored at ``start`` and ``end - 2^level``.
    """
    size = end - start
    if exact:
        return size - 1, [start]
    level = _floor_log2(size)
    return level, [start, end - (1 << level)]


def _block_table(feature_map: torch.Tensor, levels_y: int, levels_x: int, exact_y: bool) -> torch.Tensor:
    """``T[a, b, y, x, :]``: channel-wise max over rows ``[y, y + h_a)``, columns ``[x, x + 2^b)``.

    ``h_a = a + 1`` when ``exact_y``, else ``2^a``.  Channels last, so a gathered entry is one
    contiguous row.  Entries whose block would leave the map are never read and left unset.
    """
    channels, height, width = feature_map.shape
    table = feature_map.new_empty((levels_y, levels_x, height, width, channels))
    table[0, 0] = feature_map.permute(1, 2, 0)
    for b in range(1, levels_x):
        half = 1 << (b - 1)
        torch.maximum(table[0, b - 1, :, :width - half], table[0, b - 1, :, half:],
                      out=table[0, b, :, :width - half])
    for a in range(1, levels_y):
        if exact_y:  # height a + 1 = height a, then one more row
            torch.maximum(table[a - 1, :, :height - a], table[0, :, a:], out=table[a, :, :height - a])
        else:
            half = 1 << (a - 1)
            torch.maximum(table[a - 1, :, :height - half], table[a - 1, :, half:],
                          out=table[a, :, :height - half])
    return table


def _corner_rows(cells: torch.Tensor, n: int, exact_y: bool, levels_x: int, height: int,
                 width: int) -> list[torch.Tensor]:
    """Rows of the flattened table holding the blocks that cover each bin of level ``n``.

    One K x n x n index tensor per block corner: two with exact row heights, four without.
    """
    level_y, anchors_y = _block_cover(*_bin_edges(cells[:, 1], cells[:, 3], n), exact_y)
    level_x, anchors_x = _block_cover(*_bin_edges(cells[:, 0], cells[:, 2], n), exact=False)
    base = (level_y[:, :, None] * levels_x + level_x[:, None, :]) * height
    return [(base + y[:, :, None]) * width + x[:, None, :] for y in anchors_y for x in anchors_x]


def _table_shape(cells: torch.Tensor, levels: Sequence[int], height: int,
                 width: int) -> tuple[bool, int, int]:
    """(exact rows?, row levels, column levels) of a block table serving ``levels`` on ``cells``.

    Bound: over ``a`` cells a bin of level ``n`` spans at most ``ceil(a / n) + 1 =
    floor((a - 1) / n) + 2`` cells, and never more than the map.
    """
    extent_y = int((cells[:, 3] - cells[:, 1]).max()) + 1
    extent_x = int((cells[:, 2] - cells[:, 0]).max()) + 1
    tallest = min(height, max((extent_y - 1) // n + 2 for n in levels))
    widest = min(width, max((extent_x - 1) // n + 2 for n in levels))
    exact_y = tallest <= _EXACT_ROWS
    return exact_y, tallest if exact_y else tallest.bit_length(), widest.bit_length()


def _result_dtype(dtype: torch.dtype) -> torch.dtype:
    """Pooled features are float32 (float64 for a float64 map), whatever the map's precision."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class SpatialPyramidPooling(nn.Module):
    """Max pooling over an ``n x n`` grid for each level ``n``; output ``C * sum(n * n)`` values."""

    def __init__(self, levels: Sequence[int] = (6, 3, 2, 1)):
        super().__init__()
        levels = tuple(int(n) for n in levels)
        if not levels or min(levels) < 1 or len(set(levels)) != len(levels):
            raise ValueError(f"levels must be distinct positive integers, got {levels}")
        self.levels = levels
        # Each level is queried from the table or reduced from the smallest finer level that
        # it divides (ZF/AlexNet pyramid: 6 queried, 3 and 2 from 6, 1 from 2).
        self._source: dict[int, int | None] = {
            n: min((m for m in levels if m > n and m % n == 0), default=None) for n in levels}
        self._bin_plan = self._plan_bins(levels, self._source)

    @property
    def bins(self) -> int:
        """Bins per channel: sum of ``n * n``."""
        return sum(n * n for n in self.levels)

    def output_size(self, channels: int) -> int:
        """Length of the pooled vector for a map of ``channels`` channels."""
        return channels * self.bins

    def extra_repr(self) -> str:
        return f"levels={self.levels}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N x C x H x W map (any H, W >= 1) -> N x (C * bins)."""
        if x.dim() != 4 or x.shape[-1] < 1 or x.shape[-2] < 1:
            raise ValueError(f"expected an N x C x H x W map with H, W >= 1, got {tuple(x.shape)}")
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return torch.cat([F.adaptive_max_pool2d(x, n).flatten(1) for n in self.levels], dim=1)

    @torch.no_grad()
    def pool_windows(self, feature_map: torch.Tensor, cells: torch.Tensor | np.ndarray,
                     out: torch.Tensor | None = None) -> torch.Tensor:
        """Pool K windows of one map: C x H x W (or 1 x C x H x W) map, K x 4 cells -> K x (C * bins).

        ``cells`` are 0-based inclusive ``(x1c, y1c, x2c, y2c)`` map cells, as returned by
        ``detector.features.geometry.project_boxes``.  Result equals ``forward`` on each window's crop.
        ``out``: a contiguous K x (C * bins) tensor of the result's dtype to write into (e.g. a slice
        of the rows of several maps), returned.
        """
        fmap = self._as_map(feature_map)
        cells = self._as_cells(cells, fmap.shape[1], fmap.shape[2])
        channels, height, width = fmap.shape
        count = len(cells)
        shape, dtype = (count, channels * self.bins), _result_dtype(fmap.dtype)
        if out is None:
            out = torch.empty(shape, dtype=dtype)
        elif tuple(out.shape) != shape or out.dtype != dtype or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous {shape} {dtype} tensor, got {tuple(out.shape)} "
                             f"{out.dtype}{'' if out.is_contiguous() else ' (not contiguous)'}")
        if count == 0:
            return out
        queried = [n for n in self.levels if self._source[n] is None]
        exact_y, levels_y, levels_x = _table_shape(cells, queried, height, width)
        corners = torch.cat([torch.stack(_corner_rows(cells, n, exact_y, levels_x, height, width), dim=-1)
                             .reshape(count, n * n, -1) for n in queried], dim=1).numpy()
        group = max(1, min(channels, _TABLE_ELEMENTS // (levels_y * levels_x * height * width)))
        for c0 in range(0, channels, group):
            block = fmap[c0:c0 + group].to(out.dtype)  # exact: float16/bfloat16 -> float32
            rows = _block_table(block, levels_y, levels_x, exact_y).view(-1, block.shape[0])
            pool_from_table(rows.numpy(), corners, *self._bin_plan, c0, out.numpy())
        return out

    @staticmethod
    def _plan_bins(levels: tuple[int, ...], source_of: dict[int, int | None]) -> tuple[np.ndarray, ...]:
        """Bin bookkeeping for :func:`detector.features.spp_kernel.pool_from_table`.

        Bins are numbered in output order (levels as given, each row-major).  Returns the
        queried bins (in the order of the corner rows), the reduced bins, finest level first,
        with their source bins (CSR: starts, flat ids), and per level its first bin and its
        bin count.
        """
        first_bin = dict(zip(levels, np.cumsum([0] + [n * n for n in levels]).tolist()))
        queried = np.concatenate([first_bin[n] + np.arange(n * n) for n in levels
                                  if source_of[n] is None])
        reduced, starts, sources = [], [0], []
        for n in sorted((n for n in levels if source_of[n] is not None), reverse=True):
            m = source_of[n]
            g = m // n
            for p in range(n):
                for q in range(n):
                    reduced.append(first_bin[n] + p * n + q)
                    sources.extend(first_bin[m] + (p * g + i) * m + q * g + j
                                   for i in range(g) for j in range(g))
                    starts.append(len(sources))
        level_first = [first_bin[n] for n in levels]
        level_size = [n * n for n in levels]
        return tuple(np.asarray(v, dtype=np.int64) for v in
                     (queried, reduced, starts, sources, level_first, level_size))

    @staticmethod
    def _as_map(feature_map: torch.Tensor) -> torch.Tensor:
        fmap = torch.as_tensor(feature_map)
        if fmap.dim() == 4 and fmap.shape[0] == 1:
            fmap = fmap[0]
        if fmap.dim() != 3 or fmap.shape[1] < 1 or fmap.shape[2] < 1:
            raise ValueError(f"expected a C x H x W (or 1 x C x H x W) map, got {tuple(feature_map.shape)}")
        if not fmap.is_floating_point():
            fmap = fmap.float()
        return fmap

    @staticmethod
    def _as_cells(cells: torch.Tensor | np.ndarray, height: int, width: int) -> torch.Tensor:
        cells = torch.as_tensor(np.asarray(cells) if not torch.is_tensor(cells) else cells)
        if cells.is_floating_point() and not torch.equal(cells, cells.round()):
            raise ValueError("cells must be integer map indices")
        cells = cells.to(torch.int64).reshape(-1, 4)
        x1, y1, x2, y2 = cells.unbind(1)
        bad = (x1 < 0) | (y1 < 0) | (x2 >= width) | (y2 >= height) | (x1 > x2) | (y1 > y2)
        if bool(bad.any()):
            first = cells[bad][0].tolist()
            raise ValueError(f"{int(bad.sum())} window(s) outside the {height} x {width} map or "
                             f"inverted, e.g. cells {first} (x1, y1, x2, y2, 0-based inclusive)")
        return cells


def naive_pool_windows(feature_map: torch.Tensor, cells: torch.Tensor | np.ndarray,
                       levels: Sequence[int] = (6, 3, 2, 1)) -> torch.Tensor:
    """Reference for tests and benchmarks: a Python loop over windows, levels and bins, in float64.

    Written straight from the definition (bin ``i`` of ``n`` over ``a`` cells spans
    ``[floor(i * a / n), ceil((i + 1) * a / n))``), sharing no code with the fast path.
    """
    fmap = torch.as_tensor(feature_map).reshape(-1, *feature_map.shape[-2:]).to(torch.float64)
    rows = []
    for x1, y1, x2, y2 in np.asarray(cells, dtype=np.int64).reshape(-1, 4).tolist():
        height, width = y2 - y1 + 1, x2 - x1 + 1
        parts = []
        for n in levels:
            level = torch.empty((fmap.shape[0], n, n), dtype=torch.float64)
            for p in range(n):
                top, bottom = y1 + (p * height) // n, y1 + -((-(p + 1) * height) // n)
                for q in range(n):
                    left, right = x1 + (q * width) // n, x1 + -((-(q + 1) * width) // n)
                    level[:, p, q] = fmap[:, top:bottom, left:right].amax(dim=(1, 2))
            parts.append(level.reshape(-1))
        rows.append(torch.cat(parts))
    return torch.stack(rows) if rows else torch.zeros((0, fmap.shape[0] * sum(n * n for n in levels)),
                                                      dtype=torch.float64)


def random_cells(count: int, height: int, width: int, max_side: int,
                 generator: torch.Generator) -> torch.Tensor:
    """Random windows (0-based inclusive cells): top-left uniform on the map, sides uniform in
    ``1..max_side``, cut at the map border."""
    x1 = torch.randint(0, width, (count,), generator=generator)
    y1 = torch.randint(0, height, (count,), generator=generator)
    x2 = torch.clamp(x1 + torch.randint(0, max_side, (count,), generator=generator), max=width - 1)
    y2 = torch.clamp(y1 + torch.randint(0, max_side, (count,), generator=generator), max=height - 1)
    return torch.stack([x1, y1, x2, y2], dim=1)
