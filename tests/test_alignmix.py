"""AlignMix: Sinkhorn plans with uniform marginals, alignment that undoes a permutation of positions, and the mix
lam A + (1 - lam) A' R^T (or lam A R + (1 - lam) A') checked against a plain Sinkhorn loop written here.

Venkataramanan et al., CVPR 2022: R = r P*, P* the entropic transport plan between the r feature vectors of a
sample (rows) and of its partner (columns) for the squared Euclidean cost.
"""

from __future__ import annotations

import pytest
import torch

import openmix
from openmix.mixers.alignmix import AlignMix, sinkhorn_plan


def reference_plan(points: torch.Tensor, others: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """(r, s) float64 plan of one pair of (r, c) and (s, c) point sets: Sinkhorn-Knopp with scaling vectors,
    u = (1/r) / (K v), v = (1/s) / (K^T u) from v = 1, K = exp(-M / eps), M the squared distances."""
    points, others = points.double(), others.double()
    cost = ((points[:, None, :] - others[None, :, :]) ** 2).sum(-1)
    kernel = torch.exp(-cost / epsilon)
    rows, cols = cost.shape
    u, v = torch.ones(rows, dtype=torch.float64), torch.ones(cols, dtype=torch.float64)
    for _ in range(iterations):
        u = (1.0 / rows) / (kernel @ v)
        v = (1.0 / cols) / (kernel.T @ u)
    return u[:, None] * kernel * v[None, :]


def positions(h: torch.Tensor) -> torch.Tensor:
    """(r, c) vectors of one hidden state: (C, h, w) -> its h*w columns; (N, D) tokens as they are."""
    return h.reshape(h.shape[0], -1).T if h.dim() == 3 else h


def reference_mix(h: torch.Tensor, out: openmix.MixOutput, to_sample: bool, epsilon: float, iterations: int):
    """out.x recomputed one sample at a time (float64)."""
    expected = []
    for i in range(h.shape[0]):
        sample, partner = positions(h[i]), positions(h[out.index[i]])
        assignment = sample.shape[0] * reference_plan(sample, partner, epsilon, iterations)  # R = r P*
        lam = float(out.lam[i])
        if to_sample:  # A~ = A' R^T: position j takes sum_k R_jk a'_k
            mixed = lam * sample.double() + (1 - lam) * (assignment @ partner.double())
        else:  # A~' = A R: position k of the partner takes sum_j R_jk a_j
            mixed = lam * (assignment.T @ sample.double()) + (1 - lam) * partner.double()
        expected.append(mixed.T.reshape(h[i].shape) if h.dim() == 4 else mixed)
    return torch.stack(expected)


@pytest.mark.parametrize(("rows", "cols"), [(16, 16), (9, 12), (49, 49)])
def test_sinkhorn_plan_has_uniform_marginals(rows, cols):
    cost = torch.rand(8, rows, cols, generator=torch.Generator().manual_seed(rows + cols))
    plan = sinkhorn_plan(cost, epsilon=0.1, iterations=100)
    assert plan.dtype == torch.float32 and bool((plan >= 0).all())
    torch.testing.assert_close(plan.sum(dim=2), torch.full((8, rows), 1.0 / rows), rtol=0, atol=1e-5 / rows)
    torch.testing.assert_close(plan.sum(dim=1), torch.full((8, cols), 1.0 / cols), rtol=0, atol=1e-5 / cols)


def test_sinkhorn_plan_is_the_plain_loop_and_stable_for_large_costs():
    generator = torch.Generator().manual_seed(1)
    points, others = torch.randn(3, 10, 4, generator=generator) * 0.6, torch.randn(3, 10, 4, generator=generator) * 0.6
    cost = ((points[:, :, None] - others[:, None]) ** 2).sum(-1)
    plan = sinkhorn_plan(cost, epsilon=0.2, iterations=50)
    for b in range(3):
        torch.testing.assert_close(
            plan[b].double(), reference_plan(points[b], others[b], 0.2, 50), rtol=1e-4, atol=1e-7
        )
    # costs up to 10^4 epsilon, as raw squared distances of deep features are: exp(-M / eps) underflows to 0 in
    # float64 already, the log-domain plan stays finite and its columns (updated last) keep their marginals
    huge = sinkhorn_plan(cost * 100 + 1000, epsilon=0.1, iterations=100)
    assert torch.exp(-(cost * 100 + 1000).double() / 0.1).max() == 0
    assert bool(torch.isfinite(huge).all())
    torch.testing.assert_close(huge.sum(dim=1), torch.full((3, 10), 0.1), rtol=0, atol=1e-4)


@pytest.mark.parametrize("tokens", [False, True], ids=["map", "tokens"])
def test_alignment_undoes_a_permutation_of_positions(tokens):
    generator = torch.Generator().manual_seed(2)
    first = torch.randn(16, 12, generator=generator)  # (C, r): 12 positions of 16 channels
    order = torch.randperm(12, generator=generator)
    points = torch.stack([first, first[:, order]])  # sample 1 is sample 0 with its positions permuted
    h = points.transpose(1, 2) if tokens else points.reshape(2, 16, 3, 4)  # (2, N, D) tokens or (2, C, h, w)
    y = torch.tensor([0, 1])
    mixer = AlignMix(epsilon=0.01, direction="to_sample", pairing="flip")
    plan = mixer.transport_plan(h, torch.tensor([1, 0]))
    permutation = torch.zeros(12, 12)
    permutation[order, torch.arange(12)] = 1.0  # position k of sample 1 holds position order[k] of sample 0
    torch.testing.assert_close(12 * plan[0], permutation, rtol=0, atol=1e-5)
    out = mixer(h, y, lam=0.0)  # all partner, aligned onto sample i's positions: sample i itself
    torch.testing.assert_close(out.x, h, rtol=0, atol=1e-4)
    out = AlignMix(epsilon=0.01, direction="to_partner", pairing="flip")(h, y, lam=1.0)  # all sample i, moved
    torch.testing.assert_close(out.x, h.flip(0), rtol=0, atol=1e-4)


@pytest.mark.parametrize("shape", [(5, 4, 3, 3), (5, 7, 4)], ids=["BxCxhxw", "BxNxD"])
@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("direction", ["to_sample", "to_partner"])
def test_output_is_the_aligned_interpolation(shape, mode, direction):
    generator = torch.Generator().manual_seed(3)
    h = torch.randn(*shape, generator=generator) * 0.6
    mixer = AlignMix(epsilon=0.2, iterations=30, direction=direction, mode=mode)
    out = mixer(h, torch.arange(shape[0]), generator=generator)
    assert out.x.shape == h.shape and out.x.dtype == h.dtype and out.mask is None
    expected = reference_mix(h, out, direction == "to_sample", 0.2, 30)
    torch.testing.assert_close(out.x.double(), expected, rtol=1e-4, atol=1e-5)
    if mode == "elem":
        assert out.lam.unique().numel() == shape[0]


def test_random_direction_uses_both_alignments_per_sample_in_elem_mode():
    generator = torch.Generator().manual_seed(4)
    h = torch.randn(24, 3, 2, 2, generator=generator) * 0.6
    out = AlignMix(epsilon=0.2, iterations=30, mode="elem")(h, torch.arange(24), generator=generator)
    to_sample = reference_mix(h, out, True, 0.2, 30)
    to_partner = reference_mix(h, out, False, 0.2, 30)
    matches = []
    for i in range(24):
        if torch.allclose(out.x[i].double(), to_sample[i], rtol=1e-4, atol=1e-5):
            matches.append("to_sample")
        elif torch.allclose(out.x[i].double(), to_partner[i], rtol=1e-4, atol=1e-5):
            matches.append("to_partner")
        else:
            pytest.fail(f"sample {i} is neither alignment")
    assert set(matches) == {"to_sample", "to_partner"}


def test_input_stage_mixes_plainly_unless_align_input():
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, 5, 5, generator=generator) * 0.6
    y = torch.arange(4)
    mixer = AlignMix(layers=(0,), direction="to_sample")
    assert mixer.draw_stage(4, generator) == 0 and mixer.last_stage == 0
    out = mixer(x, y, generator=generator)
    lam = float(out.lam[0])
    torch.testing.assert_close(out.x, lam * x + (1 - lam) * x[out.index], rtol=0, atol=1e-6)
    aligning = AlignMix(layers=(0,), direction="to_sample", align_input=True, epsilon=0.2, iterations=30)
    aligning.draw_stage(4, generator)
    out = aligning(x, y, generator=generator)
    torch.testing.assert_close(out.x.double(), reference_mix(x, out, True, 0.2, 30), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_in_is_half_precision_out(dtype):
    h = (torch.randn(4, 8, 3, 3, generator=torch.Generator().manual_seed(6)) * 0.6).to(dtype)
    mixer = AlignMix(direction="to_sample", epsilon=0.2, iterations=30)
    out = mixer(h, torch.arange(4), generator=torch.Generator().manual_seed(7))
    reference = mixer(h.float(), torch.arange(4), generator=torch.Generator().manual_seed(7))
    assert out.x.dtype == dtype and torch.equal(out.index, reference.index)
    torch.testing.assert_close(out.x.float(), reference.x, rtol=2e-2, atol=2e-2)


def test_draw_stage_defaults_and_registry():
    entry = openmix.get_mixer_entry("alignmix")
    assert {key: entry.defaults[key] for key in ("alpha", "layers", "epsilon", "iterations", "direction")} == {
        "alpha": 2.0,
        "layers": (0, 4),
        "epsilon": 0.1,
        "iterations": 100,
        "direction": "random",
    }
    mixer = AlignMix()
    generator = torch.Generator().manual_seed(8)
    draws = [mixer.draw_stage(4, generator) for _ in range(400)]
    assert set(draws) == {0, 4} and 150 < draws.count(4) < 250
    assert mixer.max_stage() == 4 and AlignMix.hooks == ("features",)


def test_plan_is_constant_and_gradients_reach_the_features():
    h = torch.randn(4, 6, 3, 3, requires_grad=True)
    mixer = AlignMix(direction="to_partner")
    assert not mixer.transport_plan(h, torch.tensor([1, 2, 3, 0])).requires_grad
    out = mixer(h * 1.0, torch.arange(4), generator=torch.Generator().manual_seed(9))
    out.x.square().sum().backward()
    assert h.grad is not None and bool(torch.isfinite(h.grad).all()) and bool((h.grad != 0).any())


def test_reproducible_with_a_generator():
    h = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(10))
    mixer = AlignMix(mode="elem")
    first = mixer(h, torch.arange(6), generator=torch.Generator().manual_seed(11))
    second = mixer(h, torch.arange(6), generator=torch.Generator().manual_seed(11))
    assert torch.equal(first.x, second.x) and torch.equal(first.lam, second.lam)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"layers": ()}, ValueError, "layers"),
        ({"layers": (0, -4)}, ValueError, "layers"),
        ({"layers": (0, 4.0)}, ValueError, "layers"),
        ({"epsilon": 0.0}, ValueError, "epsilon"),
        ({"epsilon": "small"}, TypeError, "epsilon"),
        ({"iterations": 0}, ValueError, "iterations"),
        ({"iterations": 2.5}, ValueError, "iterations"),
        ({"direction": "both"}, ValueError, "direction"),
        ({"align_input": "yes"}, TypeError, "align_input"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs, error, name):
    with pytest.raises(error, match=name):
        AlignMix(**kwargs)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="x must have"):
        AlignMix()(torch.randn(4, 5), torch.arange(4))
    with pytest.raises(ValueError, match="layers"):
        AlignMix().draw_stage(3)
