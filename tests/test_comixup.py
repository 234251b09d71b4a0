"""Co-Mixup (``openmix.mixers.comixup`` and its solver ``openmix.mixers._comixup``) against direct computations.

What is asserted, each on small cases written out here:

- the mixer: outputs mix several inputs when the saliency is spread; ``weights`` are the pixel means of ``masks``,
  rows sum to 1, largest first; ``out.x`` is exactly ``sum_j masks_j * x[indices_j]``; the masks are constant on
  the blocks of the grid (any image size) and hold 0, 1/2 or 1; partitions mix only their own inputs; the diversity
  term (gamma) lowers the overlap of input usage between outputs against the same call with gamma = 0;
  reproducibility; bad input is refused naming the argument.
- the solver: the building blocks (block saliency, salient locations, compatibility, the objective F, the modular
  diversity cost) equal loop-by-loop computations; one output's graph-cut energy is F restricted to that output up
  to a constant (the linearisation is exact without the threshold); the graph cut reaches the brute-force minimum of
  that energy with two labels and a swap-local minimum with more (enumerating every labelling of 2 x 2 and 3 x 3
  grids); with exact cuts (two inputs) F does not increase over the outer iterations.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import openmix
from openmix.mixers._comixup import (
    BLEND_BONUS,
    batch_objective,
    block_saliency,
    compatibility,
    cut_output,
    diversity_cost,
    label_pairs,
    output_energy,
    resolve_costs,
    salient_positions,
    solve_partition,
    usage,
)
from openmix.mixers._graph_cut import TERM_LIMIT
from openmix.mixers.comixup import CoMixup


def blob_saliency(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    """(B, H, W) saliency: one Gaussian blob per image at a random place, plus a little noise (spread saliency)."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(height, dtype=torch.float32).view(1, -1, 1)
    cols = torch.arange(width, dtype=torch.float32).view(1, 1, -1)
    centre_r = torch.rand(batch, 1, 1, generator=generator) * height
    centre_c = torch.rand(batch, 1, 1, generator=generator) * width
    spread = (height * width) ** 0.5 / 5
    blob = torch.exp(-((rows - centre_r) ** 2 + (cols - centre_c) ** 2) / (2 * spread**2))
    return blob + 0.05 * torch.rand(batch, height, width, generator=generator)


def call(mixer: CoMixup, x: torch.Tensor, seed: int = 0, saliency: torch.Tensor | None = None) -> openmix.MixOutput:
    if saliency is None:
        saliency = blob_saliency(x.shape[0], *x.shape[-2:], seed=seed + 100)
    y = torch.arange(x.shape[0])
    return mixer(x, y, generator=torch.Generator().manual_seed(seed), saliency=saliency)


# ------------------------------------------------------------------------------------------------- the mixer
def test_the_outputs_mix_several_inputs():
    x = torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = call(CoMixup(), x)
    sources = (out.weights > 0).sum(dim=1)
    # counted directly from the masks: the inputs with a non-zero weight somewhere in the output
    direct = torch.tensor([len({int(out.indices[i, j]) for j in range(out.indices.shape[1]) if out.masks[i, j].any()})
                           for i in range(12)])  # fmt: skip
    assert torch.equal(sources, direct)
    assert (sources >= 2).float().mean() >= 0.75, sources.tolist()
    assert len({tuple(row) for row in out.indices.tolist()}) > 1  # not one output copied


@pytest.mark.parametrize("shape", [(8, 3, 16, 16), (6, 1, 9, 13), (5, 2, 20, 12)], ids=lambda s: "x".join(map(str, s)))
def test_weights_masks_and_pixels(shape):
    batch, _, height, width = shape
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    out = call(CoMixup(part_size=4), x, seed=2)
    k = out.indices.shape[1]
    assert out.masks.shape == (batch, k, height, width) and out.weights.shape == (batch, k) and k >= 2
    assert set(out.masks.unique().tolist()) <= {0.0, 0.5, 1.0}
    for i in range(batch):
        for j in range(k):
            assert out.weights[i, j] == out.masks[i, j].mean()  # the pixel share, directly
    torch.testing.assert_close(out.weights.sum(dim=1), torch.ones(batch), atol=1e-6, rtol=0)
    assert bool((out.weights[:, :-1] >= out.weights[:, 1:]).all()), "sources must be ordered largest first"
    assert torch.equal(out.lam, out.weights[:, 0]) and torch.equal(out.index, out.indices[:, 1])
    assert torch.equal(out.mask, out.masks[:, :1])
    expected = torch.zeros_like(x)
    for j in range(k):  # the pixels, exactly: sum over the sources of mask times input
        expected = expected + out.masks[:, j : j + 1] * x[out.indices[:, j]]
    assert torch.equal(out.x, expected)
    # padded columns: weight 0, zero mask, the largest source's index
    padded = out.weights == 0
    assert torch.equal(out.indices[padded], out.indices[:, :1].expand(-1, k)[padded])
    # the masks are constant on the blocks: pixel row r is block row (r * 4) // H (4 = block_num)
    rows = torch.arange(height) * 4 // height
    cols = torch.arange(width) * 4 // width
    for block_r in range(4):
        for block_c in range(4):
            cell = out.masks[:, :, rows == block_r][:, :, :, cols == block_c]
            assert torch.equal(cell, cell[:, :, :1, :1].expand_as(cell))
    # each partition of 4 mixes only its own inputs
    assert torch.equal(out.indices // 4, (torch.arange(batch) // 4).view(-1, 1).expand(-1, k))
    expected_targets = (out.weights[:, :, None] * F.one_hot(out.indices, batch)).sum(dim=1)  # pixel shares of labels
    torch.testing.assert_close(out.soft_targets(batch), expected_targets)


def test_a_batch_of_one_is_left_as_it_is():
    x = torch.randn(1, 3, 8, 8)
    out = call(CoMixup(), x)
    assert torch.equal(out.x, x) and out.indices.tolist() == [[0, 0]] and out.weights.tolist() == [[1.0, 0.0]]


def overlap(out: openmix.MixOutput) -> float:
    """sum over pairs of different outputs j != j' of <o_j, o_j'>, o_j the pixel shares of the inputs in output j."""
    batch = out.x.shape[0]
    shares = torch.zeros(batch, batch).scatter_add_(1, out.indices, out.weights)
    total = shares.sum(dim=0)
    return float(total @ total - (shares * shares).sum())


def test_the_diversity_term_lowers_the_overlap_of_input_usage():
    x = torch.randn(10, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    saliency = blob_saliency(10, 16, 16, seed=4)
    for seed in range(3):
        diverse = call(CoMixup(), x, seed=seed, saliency=saliency)
        plain = call(CoMixup(gamma=0.0), x, seed=seed, saliency=saliency)
        assert overlap(diverse) < 0.5 * overlap(plain), (overlap(diverse), overlap(plain))
        # without it every output gets the same unaries: the same mosaic over and over
        assert len({tuple(row) for row in plain.indices.tolist()}) < len({tuple(r) for r in diverse.indices.tolist()})


def test_reproducible_with_a_generator_and_the_global_seed():
    x = torch.randn(7, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    mixer = CoMixup(block_num=-1)
    first, second = call(mixer, x, seed=11), call(mixer, x, seed=11)
    assert torch.equal(first.x, second.x) and torch.equal(first.indices, second.indices)
    assert torch.equal(first.weights, second.weights)
    draws = {tuple(call(mixer, x, seed=seed).weights.flatten().tolist()) for seed in range(4)}
    assert len(draws) > 1
    saliency = blob_saliency(7, 12, 12, seed=0)
    torch.manual_seed(3)
    third = mixer(x, torch.arange(7), saliency=saliency)
    torch.manual_seed(3)
    assert torch.equal(third.x, mixer(x, torch.arange(7), saliency=saliency).x)


BAD_CALLS = [
    ({}, ValueError, "needs the saliency"),
    ({"saliency": np.zeros((4, 8, 8))}, TypeError, "saliency must be a torch.Tensor"),
    ({"saliency": torch.rand(4, 8, 7)}, ValueError, r"saliency must have shape \(4, 8, 8\)"),
    ({"saliency": torch.rand(3, 8, 8)}, ValueError, "saliency must have shape"),
    ({"saliency": torch.ones(4, 8, 8, dtype=torch.int64)}, TypeError, "saliency must be a floating point"),
    ({"saliency": torch.full((4, 8, 8), float("nan"))}, ValueError, "saliency must hold finite values"),
    ({"saliency": -torch.rand(4, 8, 8)}, ValueError, "saliency must be non-negative"),
    ({"saliency": torch.rand(4, 8, 8).to("meta")}, ValueError, "saliency is on meta"),
    ({"saliency": torch.rand(4, 8, 8), "lam": 0.5}, ValueError, "lam: comixup takes no explicit lam"),
    ({"saliency": torch.rand(4, 8, 8), "lam": 1.5}, ValueError, r"lam must lie in \[0, 1\]"),
    ({"saliency": torch.rand(4, 8, 8), "cam": torch.rand(4, 2, 2)}, ValueError, "unexpected call arguments"),
]


@pytest.mark.parametrize("kwargs, error, pattern", BAD_CALLS, ids=[c[2][:30] for c in BAD_CALLS])
def test_bad_calls_name_the_argument(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        CoMixup()(torch.randn(4, 3, 8, 8), torch.arange(4), **kwargs)


BAD_ARGUMENTS = [
    ({"block_num": 0}, ValueError, "block_num must be >= 1 or -1"),
    ({"block_num": 2.5}, TypeError, "block_num must be an int"),
    ({"part_size": 0}, ValueError, "part_size must be an int >= 1"),
    ({"alpha": 0.0}, ValueError, "alpha must be a finite number > 0"),
    ({"beta": -0.1}, ValueError, "beta must be a finite number >= 0"),
    ({"gamma": float("inf")}, ValueError, "gamma must be"),
    ({"eta": "0.05"}, TypeError, "eta must be a number"),
    ({"omega": 1.5}, ValueError, r"omega must lie in \[0, 1\]"),
    ({"thres": -1.0}, ValueError, "thres must be"),
    ({"thres_type": "medium"}, ValueError, "thres_type must be one of"),
    ({"n_iter": 0}, ValueError, "n_iter must be an int >= 1"),
    ({"set_resolve": "yes"}, TypeError, "set_resolve must be a bool"),
    ({"blends": 1}, TypeError, "blends must be a bool"),
    ({"threshold_columns": "no"}, TypeError, "threshold_columns must be a bool"),
    ({"compat_kernel": 0}, ValueError, "compat_kernel must be an int >= 1"),
    ({"inplace": None}, TypeError, "inplace must be a bool"),
]


@pytest.mark.parametrize("kwargs, error, pattern", BAD_ARGUMENTS, ids=[next(iter(c[0])) for c in BAD_ARGUMENTS])
def test_bad_hyperparameters_name_the_argument(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        CoMixup(**kwargs)


def test_bad_solver_input_names_the_argument():
    with pytest.raises(ValueError, match=r"cost must be an \(m, 4\) array"):
        solve_partition(np.zeros((3, 5)), np.eye(3), (2, 2), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="compat must be symmetric"):
        solve_partition(np.zeros((2, 4)), np.array([[1.0, 0.5], [0.0, 1.0]]), (2, 2), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="init must hold input indices"):
        solve_partition(np.zeros((2, 4)), np.eye(2), (2, 2), init=np.full((2, 4), 2))
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        solve_partition(np.zeros((2, 4)), np.eye(2), (2, 2))
    with pytest.raises(ValueError, match="thres_type must be one of"):
        solve_partition(np.zeros((2, 4)), np.eye(2), (2, 2), thres_type="x", rng=np.random.default_rng(0))


# ------------------------------------------------------------------------------------------ the building blocks
def test_block_saliency_is_the_normalised_block_mean():
    saliency = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    pooled = F.avg_pool2d(saliency.unsqueeze(1), 4).squeeze(1)  # the authors' avg_pool2d by the block side
    torch.testing.assert_close(block_saliency(saliency, (4, 4)), pooled / pooled.sum(dim=(1, 2), keepdim=True))
    odd = torch.rand(2, 9, 7, generator=torch.Generator().manual_seed(1))
    expected = torch.zeros(2, 4, 3)
    for r in range(4):
        for c in range(3):
            rows = [p for p in range(9) if p * 4 // 9 == r]
            cols = [q for q in range(7) if q * 3 // 7 == c]
            expected[:, r, c] = odd[:, rows][:, :, cols].mean(dim=(1, 2))
    torch.testing.assert_close(block_saliency(odd, (4, 3)), expected / expected.sum(dim=(1, 2), keepdim=True))
    assert torch.equal(block_saliency(torch.zeros(1, 4, 4), (2, 2)), torch.zeros(1, 2, 2))


def test_salient_positions_and_compatibility():
    saliency = torch.zeros(3, 12, 12)
    saliency[0, 2, 3] = saliency[1, 9, 1] = saliency[2, 5, 10] = 1.0
    positions = salient_positions(saliency, kernel=1)
    assert positions.tolist() == [[2.0, 3.0], [9.0, 1.0], [5.0, 10.0]]
    pooled = salient_positions(saliency, kernel=8)  # the first window (row-major) holding the peak
    assert pooled.tolist() == [[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]]
    compat = compatibility(positions, omega=0.1)
    distance = torch.tensor([[abs(a - c) + abs(b - d) for c, d in positions.tolist()] for a, b in positions.tolist()])
    expected = 0.9 * torch.eye(3, dtype=torch.float64) + 0.1 * (distance / distance.sum() * 3).double()
    torch.testing.assert_close(compat, expected)
    same = compatibility(torch.zeros(4, 2), omega=0.1)  # no distance at all: (1 - omega) I, not 0 / 0
    torch.testing.assert_close(same, 0.9 * torch.eye(4, dtype=torch.float64))


def direct_smoothness(first: tuple[int, int], second: tuple[int, int]) -> float:
    """V between two labels written out: 0 equal, 1/4 an input and a blend containing it, 1 otherwise."""
    if set(first) == set(second):
        return 0.0
    hard_first, hard_second = first[0] == first[1], second[0] == second[1]
    if hard_first != hard_second:
        single, blend = (first, second) if hard_first else (second, first)
        if single[0] in blend:
            return 0.25
    return 1.0


def grid_edges(height: int, width: int) -> list[tuple[int, int]]:
    edges = [(r * width + c, r * width + c + 1) for r in range(height) for c in range(width - 1)]
    return edges + [(r * width + c, (r + 1) * width + c) for r in range(height - 1) for c in range(width)]


def direct_objective(cost, lo, hi, grid, compat, beta, gamma) -> float:
    """F written out loop by loop (module docstring of _comixup)."""
    n_inputs, n_blocks = cost.shape
    value = 0.0
    counts = np.zeros((lo.shape[0], n_inputs))
    for j in range(lo.shape[0]):
        for k in range(n_blocks):
            value += 0.5 * (cost[lo[j, k], k] + cost[hi[j, k], k])
            counts[j, lo[j, k]] += 0.5
            counts[j, hi[j, k]] += 0.5
        for a, b in grid_edges(*grid):
            value += beta / n_blocks * direct_smoothness((lo[j, a], hi[j, a]), (lo[j, b], hi[j, b]))
    for j in range(lo.shape[0]):
        for other in range(lo.shape[0]):
            if other != j:
                value += gamma / n_blocks * counts[j] @ compat @ counts[other]
    return value


def random_labels(rng, n_out, n_inputs, n_blocks):
    lo = rng.integers(0, n_inputs, (n_out, n_blocks))
    hi = np.where(rng.random((n_out, n_blocks)) < 0.3, rng.integers(0, n_inputs, (n_out, n_blocks)), lo)
    return np.minimum(lo, hi), np.maximum(lo, hi)


def test_the_objective_is_the_direct_sum():
    rng = np.random.default_rng(0)
    for _ in range(5):
        cost = rng.normal(size=(4, 6))
        compat = compatibility(torch.from_numpy(rng.integers(0, 5, (4, 2))).float(), omega=0.2).numpy()
        lo, hi = random_labels(rng, 4, 4, 6)
        expected = direct_objective(cost, lo, hi, (2, 3), compat, beta=0.7, gamma=1.3)
        assert batch_objective(cost, lo, hi, (2, 3), compat, 0.7, 1.3) == pytest.approx(expected, rel=1e-12)


def test_the_modular_cost_is_the_exact_change_of_the_diversity_term_without_threshold():
    """Relabelling output j changes F by exactly E_j(new) - E_j(old) (blend bonus aside): the linearisation of the
    diversity term in one output is exact (A symmetric, no threshold)."""
    rng = np.random.default_rng(1)
    grid, n_inputs = (2, 3), 3
    for _ in range(10):
        cost = rng.normal(size=(n_inputs, 6))
        compat = compatibility(torch.from_numpy(rng.integers(0, 5, (n_inputs, 2))).float(), omega=0.3).numpy()
        lo, hi = random_labels(rng, n_inputs, n_inputs, 6)
        j = int(rng.integers(0, n_inputs))
        counts = usage(lo, hi, n_inputs)
        others = counts.sum(0) - counts[j]
        unary = cost.T + diversity_cost(compat, others, gamma=0.9, thres=0.0, thres_type="hard", n_blocks=6)
        labels = np.array([(a, b) for a in range(n_inputs) for b in range(a, n_inputs)])
        index = {tuple(pair): position for position, pair in enumerate(labels.tolist())}
        old = np.array([index[(a, b)] for a, b in zip(lo[j], hi[j])])
        new_lo, new_hi = random_labels(rng, 1, n_inputs, 6)
        new = np.array([index[(a, b)] for a, b in zip(new_lo[0], new_hi[0])])
        lo2, hi2 = lo.copy(), hi.copy()
        lo2[j], hi2[j] = new_lo[0], new_hi[0]
        change = batch_objective(cost, lo2, hi2, grid, compat, 0.5, 0.9) - batch_objective(
            cost, lo, hi, grid, compat, 0.5, 0.9
        )
        energy = output_energy(unary, labels, np.stack([new, old]), grid, beta=0.5)
        bonus = BLEND_BONUS * ((new_lo[0] != new_hi[0]).sum() - (lo[j] != hi[j]).sum())
        assert change == pytest.approx(energy[0] - energy[1] + bonus, abs=1e-12)


def test_the_diversity_cost_and_the_resolve_step_written_out():
    compat = np.array([[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.0, 0.1, 0.9]])
    others = np.array([20.0, 3.0, 15.0])
    weighted = compat @ others  # [18.3, 5.9, 13.8]; tau' = 0.83 * 16 = 13.28
    np.testing.assert_allclose(weighted, [18.3, 5.9, 13.8])
    hard = diversity_cost(compat, others, gamma=1.0, thres=0.83, thres_type="hard", n_blocks=16)
    np.testing.assert_allclose(hard, 2 / 16 * np.array([weighted[0], 0.0, weighted[2]]))
    columns = diversity_cost(compat, others, 1.0, 0.83, "hard", 16, columns=True)  # the code's ((q > tau) * A) @ p
    np.testing.assert_allclose(columns, 2 / 16 * np.array([0.9 * 20, 0.1 * 20 + 0.1 * 15, 0.9 * 15]))
    soft = diversity_cost(compat, others, gamma=1.0, thres=0.83, thres_type="soft", n_blocks=16)
    np.testing.assert_allclose(soft, 2 / 16 * np.array([weighted[0] - 13.28, 0.0, weighted[2] - 13.28]))
    counts = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 2.0], [2.0, 2.0, 0.0], [4.0, 0.0, 0.0], [4.0, 0.0, 0.0]])
    expected = np.zeros((5, 3))
    expected[0, 0] = expected[2, 1] = 1.0  # outputs 0 and 2 use {0, 1}; 3 and 4 use one input only
    np.testing.assert_array_equal(resolve_costs(counts), expected)


def test_the_blended_labels_follow_the_current_usage():
    assert label_pairs(np.array([0.0, 5.0, 0.0]), blends=False).tolist() == [[0, 0], [1, 1], [2, 2]]
    assert label_pairs(np.array([0.0, 5.0, 0.0]), blends=True).tolist() == [[0, 0], [1, 1], [2, 2]]
    assert label_pairs(np.array([1.0, 5.0, 0.0]), blends=True)[3:].tolist() == [[0, 1]]
    four = label_pairs(np.array([2.0, 5.0, 1.0, 2.0]), blends=True)[4:]  # top three: 1, then 0 and 3 (tie: lower)
    assert four.tolist() == [[0, 1], [0, 3], [1, 3]]


# ----------------------------------------------------------------------------------- the graph cut, brute force
def direct_energy(unary, labels, assignment, grid, beta) -> float:
    """E_j written out: per-block label cost (blend: mean of its inputs minus the bonus) + beta / n V per edge."""
    n_blocks = grid[0] * grid[1]
    value = 0.0
    for k in range(n_blocks):
        a, b = labels[assignment[k]]
        value += 0.5 * (unary[k, a] + unary[k, b]) - (BLEND_BONUS if a != b else 0.0)
    for p, q in grid_edges(*grid):
        value += beta / n_blocks * direct_smoothness(tuple(labels[assignment[p]]), tuple(labels[assignment[q]]))
    return value


def swap_neighbours(assignment: np.ndarray, n_labels: int):
    """Every labelling one alpha-beta swap move away: the blocks labelled alpha or beta take any of the two."""
    for alpha, beta in itertools.combinations(range(n_labels), 2):
        movable = np.flatnonzero((assignment == alpha) | (assignment == beta))
        for choice in itertools.product((alpha, beta), repeat=movable.size):
            moved = assignment.copy()
            moved[movable] = choice
            yield moved


CASES = [
    # (grid, per-block count-based usage of the inputs, blends): the label sets of one graph-cut step
    ((3, 3), np.array([1.0, 0.0]), False),  # 2 inputs: two labels, one s-t cut
    ((3, 3), np.array([1.0, 0.0, 0.0]), False),  # 3 inputs
    ((3, 3), np.array([2.0, 3.0]), True),  # 2 inputs and their blend
    ((2, 2), np.array([2.0, 1.0, 1.0]), True),  # 3 inputs and their 3 blends
]


@pytest.mark.parametrize("grid, count, blends", CASES, ids=["2-labels", "3-inputs", "2-inputs+blend", "3+3-blends"])
def test_one_graph_cut_step_against_brute_force(grid, count, blends):
    rng = np.random.default_rng(7)
    labels = label_pairs(count, blends)
    n_labels, n_blocks = labels.shape[0], grid[0] * grid[1]
    every = np.array(list(itertools.product(range(n_labels), repeat=n_blocks)))
    reached = 0
    trials = 12
    for _ in range(trials):
        unary = rng.normal(scale=0.1, size=(n_blocks, count.size)) - 0.05 * rng.random((1, count.size))
        beta = float(rng.uniform(0.2, 2.0))
        energies = output_energy(unary, labels, every, grid, beta)
        sample = every[rng.integers(0, every.shape[0], 5)]
        direct = [direct_energy(unary, labels, row, grid, beta) for row in sample]
        np.testing.assert_allclose(output_energy(unary, labels, sample, grid, beta), direct, atol=1e-12)
        found = cut_output(unary, labels, grid, beta)
        value = direct_energy(unary, labels, found, grid, beta)
        shifted = unary.max() - unary.min() + BLEND_BONUS  # the largest term the integer scaling sees, at most
        resolution = (n_blocks + 4 * len(grid_edges(*grid))) * max(shifted, beta / n_blocks) / (2 * TERM_LIMIT)
        best = energies.min()
        assert value >= best - 1e-12
        if n_labels == 2:  # one s-t min cut: the minimum
            assert value <= best + resolution
        for moved in swap_neighbours(found, n_labels):  # a swap-local minimum
            assert value <= direct_energy(unary, labels, moved, grid, beta) + resolution
        reached += value <= best + resolution
    assert reached >= 0.75 * trials  # swap has no approximation factor; it finds the minimum on most instances


# ---------------------------------------------------------------------------------- the outer iterations
def test_the_objective_does_not_increase_when_every_cut_is_exact():
    """Two inputs, no blends and no threshold: every step is an exact min cut of F restricted to one output, so F
    is non-increasing over the outer iterations (and the loop stops once it stops changing)."""
    for seed in range(8):
        rng = np.random.default_rng(seed)
        cost = -rng.random((2, 9)) / 4.5
        compat = np.array([[1.0, 0.2], [0.2, 1.0]])
        history = []
        solve_partition(cost, compat, (3, 3), beta=0.6, gamma=0.5, thres=0.0, n_iter=8, set_resolve=False,
                        blends=False, rng=rng, history=history)  # fmt: skip
        steps = np.diff(history)
        assert (steps <= 1e-9).all(), history
        assert len(history) <= 9


def test_the_defaults_run_on_a_partition_and_stop_early_when_nothing_changes():
    rng = np.random.default_rng(3)
    saliency = block_saliency(blob_saliency(6, 16, 16, seed=9), (4, 4)).flatten(1).double().numpy()
    history = []
    lo, hi = solve_partition(-saliency, np.eye(6), (4, 4), n_iter=10, rng=rng, history=history)
    assert lo.shape == hi.shape == (6, 16) and bool((lo <= hi).all())
    assert len(history) < 11, "ten outer iterations on six outputs: it settles before"
    assert history[-1] == pytest.approx(history[-2], rel=1e-6)
    assert history[-1] < history[0]
