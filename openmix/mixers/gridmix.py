"""GridMix: the image is cut into a grid of cells, and a random subset of the cells comes from the partner.

Baek, Bang and Shim, "GridMix: Strong regularization through local context mapping", Pattern Recognition 110
(2021) 107594. https://doi.org/10.1016/j.patcog.2020.107594

``layout="cells"`` (default, the paper's grid-based mixing): the image is divided into ``grid`` x ``grid`` cells;
lam ~ Beta(alpha, alpha) and round((1 - lam) * grid^2) cells, chosen uniformly at random, take the partner's
pixels at the same place. Pixel row r belongs to cell row floor(r * grid / H) (columns likewise with W), so any
image size works: when the side is not a multiple of ``grid`` the cells differ by one pixel, and the reported lam,
the mean of the mask, is exact. (The paper's second ingredient, the local context loss on per-cell labels, is a
training objective, not part of the mixing.)

``layout="holes"``: the mask of OpenMixup's ``gridmix`` (Westlake-AI/openmixup, commit 37e1372,
``openmixup/models/augments/gridmix.py``), which cites the paper but implements the GridMask-like "GridMixup" of
github.com/IlyaDobrynin/GridMixup (line 26): a crop box covering ``cut_area_ratio`` of the image, with aspect
``cut_aspect_ratio`` and a uniform position (lines 52-64), is tiled by square patches, ``n_holes`` of them across
its width (lines 69-71); the top-left corner of each patch, a hole of sides sqrt(1 - lam) times the patch's (at
least 1 pixel and at most the patch side minus 1, lines 74-82), takes the partner's pixels (lines 85-96, 128), and
lam = 1 - (hole area) / (H * W) (line 129).

Defaults and their sources (OpenMixup, commit 37e1372):

- ``alpha=1.0``: ``gridmix(..., alpha=1.0)``, ``openmixup/models/augments/gridmix.py`` line 12; OpenMixup's
  tables use 0.2 (``configs/classification/cifar100/README.md`` line 53, ``cifar10/README.md`` line 52,
  ``docs/en/mixup_benchmarks/Mixup_imagenet.md`` lines 74 and 93), see ``configs/mixers/*/gridmix.yaml``.
- ``grid=4`` (cells layout): openmix's choice, to be checked against the paper's experiments (its text was not
  at hand when this module was written); OpenMixup has no cell layout.
- ``n_holes=(2, 6)``, ``hole_aspect_ratio=1.0``, ``cut_area_ratio=(0.5, 1.0)``, ``cut_aspect_ratio=(0.5, 2.0)``
  (holes layout): ``configs/classification/cifar100/mixups/basic/r18_mixups_CE_none.py`` lines 17-18 and
  ``configs/classification/imagenet/mixups/basic/r50_mixups_CE_none_4xb64.py`` lines 17-18, the configs of the
  tables (the function's own defaults, ``n_holes=20`` and 1.0 for the rest, lines 14-17, are never used there).
  A range is drawn from uniformly per mask (``random.randint`` for ``n_holes``, inclusive; ``np.random.uniform``
  for the ratios: lines 103-111).

Where this module departs from OpenMixup's code in the holes layout (both only matter for crops that overflow
the image or tiny images): a crop box larger than the image (``cut_aspect_ratio`` far from 1 with a large
``cut_area_ratio``) is clipped to the image, where OpenMixup's negative slice starts wrap around to the other
border or drop the hole; ``n_holes`` is clamped to [1, crop width // 2] and the patch height to >= 1 instead of
failing an assert or dividing by zero (lines 65-66, 70-71); an explicit ``lam=1`` pastes nothing (OpenMixup still
pastes 1-pixel holes). OpenMixup's code also names the image axes the other way round (``W = size[2]``, line 50),
which only matters for non-square images; here widths and ``n_holes`` run along the image width W.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from openmix.mixers import functional as F_mix
from openmix.mixers._base import PairMixer, check_choice
from openmix.mixers._registry import register_mixer

LAYOUTS = ("cells", "holes")


def _check_int_range(value: Any, name: str, minimum: int) -> tuple[int, int]:
    """An int or a (min, max) pair of ints as an inclusive range (low, high), minimum <= low <= high; a
    ``TypeError`` / ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if F_mix.is_int(value):
        low = high = int(value)
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if len(value) != 2 or not all(F_mix.is_int(item) for item in value):
            raise TypeError(f"{name} must be an int or a (min, max) pair of ints, got {value!r}")
        low, high = int(value[0]), int(value[1])
    else:
        raise TypeError(f"{name} must be an int or a (min, max) pair of ints, got {type(value).__name__} {value!r}")
    if not minimum <= low <= high:
        expected = f"an int >= {minimum} or a (min, max) pair with {minimum} <= min <= max"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return low, high


def _check_real_range(value: Any, name: str, upper: float = math.inf) -> tuple[float, float]:
    """A number or a (min, max) pair of numbers as a range (low, high) with 0 < low <= high <= upper (finite)."""
    if F_mix.is_real(value):
        low = high = float(value)
    elif isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes)):
        low, high = F_mix.check_pair(value, name)
    else:
        kind = type(value).__name__
        raise TypeError(f"{name} must be a number or a (min, max) pair of numbers, got {kind} {value!r}")
    if not (0.0 < low <= high <= upper and math.isfinite(high)):
        expected = f"a number or a (min, max) pair with 0 < min <= max{'' if math.isinf(upper) else f' <= {upper:g}'}"
        raise ValueError(f"{name} must lie in (0, {upper:g}] ({expected}), got {value!r}")
    return low, high


def _draw_ints(bounds: tuple[int, int], num: int, generator: torch.Generator | None) -> Tensor:
    """(num,) int64 CPU draws uniform in {low, ..., high}; no draw when the range is one value."""
    low, high = bounds
    if low == high:
        return torch.full((num,), low, dtype=torch.int64)
    return low + F_mix.sample_int(high - low + 1, num, generator)


def _draw_reals(bounds: tuple[float, float], num: int, generator: torch.Generator | None) -> Tensor:
    """(num,) float64 CPU draws uniform in [low, high); no draw when the range is one value."""
    low, high = bounds
    if low == high:
        return torch.full((num,), low, dtype=torch.float64)
    return F_mix.sample_uniform(low, high, num, generator)


def draw_partner_cells(
    counts: Tensor, grid: Tensor, side: int, generator: torch.Generator | None, device: torch.device | str
) -> Tensor:
    """(n, side * side) bool on ``device``: ``counts[i]`` cells of the ``grid[i]`` x ``grid[i]`` grid of mask i,
    a uniformly random subset, marked in a ``side`` x ``side`` raster (row-major, side >= every grid[i]).

    Every cell gets a uniform score (drawn with ``generator``); cells outside grid i score 2, above every draw; the
    ``counts[i]`` lowest-scoring cells are taken. One sort per mask, no Python loop and no host synchronisation.
    """
    num = counts.shape[0]
    noise_device = generator.device if generator is not None else torch.device("cpu")
    scores = torch.rand(num, side * side, generator=generator, device=noise_device).to(device, non_blocking=True)
    grid = grid.to(device, non_blocking=True).view(-1, 1, 1)
    position = torch.arange(side, device=device)
    inside = (position.view(1, -1, 1) < grid) & (position.view(1, 1, -1) < grid)  # (n, side, side)
    scores = scores.masked_fill(~inside.view(num, -1), 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)
    return rank < counts.to(device, non_blocking=True).view(-1, 1)


def grid_cell_mask(partner_cells: Tensor, grid: Tensor | int, height: int, width: int) -> Tensor:
    """(n, 1, H, W) float32 keep mask: 0 on the cells marked in ``partner_cells``, 1 elsewhere.

    Args:
        partner_cells: (n, G * G) bool, the cells taken from the partner in a G x G row-major raster.
        grid: cells per side, an int shared by every mask or a (n,) int64 tensor (each <= G).
        height, width: image size.

    Pixel row r lies in cell row floor(r * grid / H) and column c in cell column floor(c * grid / W), so cell row j
    spans the rows ceil(j * H / grid) <= r < ceil((j + 1) * H / grid).
    """
    num, raster = partner_cells.shape
    side = math.isqrt(raster)
    device = partner_cells.device
    taken = partner_cells.float()
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    if isinstance(grid, int):  # one grid for every mask: one (H, W) cell index shared by all rows
        cell = (rows * grid // height).view(-1, 1) * side + (cols * grid // width).view(1, -1)
        picked = taken.index_select(1, cell.flatten())
    else:
        grid = grid.to(device, non_blocking=True).view(-1, 1)
        cell_row = rows.view(1, -1) * grid // height  # (n, H)
        cell_col = cols.view(1, -1) * grid // width  # (n, W)
        cell = (cell_row * side).unsqueeze(2) + cell_col.unsqueeze(1)  # (n, H, W)
        picked = taken.gather(1, cell.view(num, -1))
    return (1.0 - picked).view(num, 1, height, width)


def hole_grid_params(
    lam: Tensor,
    height: int,
    width: int,
    n_holes: Tensor,
    hole_aspect_ratio: Tensor,
    cut_area_ratio: Tensor,
    cut_aspect_ratio: Tensor,
    center: Tensor,
) -> Tensor:
    """(n, 8) int64 CPU rows ``[top, left, cut_h, cut_w, patch_h, patch_w, hole_h, hole_w]`` of OpenMixup's hole
    grid (``rand_grid``, ``openmixup/models/augments/gridmix.py`` lines 47-98), one per mask.

    Args:
        lam: (n,) float64 target lambdas; the hole sides are sqrt(1 - lam) of the patch's.
        height, width: image size.
        n_holes: (n,) int64 patches across the crop's width.
        hole_aspect_ratio: (n,) float64 patch height / patch width.
        cut_area_ratio: (n,) float64 crop area / image area.
        cut_aspect_ratio: (n,) float64 crop height / crop width.
        center: (n, 2) float64 in [0, 1): where the crop lies along (rows, columns) of the free room.
    """
    lam, n_holes = lam.double().numpy(), n_holes.numpy()
    cut_area = np.floor(height * width * cut_area_ratio.numpy())
    cut_w = np.floor(np.sqrt(cut_area / cut_aspect_ratio.numpy()))
    cut_h = np.floor(cut_w * cut_aspect_ratio.numpy())
    top = np.trunc((height - cut_h) * center[:, 0].numpy())  # Python's int(): towards zero, as the reference
    left = np.trunc((width - cut_w) * center[:, 1].numpy())
    n_holes = np.clip(n_holes, 1, np.maximum(cut_w // 2, 1))
    patch_w = np.maximum(np.ceil(cut_w / n_holes), 1)
    patch_h = np.maximum(np.floor(patch_w * hole_aspect_ratio.numpy()), 1)
    ratio = np.sqrt(np.clip(1.0 - lam, 0.0, 1.0))
    # at least 1 pixel and at most the patch side minus 1, as the reference; nothing at all when lam = 1
    hole_w = np.where(ratio > 0, np.minimum(np.maximum(np.floor(patch_w * ratio), 1), patch_w - 1), 0)
    hole_h = np.where(ratio > 0, np.minimum(np.maximum(np.floor(patch_h * ratio), 1), patch_h - 1), 0)
    rows = np.stack([top, left, cut_h, cut_w, patch_h, patch_w, hole_h, hole_w], axis=1)
    return torch.from_numpy(rows.astype(np.int64))


def hole_grid_mask(params: Tensor, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """(n, 1, H, W) float32 keep mask of :func:`hole_grid_params` rows: 0 in the holes, 1 elsewhere.

    Pixel (r, c) is in a hole when its offset in the crop, v = r - top and u = c - left, lies in the crop
    (0 <= v < cut_h, 0 <= u < cut_w) and in the top-left corner of its patch (v mod patch_h < hole_h and
    u mod patch_w < hole_w); the crop is clipped to the image. Separable: one (n, H) and one (n, W) test.
    """
    params = params.to(device, non_blocking=True)
    top, left, cut_h, cut_w, patch_h, patch_w, hole_h, hole_w = (params[:, k : k + 1] for k in range(8))
    v = torch.arange(height, device=device).view(1, -1) - top
    u = torch.arange(width, device=device).view(1, -1) - left
    in_rows = ((v >= 0) & (v < cut_h) & (v.remainder(patch_h) < hole_h)).float()  # (n, H)
    in_cols = ((u >= 0) & (u < cut_w) & (u.remainder(patch_w) < hole_w)).float()  # (n, W)
    one = torch.ones((), device=device)
    return torch.addcmul(one, in_rows[:, None, :, None], in_cols[:, None, None, :], value=-1.0)


@register_mixer(
    "gridmix",
    paper="GridMix: Strong regularization through local context mapping (Baek, Bang and Shim, Pattern Recognition "
    "2021)",
    url="https://doi.org/10.1016/j.patcog.2020.107594",
)
class GridMix(PairMixer):
    """GridMix: grid cells of the partner replace the same cells of sample i.

    With ``x`` (B, C, H, W) of any floating dtype, each mask ``m_i`` is a float32 (1 or B, 1, H, W) map of 0 / 1,
    constant on every grid cell, and

        x~_i = m_i * x_i + (1 - m_i) * x_index[i],   lam_i = mean(m_i)  (float32, (B,))

    Cells layout (the paper): lam ~ Beta(alpha, alpha), or the explicit ``lam``; round((1 - lam) * g^2) of the
    g x g cells, a uniformly random subset, are the partner's (``m`` = 0 there). The reported lam is the exact
    share of sample i's pixels: round(lam * g^2) / g^2 when H and W are multiples of g, within a pixel row or column
    of it otherwise. Holes layout (OpenMixup's code): see the module docstring; lam = 1 - (hole area) / (H * W).

    Args:
        alpha: Beta(alpha, alpha) concentration of lambda (> 0).
        grid: cells per side (cells layout), an int >= 1 or an inclusive (min, max) range drawn from uniformly per
            mask.
        layout: ``"cells"`` (the paper) or ``"holes"`` (OpenMixup's ``gridmix``).
        n_holes: patches across the crop's width (holes layout): an int >= 1 or an inclusive (min, max) range.
        hole_aspect_ratio: patch height / width (holes layout): a number > 0 or a (min, max) range.
        cut_area_ratio: crop area / image area (holes layout): in (0, 1], a number or a (min, max) range.
        cut_aspect_ratio: crop height / width (holes layout): a number > 0 or a (min, max) range.
        mode: ``"batch"`` (one mask for the batch) or ``"elem"`` (one per sample, drawn for the whole batch at once).
        pairing: ``"random"`` or ``"flip"``.
        inplace: write into the input tensor.
    """

    reads_pixels = False  # its draws depend on the sizes and the generator alone

    def __init__(
        self,
        alpha: float = 1.0,
        grid: int | tuple[int, int] = 4,
        layout: str = "cells",
        n_holes: int | tuple[int, int] = (2, 6),
        hole_aspect_ratio: float | tuple[float, float] = 1.0,
        cut_area_ratio: float | tuple[float, float] = (0.5, 1.0),
        cut_aspect_ratio: float | tuple[float, float] = (0.5, 2.0),
        mode: str = "batch",
        pairing: str = "random",
        inplace: bool = False,
    ):
        super().__init__(alpha, mode, pairing, inplace)
        self.grid = _check_int_range(grid, "grid", 1)
        self.layout = check_choice(layout, LAYOUTS, "layout")
        self.n_holes = _check_int_range(n_holes, "n_holes", 1)
        self.hole_aspect_ratio = _check_real_range(hole_aspect_ratio, "hole_aspect_ratio")
        self.cut_area_ratio = _check_real_range(cut_area_ratio, "cut_area_ratio", upper=1.0)
        self.cut_aspect_ratio = _check_real_range(cut_aspect_ratio, "cut_aspect_ratio")

    def extra_repr(self) -> str:
        if self.layout == "cells":
            return super().extra_repr() + f", layout='cells', grid={self.grid}"
        return super().extra_repr() + (
            f", layout='holes', n_holes={self.n_holes}, hole_aspect_ratio={self.hole_aspect_ratio}, "
            f"cut_area_ratio={self.cut_area_ratio}, cut_aspect_ratio={self.cut_aspect_ratio}"
        )

    def cell_masks(
        self, lam: Tensor, height: int, width: int, generator: torch.Generator | None, device: torch.device | str
    ) -> Tensor:
        """(n, 1, H, W) keep masks of the cells layout for the (n,) float64 CPU target lambdas ``lam``."""
        num = lam.shape[0]
        low, high = self.grid
        grid = _draw_ints(self.grid, num, generator)
        counts = torch.round((1.0 - lam.double()) * grid.double() ** 2).long()
        partner_cells = draw_partner_cells(counts, grid, high, generator, device)
        return grid_cell_mask(partner_cells, low if low == high else grid, height, width)

    def hole_masks(
        self, lam: Tensor, height: int, width: int, generator: torch.Generator | None, device: torch.device | str
    ) -> Tensor:
        """(n, 1, H, W) keep masks of the holes layout (OpenMixup) for the (n,) float64 CPU lambdas ``lam``."""
        num = lam.shape[0]
        n_holes = _draw_ints(self.n_holes, num, generator)
        hole_aspect = _draw_reals(self.hole_aspect_ratio, num, generator)
        cut_area = _draw_reals(self.cut_area_ratio, num, generator)
        cut_aspect = _draw_reals(self.cut_aspect_ratio, num, generator)
        center = F_mix.sample_uniform(0.0, 1.0, 2 * num, generator).view(num, 2)
        params = hole_grid_params(lam, height, width, n_holes, hole_aspect, cut_area, cut_aspect, center)
        return hole_grid_mask(params, height, width, device)

    def mix(
        self, x: Tensor, index: Tensor, lam: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        batch_size, _, height, width = x.shape
        num_masks = 1 if self.mode == "batch" else batch_size
        lam = self.draw_lam(lam, batch_size, generator)[:num_masks]
        make = self.cell_masks if self.layout == "cells" else self.hole_masks
        mask = make(lam, height, width, generator, x.device)
        mixed = F_mix.blend(x, index, mask, self.inplace)
        # float32 sums of 0 / 1 are exact below 2^24 pixels
        share = mask.sum(dim=(1, 2, 3)).double() / (height * width)
        return mixed, share.expand(batch_size), mask
