"""PuzzleMix's block transport (``openmix.mixers._transport``): cost, plan and block moves.

The references are written here: the cost entry by entry from its formula, the reference's iteration
(``mask_transport`` of snu-mllab/PuzzleMix ``mixup.py``) as a plain per-sample loop, exhaustive search over the
24 permutations of a 2 x 2 grid, the saliency on kept positions summed by hand, and block moves as Python loops.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from openmix.mixers._transport import apply_transport, block_distance, transport_cost, transport_plan

GRIDS = [(1, 1), (1, 5), (2, 2), (3, 5), (4, 4), (8, 8)]


def _case(batch: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Saliency normalised to sum 1 per sample (skewed, as pooled gradients are) and a random keep mask."""
    generator = torch.Generator().manual_seed(seed)
    saliency = torch.rand(batch, n, generator=generator) ** 3
    saliency = saliency / saliency.sum(dim=1, keepdim=True)
    mask = torch.rand(batch, n, generator=generator) < torch.rand(batch, 1, generator=generator)
    return saliency, mask


def _reference_winners(cost: np.ndarray, n_iter: int) -> dict[int, int]:
    """target -> source pairs of the last round of the reference's iteration, for one (n, n) float32 cost."""
    n = cost.shape[0]
    cost = cost.copy()
    winners: dict[int, int] = {}
    for _ in range(n_iter):
        claims = [int(np.argmin(cost[i])) for i in range(n)]  # np.argmin: first index on ties, like torch
        winners = {}
        for j in range(n):
            column = [cost[i, j] if claims[i] == j else np.float32(0.0) for i in range(n)]
            best = int(np.argmin(column))
            if claims[best] == j:
                winners[j] = best
        for i in range(n):
            if winners.get(claims[i]) != i:
                cost[i, claims[i]] += np.float32(1.0)
    return winners


def _kept_saliency(saliency: torch.Tensor, mask: torch.Tensor, plan: torch.Tensor) -> list[tuple[float, float]]:
    """(before, after) saliency on the kept positions of each sample, summed in Python."""
    pairs = []
    for s, z, p in zip(saliency.double().tolist(), mask.tolist(), plan.tolist()):
        before = sum(s[j] for j in range(len(s)) if z[j])
        after = sum(s[p[j]] for j in range(len(s)) if z[j])
        pairs.append((before, after))
    return pairs


def _plan_cost(cost: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
    """sum_j cost[b, plan[b, j], j]: (B,) for plans (B, n), (B, k) for k plans per sample (B, k, n)."""
    single = plan.dim() == 2
    plans = plan.unsqueeze(1) if single else plan
    total = cost[torch.arange(cost.shape[0])[:, None, None], plans, torch.arange(cost.shape[-1])].sum(-1)
    return total.squeeze(1) if single else total


# --------------------------------------------------------------------------------------------------------- cost


def test_block_distance_is_the_reference_cost_matrix():
    distance = block_distance(4)  # reference: (|di|^2 + |dj|^2) / (4 - 1)^2, blocks row by row
    for a, b in itertools.product(range(16), repeat=2):
        expected = ((a // 4 - b // 4) ** 2 + (a % 4 - b % 4) ** 2) / 9
        assert distance[a, b].item() == pytest.approx(expected, abs=1e-7)
    assert distance[0, 15].item() == pytest.approx(2.0) and distance[0, 1].item() == pytest.approx(1 / 9)
    rect = block_distance((2, 3), dtype=torch.float64)  # longer side 3: divided by (3 - 1)^2
    assert rect[0, 5].item() == pytest.approx((1 + 4) / 4) and rect[0, 3].item() == pytest.approx(1 / 4)
    assert block_distance((1, 1)).tolist() == [[0.0]]


def test_cost_formula_entry_by_entry():
    h, w, eps = 2, 3, 0.8
    saliency = torch.tensor([[0.1, 0.3, 0.0, 0.2, 0.25, 0.15], [0.5, 0.1, 0.1, 0.1, 0.1, 0.1]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 0.5, 0.0, 0.0, 1.0, 0.5], [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    cost = transport_cost(saliency, mask, (h, w), eps)
    assert cost.shape == (2, 6, 6) and cost.dtype == torch.float64
    for b, i, j in itertools.product(range(2), range(6), range(6)):
        distance = ((i // w - j // w) ** 2 + (i % w - j % w) ** 2) / (max(h, w) - 1) ** 2
        kept = 1.0 if mask[b, j] > 0 else 0.0  # a 0.5 of the three-label cut counts as kept
        assert cost[b, i, j].item() == pytest.approx(eps * distance - saliency[b, i].item() * kept, abs=1e-12)
    assert torch.equal(transport_cost(saliency, mask > 0, (h, w), eps), cost)  # a bool mask is the same
    assert transport_cost(saliency.half(), mask, (h, w), eps).dtype == torch.float32


# --------------------------------------------------------------------------------------------------------- plan


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("eps", [0.0, 0.2, 0.8, 5.0])
def test_plan_is_a_permutation(grid, eps):
    n = grid[0] * grid[1]
    saliency, mask = _case(64, n, seed=n + int(10 * eps))
    plan = transport_plan(saliency, mask, grid, eps)
    assert plan.dtype == torch.int64 and plan.shape == (64, n) and plan.device == saliency.device
    assert torch.equal(plan.sort(dim=1).values, torch.arange(n).expand(64, n))  # every sample


@pytest.mark.parametrize("grid", [(2, 2), (3, 5), (4, 4), (8, 8)])
@pytest.mark.parametrize("eps", [0.0, 0.2, 0.8])
def test_saliency_on_kept_positions_never_decreases(grid, eps):
    n = grid[0] * grid[1]
    saliency, mask = _case(128, n, seed=7 * n + int(10 * eps))
    plan = transport_plan(saliency, mask, grid, eps)
    pairs = _kept_saliency(saliency, mask, plan)
    assert all(after >= before - 1e-6 for before, after in pairs)
    gained = sum(after > before + 1e-6 for before, after in pairs)
    assert gained > 0  # not vacuous: the transport does move salient blocks onto kept positions
    cost = transport_cost(saliency, mask, grid, eps) * mask[:, None, :]  # the objective on the kept positions
    identity = torch.arange(n).expand(128, n)
    assert bool((_plan_cost(cost, plan) <= _plan_cost(cost, identity) + 1e-6).all())


@pytest.mark.parametrize("grid,eps", [((2, 2), 0.8), ((3, 5), 0.2), ((4, 4), 0.8), ((8, 8), 0.8), ((4, 4), 0.05)])
def test_plan_keeps_every_pair_of_the_reference_iteration(grid, eps):
    n = grid[0] * grid[1]
    saliency, mask = _case(24, n, seed=3 * n)
    plan = transport_plan(saliency, mask, grid, eps)
    cost = transport_cost(saliency, mask, grid, eps).numpy()
    filled = 0
    for b in range(24):
        winners = _reference_winners(cost[b], n_iter=max(grid))
        assert all(plan[b, j].item() == i for j, i in winners.items())
        filled += len(winners)
    assert filled < 24 * n  # the reference left targets empty (a zero block there): the repair filled them


def test_n_iter_is_the_number_of_reference_rounds():
    saliency, mask = _case(16, 16, seed=11)
    cost = transport_cost(saliency, mask, 4, 0.2).numpy()
    for n_iter in (1, 2, 7):
        plan = transport_plan(saliency, mask, 4, 0.2, n_iter=n_iter)
        for b in range(16):
            assert all(plan[b, j].item() == i for j, i in _reference_winners(cost[b], n_iter).items())


PERMUTATIONS = torch.tensor(list(itertools.permutations(range(4))))  # all 24 plans of a 2 x 2 grid


def test_tiny_grid_optimal_when_the_row_minima_do_not_conflict():
    # The iteration is greedy, not exact. What it guarantees: when every source's cheapest target is different
    # (eps > 0), the plan is that assignment, and it is the exhaustive-search optimum of the full cost.
    saliency, mask = _case(3000, 4, seed=5)
    cost = transport_cost(saliency, mask, 2, 0.2)
    choice = cost.argmin(dim=2)
    free = (choice.sort(dim=1).values == torch.arange(4)).all(dim=1)
    assert int(free.sum()) >= 50
    plan = transport_plan(saliency[free], mask[free], 2, 0.2)
    every = _plan_cost(cost[free], PERMUTATIONS.expand(int(free.sum()), 24, 4))  # (m, 24)
    best = PERMUTATIONS[every.argmin(dim=1)]
    assert torch.allclose(_plan_cost(cost[free], plan), every.min(dim=1).values, atol=1e-6)
    assert torch.equal(plan, best)
    assert torch.equal(plan.argsort(dim=1), choice[free])  # source i goes to its row minimum


def test_tiny_grid_greedy_versus_exhaustive_search():
    # In general the greedy's cost on the kept positions lies between the exhaustive optimum and the identity's;
    # on random 2 x 2 cases it reaches the optimum in the vast majority (the authors count the misses too).
    saliency, mask = _case(2000, 4, seed=9)
    cost = transport_cost(saliency, mask, 2, 0.8) * mask[:, None, :]
    plan = transport_plan(saliency, mask, 2, 0.8)
    greedy = _plan_cost(cost, plan)
    optimum = _plan_cost(cost, PERMUTATIONS.expand(2000, 24, 4)).min(dim=1).values
    identity = _plan_cost(cost, torch.arange(4).expand(2000, 4))
    assert bool((optimum <= greedy + 1e-6).all()) and bool((greedy <= identity + 1e-6).all())
    assert float((greedy <= optimum + 1e-6).double().mean()) >= 0.95


def test_tiny_grid_known_suboptimal_case():
    # Kept positions 1 and 2, the salient block 3 is next to both: its tie goes to target 1 (first index, as
    # in the reference), which displaces block 1; exhaustive search moves block 3 to 2 and keeps block 1.
    saliency = torch.tensor([[0.05, 0.15, 0.1, 0.7]])
    mask = torch.tensor([[False, True, True, False]])
    plan = transport_plan(saliency, mask, 2, 0.2)
    assert plan.tolist() == [[0, 3, 2, 1]]
    cost = transport_cost(saliency, mask, 2, 0.2) * mask[:, None, :]
    every = _plan_cost(cost, PERMUTATIONS.expand(1, 24, 4))[0]
    assert PERMUTATIONS[every.argmin()].tolist() == [0, 1, 3, 2]
    assert every.min().item() == pytest.approx(-0.65) and _plan_cost(cost, plan).item() == pytest.approx(-0.6)


def test_batch_independence():
    saliency, mask = _case(12, 16, seed=13)
    plan = transport_plan(saliency, mask, 4, 0.8)
    alone = torch.cat([transport_plan(saliency[b : b + 1], mask[b : b + 1], 4, 0.8) for b in range(12)])
    assert torch.equal(plan, alone)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    assert torch.equal(transport_plan(saliency[order], mask[order], 4, 0.8), plan[order])
    changed_s, changed_m = saliency.clone(), mask.clone()
    changed_s[0] = changed_s[0].flip(0)
    changed_m[0] = ~changed_m[0]
    changed = transport_plan(changed_s, changed_m, 4, 0.8)
    assert torch.equal(changed[1:], plan[1:])


# ------------------------------------------------------------------------------------------------------- images


def test_apply_moves_pixel_blocks_exactly():
    generator = torch.Generator().manual_seed(1)
    h, w, bh, bw = 3, 4, 4, 5
    images = torch.randn(3, 2, h * bh, w * bw, generator=generator)
    plan = torch.stack([torch.randperm(h * w, generator=generator) for _ in range(3)])
    moved = apply_transport(images, plan, (h, w))
    expected = torch.empty_like(images)
    for b in range(3):
        for j in range(h * w):
            i = int(plan[b, j])
            rj, cj, ri, ci = j // w, j % w, i // w, i % w
            block = images[b, :, ri * bh : (ri + 1) * bh, ci * bw : (ci + 1) * bw]
            expected[b, :, rj * bh : (rj + 1) * bh, cj * bw : (cj + 1) * bw] = block
    assert torch.equal(moved, expected)
    assert torch.equal(apply_transport(moved, plan.argsort(dim=1), (h, w)), images)  # the inverse plan undoes it
    assert torch.equal(apply_transport(images, torch.arange(h * w).expand(3, -1), (h, w)), images)
    whole = torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8)  # any dtype, copied exactly
    swap = torch.tensor([[3, 2, 1, 0], [0, 1, 2, 3]])
    out = apply_transport(whole, swap, 2)
    assert out.dtype == torch.uint8 and torch.equal(out[0, :, :4, :4], whole[0, :, 4:, 4:])
    assert torch.equal(out[1], whole[1])


def test_apply_of_a_plan_moves_the_salient_block_onto_the_kept_position():
    saliency = torch.tensor([[0.05, 0.05, 0.1, 0.8]])
    mask = torch.tensor([[True, False, False, False]])
    plan = transport_plan(saliency, mask, 2, 0.1)
    assert plan[0, 0].item() == 3  # 0.1 * 2 (diagonal move) < 0.8 - 0.05: the salient block moves to the corner
    images = torch.arange(4.0).reshape(1, 1, 2, 2).repeat_interleave(3, 2).repeat_interleave(3, 3)
    assert apply_transport(images, plan, 2)[0, 0, 0, 0].item() == 3.0


# ---------------------------------------------------------------------------------------------------- bad input


GOOD_S, GOOD_M = _case(2, 4, seed=0)


@pytest.mark.parametrize(
    "kwargs,error,name",
    [
        (dict(saliency=GOOD_S.tolist()), TypeError, "saliency"),
        (dict(saliency=(GOOD_S * 10).long()), TypeError, "saliency"),
        (dict(saliency=GOOD_S.flatten()), ValueError, "saliency"),
        (dict(saliency=torch.rand(2, 5), mask=torch.ones(2, 5)), ValueError, "grid"),
        (dict(mask=GOOD_M.numpy()), TypeError, "mask"),
        (dict(mask=GOOD_M[:, :3]), ValueError, "mask"),
        (dict(eps=-0.1), ValueError, "eps"),
        (dict(eps=float("nan")), ValueError, "eps"),
        (dict(eps=True), TypeError, "eps"),
        (dict(eps="0.8"), TypeError, "eps"),
        (dict(grid=(2, 0)), ValueError, "grid"),
        (dict(grid=(2.0, 2.0)), TypeError, "grid"),
        (dict(grid=(2, 2, 1)), TypeError, "grid"),
        (dict(n_iter=0), ValueError, "n_iter"),
        (dict(n_iter=2.0), TypeError, "n_iter"),
        (dict(n_iter=True), TypeError, "n_iter"),
    ],
)
def test_plan_rejects_bad_inputs(kwargs, error, name):
    arguments = dict(saliency=GOOD_S, mask=GOOD_M, grid=2, eps=0.8) | kwargs
    with pytest.raises(error, match=name):
        transport_plan(**arguments)
    if "n_iter" not in kwargs:
        with pytest.raises(error, match=name):
            transport_cost(**arguments)


@pytest.mark.parametrize(
    "kwargs,error,name",
    [
        (dict(images=torch.rand(2, 3, 8, 8).numpy()), TypeError, "images"),
        (dict(images=torch.rand(3, 8, 8)), ValueError, "images"),
        (dict(images=torch.rand(2, 3, 9, 8)), ValueError, "images"),  # 9 rows are not 2 equal blocks
        (dict(plan=torch.tensor([[0.0, 1, 2, 3], [0, 1, 2, 3]])), TypeError, "plan"),
        (dict(plan=[[0, 1, 2, 3], [0, 1, 2, 3]]), TypeError, "plan"),
        (dict(plan=torch.arange(4).expand(3, 4)), ValueError, "plan"),
        (dict(grid=(2, -1)), ValueError, "grid"),
    ],
)
def test_apply_rejects_bad_inputs(kwargs, error, name):
    arguments = dict(images=torch.rand(2, 3, 8, 8), plan=torch.arange(4).expand(2, 4), grid=2) | kwargs
    with pytest.raises(error, match=name):
        apply_transport(**arguments)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_without_host_synchronisation():
    saliency, mask = _case(32, 64, seed=17)
    images = torch.randn(32, 3, 32, 32)
    expected_plan = transport_plan(saliency, mask, 8, 0.8)
    expected_images = apply_transport(images, expected_plan, 8)
    saliency, mask, images = saliency.cuda(), mask.cuda(), images.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        plan = transport_plan(saliency, mask, 8, 0.8)
        moved = apply_transport(images, plan, 8)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert plan.device.type == "cuda" and torch.equal(plan.cpu(), expected_plan)
    assert torch.equal(moved.cpu(), expected_images)
