"""Tests of detector.features.spp: pyramid pooling of whole maps and of many windows on one map."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_pool

from detector.features.spp import SpatialPyramidPooling, naive_pool_windows, random_cells

LEVEL_SETS = [(6, 3, 2, 1), (7, 3, 2, 1), (4, 2, 1), (1,), (5, 8), (6, 4, 3, 2, 1)]


def naive_bins(extent: int, n: int) -> list[tuple[int, int]]:
    return [(math.floor(i * extent / n), math.ceil((i + 1) * extent / n)) for i in range(n)]


def naive_spp(fmap: torch.Tensor, levels) -> torch.Tensor:
    """Whole-map pyramid of a C x H x W map from the definition, float64."""
    return naive_pool_windows(fmap, [[0, 0, fmap.shape[2] - 1, fmap.shape[1] - 1]], levels)[0]


def test_bins_and_output_size():
    spp = SpatialPyramidPooling()
    assert spp.levels == (6, 3, 2, 1) and spp.bins == 50
    assert spp.output_size(256) == 12800
    with pytest.raises(ValueError):
        SpatialPyramidPooling((3, 3))
    with pytest.raises(ValueError):
        SpatialPyramidPooling((0,))


def test_adaptive_max_pool_binning_is_floor_ceil():
    # torch's adaptive pooling uses exactly [floor(i a / n), ceil((i + 1) a / n)): on a line
    # whose cell j holds j, a bin's max is its last cell and its min its first
    for extent in range(1, 40):
        line = torch.arange(extent, dtype=torch.float64).view(1, 1, 1, extent)
        for n in range(1, 9):
            lasts = F.adaptive_max_pool2d(line, (1, n)).flatten().long()
            firsts = (-F.adaptive_max_pool2d(-line, (1, n))).flatten().long()
            assert list(zip(firsts.tolist(), (lasts + 1).tolist())) == naive_bins(extent, n)


def test_no_extra_bin_pitfall():
    # the paper's sliding window (win = ceil(11/4) = 3, stride = floor(11/4) = 2) gives 5 bins
    assert len(range(0, 11 - 3 + 1, 2)) == 5
    fmap = torch.randn(3, 11, 11, dtype=torch.float64)
    out = SpatialPyramidPooling((4,))(fmap[None])
    assert out.shape == (1, 3 * 16)
    torch.testing.assert_close(out[0], naive_spp(fmap, (4,)), rtol=0, atol=0)
    assert naive_bins(11, 4) == [(0, 3), (2, 6), (5, 9), (8, 11)]


@pytest.mark.parametrize("levels", LEVEL_SETS)
def test_forward_equals_naive_on_maps_of_any_size(levels):
    generator = torch.Generator().manual_seed(0)
    spp = SpatialPyramidPooling(levels)
    for height, width in ((1, 1), (5, 7), (11, 11), (13, 13), (2, 17), (43, 57)):
        fmap = torch.randn((2, 4, height, width), generator=generator, dtype=torch.float64)
        out = spp(fmap)
        assert out.shape == (2, spp.output_size(4))
        for i in range(2):
            torch.testing.assert_close(out[i], naive_spp(fmap[i], levels), rtol=0, atol=0)


def test_reference_loop_agrees_with_roi_pool_and_crop_forward():
    # the float64 reference is itself checked against two torch implementations
    generator = torch.Generator().manual_seed(1)
    fmap = torch.randn((5, 13, 17), generator=generator)
    cells = random_cells(120, 13, 17, 14, generator)
    levels = (6, 3, 2, 1)
    reference = naive_pool_windows(fmap, cells, levels).float()
    rois = torch.cat([torch.zeros((len(cells), 1)), cells.float()], dim=1)
    by_roi_pool = torch.cat([roi_pool(fmap[None], rois, n, 1.0).flatten(1) for n in levels], dim=1)
    spp = SpatialPyramidPooling(levels)
    by_crops = torch.cat([spp(fmap[None, :, y1:y2 + 1, x1:x2 + 1]) for x1, y1, x2, y2 in cells.tolist()])
    assert torch.equal(reference, by_roi_pool)
    assert torch.equal(reference, by_crops)


@pytest.mark.parametrize("levels", LEVEL_SETS)
def test_pool_windows_equals_naive_loop(levels):
    generator = torch.Generator().manual_seed(2)
    spp = SpatialPyramidPooling(levels)
    for height, width, count in ((1, 1, 20), (5, 7, 100), (11, 11, 150), (13, 13, 150), (43, 57, 300),
                                 (3, 40, 60)):
        fmap = torch.randn((6, height, width), generator=generator)
        cells = random_cells(count, height, width, max(height, width), generator)
        cells[0] = torch.tensor([0, 0, width - 1, height - 1])  # the whole map
        cells[1] = torch.tensor([width - 1, height - 1, width - 1, height - 1])  # one cell
        out = spp.pool_windows(fmap, cells)
        assert out.shape == (count, spp.output_size(6)) and out.dtype == torch.float32
        assert torch.equal(out, naive_pool_windows(fmap, cells, levels).float())


def test_pool_windows_many_windows_and_tall_bins():
    # windows taller than the exact-row limit switch the table to power-of-two rows
    generator = torch.Generator().manual_seed(3)
    spp = SpatialPyramidPooling()
    fmap = torch.randn((8, 75, 100), generator=generator)
    cells = random_cells(600, 75, 100, 100, generator)
    assert torch.equal(spp.pool_windows(fmap, cells), naive_pool_windows(fmap, cells).float())
    small = random_cells(600, 75, 100, 8, generator)
    assert torch.equal(spp.pool_windows(fmap, small), naive_pool_windows(fmap, small).float())


def test_pool_windows_channel_groups(monkeypatch):
    # a tiny table budget forces several channel groups: same result
    import detector.features.spp as spp_module

    generator = torch.Generator().manual_seed(4)
    fmap = torch.randn((10, 9, 14), generator=generator)
    cells = random_cells(150, 9, 14, 14, generator)
    spp = SpatialPyramidPooling((7, 3, 2, 1))
    expected = spp.pool_windows(fmap, cells)
    monkeypatch.setattr(spp_module, "_TABLE_ELEMENTS", 1000)
    assert torch.equal(spp.pool_windows(fmap, cells), expected)
    assert torch.equal(expected, naive_pool_windows(fmap, cells, spp.levels).float())


def test_whole_map_forward_equals_full_window():
    generator = torch.Generator().manual_seed(5)
    for levels in LEVEL_SETS:
        spp = SpatialPyramidPooling(levels)
        for height, width in ((1, 1), (5, 7), (13, 13), (30, 20)):
            fmap = torch.randn((1, 7, height, width), generator=generator)
            full = spp.pool_windows(fmap, np.array([[0, 0, width - 1, height - 1]]))
            assert torch.equal(full, spp(fmap))


def test_pool_windows_half_precision_maps_are_exact():
    generator = torch.Generator().manual_seed(6)
    spp = SpatialPyramidPooling()
    fmap = torch.randn((16, 20, 30), generator=generator)
    cells = random_cells(400, 20, 30, 20, generator)
    for dtype in (torch.float16, torch.bfloat16):
        low = fmap.to(dtype)
        out = spp.pool_windows(low, cells)
        assert out.dtype == torch.float32
        assert torch.equal(out, naive_pool_windows(low, cells).float())
        assert torch.equal(spp(low[None]), spp(low.float()[None]))
    double = spp.pool_windows(fmap.double(), cells)
    assert double.dtype == torch.float64 and torch.equal(double, naive_pool_windows(fmap.double(), cells))


def test_pool_windows_input_checks():
    spp = SpatialPyramidPooling()
    fmap = torch.zeros((4, 5, 6))
    assert spp.pool_windows(fmap, np.zeros((0, 4), np.int64)).shape == (0, 200)
    for bad in ([0, 0, 6, 4], [0, 0, 5, 5], [-1, 0, 1, 1], [3, 0, 2, 1]):
        with pytest.raises(ValueError, match="outside"):
            spp.pool_windows(fmap, torch.tensor([bad]))
    with pytest.raises(ValueError, match="integer"):
        spp.pool_windows(fmap, torch.tensor([[0.5, 0, 1, 1]]))
    with pytest.raises(ValueError, match="C x H x W"):
        spp.pool_windows(torch.zeros((2, 4, 5, 6)), torch.tensor([[0, 0, 1, 1]]))
    with pytest.raises(ValueError, match="N x C x H x W"):
        spp(torch.zeros((4, 5, 6)))


def test_forward_gradient_flows_to_the_max_cells():
    fmap = torch.randn((1, 2, 7, 9), dtype=torch.float64, requires_grad=True)
    SpatialPyramidPooling((2, 1))(fmap).sum().backward()
    # every bin sends gradient 1 to its arg-max cell: 5 bins per channel
    assert fmap.grad.sum().item() == pytest.approx(2 * 5)


def test_numba_caches_its_compiled_kernel_in_the_project_cache(tmp_path):
    """Not beside the installed source (``__pycache__`` of a read-only install)."""
    import os
    import subprocess
    import sys
    code = ("import numpy as np, torch\n"
            "from detector.features.spp import SpatialPyramidPooling\n"
            "SpatialPyramidPooling((2, 1)).pool_windows(torch.rand(4, 6, 6), torch.tensor([[0, 0, 5, 5]]))\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    subprocess.run([sys.executable, "-c", code], check=True, env={**env, "SPPNET_CACHE": str(tmp_path)})
    assert list((tmp_path / "numba").rglob("spp_kernel.pool_from_table*.nbi"))
