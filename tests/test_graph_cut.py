"""PuzzleMix's graph-cut labelling (``openmix.mixers._graph_cut``) against brute force and direct computations.

The energy is written out again here (``energy``) and minimised by enumerating every labelling of 3 x 3 grids
(2^9 and 3^9 of them). What is asserted:

- L = 2: the labels reach the minimum energy (to the solver's documented integer resolution).
- L = 3 with alpha-beta swap (PuzzleMix's solver): the labels are a swap-local minimum (no labelling one swap
  move away is lower; the move neighbourhoods are enumerated) and they reach the global minimum on at least 80 % of
  random instances (about 90 % is typical). Swap carries no approximation factor, hence this check.
- L = 3 with alpha-expansion on a metric label cost (|k - k'|): within its factor 2c = 4 of the minimum
  (c = max V / min nonzero V = 2, Boykov, Veksler and Zabih 2001) on every instance, and equal to it on most.
- The term builders equal direct loop-by-loop computations on 2 x 2 blocks, and for two labels the built energy
  equals the paper's binary energy (lost saliency + prior + beta on label changes + gamma on image differences) up
  to a constant, over all 16 labellings.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from openmix.mixers._graph_cut import (
    neighbour_differences,
    puzzle_energy_terms,
    puzzle_labels,
    squared_label_cost,
)

SIDE = 3


def energy(unary: np.ndarray, cost: np.ndarray, weight_h: np.ndarray, weight_v: np.ndarray, labels: np.ndarray):
    """E of (..., h, w) labellings: sum of unary[p, k_p] + weight of each edge times cost[k_p, k_q]."""
    data = np.take_along_axis(np.broadcast_to(unary, labels.shape + unary.shape[-1:]), labels[..., None], -1)
    pair_h = weight_h * cost[labels[..., :, :-1], labels[..., :, 1:]]
    pair_v = weight_v * cost[labels[..., :-1, :], labels[..., 1:, :]]
    return data.sum(axis=(-3, -2, -1)) + pair_h.sum(axis=(-2, -1)) + pair_v.sum(axis=(-2, -1))


def every_labelling(n_labels: int, side: int = SIDE) -> np.ndarray:
    return np.array(list(itertools.product(range(n_labels), repeat=side * side))).reshape(-1, side, side)


def random_problem(rng: np.random.Generator, n_labels: int, strength: float, side: int = SIDE):
    unary = rng.random((side, side, n_labels))
    weight_h = rng.random((side, side - 1)) * strength
    weight_v = rng.random((side - 1, side)) * strength
    return unary, weight_h, weight_v


def solve(unary, cost, weight_h, weight_v, **kwargs) -> np.ndarray:
    as_batch = [torch.from_numpy(np.asarray(a, dtype=np.float64)[None]) for a in (unary, weight_h, weight_v)]
    labels = puzzle_labels(as_batch[0], torch.from_numpy(cost), as_batch[1], as_batch[2], **kwargs)
    assert labels.dtype == torch.int64 and labels.shape == (1,) + unary.shape[:2]
    return labels[0].numpy()


def tolerance(unary, cost, weight_h, weight_v) -> float:
    """A bound on the solver's integer rounding (module docstring: (sites + q edges) T / 2^23, q <= 4 here)."""
    top = max(np.ptp(unary, axis=-1).max(), max(weight_h.max(), weight_v.max()) * cost.max())
    return (SIDE * SIDE + 4 * 2 * SIDE * (SIDE - 1)) * top / 2**23 + 1e-12


def test_two_labels_reach_the_brute_force_minimum():
    rng = np.random.default_rng(0)
    cost = squared_label_cost(2, dtype=torch.float64).numpy()
    labellings = every_labelling(2)
    for strength in (0.1, 0.5, 1.0, 3.0) * 10:
        unary, weight_h, weight_v = random_problem(rng, 2, strength)
        found = energy(unary, cost, weight_h, weight_v, solve(unary, cost, weight_h, weight_v))
        best = energy(unary, cost, weight_h, weight_v, labellings).min()
        assert found <= best + tolerance(unary, cost, weight_h, weight_v), (strength, found, best)


def swap_neighbourhood_minimum(labels, energies, labellings, n_labels) -> float:
    """The lowest energy among labellings one alpha-beta swap away from ``labels`` (for any alpha < beta)."""
    lowest = math.inf
    for alpha, beta in itertools.combinations(range(n_labels), 2):
        movable = (labels == alpha) | (labels == beta)
        stay = np.where(movable, (labellings == alpha) | (labellings == beta), labellings == labels)
        lowest = min(lowest, energies[stay.all(axis=(1, 2))].min())
    return lowest


def test_three_labels_swap_is_a_swap_local_minimum_and_mostly_global():
    rng = np.random.default_rng(1)
    cost = squared_label_cost(3, dtype=torch.float64).numpy()
    labellings = every_labelling(3)
    global_hits, trials = 0, 0
    for strength in (0.1, 0.3, 1.0, 3.0) * 10:
        unary, weight_h, weight_v = random_problem(rng, 3, strength)
        energies = energy(unary, cost, weight_h, weight_v, labellings)
        labels = solve(unary, cost, weight_h, weight_v)
        found, tol = energy(unary, cost, weight_h, weight_v, labels), tolerance(unary, cost, weight_h, weight_v)
        assert found <= swap_neighbourhood_minimum(labels, energies, labellings, 3) + tol
        global_hits += bool(found <= energies.min() + tol)
        trials += 1
    assert global_hits >= 0.8 * trials, f"global minimum on {global_hits} of {trials}"


def test_three_labels_expansion_on_a_metric_is_within_its_factor():
    rng = np.random.default_rng(2)
    levels = np.arange(3) / 2
    cost = np.abs(levels[:, None] - levels[None, :])  # a metric: c = max / min nonzero = 2
    labellings = every_labelling(3)
    global_hits, trials = 0, 0
    for strength in (0.1, 0.3, 1.0, 3.0) * 5:
        unary, weight_h, weight_v = random_problem(rng, 3, strength)
        best = energy(unary, cost, weight_h, weight_v, labellings).min()
        found = energy(unary, cost, weight_h, weight_v, solve(unary, cost, weight_h, weight_v, algorithm="expansion"))
        tol = tolerance(unary, cost, weight_h, weight_v)
        assert best - tol <= found <= 4 * best + tol
        global_hits += bool(found <= best + tol)
        trials += 1
    assert global_hits >= 0.8 * trials, f"global minimum on {global_hits} of {trials}"


def test_expansion_on_the_squared_cost_is_refused_not_aborted():
    unary, weight_h, weight_v = random_problem(np.random.default_rng(3), 3, 1.0)
    with pytest.raises(ValueError, match="label_cost"):
        solve(unary, squared_label_cost(3, dtype=torch.float64).numpy(), weight_h, weight_v, algorithm="expansion")


def test_labels_do_not_depend_on_the_overall_scale():
    """The integer scale is relative to the largest term: costs 1e-6 or 1e6 times larger give the same labels."""
    rng = np.random.default_rng(4)
    cost = squared_label_cost(3, dtype=torch.float64).numpy()
    for _ in range(5):
        unary, weight_h, weight_v = random_problem(rng, 3, 1.0, side=6)
        labels = solve(unary, cost, weight_h, weight_v)
        for factor in (1e-6, 1e6):
            assert np.array_equal(solve(unary * factor, cost, weight_h * factor, weight_v * factor), labels)


def test_batch_device_shapes_and_degenerate_grids():
    rng = np.random.default_rng(5)
    unary = torch.from_numpy(rng.random((4, 5, 3, 3)))
    cost = squared_label_cost(3, dtype=torch.float64)
    labels = puzzle_labels(unary, cost, torch.rand(4, 5, 2, dtype=torch.float64), torch.rand(4, 4, 3).double())
    assert labels.shape == (4, 5, 3) and labels.dtype == torch.int64 and labels.device == unary.device
    assert int(labels.min()) >= 0 and int(labels.max()) <= 2
    assert "int" not in np.__dict__ and "float" not in np.__dict__  # gco's numpy patch is undone
    # a single block and a single row; an empty batch
    single = puzzle_labels(unary[:, :1, :1], cost, torch.zeros(4, 1, 0).double(), torch.zeros(4, 0, 1).double())
    assert torch.equal(single[:, 0, 0], unary[:, 0, 0].argmin(dim=-1))
    row = puzzle_labels(unary[:, :1], cost, torch.rand(4, 1, 2).double(), torch.zeros(4, 0, 3).double())
    assert row.shape == (4, 1, 3)
    empty = puzzle_labels(unary[:0], cost, torch.zeros(0, 5, 2).double(), torch.zeros(0, 4, 3).double())
    assert empty.shape == (0, 5, 3) and empty.dtype == torch.int64


# ---------------------------------------------------------------------------------------------------------------
# the term builders


def direct_differences(images1, images2, grid, neigh_size):
    """(diff_h, diff_v) by loops over edges, channels and pooled cells, as ``neigh_penalty`` reads them."""
    batch, channels, height, width = images1.shape
    block_h, block_w = height // grid, width // grid
    cell = min(neigh_size, block_h, block_w)
    per_h, per_w = block_h // cell, block_w // cell
    pooled = [
        img.reshape(batch, channels, height // cell, cell, width // cell, cell).mean(dim=(3, 5))
        for img in (images1, images2)
    ]
    diff_h = torch.zeros(batch, 2, 2, grid, grid - 1, dtype=images1.dtype)
    diff_v = torch.zeros(batch, 2, 2, grid - 1, grid, dtype=images1.dtype)
    for n, a, b in itertools.product(range(batch), range(2), range(2)):
        for i, j in itertools.product(range(grid), range(grid)):
            if i + 1 < grid:  # block (i, j) from a above block (i + 1, j) from b
                values = [
                    abs(pooled[a][n, c, (i + 1) * per_h - 1, col] - pooled[b][n, c, (i + 1) * per_h, col])
                    for c in range(channels)
                    for col in range(j * per_w, (j + 1) * per_w)
                ]
                diff_v[n, a, b, i, j] = sum(values) / len(values)
            if j + 1 < grid:  # block (i, j) from a left of block (i, j + 1) from b
                values = [
                    abs(pooled[a][n, c, row, (j + 1) * per_w - 1] - pooled[b][n, c, row, (j + 1) * per_w])
                    for c in range(channels)
                    for row in range(i * per_h, (i + 1) * per_h)
                ]
                diff_h[n, a, b, i, j] = sum(values) / len(values)
    return diff_h, diff_v


@pytest.mark.parametrize(("size", "grid", "neigh_size"), [((8, 8), 2, 2), ((8, 8), 4, 4), ((8, 16), 2, 2)])
def test_neighbour_differences_match_a_direct_computation(size, grid, neigh_size):
    generator = torch.Generator().manual_seed(6)
    images1 = torch.rand(2, 2, *size, generator=generator, dtype=torch.float64)
    images2 = torch.rand(2, 2, *size, generator=generator, dtype=torch.float64)
    got = neighbour_differences(images1, images2, grid, neigh_size)
    expected = direct_differences(images1, images2, grid, neigh_size)
    for name, g, e in zip(("diff_h", "diff_v"), got, expected):
        assert g.shape == e.shape, name
        assert torch.allclose(g, e, atol=1e-12), name


def two_by_two_case(seed: int):
    generator = torch.Generator().manual_seed(seed)
    saliency1 = torch.rand(2, 2, 2, generator=generator, dtype=torch.float64) * 3
    saliency2 = torch.rand(2, 2, 2, generator=generator, dtype=torch.float64)
    diff_h = torch.rand(2, 2, 2, 2, 1, generator=generator, dtype=torch.float64)
    diff_v = torch.rand(2, 2, 2, 1, 2, generator=generator, dtype=torch.float64)
    lam = torch.tensor([0.3, 0.8], dtype=torch.float64)
    return saliency1, saliency2, lam, diff_h, diff_v


def edges_2x2():
    """(first block, second block, 'h' or 'v', index into the diff table) of the four edges of a 2 x 2 grid."""
    return [((0, 0), (0, 1), "h", (0, 0)), ((1, 0), (1, 1), "h", (1, 0)), ((0, 0), (1, 0), "v", (0, 0)),
            ((0, 1), (1, 1), "v", (0, 1))]  # fmt: skip


def test_three_label_terms_match_a_direct_computation():
    beta, gamma, eta = 1.2, 0.5, 0.2
    saliency1, saliency2, lam, diff_h, diff_v = two_by_two_case(7)
    unary, cost, weight_h, weight_v = puzzle_energy_terms(
        saliency1, saliency2, lam, diff_h, diff_v, n_labels=3, beta=beta, gamma=gamma, eta=eta
    )
    beta_n = beta / 2 / 16
    assert torch.allclose(cost, torch.tensor([[0, 0.25, 1], [0.25, 0, 0.25], [1, 0.25, 0]], dtype=cost.dtype))
    for n in range(2):
        s1, s2 = saliency1[n] / saliency1[n].sum(), saliency2[n] / saliency2[n].sum()
        lost = {0: s2.clone(), 1: s1.clone()}  # cost of showing source 0 (sample 1) or 1 (sample 2)
        expected_h, expected_v = torch.zeros(2, 1, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64)
        for first, second, kind, at in edges_2x2():
            table = (diff_h if kind == "h" else diff_v)[n, :, :, at[0], at[1]] * beta_n * gamma  # [a, b]
            for source in (0, 1):
                lost[source][first] += (table[source, 0] + table[source, 1]) / 2
                lost[source][second] += (table[0, source] + table[1, source]) / 2
            weight = beta_n + (table[0, 1] + table[1, 0] - table[0, 0] - table[1, 1]) / 2
            (expected_h if kind == "h" else expected_v)[at] = weight
        lm = float(lam[n])
        prior = [-math.log(p + 1e-8) * eta / 4 for p in ((1 - lm) ** 2, 2 * lm * (1 - lm), lm**2)]
        for k, share in enumerate((0.0, 0.5, 1.0)):
            expected = share * lost[0] + (1 - share) * lost[1] + prior[k]
            assert torch.allclose(unary[n, :, :, k], expected, atol=1e-12), (n, k)
        assert torch.allclose(weight_h[n], expected_h, atol=1e-12)
        assert torch.allclose(weight_v[n], expected_v, atol=1e-12)


def test_two_label_terms_give_the_papers_binary_energy_up_to_a_constant():
    """E(k) - E_paper(k) is the same for all 16 labellings of each 2 x 2 sample (label 1 shows sample 1)."""
    beta, gamma, eta = 2.0, 0.7, 0.4
    saliency1, saliency2, lam, diff_h, diff_v = two_by_two_case(8)
    unary, cost, weight_h, weight_v = puzzle_energy_terms(
        saliency1, saliency2, lam, diff_h, diff_v, n_labels=2, beta=beta, gamma=gamma, eta=eta
    )
    beta_n = beta / 2 / 16
    labellings = every_labelling(2, side=2)
    for n in range(2):
        built = energy(unary[n].numpy(), cost.numpy(), weight_h[n].numpy(), weight_v[n].numpy(), labellings)
        s1, s2 = (s[n].numpy() / s[n].sum().item() for s in (saliency1, saliency2))
        lm = float(lam[n])
        paper = []
        for labels in labellings:
            source = 1 - labels  # 0 = sample 1 shown, 1 = sample 2 shown
            total = float((labels * s2 + (1 - labels) * s1).sum())  # the saliency that is not shown
            total += sum(-math.log((lm if k else 1 - lm) + 1e-8) * eta / 4 for k in labels.ravel())
            for first, second, kind, at in edges_2x2():
                table = (diff_h if kind == "h" else diff_v)[n, :, :, at[0], at[1]]
                total += beta_n * (labels[first] != labels[second])
                total += beta_n * gamma * float(table[source[first], source[second]])
            paper.append(total)
        offset = built - np.array(paper)
        assert np.ptp(offset) < 1e-12, offset


def test_the_prior_pushes_the_share_towards_lam():
    generator = torch.Generator().manual_seed(9)
    images1, images2 = torch.rand(2, 1, 3, 16, 16, generator=generator)
    saliency1, saliency2 = torch.rand(2, 1, 4, 4, generator=generator)
    diff_h, diff_v = neighbour_differences(images1, images2, 4, 2)
    lams = torch.linspace(0.05, 0.95, 10)

    def mean_share(lam, n_labels, eta):
        terms = puzzle_energy_terms(saliency1, saliency2, lam, diff_h, diff_v, n_labels=n_labels, eta=eta)
        return float(puzzle_labels(*terms).double().mean()) / (n_labels - 1)

    # two labels: the exact minimum's share of sample 1 never falls as lam (the prior's pull) grows
    shares = [mean_share(float(lam), 2, 1.0) for lam in lams]
    assert all(a <= b for a, b in zip(shares, shares[1:])) and shares[0] < shares[-1], shares
    # three labels: lower at small lam than at large; a dominant prior puts every block at the binomial mode
    assert mean_share(0.1, 3, 1.0) < mean_share(0.9, 3, 1.0)
    for lam, mode in ((0.2, 0), (0.5, 1), (0.8, 2)):
        assert mean_share(lam, 3, 100.0) == mode / 2


def valid_solver_args():
    return {
        "unary": torch.rand(2, 3, 3, 3),
        "label_cost": squared_label_cost(3),
        "weight_h": torch.rand(2, 3, 2),
        "weight_v": torch.rand(2, 2, 3),
    }


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("unary", np.zeros((2, 3, 3, 3)), TypeError),
        ("unary", torch.zeros(2, 3, 3, 3, dtype=torch.int64), TypeError),
        ("unary", torch.zeros(3, 3, 3), ValueError),
        ("unary", torch.zeros(2, 3, 3, 1), ValueError),
        ("unary", torch.full((2, 3, 3, 3), float("nan")), ValueError),
        ("label_cost", torch.ones(3, 3), ValueError),  # nonzero diagonal
        ("label_cost", torch.tensor([[0.0, 1, 2], [1, 0, 1], [1, 1, 0]]), ValueError),  # not symmetric
        ("label_cost", squared_label_cost(2), ValueError),  # wrong number of labels
        ("weight_h", torch.rand(2, 2, 3), ValueError),  # the vertical shape
        ("weight_h", -torch.rand(2, 3, 2), ValueError),
        ("weight_v", torch.rand(1, 2, 3), ValueError),
        ("weight_v", torch.rand(2, 2, 3).half().int(), TypeError),
        ("algorithm", "icm", ValueError),
        ("n_iter", 0, ValueError),
        ("n_iter", 1.5, TypeError),
    ],
)
def test_bad_solver_inputs_name_the_argument(name, value, error):
    args = valid_solver_args()
    args[name] = value
    with pytest.raises(error, match=name):
        puzzle_labels(**args)


def valid_builder_args():
    saliency1, saliency2, lam, diff_h, diff_v = two_by_two_case(10)
    return {"saliency1": saliency1, "saliency2": saliency2, "lam": lam, "diff_h": diff_h, "diff_v": diff_v}


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("saliency1", torch.rand(2, 2, 3, dtype=torch.float64), ValueError),  # not square
        ("saliency1", -torch.rand(2, 2, 2, dtype=torch.float64), ValueError),
        ("saliency2", torch.rand(2, 3, 3, dtype=torch.float64), ValueError),
        ("saliency2", [[1.0]], TypeError),
        ("lam", 1.5, ValueError),
        ("lam", torch.tensor([0.2, -0.1]), ValueError),
        ("lam", torch.tensor([0.5]), ValueError),
        ("lam", "half", TypeError),
        ("diff_h", torch.rand(2, 2, 2, 1, 2, dtype=torch.float64), ValueError),
        ("diff_v", torch.rand(2, 2, 2, 2, 2, dtype=torch.float64), ValueError),
        ("n_labels", 1, ValueError),
        ("n_labels", 2.0, TypeError),
        ("beta", -0.1, ValueError),
        ("gamma", float("nan"), ValueError),
        ("eta", None, TypeError),
    ],
)
def test_bad_builder_inputs_name_the_argument(name, value, error):
    args = valid_builder_args()
    args[name] = value
    with pytest.raises(error, match=name):
        puzzle_energy_terms(**args)


@pytest.mark.parametrize(
    ("kwargs", "name", "error"),
    [
        ({"grid": 3}, "grid", ValueError),
        ({"grid": 0}, "grid", ValueError),
        ({"neigh_size": 3}, "neigh_size", ValueError),
        ({"images2": torch.rand(1, 3, 8, 4)}, "images2", ValueError),
        ({"images1": torch.rand(1, 8, 8)}, "images1", ValueError),
    ],
)
def test_bad_difference_inputs_name_the_argument(kwargs, name, error):
    args = {"images1": torch.rand(1, 3, 8, 8), "images2": torch.rand(1, 3, 8, 8), "grid": 2, "neigh_size": 4}
    args.update(kwargs)
    with pytest.raises(error, match=name):
        neighbour_differences(**args)
