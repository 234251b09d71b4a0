"""Manifold Mixup: the hidden state is exactly lam h_i + (1 - lam) h_partner, the stage is uniform over ``layers``.

Every expectation is computed here from its definition (Verma et al., ICML 2019), not with the mixer's helpers.
"""

from __future__ import annotations

import pytest
import torch
from scipy import stats

import openmix
from openmix.mixers.manifoldmix import ManifoldMix

# hidden states the trainer hands over: a CNN feature map (B, C, h, w), ViT tokens (B, N, D), pooled (B, D)
SHAPES = [(6, 5, 4, 3), (6, 7, 9), (6, 11)]


def expected_mix(h: torch.Tensor, index: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """lam_i * h_i + (1 - lam_i) * h_index[i], in float64."""
    weight = lam.double().view(-1, *([1] * (h.dim() - 1)))
    return weight * h.double() + (1 - weight) * h.double()[index]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_mixed_hidden_state_is_the_interpolation(shape, mode):
    generator = torch.Generator().manual_seed(0)
    h = torch.randn(*shape, generator=generator)
    y = torch.arange(shape[0])
    out = ManifoldMix(mode=mode)(h, y, generator=generator)
    assert out.x.shape == h.shape and out.x.dtype == h.dtype and out.mask is None
    torch.testing.assert_close(out.x.double(), expected_mix(h, out.index, out.lam), rtol=0, atol=1e-6)
    assert torch.equal(out.y_b, y[out.index])
    explicit = ManifoldMix(mode=mode)(h, y, generator=generator, lam=0.3)
    assert torch.all(explicit.lam == 0.3)
    torch.testing.assert_close(explicit.x.double(), expected_mix(h, explicit.index, explicit.lam), rtol=0, atol=1e-6)


def test_elem_mode_draws_one_lambda_per_sample_and_batch_mode_one():
    generator = torch.Generator().manual_seed(1)
    h = torch.randn(32, 4, 3, 3, generator=generator)
    y = torch.arange(32)
    elem = ManifoldMix(mode="elem")(h, y, generator=generator)
    assert elem.lam.unique().numel() == 32
    torch.testing.assert_close(elem.x.double(), expected_mix(h, elem.index, elem.lam), rtol=0, atol=1e-6)
    batch = ManifoldMix(mode="batch")(h, y, generator=generator)
    assert torch.all(batch.lam == batch.lam[0])


@pytest.mark.parametrize("alpha", [2.0, 0.2])
def test_lambda_follows_beta_alpha_alpha(alpha):
    generator = torch.Generator().manual_seed(2)
    out = ManifoldMix(alpha=alpha, mode="elem")(torch.zeros(4000, 2), torch.zeros(4000, dtype=torch.int64), generator)
    result = stats.kstest(out.lam.double().numpy(), "beta", args=(alpha, alpha))
    assert result.pvalue > 1e-3, f"KS statistic {result.statistic:.4f}, p = {result.pvalue:.2e}"


@pytest.mark.parametrize(("layers", "num_stages"), [((0, 1, 2), 4), ((0, 3, 4), 4), ((2,), 2), ((1, 5, 12), 12)])
def test_draw_stage_is_uniform_over_the_eligible_layers(layers, num_stages):
    mixer = ManifoldMix(layers=layers)
    generator = torch.Generator().manual_seed(3)
    draws = [mixer.draw_stage(num_stages, generator) for _ in range(3000)]
    assert all(isinstance(stage, int) for stage in draws)
    assert set(draws) == set(layers), "every eligible layer is drawn, and only those"
    assert mixer.max_stage() == max(layers)
    if len(layers) > 1:
        counts = [draws.count(stage) for stage in layers]
        assert stats.chisquare(counts).pvalue > 1e-3, f"counts {counts} are not uniform"


def test_default_layers_and_alpha_are_the_authors():
    defaults = openmix.get_mixer_entry("manifoldmix").defaults
    assert defaults["layers"] == (0, 1, 2) and defaults["alpha"] == 2.0
    assert ManifoldMix.hooks == ("features",) and ManifoldMix.input_ranks == (2, 3, 4)


@pytest.mark.parametrize("layers", [(), [], (-1, 2), (0, 1.5), ("1",), (True, 2), "012", (1, 1), 3, None])
def test_bad_layers_raise_naming_layers(layers):
    with pytest.raises(ValueError, match="layers"):
        ManifoldMix(layers=layers)


def test_draw_stage_refuses_a_network_with_too_few_stages():
    with pytest.raises(ValueError, match="layers"):
        ManifoldMix(layers=(0, 4)).draw_stage(3)
    with pytest.raises(ValueError, match="num_stages"):
        ManifoldMix().draw_stage(-1)


def test_generator_makes_stage_and_mix_reproducible():
    h = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(4))
    y = torch.arange(8)
    mixer = ManifoldMix(mode="elem")

    def run(seed: int) -> tuple[list[int], openmix.MixOutput]:
        generator = torch.Generator().manual_seed(seed)
        return [mixer.draw_stage(4, generator) for _ in range(20)], mixer(h, y, generator=generator)

    (stages_a, out_a), (stages_b, out_b) = run(7), run(7)
    assert stages_a == stages_b
    assert torch.equal(out_a.x, out_b.x) and torch.equal(out_a.index, out_b.index) and torch.equal(out_a.lam, out_b.lam)
    stages_c, out_c = run(8)
    assert stages_c != stages_a or not torch.equal(out_c.lam, out_a.lam)


def test_gradients_reach_the_hidden_state():
    h = torch.randn(4, 6, 3, 3, requires_grad=True)
    out = ManifoldMix()(h * 1.0, torch.arange(4), generator=torch.Generator().manual_seed(5), lam=0.25)
    out.x.sum().backward()
    # d/dh_k of sum_i (lam h_i + (1 - lam) h_index[i]) = lam + (1 - lam) * (number of i with index[i] == k) = 1
    torch.testing.assert_close(h.grad, torch.ones_like(h))
