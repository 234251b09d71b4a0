"""Method-specific behaviour: lambda distributions, box geometry, FMix masks, saliency peaks, resized partners,
attended cells, random choice frequencies."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import box_of
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import nn

import openmix
from openmix.mixers import functional as F_mix
from openmix.mixers.fmix import low_frequency_noise, top_fraction_mask
from openmix.mixers.saliencymix import fine_grained_saliency, opencv_saliency, saliency_peaks


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_mixup_lam_follows_beta(alpha):
    mixer = openmix.create_mixer("mixup", alpha=alpha, mode="elem")
    x = torch.zeros(2000, 1, 1, 1)
    out = mixer(x, torch.zeros(2000, dtype=torch.int64), generator=torch.Generator().manual_seed(0))
    result = stats.kstest(out.lam.double().numpy(), stats.beta(alpha, alpha).cdf)
    assert result.pvalue > 0.01, result
    wrong = stats.kstest(out.lam.double().numpy(), stats.beta(alpha * 3, alpha * 3).cdf)
    assert wrong.pvalue < 1e-3, "the KS test must be able to tell a different alpha apart"


def test_batch_mode_lam_follows_beta_across_calls():
    mixer = openmix.create_mixer("mixup", alpha=0.5)
    generator = torch.Generator().manual_seed(1)
    x, y = torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64)
    lams = [float(mixer(x, y, generator=generator).lam[0]) for _ in range(600)]
    assert stats.kstest(lams, stats.beta(0.5, 0.5).cdf).pvalue > 0.01


def test_cutmix_box_area_gives_lam_and_unclipped_boxes_follow_beta():
    mixer = openmix.create_mixer("cutmix", mode="elem")
    x = torch.randn(400, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    out = mixer(x, torch.zeros(400, dtype=torch.int64), generator=torch.Generator().manual_seed(1))
    unclipped = []
    for i in range(400):
        box = box_of(out.mask[i, 0])
        if box is None:
            continue
        top, bottom, left, right = box
        assert torch.all(out.mask[i, 0, top:bottom, left:right] == 0), "the pasted region must be one rectangle"
        assert math.isclose(float(out.lam[i]), 1 - (bottom - top) * (right - left) / 64**2, abs_tol=1e-6)
        if 0 < top and bottom < 64 and 0 < left and right < 64:
            unclipped.append(1 - (bottom - top) * (right - left) / 64**2)
    # boxes away from the border are not clipped: their area is 1 - lam up to the even-side rounding
    assert len(unclipped) > 50
    assert stats.kstest(unclipped, stats.beta(1, 1).cdf).pvalue > 1e-3 or max(unclipped) > 0.9


def test_cutmix_explicit_lam_is_corrected_only_by_clipping():
    mixer = openmix.create_mixer("cutmix", mode="elem")
    x = torch.randn(300, 1, 40, 40)
    out = mixer(x, torch.zeros(300, dtype=torch.int64), lam=0.75, generator=torch.Generator().manual_seed(2))
    side = int(40 * math.sqrt(0.25)) // 2 * 2  # the box extends side // 2 each way from its centre
    assert torch.all(out.lam >= 1 - side**2 / 1600 - 1e-6)  # clipping only shrinks the box
    assert (out.lam - (1 - side**2 / 1600)).abs().min() < 1e-6  # some boxes are not clipped at all


def test_cutmix_minmax_boxes_lie_inside_with_sides_in_range():
    mixer = openmix.create_mixer("cutmix", minmax=(0.2, 0.6), mode="elem")
    x = torch.randn(200, 1, 50, 50)
    out = mixer(x, torch.zeros(200, dtype=torch.int64), generator=torch.Generator().manual_seed(3))
    for i in range(200):
        top, bottom, left, right = box_of(out.mask[i, 0])
        assert 10 <= bottom - top < 30 and 10 <= right - left < 30


def test_fmix_masks_are_binary_with_exactly_the_top_lambda_fraction():
    mixer = openmix.create_mixer("fmix", mode="elem")
    x = torch.randn(16, 1, 32, 32)
    lam = torch.linspace(0.05, 0.95, 16)
    out = mixer(x, torch.zeros(16, dtype=torch.int64), lam=lam, generator=torch.Generator().manual_seed(0))
    assert set(out.mask.unique().tolist()) <= {0.0, 1.0}
    kept = out.mask.sum(dim=(1, 2, 3))
    assert torch.equal(kept, torch.round(lam.double() * 1024).float())


def test_top_fraction_mask_keeps_the_largest_values():
    values = torch.randn(6, 500, generator=torch.Generator().manual_seed(0))
    keep = torch.tensor([0, 1, 17, 250, 499, 500])
    mask = top_fraction_mask(values, keep)
    for row, k in enumerate(keep.tolist()):
        expected = torch.zeros(500)
        expected[values[row].argsort(descending=True)[:k]] = 1
        assert torch.equal(mask[row], expected)


@pytest.mark.parametrize("smooth", [True, False])
def test_the_threshold_gives_the_exact_mask(smooth):
    """Smooth noise and white noise: the same mask as a direct arg-sort, for counts from 0 to all pixels."""
    generator = torch.Generator().manual_seed(4)
    if smooth:
        values = low_frequency_noise(12, 96, 96, generator=generator).view(12, -1)
    else:
        values = torch.randn(12, 96 * 96, generator=generator)
    keep = torch.tensor([0, 1, 5, 100, 2000, 4608, 4609, 7000, 9000, 9215, 9216, 3333])
    mask = top_fraction_mask(values, keep)
    for row, k in enumerate(keep.tolist()):
        expected = torch.zeros(96 * 96)
        expected[values[row].argsort(descending=True)[:k]] = 1
        assert torch.equal(mask[row], expected)


def test_fmix_soft_edges_keep_the_mean():
    values = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0))
    keep = torch.tensor([100, 400, 500, 900])
    mask = top_fraction_mask(values, keep, max_soft=0.05)
    torch.testing.assert_close(mask.sum(dim=1), keep.float(), atol=1e-3, rtol=0)
    fractional = ((mask > 0) & (mask < 1)).sum(dim=1)
    assert torch.all(fractional >= 2 * 50 - 2) and torch.all(fractional <= 2 * 50)
    # the ramp is monotone in the noise value
    for row in range(4):
        order = values[row].argsort(descending=True)
        assert torch.all(mask[row][order][1:] <= mask[row][order][:-1])


def _low_frequency_power_share(masks: torch.Tensor, radius: float) -> float:
    spectrum = torch.fft.fft2(masks - masks.mean(dim=(-2, -1), keepdim=True)).abs() ** 2
    freq_y = torch.fft.fftfreq(masks.shape[-2]).view(-1, 1)
    freq_x = torch.fft.fftfreq(masks.shape[-1]).view(1, -1)
    low = (freq_x**2 + freq_y**2).sqrt() <= radius
    return float(spectrum[..., low].sum() / spectrum.sum())


def test_fmix_masks_are_low_frequency():
    mixer = openmix.create_mixer("fmix", mode="elem")
    x = torch.randn(32, 1, 64, 64)
    out = mixer(x, torch.zeros(32, dtype=torch.int64), lam=0.5, generator=torch.Generator().manual_seed(0))
    masks = out.mask[:, 0]
    shuffled = masks.flatten(1)[:, torch.randperm(64 * 64)].view_as(masks)  # same lambda, no spatial structure
    assert _low_frequency_power_share(masks, 0.1) > 0.8
    assert _low_frequency_power_share(shuffled, 0.1) < 0.1
    smoother = low_frequency_noise(32, 64, 64, decay_power=5.0, generator=torch.Generator().manual_seed(1))
    rougher = low_frequency_noise(32, 64, 64, decay_power=1.0, generator=torch.Generator().manual_seed(1))
    assert _low_frequency_power_share(smoother, 0.05) > _low_frequency_power_share(rougher, 0.05)


def test_fmix_reformulated_lam_follows_beta_alpha_plus_one():
    mixer = openmix.create_mixer("fmix", alpha=1.0, reformulate=True, mode="elem")
    out = mixer(torch.zeros(1500, 1, 32, 32), torch.zeros(1500, dtype=torch.int64), generator=torch.Generator())
    assert stats.kstest(out.lam.double().numpy(), stats.beta(2.0, 1.0).cdf).pvalue > 0.01


def _object_on_texture(generator: torch.Generator, size: int = 64) -> tuple[torch.Tensor, tuple[int, int]]:
    """A bright disk at a random place on a low-contrast striped, noisy background (3 channels)."""
    rows = torch.arange(size).view(-1, 1).float()
    cols = torch.arange(size).view(1, -1).float()
    texture = 0.4 + 0.05 * torch.sin(cols * 1.3) * torch.cos(rows * 0.9)
    texture = texture + 0.03 * torch.rand(size, size, generator=generator)
    center = (int(torch.randint(12, size - 12, (1,), generator=generator)),) * 1
    center = (center[0], int(torch.randint(12, size - 12, (1,), generator=generator)))
    disk = ((rows - center[0]) ** 2 + (cols - center[1]) ** 2) <= 5**2
    image = torch.where(disk, torch.tensor(0.95), texture)
    return image.expand(3, -1, -1).clone(), center


def test_saliency_peak_agrees_with_opencv_and_the_object_is_salient():
    pytest.importorskip("cv2")
    generator = torch.Generator().manual_seed(0)
    scenes = [_object_on_texture(generator) for _ in range(8)]
    images = torch.stack([image for image, _ in scenes])
    torch_peaks = saliency_peaks(images, "torch", max_size=64)
    cv_peaks = saliency_peaks(images, "opencv")
    distances = [math.dist(ours, theirs) for ours, theirs in zip(torch_peaks.tolist(), cv_peaks.tolist())]
    # both maps saturate on near-ties, so a tie may break a few pixels apart; most peaks coincide exactly
    assert sum(d <= 7 for d in distances) >= 7, distances
    assert sum(d == 0 for d in distances) >= 5, distances
    saliency = fine_grained_saliency(images)
    for (_, center), row in zip(scenes, saliency):
        assert row[center] > row.median() + 0.3, "the object must stand out of the textured background"


def test_torch_saliency_correlates_with_opencv_map():
    pytest.importorskip("cv2")
    generator = torch.Generator().manual_seed(1)
    images = torch.stack([_object_on_texture(generator)[0] for _ in range(4)])
    ours = fine_grained_saliency(images)
    theirs = opencv_saliency(images)
    for a, b in zip(ours, theirs):
        correlation = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
        assert correlation > 0.8


@pytest.mark.parametrize("max_size", [128, 64])
def test_pooled_saliency_peak_lies_on_the_full_resolution_ridge(max_size):
    """Saliency peaks on thin ridges (an object's inner rim), so the arg-max itself may slide along the ridge; what
    pooling must keep is a peak within a few pooled cells of the full-resolution pixels of top saliency."""
    generator = torch.Generator().manual_seed(2)
    factor = 256 // max_size
    for _ in range(4):
        image, _ = _object_on_texture(generator, size=64)
        large = F.interpolate(image[None], scale_factor=4, mode="nearest")  # 256 px
        full_map = fine_grained_saliency(large)[0]
        ridge = torch.nonzero(full_map >= 0.9 * full_map.max()).float()
        peak = saliency_peaks(large, "torch", max_size=max_size)[0].float()
        assert float((ridge - peak).norm(dim=1).min()) <= 4 * factor


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_saliencymix_box_is_centred_on_the_partner_peak(mode):
    generator = torch.Generator().manual_seed(3)
    x = torch.stack([_object_on_texture(generator)[0] for _ in range(6)])
    mixer = openmix.create_mixer("saliencymix", mode=mode)
    out = mixer(x, torch.arange(6), lam=0.8, generator=generator)
    peaks = saliency_peaks(x[out.index], "torch", mixer.max_saliency_size)
    side = int(64 * math.sqrt(0.2)) // 2  # the box extends side // 2 each way from the peak, then is clipped
    for i in range(6 if mode == "elem" else 1):
        top, bottom, left, right = box_of(out.mask[i, 0])
        row, col = peaks[i].tolist()
        assert (top, bottom) == (max(row - side, 0), min(row + side, 64))
        assert (left, right) == (max(col - side, 0), min(col + side, 64))


def test_resizemix_scale_range_and_pasted_content():
    mixer = openmix.create_mixer("resizemix", mode="elem")
    x = torch.randn(300, 1, 40, 40, generator=torch.Generator().manual_seed(0))
    out = mixer(x, torch.zeros(300, dtype=torch.int64), generator=torch.Generator().manual_seed(1))
    # tau in [0.1, 0.8]: unclipped boxes cover at most 0.8^2 of the image and lam >= 1 - 0.64
    assert torch.all(out.lam >= 1 - 0.64 - 1e-6) and torch.all(out.lam < 1)
    assert float(out.lam.min()) < 0.5 and float(out.lam.max()) > 0.95


def test_attentivemix_pastes_the_partners_most_attended_cells():
    class Brightness(nn.Module):  # feature map = the image itself: the brightest cells are the most attended
        def forward(self, x):
            return x

    x = torch.zeros(4, 1, 28, 28)
    bright_cells = [[0, 8, 16, 24, 32, 40], [6, 12, 18, 30, 36, 42], [1, 2, 3, 4, 5, 48], [20, 21, 22, 27, 28, 29]]
    for i, cells in enumerate(bright_cells):
        for rank, cell in enumerate(cells):
            row, col = divmod(cell, 7)
            x[i, 0, row * 4 : row * 4 + 4, col * 4 : col * 4 + 4] = 1.0 + rank
    mixer = openmix.create_mixer("attentivemix", extractor=Brightness(), top_k=6)
    out = mixer(x, torch.arange(4), generator=torch.Generator().manual_seed(0))
    for i in range(4):
        pasted = out.mask[i, 0, ::4, ::4].flatten() == 0
        assert sorted(torch.nonzero(pasted).flatten().tolist()) == sorted(bright_cells[int(out.index[i])])
    torch.testing.assert_close(out.lam, torch.full((4,), 1 - 6 / 49))


def test_attentivemix_uses_the_training_network_when_built_without_extractor():
    network = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
    mixer = openmix.create_mixer("attentivemix")
    assert mixer.requires == ("model",) and openmix.get_mixer_entry("attentivemix").requires == ("model",)
    x = torch.randn(3, 3, 14, 14)
    running_mean = network[1].running_mean.clone()
    out = mixer(x, torch.arange(3), model=network)
    assert torch.equal(network[1].running_mean, running_mean), "the extra pass must not update batch-norm"
    assert network.training
    with pytest.raises(ValueError, match="model"):
        mixer(x, torch.arange(3))
    assert out.x.shape == x.shape


def test_attentivemix_accepts_a_timm_model_name():
    pytest.importorskip("timm")
    mixer = openmix.create_mixer("attentivemix", extractor="resnet10t", pretrained=False)
    out = mixer(torch.randn(2, 3, 56, 56), torch.arange(2))
    torch.testing.assert_close(out.lam, torch.full((2,), 1 - 6 / 49))


def test_random_choice_follows_its_probabilities():
    mixer = openmix.create_mixer("randomchoice", mixers=("mixup", "cutmix"), probs=(0.2, 0.8), no_mix_prob=0.25)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 1, 8, 8), torch.arange(2)
    kinds = {"none": 0, "mixup": 0, "cutmix": 0}
    for _ in range(2000):
        out = mixer(x, y, generator=generator)
        if torch.equal(out.index, torch.arange(2)) and out.mask is None and bool(torch.all(out.lam == 1)):
            kinds["none"] += 1
        else:
            kinds["mixup" if out.mask is None else "cutmix"] += 1
    expected = [0.25 * 2000, 0.75 * 0.2 * 2000, 0.75 * 0.8 * 2000]
    # mixup can draw an identity permutation; with a batch of two that happens half the time, but its lam < 1
    assert stats.chisquare(list(kinds.values()), expected).pvalue > 1e-3


def test_random_choice_passes_requirements_through():
    mixer = openmix.create_mixer("randomchoice", mixers=("mixup", {"name": "attentivemix", "top_k": 3}))
    assert mixer.requires == ("model",)
    network = nn.Conv2d(3, 2, 3, padding=1)
    for seed in range(6):
        out = mixer(
            torch.randn(4, 3, 14, 14), torch.arange(4), generator=torch.Generator().manual_seed(seed), model=network
        )
        assert out.x.shape == (4, 3, 14, 14)


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(["mixup", "cutmix", "fmix", "resizemix", "saliencymix"]),
    mode=st.sampled_from(["batch", "elem"]),
    batch=st.integers(1, 6),
    channels=st.integers(1, 4),
    height=st.integers(2, 24),
    width=st.integers(2, 24),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_mask_mean_is_lam_for_any_shape(name, mode, batch, channels, height, width, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=generator)
    out = openmix.create_mixer(name, mode=mode)(x, torch.zeros(batch, dtype=torch.int64), generator=generator)
    assert out.x.shape == x.shape and torch.isfinite(out.x).all()
    weight = out.mask if out.mask is not None else out.lam.view(-1, 1, 1, 1)
    share = weight.expand(batch, 1, height, width).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out.lam, share.float(), atol=1e-6, rtol=0)


def test_sample_int_is_uniform_and_in_range():
    draws = F_mix.sample_int(torch.full((4000,), 7.0), 4000, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=7)
    assert counts.numel() == 7 and stats.chisquare(counts.numpy()).pvalue > 1e-3
