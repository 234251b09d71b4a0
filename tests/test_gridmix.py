"""GridMix: every mask is constant on each grid cell, and lam is the share of sample i's own pixels.

The references are direct computations written here: cell boundaries from ceil(j * H / g), cell areas summed by
hand, OpenMixup's hole enumeration as Python loops, and the Beta distribution of lam (Kolmogorov-Smirnov).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import openmix
from openmix.mixers.gridmix import hole_grid_mask, hole_grid_params


def _cells(size: int, grid: int) -> list[tuple[int, int]]:
    """(start, stop) of each cell along one axis: cell j spans ceil(j * size / grid) <= k < ceil((j+1) size / grid)."""
    return [(math.ceil(j * size / grid), math.ceil((j + 1) * size / grid)) for j in range(grid)]


def _cell_values(mask: torch.Tensor, grid: int) -> np.ndarray | None:
    """(grid, grid) values of an (H, W) mask that is constant on every cell, -1 on empty cells; None otherwise."""
    height, width = mask.shape
    values = np.full((grid, grid), -1.0)
    for i, (top, bottom) in enumerate(_cells(height, grid)):
        for j, (left, right) in enumerate(_cells(width, grid)):
            block = mask[top:bottom, left:right]
            if block.numel() == 0:
                continue
            if not bool((block == block.flatten()[0]).all()):
                return None
            values[i, j] = float(block.flatten()[0])
    return values


def _kept_share(values: np.ndarray, height: int, width: int) -> float:
    """Share of the pixels in cells of value 1, from the cell areas."""
    grid = values.shape[0]
    area = 0
    for i, (top, bottom) in enumerate(_cells(height, grid)):
        for j, (left, right) in enumerate(_cells(width, grid)):
            area += (bottom - top) * (right - left) * (values[i, j] == 1)
    return area / (height * width)


@pytest.mark.parametrize(("height", "width", "grid"), [(32, 32, 4), (30, 30, 7), (9, 31, 4), (20, 12, 5), (7, 5, 3)])
@pytest.mark.parametrize("explicit", [False, True], ids=["drawn", "explicit"])
def test_masks_are_constant_on_cells_and_lam_is_the_kept_share(height, width, grid, explicit):
    generator = torch.Generator().manual_seed(height * 100 + width)
    x = torch.randn(12, 2, height, width, generator=generator)
    target = torch.rand(12, generator=generator, dtype=torch.float64) if explicit else None
    out = openmix.create_mixer("gridmix", grid=grid, mode="elem")(x, torch.arange(12), generator=generator, lam=target)
    for i in range(12):
        values = _cell_values(out.mask[i, 0], grid)
        assert values is not None, f"mask {i} is not constant on the {grid} x {grid} cells of {height} x {width}"
        assert set(np.unique(values)) <= {0.0, 1.0}
        assert out.lam[i].item() == pytest.approx(_kept_share(values, height, width), abs=1e-7)
        if explicit:  # round((1 - lam) * g^2) cells come from the partner
            assert int((values == 0).sum()) == round((1 - target[i].item()) * grid**2)
        keep = out.mask[i].bool().expand(2, height, width)
        assert torch.equal(out.x[i][keep], x[i][keep])
        assert torch.equal(out.x[i][~keep], x[out.index[i]][~keep])


def test_divisible_images_report_whole_cells_and_batch_mode_shares_one_mask():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 32, 32, generator=generator)
    for lam in (0.0, 0.1, 0.5, 0.77, 1.0):
        out = openmix.create_mixer("gridmix", grid=4)(x, torch.arange(5), generator=generator, lam=lam)
        assert out.mask.shape == (1, 1, 32, 32)
        expected = 1 - round((1 - lam) * 16) / 16
        assert torch.all(out.lam == expected), (lam, out.lam)
    assert torch.equal(out.x, x)  # lam = 1: nothing pasted


def test_a_grid_range_draws_one_size_per_mask():
    generator = torch.Generator().manual_seed(1)
    out = openmix.create_mixer("gridmix", grid=(2, 5), mode="elem")(
        torch.zeros(64, 1, 60, 60), torch.zeros(64, dtype=torch.int64), generator=generator, lam=0.5
    )
    finest = []
    for i in range(64):
        fits = [g for g in range(2, 6) if _cell_values(out.mask[i, 0], g) is not None]
        assert fits, f"mask {i} is constant on no grid in [2, 5]"
        # half the cells of a g x g grid go across: the pasted share is round(g^2 / 2) / g^2 for the drawn g
        assert any(out.lam[i].item() == pytest.approx(1 - round(g * g / 2) / (g * g)) for g in fits)
        finest.append(max(fits))
    assert {5, 3} <= set(finest)  # the odd sizes cannot be mistaken for one another


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_drawn_lam_follows_beta_alpha_alpha(alpha):
    # a 16 x 16 grid on 16 x 16 pixels: lam moves in steps of 1/256, far below what 2000 draws can resolve
    generator = torch.Generator().manual_seed(int(alpha * 10))
    mixer = openmix.create_mixer("gridmix", alpha=alpha, grid=16, mode="elem")
    out = mixer(torch.zeros(2000, 1, 16, 16), torch.zeros(2000, dtype=torch.int64), generator=generator)
    result = stats.kstest(out.lam.double().numpy(), stats.beta(alpha, alpha).cdf)
    assert result.pvalue > 1e-3, f"KS statistic {result.statistic:.4f}, p = {result.pvalue:.2e}"


def _openmixup_holes(row: list[int], height: int, width: int) -> torch.Tensor:
    """(H, W) keep mask of one parameter row, by OpenMixup's enumeration of holes (``rand_grid``'s loops)."""
    top, left, cut_h, cut_w, patch_h, patch_w, hole_h, hole_w = row
    mask = torch.ones(height, width)
    n_x, n_y = math.ceil(cut_w / patch_w), math.ceil(cut_h / patch_h)
    for i in range(n_x + 1):
        for j in range(n_y + 1):
            x1, y1 = min(patch_w * i, cut_w), min(patch_h * j, cut_h)
            x2, y2 = min(x1 + hole_w, cut_w), min(y1 + hole_h, cut_h)
            for r in range(top + y1, top + y2):
                for c in range(left + x1, left + x2):
                    if 0 <= r < height and 0 <= c < width:  # clipped to the image (no wrap-around)
                        mask[r, c] = 0.0
    return mask


@pytest.mark.parametrize(("height", "width"), [(32, 32), (24, 40)])
def test_hole_masks_match_openmixups_enumeration(height, width):
    generator = torch.Generator().manual_seed(height + width)
    num = 40
    lam = torch.rand(num, generator=generator, dtype=torch.float64)
    lam[:3] = torch.tensor([0.0, 1.0, 0.5])
    n_holes = torch.randint(1, 9, (num,), generator=generator)
    hole_aspect = 0.5 + torch.rand(num, generator=generator, dtype=torch.float64)
    cut_area = 0.3 + 0.7 * torch.rand(num, generator=generator, dtype=torch.float64)
    cut_aspect = 0.5 + 1.5 * torch.rand(num, generator=generator, dtype=torch.float64)  # some crops overflow
    center = torch.rand(num, 2, generator=generator, dtype=torch.float64)
    params = hole_grid_params(lam, height, width, n_holes, hole_aspect, cut_area, cut_aspect, center)
    masks = hole_grid_mask(params, height, width)
    for k in range(num):
        row = params[k].tolist()
        assert torch.equal(masks[k, 0], _openmixup_holes(row, height, width)), row
        # the parameters themselves, by OpenMixup's scalar formulas (rand_grid, lines 52-82)
        area = int(height * width * cut_area[k].item())
        cut_w = int(np.sqrt(area / cut_aspect[k].item()))
        cut_h = int(cut_w * cut_aspect[k].item())
        holes = min(max(n_holes[k].item(), 1), max(cut_w // 2, 1))
        patch_w = math.ceil(cut_w / holes)
        patch_h = max(int(patch_w * hole_aspect[k].item()), 1)
        ratio = np.sqrt(1 - lam[k].item())
        hole_w = min(max(int(patch_w * ratio), 1), patch_w - 1) if ratio > 0 else 0
        hole_h = min(max(int(patch_h * ratio), 1), patch_h - 1) if ratio > 0 else 0
        top = int((height - cut_h) * center[k, 0].item())
        left = int((width - cut_w) * center[k, 1].item())
        assert row == [top, left, cut_h, cut_w, patch_h, patch_w, hole_h, hole_w]


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_holes_layout_reports_the_kept_share(mode):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(8, 3, 32, 32, generator=generator)
    mixer = openmix.create_mixer("gridmix", layout="holes", alpha=0.2, mode=mode)
    for _ in range(5):
        out = mixer(x, torch.arange(8), generator=generator)
        share = out.mask.double().mean(dim=(1, 2, 3)).expand(8)
        assert float((out.lam.double() - share).abs().max()) <= 1e-7
        assert bool((out.lam < 1).all())  # a hole grid always pastes something unless lam = 1
    assert torch.equal(mixer(x, torch.arange(8), generator=generator, lam=1.0).x, x)


BAD_ARGUMENTS = [
    ({"grid": 0}, ValueError, "grid must be an int >= 1"),
    ({"grid": (3, 2)}, ValueError, "grid must be"),
    ({"grid": 2.5}, TypeError, "grid must be an int or a"),
    ({"grid": "4"}, TypeError, "grid must be an int or a"),
    ({"grid": (2, 3, 4)}, TypeError, "grid must be an int or a"),
    ({"layout": "checkerboard"}, ValueError, "layout must be one of"),
    ({"n_holes": 0}, ValueError, "n_holes must be an int >= 1"),
    ({"n_holes": (1.5, 3)}, TypeError, "n_holes must be an int or a"),
    ({"cut_area_ratio": 1.5}, ValueError, "cut_area_ratio must lie in"),
    ({"cut_area_ratio": (0.5,)}, ValueError, "cut_area_ratio must be a"),
    ({"cut_area_ratio": "big"}, TypeError, "cut_area_ratio must be a number or a"),
    ({"hole_aspect_ratio": -1.0}, ValueError, "hole_aspect_ratio must lie in"),
    ({"cut_aspect_ratio": float("nan")}, ValueError, "cut_aspect_ratio must lie in"),
    ({"cut_aspect_ratio": (2.0, float("inf"))}, ValueError, "cut_aspect_ratio must lie in"),
    ({"alpha": 0.0}, ValueError, "alpha must be a finite number > 0"),
    ({"mode": "pixel"}, ValueError, "mode must be one of"),
]


@pytest.mark.parametrize(("kwargs", "error", "pattern"), BAD_ARGUMENTS, ids=[str(c[0]) for c in BAD_ARGUMENTS])
def test_bad_arguments_are_named(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        openmix.create_mixer("gridmix", **kwargs)


def test_numpy_arguments_are_accepted():
    mixer = openmix.create_mixer("gridmix", grid=np.int64(3), n_holes=np.array([2, 4]), cut_area_ratio=np.float32(0.5))
    assert (mixer.grid, mixer.n_holes, mixer.cut_area_ratio) == ((3, 3), (2, 4), (0.5, 0.5))
