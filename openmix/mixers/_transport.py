"""PuzzleMix's block transport: move an input's salient blocks onto the grid positions its mask keeps.

Kim, Choo and Song, "Puzzle Mix: Exploiting Saliency and Local Statistics for Optimal Mixup", ICML 2020
(arXiv:2009.06962). After the graph cut has chosen the mask ``z`` (which blocks of the output come from this
input), each input is rearranged by a permutation of its ``n = h * w`` blocks, the transport plan ``Pi``, that
solves (approximately) the paper's transport problem for a fixed mask::

    minimise over permutation matrices Pi:   <Pi, eps * D - s z^T>   =   sum_ij Pi[i, j] * (eps * D[i, j] - s[i] * z[j])

``s`` is the block saliency of the input, ``z`` the 0/1 indicator of the kept positions, ``D`` a distance between
block positions and ``eps`` (the reference's ``t_eps``) the weight of the distance. ``Pi[i, j] = 1`` moves source
block ``i`` to target position ``j``, so the objective rewards saliency that lands on kept positions and charges
the distance moved. This module follows the authors' code, which is the operational definition; the paper's
notation (transport objective of Sec. 3, its iterative solver in Sec. 4) was not re-read when this module was
written, so the formula above is the code's, which the docstrings cite by file and line.

References (``mixup.py`` of snu-mllab/PuzzleMix at commit e2dbf3a2371026411d5741d129f46bf3eb3d3465, the CIFAR
and Tiny-ImageNet code; ``imagenet/mixup.py`` holds the same functions; OpenMixup's port
``openmixup/models/augments/puzzlemix.py`` at Westlake-AI/openmixup commit 37e1372, lines 11-23, 78-131, is the
same code):

- the distance ``D``: ``cost_matrix``, mixup.py lines 16-33;
- the cost and the iteration: ``mask_transport``, mixup.py lines 340-364;
- applying the plan: ``transport_image``, mixup.py lines 367-386;
- how they are called: ``mixup_graph``, mixup.py lines 309-331 (``mask_transport(mask, unary1_torch,
  eps=t_eps)`` for the first input, ``mask_transport(1 - mask, unary2_torch, eps=t_eps)`` for its partner).

What the caller does before this module (the reference's ``mixup_graph``, not implemented here): the saliency is
average-pooled per block and normalised to sum 1 per sample (mixup.py lines 239-240, 318-320), which is the
scale ``eps`` is tuned for (``t_eps=0.8``: PuzzleMix ``main.py`` line 105 and OpenMixup's
``openmixup/models/classifiers/mixup_classification.py`` line 112; the functions' own default 10.0, mixup.py
line 220, is not what the experiments use); with ``t_size`` smaller than the graph-cut block the transport runs
on the finer grid ``width // t_size``, with the mask upsampled to it (nearest) and the saliency re-pooled (lines
314-321). The reference's ``t_batch_size`` (``imagenet/mixup.py`` lines 173-188, OpenMixup lines 315-332) only
splits the batch to bound the memory of its matrix-product application of the plan; :func:`apply_transport`
gathers blocks instead and needs no such split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from openmix._checks import is_int, is_real

__all__ = ["block_distance", "transport_cost", "transport_plan", "apply_transport"]


# ----------------------------------------------------------------------------------------------------- checks


def _check_grid(grid: Any) -> tuple[int, int]:
    """``grid`` as (h, w): an int g (a g x g grid, the reference's ``block_num``) or a pair of ints, each >= 1."""
    if isinstance(grid, np.ndarray):
        grid = grid.tolist()
    if is_int(grid):
        grid = (grid, grid)
    if not isinstance(grid, Sequence) or isinstance(grid, (str, bytes)):
        raise TypeError(f"grid must be an int or an (h, w) pair of ints, got {type(grid).__name__} {grid!r}")
    if len(grid) != 2 or not all(is_int(side) for side in grid):
        raise TypeError(f"grid must be an int or an (h, w) pair of ints, got {grid!r}")
    h, w = int(grid[0]), int(grid[1])
    if h < 1 or w < 1:
        raise ValueError(f"grid must have h >= 1 and w >= 1 blocks, got {grid!r}")
    return h, w


def _check_eps(eps: Any) -> float:
    if not is_real(eps):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__} {eps!r}")
    eps = float(eps)
    if not (eps >= 0.0 and np.isfinite(eps)):
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    return eps


def _check_saliency_mask(saliency: Any, mask: Any, h: int, w: int) -> None:
    if not isinstance(saliency, Tensor):
        raise TypeError(f"saliency must be a torch.Tensor of shape (B, n), got {type(saliency).__name__}")
    if not saliency.is_floating_point():
        raise TypeError(f"saliency must be a floating-point tensor, got dtype {saliency.dtype}")
    if saliency.dim() != 2:
        raise ValueError(f"saliency must have shape (B, n) with n = h * w blocks, got shape {tuple(saliency.shape)}")
    if saliency.shape[1] != h * w:
        raise ValueError(
            f"saliency has {saliency.shape[1]} blocks per sample but grid {(h, w)} has h * w = {h * w}: "
            "the blocks are numbered row by row, index = row * w + column"
        )
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor of shape (B, n), got {type(mask).__name__}")
    if mask.is_complex():
        raise TypeError(f"mask must be a bool, integer or floating-point tensor, got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(saliency.shape):
        raise ValueError(f"mask must have the shape of saliency {tuple(saliency.shape)}, got {tuple(mask.shape)}")
    if mask.device != saliency.device:
        raise ValueError(f"mask is on {mask.device} but saliency is on {saliency.device}")


# ---------------------------------------------------------------------------------------------------- the cost


def block_distance(
    grid: int | Sequence[int], device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """(n, n) distance ``D`` between the positions of an (h, w) grid of blocks, n = h * w, numbered row by row.

    ``D[i, j] = ((r_i - r_j)^2 + (c_i - c_j)^2) / (max(h, w) - 1)^2`` with ``r = index // w`` and
    ``c = index % w``: the squared Euclidean (L2) distance between block coordinates, so moving one block to a
    side neighbour costs ``1 / (max(h, w) - 1)^2`` and across the whole side of a square grid 1. This is the
    reference's ``cost_matrix`` (mixup.py lines 16-33: ``abs(i1 - i2)**2 + abs(j1 - j2)**2``, line 26, divided by
    ``(width - 1)**2``, line 28), which only builds square grids (``width`` = 2, 4, 8, 16, lines 36-41). For an
    h != w grid the same block-unit distance is divided by the longer side, ``(max(h, w) - 1)^2``, so that it
    stays isotropic (equal steps cost the same along both axes, as the reference's square blocks do); a 1 x 1
    grid has ``D = 0``.
    """
    h, w = _check_grid(grid)
    index = torch.arange(h * w, device=device)
    rows, cols = index // w, index % w
    squared = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
    scale = max(max(h, w) - 1, 1) ** 2
    return squared.to(dtype) / scale


def transport_cost(saliency: Tensor, mask: Tensor, grid: int | Sequence[int], eps: float) -> Tensor:
    """The transport cost of a batch: (B, n, n), ``cost[b, i, j]`` for moving source block i to position j.

    ``cost[b, i, j] = eps * D[i, j] - saliency[b, i] * z[b, j]``, ``z = (mask > 0)``, with ``D`` from
    :func:`block_distance`: the reference's ``cost = eps * C - grad_pool.reshape(-1, n, 1) * z.reshape(-1, 1, n)``
    (mixup.py line 349) with ``z = (mask > 0).float()`` (line 348), so a fractional mask value (the 0.5 of the
    three-label graph cut) counts as kept, for both the input and its partner (which the reference calls with
    ``1 - mask``, line 330).

    Args:
        saliency: (B, n) floating point, the block saliency ``s`` of each sample, n = h * w blocks numbered row by
            row (index = row * w + column); the reference normalises it to sum 1 per sample (module docstring).
        mask: (B, n) bool, integer or floating point, > 0 where the output keeps this input's block.
        grid: the block grid, an int g (g x g) or (h, w).
        eps: the distance weight (the reference's ``t_eps``), finite and >= 0.

    Returns:
        (B, n, n) cost on ``saliency``'s device, in ``saliency``'s dtype promoted to at least float32.
    """
    h, w = _check_grid(grid)
    eps = _check_eps(eps)
    _check_saliency_mask(saliency, mask, h, w)
    dtype = torch.promote_types(saliency.dtype, torch.float32)
    distance = block_distance((h, w), device=saliency.device, dtype=dtype)
    kept = (mask > 0).to(dtype)
    return eps * distance.unsqueeze(0) - saliency.to(dtype).unsqueeze(2) * kept.unsqueeze(1)


# ---------------------------------------------------------------------------------------------------- the plan


def _stable_order(first_key: Tensor, second_key: Tensor) -> Tensor:
    """Indices sorting each row by ``first_key`` ascending, ties by ``second_key`` ascending, then by index."""
    by_second = torch.argsort(second_key, dim=-1, stable=True)
    by_first = torch.argsort(first_key.gather(-1, by_second), dim=-1, stable=True)
    return by_second.gather(-1, by_first)


def transport_plan(
    saliency: Tensor, mask: Tensor, grid: int | Sequence[int], eps: float, n_iter: int | None = None
) -> Tensor:
    """The block permutation of each sample: (B, n) int64, ``plan[b, j]`` = the source block moved to position j.

    1. Cost: :func:`transport_cost`, ``cost[b, i, j] = eps * D[i, j] - saliency[b, i] * (mask[b, j] > 0)``.

    2. The reference's iteration (``mask_transport``, mixup.py lines 340-364), ``n_iter`` times, batched, with no
       early exit (the reference has none either: a fixed ``for _ in range(n_iter)``, line 352, ``n_iter`` = the
       grid side, line 345; the default here is ``max(h, w)``, the same for square grids):

       - every source row claims its cheapest target, ``argmin_j cost[b, i, j]`` (line 353, first index on ties);
       - each target is won by the row with the smallest entry of ``claim * cost`` in its column (lines 357-359),
         where the rows that did not claim it count as 0 (first index on ties): the most negative claim wins, and
         when no claim is negative a claimant only wins if it claimed at exactly 0 with every earlier row a
         claimant at a positive cost, or if every row claims that target. Targets the mask does not keep cost
         ``eps * D >= 0`` and so are, in practice, never won; the reference leaves them empty;
       - every claimant that lost has 1 added to the cost it claimed (lines 360-362), and the next round starts
         from the penalised cost.

       The winners of the last round (``plan_win``, line 364) are a partial assignment: each source and each
       target in at most one pair, kept targets normally filled with their best claimant, the rest empty. The
       reference applies that 0/1 matrix as is (``transport_image``), so an empty target becomes a block of
       zeros and a source that lost in the last round is dropped; empty targets are almost always positions the
       mask hides, but a kept one can stay empty too.

    3. Repair (not in the reference), so that every block lands somewhere exactly once: a source that is free
       and whose own position is free stays there; the other free sources, most salient first, fill the
       remaining free targets, the kept ones first, each group in index order. The pairs the iteration made are
       not changed.

    4. Safeguard (not in the reference): a sample whose plan has a higher cost on the kept positions,
       ``sum_j z[j] * cost[plan[j], j]``, than leaving every block in place (beyond a rounding tolerance of
       ``4 n`` machine epsilons of the sum of the terms' magnitudes, so that equally good plans, e.g. with
       ``eps = 0``, are not replaced) falls back to the identity, so the saliency landing on kept positions never
       decreases (up to that rounding). It has not fired on any input tried when this module
       was written (every 0-3 integer saliency with every mask of the grids 1 x 2 to 2 x 3, eps from 0 to 7 and
       1 to n rounds; random inputs on grids up to 16 x 16, eps from 0 to 3), so in practice the plan agrees with
       the reference on every target the reference fills.

    The iteration is a greedy heuristic, not an exact assignment solver: the authors' own check against
    exhaustive search counts suboptimal samples (``test_transport.py`` of the PuzzleMix repository, commit
    f81bf09). What it does guarantee: when every row's minimum is unique and the minima already form a permutation
    (each source's cheapest target is different), with ``eps > 0``, the plan is that permutation, which is
    optimal (its cost is the sum of the row minima); blocks whose minimum is 0 lose their column to the
    zero-entry rule above but keep their own, free, position in the repair.

    Everything runs in torch on ``saliency``'s device, with a fixed number of steps and no host synchronisation.

    Args:
        saliency: (B, n) floating point block saliency, n = h * w numbered row by row; meant to be >= 0 (the
            reference's pooled gradient magnitudes normalised to sum 1), not checked.
        mask: (B, n), > 0 where the output keeps this sample's block (bool, integer or floating point).
        grid: an int g (g x g blocks) or (h, w).
        eps: distance weight, finite and >= 0 (the reference's ``t_eps``, 0.8 in its experiments).
        n_iter: number of rounds, an int >= 1; default ``max(h, w)`` (the reference's ``block_num``).

    Returns:
        (B, n) int64 on ``saliency``'s device; each row is a permutation of 0..n-1.
    """
    h, w = _check_grid(grid)
    if n_iter is None:
        n_iter = max(h, w)
    elif not is_int(n_iter):
        raise TypeError(f"n_iter must be an int >= 1 or None, got {type(n_iter).__name__} {n_iter!r}")
    elif n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter!r}")
    cost = transport_cost(saliency, mask, (h, w), eps)
    batch, n = saliency.shape
    device = saliency.device
    index = torch.arange(n, device=device)
    kept = mask > 0

    # 2. the reference's rounds
    penalised = cost.clone()
    won = torch.zeros_like(cost, dtype=torch.bool)
    winner = torch.zeros((batch, n), dtype=torch.long, device=device)
    for _ in range(int(n_iter)):
        claim = penalised.argmin(dim=-1)  # (B, n): target claimed by each source
        claimed = claim.unsqueeze(-1) == index  # (B, n, n): [b, i, j] = source i claims target j
        contest = torch.where(claimed, penalised, torch.zeros((), dtype=penalised.dtype, device=device))
        winner = contest.argmin(dim=-2)  # (B, n): source with the smallest entry of each target's column
        won = claimed & (winner.unsqueeze(-2) == index.unsqueeze(-1))
        penalised = penalised + (claimed & ~won)

    # 3. repair: keep the winners, free blocks stay home where they can, the rest fill the holes in order
    source_done = won.any(dim=-1)
    target_done = won.any(dim=-2)
    plan = torch.where(target_done, winner, index)
    stay = ~source_done & ~target_done
    source_done = source_done | stay
    target_done = target_done | stay
    sources = _stable_order(source_done.to(torch.int8), -saliency.to(cost.dtype))  # free first, salient first
    target_key = torch.where(target_done, 2, torch.where(kept, 0, 1)).to(torch.int8)
    targets = torch.argsort(target_key, dim=-1, stable=True)
    free = (~source_done).sum(dim=-1, keepdim=True)
    refill = torch.where(index < free, sources, plan.gather(-1, targets))
    plan = plan.scatter(-1, targets, refill)

    # 4. safeguard: never a higher cost on the kept positions than the identity
    moved_terms = cost.gather(-2, plan.unsqueeze(-2)).squeeze(-2) * kept
    staying_terms = cost.diagonal(dim1=-2, dim2=-1) * kept
    rounding = 4 * n * torch.finfo(cost.dtype).eps * (moved_terms.abs() + staying_terms.abs()).sum(dim=-1)
    worse = moved_terms.sum(dim=-1) - staying_terms.sum(dim=-1) > rounding
    return torch.where(worse.unsqueeze(-1), index, plan)


# ------------------------------------------------------------------------------------------------ the images


def apply_transport(images: Tensor, plan: Tensor, grid: int | Sequence[int]) -> Tensor:
    """Move the blocks of each image: block ``plan[b, j]`` of ``images[b]`` is written at block position j.

    The image is cut into an (h, w) grid of equal blocks of ``H / h`` x ``W / w`` pixels, numbered row by row
    (index = row * w + column, the numbering of :func:`block_distance`); output block j of sample b is input
    block ``plan[b, j]``, every channel. This is the reference's ``transport_image`` (mixup.py lines 367-386,
    ``plan^T`` times the stacked blocks, line 376, so target j receives the source i with ``plan_win[i, j] = 1``)
    for a permutation, computed by indexing instead of a matrix product: values are copied exactly (no 0 * inf =
    nan), any dtype works, and no batch splitting (``t_batch_size``) is needed. Like the reference, which
    reshapes the image into ``block_num`` blocks of ``block_size`` pixels (lines 369-374) and so only runs when
    the side is a multiple of the grid, a size that is not a multiple of the grid is refused (ValueError).

    Args:
        images: (B, C, H, W), any dtype, H divisible by h and W by w.
        plan: (B, n) integer, n = h * w, each row a permutation of 0..n-1 (from :func:`transport_plan`); the
            values are not checked (that would synchronise with the device), an index out of range fails in
            the gather.
        grid: an int g (g x g blocks) or (h, w).

    Returns:
        (B, C, H, W) tensor of ``images``' dtype and device (contiguous), differentiable with respect to
        ``images``.
    """
    h, w = _check_grid(grid)
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got shape {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    if height % h or width % w:
        raise ValueError(
            f"images of size {height} x {width} cannot be cut into a grid of {h} x {w} equal blocks: "
            "H must be a multiple of h and W of w (as in the reference, which reshapes the image into blocks)"
        )
    if not isinstance(plan, Tensor):
        raise TypeError(f"plan must be a torch.Tensor of shape (B, n), got {type(plan).__name__}")
    if plan.dtype == torch.bool or plan.is_floating_point() or plan.is_complex():
        raise TypeError(f"plan must be an integer tensor (int64 block indices), got dtype {plan.dtype}")
    if tuple(plan.shape) != (batch, h * w):
        raise ValueError(f"plan must have shape (B, h * w) = {(batch, h * w)}, got {tuple(plan.shape)}")
    if plan.device != images.device:
        raise ValueError(f"plan is on {plan.device} but images are on {images.device}")
    bh, bw = height // h, width // w
    blocks = images.reshape(batch, channels, h, bh, w, bw).permute(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(batch, h * w, channels, bh, bw)
    index = plan.long().reshape(batch, h * w, 1, 1, 1).expand(-1, -1, channels, bh, bw)
    moved = blocks.gather(1, index).reshape(batch, h, w, channels, bh, bw)
    return moved.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, height, width)
