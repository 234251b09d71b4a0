"""FMix masks and their noise are isotropic: no direction is smoother than another.

Everything is measured on outputs (masks, noise images) against what the paper's definition implies: a Gaussian
field with power spectrum 1 / max(|f|, 1 / max(H, W))^(2 decay) at every frequency f. With the same number of
pixels per row and column, that spectrum is symmetric under swapping the axes, so adjacent pixels agree as often
vertically as horizontally; an H x W field has the statistics of a W x H one, transposed.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import openmix
from openmix.mixers.fmix import _device_top_mask, low_frequency_noise, top_fraction_mask
from openmix.mixers.functional import blend


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


# ------------------------------------------------------------------------------------------- no host sync, exact counts
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from count_syncs import count_sync_ops  # noqa: E402


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("shape", [(6, 3, 16, 16), (4, 3, 128, 120)])  # the second takes the per-sample CPU blend
def test_fmix_runs_without_sync_like_ops(mode, shape):
    mixer = openmix.create_mixer("fmix", mode=mode)
    x, y = torch.randn(shape), torch.arange(shape[0])
    generator = torch.Generator().manual_seed(0)
    mixer(x, y, generator=generator)  # warm-up: the spectrum block of this size is computed and cached
    assert count_sync_ops(lambda: mixer(x, y, generator=generator)) == {}


def test_the_device_path_of_the_mask_runs_without_sync_like_ops():
    # what a CUDA batch runs: the threshold is selected by torch on the device, nothing read back
    values = low_frequency_noise(5, 24, 20, generator=torch.Generator().manual_seed(1)).view(5, -1)
    keep = np.array([0, 1, 200, 479, 480])
    assert count_sync_ops(lambda: _device_top_mask(values, keep)) == {}


def _top_count_mask(values: torch.Tensor, keep: int) -> torch.Tensor:
    """1 on the ``keep`` largest entries of a 1-D tensor, by a full sort (ties: the earlier entry first)."""
    array = values.numpy()
    order = np.lexsort((np.arange(array.size), -array))  # by value, descending, then by position
    mask = np.zeros(array.size, dtype=np.float32)
    mask[order[:keep]] = 1.0
    return torch.from_numpy(mask)


@pytest.mark.parametrize("shape", [(8, 8), (15, 22), (64, 64), (70, 96)])
def test_fmix_elem_masks_keep_exactly_the_pixels_lam_implies(shape):
    height, width = shape
    num = 12
    lam = torch.cat([torch.tensor([0.0, 1.0, 0.5]), torch.rand(num - 3, generator=torch.Generator().manual_seed(7))])
    mixer = openmix.create_mixer("fmix", mode="elem")
    x = torch.randn(num, 2, height, width)
    out = mixer(x, torch.zeros(num, dtype=torch.int64), lam=lam, generator=torch.Generator().manual_seed(3))
    # the mixer's own noise, drawn again: same generator, same order of draws (partners, then the spectrum)
    generator = torch.Generator().manual_seed(3)
    torch.randperm(num, generator=generator)
    noise = low_frequency_noise(num, height, width, generator=generator).view(num, -1)
    for row in range(num):
        expected_count = round(float(lam[row].double()) * height * width)  # round half to even, as NumPy and torch
        assert int(out.mask[row].sum()) == expected_count
        assert torch.equal(out.mask[row].flatten(), _top_count_mask(noise[row], expected_count)), f"row {row}"
    assert torch.equal(out.lam, (out.mask.sum(dim=(1, 2, 3)).double() / (height * width)).float())


def test_tied_values_fill_the_mask_in_raster_order_on_both_paths():
    values = torch.tensor([[1.0, 2.0, 2.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0], [5.0, 4.0, 4.0, 1.0, 4.0]])
    keep = np.array([3, 2, 3])
    expected = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0, 0.0]])
    assert torch.equal(top_fraction_mask(values, keep), expected)
    assert torch.equal(_device_top_mask(values, keep), expected)


@pytest.mark.parametrize("shape", [(9, 9), (96, 96), (40, 224)])
def test_host_and_device_selections_give_the_same_mask(shape):
    num = 9
    values = low_frequency_noise(num, *shape, generator=torch.Generator().manual_seed(5)).view(num, -1)
    size = values.shape[1]
    keep = np.array([0, 1, 2, size // 3, size // 2, size - 2, size - 1, size, 17])
    host = top_fraction_mask(values, keep)
    assert torch.equal(host, _device_top_mask(values, keep))
    assert torch.equal(host.sum(dim=1), torch.from_numpy(keep).float())


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_per_sample_cpu_blend_gives_the_shared_blend_exactly(mode, channels_last):
    x = torch.randn(5, 3, 112, 112, generator=torch.Generator().manual_seed(2))  # large samples: the CPU shortcut
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = openmix.create_mixer("fmix", mode=mode)(x, torch.arange(5), generator=torch.Generator().manual_seed(6))
    expected = blend(x, out.index, out.mask)
    assert torch.equal(out.x, expected) and out.x.stride() == expected.stride()
