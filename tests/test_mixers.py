"""The mixer contract, checked on every registered mixer by measuring its output (DESIGN.md, 'mixer contract')."""

from __future__ import annotations

import pytest
import torch
from conftest import build_mixer, partner_pixels, takes_option

import openmix

MIXERS = openmix.list_mixers()
MODES = ("batch", "elem")
# (B, C, H, W): batch of one, odd batches, one and three channels, non-square and odd sides
SHAPES = [(1, 3, 16, 16), (7, 1, 20, 12), (5, 3, 9, 31)]


def weight_of(out: openmix.MixOutput) -> torch.Tensor:
    """Per-pixel weight of sample i itself: the mask, or the scalar lam broadcast."""
    return out.mask.float() if out.mask is not None else out.lam.view(-1, 1, 1, 1)


def skip_duplicate_mode(name: str, mode: str) -> None:
    """A class without ``mode`` (Co-Mixup) runs the same call for both modes: keep the "elem" case only."""
    if mode != "elem" and not takes_option(name, "mode"):
        pytest.skip(f"{name} has no mode argument: the 'elem' case runs the same call")


def assert_k_source_consistency(mixer, x, y, out, atol):
    """k sources (``out.indices`` set): out.x == sum_j masks_j * x[indices_j], the masks sum to 1 over j, weights ==
    the masks' pixel means (rows sum to 1), and the two-source fields are the first two columns."""
    batch_size, _, height, width = x.shape
    k = out.indices.shape[1]
    assert out.indices.dtype == torch.int64 and out.indices.shape == (batch_size, k) and k >= 2
    assert bool(((out.indices >= 0) & (out.indices < batch_size)).all())
    assert out.weights.dtype == torch.float32 and out.weights.shape == (batch_size, k)
    assert out.masks is not None, "a k-source output must carry each source's mask"
    assert out.masks.dtype == torch.float32 and out.masks.shape == (batch_size, k, height, width)
    torch.testing.assert_close(out.masks.sum(dim=1), torch.ones(batch_size, height, width), atol=1e-6, rtol=0)
    if not (getattr(mixer, "moves_partner", False) or getattr(mixer, "moves_own", False)):
        expected = sum(out.masks[:, j : j + 1] * x.float()[out.indices[:, j]] for j in range(k))
        torch.testing.assert_close(out.x.float(), expected, atol=atol, rtol=1e-3 if atol > 1e-4 else 1e-5)
    torch.testing.assert_close(out.weights, out.masks.mean(dim=(2, 3)), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.weights.sum(dim=1), torch.ones(batch_size), atol=1e-6, rtol=0)
    assert torch.equal(out.lam, out.weights[:, 0])
    assert torch.equal(out.mask.expand(batch_size, 1, height, width), out.masks[:, :1])
    assert torch.equal(out.index, out.indices[:, 1])
    assert torch.equal(out.y_a, y) and torch.equal(out.y_b, y[out.index])


def assert_pixel_label_consistency(mixer, x, y, out, atol=1e-5):
    """out.x[i] == m_i * x[i] + (1 - m_i) * partner_i, lam[i] == mean(m_i), y_b == y[index]; for k sources
    :func:`assert_k_source_consistency`."""
    batch_size = x.shape[0]
    assert out.x.shape == x.shape and out.x.dtype == x.dtype
    assert out.index.dtype == torch.int64 and out.index.shape == (batch_size,)
    assert out.lam.dtype == torch.float32 and out.lam.shape == (batch_size,)
    assert bool(((out.lam >= 0) & (out.lam <= 1)).all())
    if out.indices is not None:
        assert_k_source_consistency(mixer, x, y, out, atol)
        return
    assert sorted(out.index.tolist()) == list(range(batch_size)), "pairing must be a permutation"
    weight = weight_of(out)
    partner = partner_pixels(mixer, x, out)
    if getattr(mixer, "moves_own", False):  # both sources rearranged first (PuzzleMix's transport): own tests
        pass
    elif partner is None:  # the partner is moved first (its own tests check where): where m_i = 1, x[i] is untouched
        own = weight.expand_as(out.x) == 1
        torch.testing.assert_close(out.x.float()[own], x.float()[own], atol=atol, rtol=0)
    else:
        expected = weight * x.float() + (1 - weight) * partner
        torch.testing.assert_close(out.x.float(), expected, atol=atol, rtol=1e-3 if atol > 1e-4 else 1e-5)
    share = weight.expand(batch_size, 1, *x.shape[-2:]).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out.lam, share, atol=1e-6, rtol=0)
    assert torch.equal(out.y_a, y) and torch.equal(out.y_b, y[out.index])


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", MIXERS)
def test_pixel_label_consistency(name, mode, shape, generator):
    skip_duplicate_mode(name, mode)
    x = torch.randn(*shape, generator=generator)
    y = torch.randint(0, 10, (shape[0],), generator=generator)
    mixer = build_mixer(name, mode=mode)
    for _ in range(3):  # several draws: different boxes, masks and lambdas
        out = mixer(x, y, generator=generator)
        assert_pixel_label_consistency(mixer, x, y, out)


@pytest.mark.parametrize("name", MIXERS)
def test_soft_targets_are_the_lam_mix_of_one_hots(name, generator):
    x = torch.randn(6, 3, 14, 14, generator=generator)
    y = torch.randint(0, 5, (6,), generator=generator)
    out = build_mixer(name, mode="elem")(x, y, generator=generator)
    targets = out.soft_targets(5)
    assert targets.dtype == torch.float32 and targets.shape == (6, 5)
    weights = out.label_weight_matrix()  # the pixel shares (lam, 1 - lam) unless the method sets its own
    if out.label_weights is None:  # k sources: the pixel shares of indices[:, j]
        shares = torch.stack([out.lam, 1 - out.lam], dim=1) if out.indices is None else out.weights
        torch.testing.assert_close(weights, shares)
    torch.testing.assert_close(targets.sum(dim=1), weights.sum(dim=1))
    expected = torch.zeros(6, 5)
    sources = torch.stack([torch.arange(6), out.index], dim=1) if out.indices is None else out.indices
    for i in range(6):
        for j in range(sources.shape[1]):  # two sources: sample i and its partner; k sources: indices[i]
            expected[i, y[sources[i, j]]] += weights[i, j]
    torch.testing.assert_close(targets, expected)
    smoothed = out.soft_targets(5, smoothing=0.1)
    torch.testing.assert_close(smoothed, expected * 0.9 + 0.1 / 5 * weights.sum(dim=1, keepdim=True))


@pytest.mark.parametrize("name", MIXERS)
def test_soft_and_multi_hot_labels(name, generator):
    x = torch.randn(4, 3, 12, 12, generator=generator)
    y = torch.softmax(torch.randn(4, 6, generator=generator), dim=1)
    out = build_mixer(name, mode="elem")(x, y, generator=generator)
    weights = out.label_weight_matrix()
    if out.indices is None:
        expected = weights[:, :1] * y + weights[:, 1:] * y[out.index]
    else:  # k sources: the labels of indices[:, j], whatever sample i is
        expected = sum(weights[:, j : j + 1] * y[out.indices[:, j]] for j in range(out.indices.shape[1]))
    torch.testing.assert_close(out.soft_targets(6), expected)
    multi_hot = (torch.rand(4, 6, generator=generator) > 0.5).float()
    out = build_mixer(name)(x, multi_hot, generator=generator)
    assert torch.equal(out.y_b, multi_hot[out.index])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", MIXERS)
def test_reproducible_with_generator(name, mode):
    skip_duplicate_mode(name, mode)
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6)
    mixer = build_mixer(name, mode=mode)
    first = mixer(x, y, generator=torch.Generator().manual_seed(7))
    second = mixer(x, y, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first.x, second.x) and torch.equal(first.index, second.index)
    assert torch.equal(first.lam, second.lam)
    torch.manual_seed(3)
    third = mixer(x, y)
    torch.manual_seed(3)
    fourth = mixer(x, y)
    assert torch.equal(third.x, fourth.x), "the global torch seed must make calls reproducible too"
    outputs = [mixer(x, y, generator=torch.Generator().manual_seed(seed)).lam for seed in range(8)]
    assert len({tuple(lam.tolist()) for lam in outputs}) > 1, "different seeds must give different draws"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", MIXERS)
def test_batch_mode_shares_one_lam_and_elem_mode_does_not(name, mode, generator):
    if not takes_option(name, "mode"):
        pytest.skip(f"{name} has no mode argument (each output of a batch has its own mask)")
    x = torch.randn(16, 3, 28, 28, generator=generator)
    y = torch.arange(16)
    mixer = build_mixer(name, mode=mode)
    out = mixer(x, y, generator=generator)
    if mode == "batch" and getattr(mixer, "shares_batch_mask", True):
        assert torch.all(out.lam == out.lam[0])
        if out.mask is not None:
            assert out.mask.shape[0] == 1 or torch.all(out.mask == out.mask[:1])
    if mode == "elem":  # one draw per sample: the masks (or, for global mixing, the lambdas) differ
        if out.mask is not None:
            assert out.mask.shape[0] == 16 and not torch.all(out.mask == out.mask[:1])
        else:
            assert out.lam.unique().numel() > 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", MIXERS)
def test_half_precision(name, mode, dtype, generator):
    skip_duplicate_mode(name, mode)
    x = torch.randn(5, 3, 16, 12, generator=generator).to(dtype)
    y = torch.randint(0, 4, (5,), generator=generator)
    mixer = build_mixer(name, mode=mode)
    out = mixer(x, y, generator=generator)
    assert out.x.dtype == dtype
    assert_pixel_label_consistency(mixer, x, y, out, atol=3e-2)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", MIXERS)
def test_channels_last_is_kept(name, mode, inplace, generator):
    skip_duplicate_mode(name, mode)
    x = torch.randn(4, 3, 10, 14, generator=generator).contiguous(memory_format=torch.channels_last)
    y = torch.arange(4)
    out = build_mixer(name, mode=mode, inplace=inplace)(x.clone(), y, generator=generator)
    assert out.x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", MIXERS)
def test_input_untouched_unless_inplace(name, mode, generator):
    skip_duplicate_mode(name, mode)
    x = torch.randn(6, 3, 16, 16, generator=generator)
    pristine = x.clone()
    y = torch.arange(6)
    torch.manual_seed(0)  # learned mixers (AutoMix) initialise their weights from the global RNG
    out = build_mixer(name, mode=mode)(x, y, generator=torch.Generator().manual_seed(5))
    assert torch.equal(x, pristine)
    assert out.x.data_ptr() != x.data_ptr()
    torch.manual_seed(0)
    inplace_mixer = build_mixer(name, mode=mode, inplace=True)
    result = inplace_mixer(x, y, generator=torch.Generator().manual_seed(5))
    assert result.x.data_ptr() == x.data_ptr()
    assert torch.equal(x, out.x), "inplace must write the same mix into the input"
    assert_pixel_label_consistency(inplace_mixer, pristine, y, result)


@pytest.mark.parametrize("name", MIXERS)
def test_lam_one_is_the_identity_and_explicit_lam_is_reported(name, generator):
    x = torch.randn(5, 3, 21, 21, generator=generator)
    y = torch.arange(5)
    mixer = build_mixer(name)
    if not mixer.takes_lam:  # Co-Mixup chooses the shares itself: a lam is refused, naming it
        with pytest.raises(ValueError, match="lam"):
            mixer(x, y, generator=generator, lam=1.0)
        pytest.skip(f"{name} takes no explicit lam (takes_lam = False); refusing one is checked above")
    out = mixer(x, y, generator=generator, lam=1.0)
    if not (mixer.moves_partner or mixer.moves_own):  # AlignMix "to_partner", PuzzleMix's transport move x[i]
        assert torch.equal(out.x, x)
    assert torch.all(out.lam == 1)
    out = build_mixer(name, mode="elem")(x, y, generator=generator, lam=torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2]))
    assert out.lam[0] == 1


@pytest.mark.parametrize("pairing", ["random", "flip"])
@pytest.mark.parametrize("name", MIXERS)
def test_pairing(name, pairing, generator):
    if not takes_option(name, "pairing"):
        pytest.skip(f"{name} has no pairing argument (its outputs mix sources chosen by optimisation)")
    x = torch.randn(7, 3, 12, 12, generator=generator)
    y = torch.arange(7)
    out = build_mixer(name, pairing=pairing)(x, y, generator=generator)
    if pairing == "flip":
        assert out.index.tolist() == [6, 5, 4, 3, 2, 1, 0]
    assert sorted(out.index.tolist()) == list(range(7))
