"""FMix masks and their noise are isotropic: no direction is smoother than another.

Everything is measured on outputs (masks, noise images) against what the paper's definition implies: a Gaussian
field with power spectrum 1 / max(|f|, 1 / max(H, W))^(2 decay) at every frequency f. With the same number of
pixels per row and column, that spectrum is symmetric under swapping the axes, so adjacent pixels agree as often
vertically as horizontally; an H x W field has the statistics of a W x H one, transposed.
"""

from __future__ import annotations

import math

import pytest
import torch

import openmix
from openmix.mixers.fmix import low_frequency_noise


def _fmix_masks(num: int, height: int, width: int, seed: int) -> torch.Tensor:
    """(num, H, W) binary masks from the public mixer in elem mode, lam spread over [0.1, 0.9]."""
    generator = torch.Generator().manual_seed(seed)
    lam = torch.rand(num, generator=generator, dtype=torch.float64) * 0.8 + 0.1
    mixer = openmix.create_mixer("fmix", mode="elem")
    out = mixer(torch.zeros(num, 1, height, width), torch.zeros(num, dtype=torch.int64), generator=generator, lam=lam)
    return out.mask[:, 0]


def _agreement(masks: torch.Tensor) -> tuple[float, float]:
    """Fractions of vertically and horizontally adjacent pixel pairs with the same mask value."""
    vertical = (masks[:, 1:, :] == masks[:, :-1, :]).double().mean()
    horizontal = (masks[:, :, 1:] == masks[:, :, :-1]).double().mean()
    return float(vertical), float(horizontal)


@pytest.mark.parametrize(("side", "num"), [(9, 16384), (16, 8192), (32, 4096)])
def test_fmix_masks_agree_as_often_vertically_as_horizontally(side, num):
    vertical, horizontal = _agreement(_fmix_masks(num, side, side, seed=side))
    assert abs(vertical - horizontal) < 0.005, f"{side}x{side}: vertical {vertical:.4f}, horizontal {horizontal:.4f}"


@pytest.mark.parametrize("shape", [(12, 20), (9, 16)])
def test_fmix_masks_of_transposed_shapes_have_transposed_agreement(shape):
    height, width = shape
    vertical, horizontal = _agreement(_fmix_masks(4096, height, width, seed=1))
    vertical_t, horizontal_t = _agreement(_fmix_masks(4096, width, height, seed=2))
    assert abs(vertical - horizontal_t) < 0.005, f"{shape}: vertical {vertical:.4f} vs transposed {horizontal_t:.4f}"
    assert abs(horizontal - vertical_t) < 0.005, f"{shape}: horizontal {horizontal:.4f} vs transposed {vertical_t:.4f}"


def _intended_power(height: int, width: int, decay_power: float) -> torch.Tensor:
    """(H, W) power the paper prescribes at each frequency of the full 2-D DFT grid (up to one constant)."""
    freq_y = torch.fft.fftfreq(height, dtype=torch.float64).view(-1, 1)
    freq_x = torch.fft.fftfreq(width, dtype=torch.float64).view(1, -1)
    magnitude = torch.sqrt(freq_y**2 + freq_x**2).clamp(min=1.0 / max(height, width))
    return magnitude.pow(-2 * decay_power)


@pytest.mark.parametrize(
    ("shape", "decay_power"), [((16, 16), 3.0), ((9, 9), 3.0), ((12, 20), 3.0), ((7, 10), 3.0), ((16, 16), 1.5)]
)
def test_low_frequency_noise_has_the_intended_power_at_every_frequency(shape, decay_power):
    # E |DFT(noise)[k]|^2 / intended(k) must be one constant over the whole grid, the self-conjugate frequencies
    # (first column and row, Nyquist lines) included: 4096 images give each ratio to about 2 % (real ones 3 %)
    height, width = shape
    noise = low_frequency_noise(4096, height, width, decay_power, generator=torch.Generator().manual_seed(0))
    power = torch.fft.fft2(noise.double()).abs().pow(2).mean(dim=0)
    ratio = power / _intended_power(height, width, decay_power)
    ratio = ratio / ratio.mean()
    assert float((ratio - 1).abs().max()) < 0.15, f"power / intended ranges over [{ratio.min():.3f}, {ratio.max():.3f}]"
    # the zero-frequency column (purely vertical variation) against the zero-frequency row (purely horizontal)
    column, row = ratio[1:, 0].mean(), ratio[0, 1:].mean()
    assert abs(float(column / row) - 1) < 0.05, f"vertical-only {column:.3f} vs horizontal-only {row:.3f}"


@pytest.mark.parametrize(("side", "num"), [(9, 16384), (16, 16384), (32, 4096)])
def test_low_frequency_noise_differences_have_equal_variance_in_both_directions(side, num):
    noise = low_frequency_noise(num, side, side, generator=torch.Generator().manual_seed(side)).double()
    vertical = noise.diff(dim=1).pow(2).mean()
    horizontal = noise.diff(dim=2).pow(2).mean()
    assert abs(math.log(float(vertical / horizontal))) < 0.05, f"{float(vertical / horizontal):.4f}"


def test_low_frequency_noise_is_reproducible_with_a_generator():
    first = low_frequency_noise(3, 20, 13, generator=torch.Generator().manual_seed(4))
    second = low_frequency_noise(3, 20, 13, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, second)
    mixer = openmix.create_mixer("fmix", mode="elem")
    x, y = torch.randn(4, 2, 15, 22), torch.arange(4)
    out_a = mixer(x, y, generator=torch.Generator().manual_seed(9))
    out_b = mixer(x, y, generator=torch.Generator().manual_seed(9))
    assert torch.equal(out_a.mask, out_b.mask) and torch.equal(out_a.x, out_b.x)
