"""SmoothMix: the mask is the soft Gaussian-like bump of the formula, and lam is its mean.

Each mask is read back (its peak gives the centre, a least-squares fit of log G against the squared distance gives
the spread s) and compared, pixel by pixel, with the formula computed here in NumPy float64:

    circle: G = exp(-((r - r0)^2 / H^2 + (c - c0)^2 / W^2) / (2 s^2))
    square: G = exp(-max((r - r0)^2 / H^2, (c - c0)^2 / W^2) / (2 s^2))

The drawn spreads must be uniform on [0.25, 0.5) and the centres uniform over the pixels (Kolmogorov-Smirnov and
chi-square tests); with ``use_alpha`` the reported lam must follow Beta(alpha, alpha).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import openmix

SHAPES = ["circle", "square"]


def _distance2(center: tuple[int, int], height: int, width: int, shape: str) -> np.ndarray:
    """(H, W) float64 squared normalised distance of every pixel to ``center``: Euclidean or Chebyshev."""
    rows = ((np.arange(height) - center[0]) / height) ** 2
    cols = ((np.arange(width) - center[1]) / width) ** 2
    if shape == "circle":
        return rows[:, None] + cols[None, :]
    return np.maximum(rows[:, None], cols[None, :])


def _read_back(bump: np.ndarray, shape: str) -> tuple[tuple[int, int], float, np.ndarray]:
    """(centre, spread s, G by the formula) of one (H, W) bump G, the peak and s read from the mask itself."""
    height, width = bump.shape
    center = np.unravel_index(int(np.argmax(bump)), bump.shape)
    distance = _distance2(center, height, width, shape)
    # log G = -distance / (2 s^2): least squares through the origin over the pixels off the centre (where G is
    # not tiny: an inverted mask stores 1 - G in float32)
    use = (distance > 0) & (bump > 1e-3)  # float32 1 - m keeps ~1e-4 relative precision there
    slope = -(distance[use] * np.log(bump[use])).sum() / (distance[use] ** 2).sum()
    spread = math.sqrt(0.5 / slope)
    return (int(center[0]), int(center[1])), spread, np.exp(-distance / (2 * spread**2))


@pytest.mark.parametrize("invert", [False, True], ids=["paper", "invert"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("height", "width"), [(32, 32), (20, 12), (9, 31)])
def test_mask_is_the_formula_and_lam_is_its_mean(height, width, shape, invert):
    generator = torch.Generator().manual_seed(height * width)
    x = torch.randn(24, 3, height, width, generator=generator)
    mixer = openmix.create_mixer("smoothmix", shape=shape, invert=invert, mode="elem")
    out = mixer(x, torch.arange(24), generator=generator)
    masks = out.mask[:, 0].double().numpy()
    for i in range(24):
        bump = 1.0 - masks[i] if invert else masks[i]
        assert bump.max() == 1.0 and bump.min() >= 0.0  # the centre is a pixel: the peak is exactly 1
        _, spread, expected = _read_back(bump, shape)
        assert 0.25 - 1e-6 <= spread < 0.5 + 1e-6
        np.testing.assert_allclose(bump, expected, atol=2e-6, rtol=0)
        assert out.lam[i].item() == pytest.approx(masks[i].mean(), abs=1e-7)
        # the blend, m * x_i + (1 - m) * x_partner, computed directly
        weight = out.mask[i].double()
        blend = weight * x[i].double() + (1 - weight) * x[out.index[i]].double()
        assert float((out.x[i].double() - blend).abs().max()) <= 1e-6


@pytest.mark.parametrize("shape", SHAPES)
def test_edges_are_soft(shape):
    # |dG / d(pixel)| <= max_d (d / s^2) exp(-d^2 / (2 s^2)) / side = 1 / (sqrt(e) s side) along either axis
    height, width = 32, 24
    out = openmix.create_mixer("smoothmix", shape=shape, mode="elem")(
        torch.zeros(256, 1, height, width),
        torch.zeros(256, dtype=torch.int64),
        generator=torch.Generator().manual_seed(1),
    )
    mask = out.mask[:, 0].double()
    vertical = (mask[:, 1:] - mask[:, :-1]).abs().max().item()
    horizontal = (mask[:, :, 1:] - mask[:, :, :-1]).abs().max().item()
    assert vertical <= 1 / (math.sqrt(math.e) * 0.25 * height) + 1e-6
    assert horizontal <= 1 / (math.sqrt(math.e) * 0.25 * width) + 1e-6
    assert bool(((mask > 0) & (mask < 1)).any(dim=(1, 2)).all())  # every mask blends, none is a hard cut


def test_drawn_spreads_and_centres_are_uniform():
    height, width, num = 24, 20, 1200
    out = openmix.create_mixer("smoothmix", mode="elem")(
        torch.zeros(num, 1, height, width),
        torch.zeros(num, dtype=torch.int64),
        generator=torch.Generator().manual_seed(2),
    )
    masks = out.mask[:, 0].double().numpy()
    readings = [_read_back(masks[i], "circle") for i in range(num)]
    spreads = np.array([spread for _, spread, _ in readings])
    result = stats.kstest(spreads, stats.uniform(0.25, 0.25).cdf)
    assert result.pvalue > 1e-3, f"spreads: KS statistic {result.statistic:.4f}, p = {result.pvalue:.2e}"
    rows = np.bincount([center[0] for center, _, _ in readings], minlength=height)
    cols = np.bincount([center[1] for center, _, _ in readings], minlength=width)
    assert stats.chisquare(rows).pvalue > 1e-3 and stats.chisquare(cols).pvalue > 1e-3


@pytest.mark.parametrize("invert", [False, True], ids=["paper", "invert"])
@pytest.mark.parametrize("shape", SHAPES)
def test_explicit_lam_is_honoured(shape, invert):
    height, width = 28, 17
    target = torch.cat([torch.linspace(0.01, 0.99, 30, dtype=torch.float64), torch.tensor([0.0, 1.0, 0.5])])
    num = target.numel()
    x = torch.randn(num, 2, height, width, generator=torch.Generator().manual_seed(3))
    mixer = openmix.create_mixer("smoothmix", shape=shape, invert=invert, mode="elem")
    out = mixer(x, torch.arange(num), generator=torch.Generator().manual_seed(4), lam=target)
    assert float((out.lam.double() - target).abs().max()) <= 1e-6, out.lam
    assert bool((out.mask[-3] == 0).all()) and bool((out.mask[-2] == 1).all())
    assert torch.equal(out.x[-2], x[-2])
    for i in range(num - 3):  # the fitted masks are still the formula's bumps
        bump = out.mask[i, 0].double().numpy()
        bump = 1.0 - bump if invert else bump
        _, _, expected = _read_back(bump, shape)
        np.testing.assert_allclose(bump, expected, atol=2e-6, rtol=0)


def test_a_lam_below_one_pixel_gives_the_centre_pixel():
    out = openmix.create_mixer("smoothmix")(torch.zeros(2, 1, 10, 10), torch.arange(2), lam=1e-4)
    assert out.lam[0].item() == pytest.approx(0.01, abs=1e-6)  # only the centre pixel is sample i's
    assert int((out.mask > 1e-6).sum()) == 1


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_use_alpha_gives_beta_distributed_lam(alpha):
    generator = torch.Generator().manual_seed(int(alpha * 10))
    mixer = openmix.create_mixer("smoothmix", alpha=alpha, use_alpha=True, shape="square", mode="elem")
    out = mixer(torch.zeros(1000, 1, 16, 16), torch.zeros(1000, dtype=torch.int64), generator=generator)
    # lam below one pixel (1/256) is reported as one pixel: too rare and too small to move the KS statistic
    result = stats.kstest(out.lam.double().numpy(), stats.beta(alpha, alpha).cdf)
    assert result.pvalue > 1e-3, f"KS statistic {result.statistic:.4f}, p = {result.pvalue:.2e}"


def test_batch_mode_uses_one_mask():
    out = openmix.create_mixer("smoothmix")(torch.randn(6, 3, 16, 16), torch.arange(6))
    assert out.mask.shape == (1, 1, 16, 16) and bool((out.lam == out.lam[0]).all())


BAD_ARGUMENTS = [
    ({"shape": "triangle"}, ValueError, "shape must be one of"),
    ({"shape": 3}, ValueError, "shape must be one of"),
    ({"sigma": (0.5, 0.25)}, ValueError, "sigma must be a finite number > 0 or a"),
    ({"sigma": 0.0}, ValueError, "sigma must be a finite number > 0"),
    ({"sigma": (0.1, float("inf"))}, ValueError, "sigma must be a finite number > 0"),
    ({"sigma": "wide"}, TypeError, "sigma must be a"),
    ({"sigma": (0.1, 0.2, 0.3)}, ValueError, "sigma must be a .* got 3 values"),
    ({"use_alpha": "yes"}, TypeError, "use_alpha must be a bool"),
    ({"invert": 1}, TypeError, "invert must be a bool"),
    ({"alpha": -1.0}, ValueError, "alpha must be a finite number > 0"),
    ({"pairing": "sorted"}, ValueError, "pairing must be one of"),
]


@pytest.mark.parametrize(("kwargs", "error", "pattern"), BAD_ARGUMENTS, ids=[str(c[0]) for c in BAD_ARGUMENTS])
def test_bad_arguments_are_named(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        openmix.create_mixer("smoothmix", **kwargs)
