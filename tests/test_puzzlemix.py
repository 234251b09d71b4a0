"""PuzzleMix as a mixer: its masks against a brute-force minimum of the stated energy, the transport of both
sources, the grid draw, the saliency the trainer hands it, bad input. The solver pieces have their own tests
(test_graph_cut.py, test_transport.py)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import openmix
from openmix.lightning.services import input_saliency
from openmix.mixers import PuzzleMix


def direct_energy(mask, s1, s2, lam, beta, eta):
    """The energy of a 0/1 block mask (1 = sample 1) with gamma = 0 and two labels, written out term by term:
    the saliency each source loses, the prior -log P(share) with P(1) = lam, and beta / (16 g) per disagreeing
    edge (mixup.py:236, 151-162 of snu-mllab/PuzzleMix)."""
    grid = mask.shape[0]
    energy = 0.0
    for i, j in itertools.product(range(grid), repeat=2):
        m = float(mask[i, j])
        energy += m * float(s2[i, j]) + (1 - m) * float(s1[i, j])
        energy += eta / grid**2 * -math.log((lam if m == 1 else 1 - lam) + 1e-8)
        for di, dj in ((0, 1), (1, 0)):
            if i + di < grid and j + dj < grid:
                energy += beta / (16 * grid) * (m - float(mask[i + di, j + dj])) ** 2
    return energy


@pytest.mark.parametrize("seed", range(6))
def test_the_mask_minimises_the_stated_energy(seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 1, 6, 6, generator=generator)
    saliency = torch.rand(2, 6, 6, generator=generator) ** 4  # peaked, so that the cut is not the prior's mode
    lam = float(torch.rand(1, generator=generator)) * 0.6 + 0.2
    mixer = PuzzleMix(grids=(3,), n_labels=2, gamma=0.0, beta=1.2, eta=0.2, transport=False, pairing="flip")
    out = mixer(x, torch.arange(2), generator=generator, lam=lam, saliency=saliency)
    pooled = F.avg_pool2d(saliency.unsqueeze(1), 2).squeeze(1)
    pooled = pooled / pooled.sum(dim=(1, 2), keepdim=True)
    for i in range(2):
        s1, s2 = pooled[i], pooled[1 - i]
        best = min(
            (direct_energy(torch.tensor(bits).view(3, 3), s1, s2, lam, 1.2, 0.2), bits)
            for bits in itertools.product((0, 1), repeat=9)
        )
        got = out.mask[i, 0, ::2, ::2]
        assert direct_energy(got, s1, s2, lam, 1.2, 0.2) == pytest.approx(best[0], abs=1e-6)


def test_each_sample_keeps_its_salient_block_and_takes_the_partners():
    x = torch.stack([torch.full((1, 8, 8), 0.25), torch.full((1, 8, 8), 0.75)])
    saliency = torch.full((2, 8, 8), 0.01)
    saliency[0, :4, :4] = 1.0  # sample 0: top left
    saliency[1, 4:, 4:] = 1.0  # sample 1: bottom right
    mixer = PuzzleMix(grids=(2,), n_labels=2, transport=False, pairing="flip")
    out = mixer(x, torch.arange(2), lam=0.5, saliency=saliency)
    mask = out.mask[:, 0, ::4, ::4]  # (2, 2, 2) block shares of sample i
    assert mask[0, 0, 0] == 1 and mask[0, 1, 1] == 0  # 0 keeps its top left and shows 1's bottom right
    assert mask[1, 1, 1] == 1 and mask[1, 0, 0] == 0
    torch.testing.assert_close(out.lam, out.mask.mean(dim=(1, 2, 3)))


def test_shares_are_the_label_levels_and_lam_is_the_pixel_share(generator):
    x = torch.randn(6, 3, 16, 16, generator=generator)
    saliency = torch.rand(6, 16, 16, generator=generator) ** 3
    out = PuzzleMix(n_labels=3)(x, torch.arange(6), generator=generator, saliency=saliency)
    assert set(out.mask.unique().tolist()) <= {0.0, 0.5, 1.0}
    torch.testing.assert_close(out.lam, out.mask.mean(dim=(1, 2, 3)))


def blocks_of(image, grid):
    """(g * g, C, bh, bw) blocks of a (C, H, W) image, row by row."""
    channels, height, width = image.shape
    bh, bw = height // grid, width // grid
    return image.view(channels, grid, bh, grid, bw).permute(1, 3, 0, 2, 4).reshape(grid * grid, channels, bh, bw)


def test_the_transport_moves_whole_blocks_and_never_lowers_the_kept_saliency(generator):
    x = torch.randn(5, 2, 8, 8, generator=generator)
    saliency = torch.rand(5, 8, 8, generator=generator) ** 4
    mixer = PuzzleMix(grids=(4,), n_labels=2, t_eps=0.1, pairing="flip")
    out = mixer(x, torch.arange(5), generator=generator, lam=0.5, saliency=saliency)
    pooled = F.avg_pool2d(saliency.unsqueeze(1), 2).flatten(1)  # (B, 16) block saliency
    for i in range(5):
        kept = out.mask[i, 0, ::2, ::2].flatten() == 1
        mixed_blocks, own_blocks = blocks_of(out.x[i], 4), blocks_of(x[i], 4)
        sources = []
        for position in torch.nonzero(kept).flatten().tolist():  # a kept block is one of x[i]'s own blocks
            matches = [b for b in range(16) if torch.equal(mixed_blocks[position], own_blocks[b])]
            assert matches, f"sample {i}: block {position} is not one of its own blocks"
            sources.append(matches[0])
        assert len(set(sources)) == len(sources), "a block was used twice"
        assert pooled[i, sources].sum() >= pooled[i, kept].sum() - 1e-6  # at least the saliency left in place
        partner = blocks_of(x[4 - i], 4)
        for position in torch.nonzero(~kept).flatten().tolist():  # the rest: the partner's blocks
            assert any(torch.equal(mixed_blocks[position], partner[b]) for b in range(16))


def test_the_transport_moves_salient_blocks_onto_the_kept_positions():
    x = torch.arange(2 * 16, dtype=torch.float32).view(2, 1, 4, 4)
    saliency = torch.full((2, 4, 4), 0.01)
    saliency[0, 0, 0] = 1.0  # sample 0's salient block sits where its partner's is more salient still
    saliency[1, 0, 0] = 3.0
    mixer = PuzzleMix(grids=(4,), n_labels=2, t_eps=0.1, pairing="flip", beta=0.0)
    out = mixer(x, torch.arange(2), lam=0.5, saliency=saliency)
    kept = out.mask[0, 0] == 1
    assert not kept[0, 0], "the cut shows the partner's more salient block at (0, 0)"
    assert (out.x[0, 0][kept] == x[0, 0, 0, 0]).any(), "sample 0's salient block moved onto a kept position"


def test_grids_that_do_not_divide_the_image_are_skipped(generator):
    mixer = PuzzleMix(grids=(2, 4, 8, 16))
    drawn = {mixer.draw_grid(28, 28, generator) for _ in range(60)}
    assert drawn == {2, 4}
    assert mixer.draw_grid(9, 31, generator) == 1
    x = torch.randn(3, 3, 9, 31, generator=generator)
    out = mixer(x, torch.arange(3), generator=generator, lam=0.5, saliency=torch.rand(3, 9, 31, generator=generator))
    assert torch.all(out.mask == out.mask[:, :, :1, :1])  # one block: the whole image at one share


def test_lam_zero_and_one_fix_the_labels(generator):
    x = torch.randn(4, 3, 8, 8, generator=generator)
    saliency = torch.rand(4, 8, 8, generator=generator) ** 8
    mixer = PuzzleMix(mode="elem", transport=False)
    out = mixer(x, torch.arange(4), lam=torch.tensor([1.0, 0.0, 1.0, 0.0]), saliency=saliency)
    assert out.lam.tolist() == [1.0, 0.0, 1.0, 0.0]
    torch.testing.assert_close(out.x[0], x[0])
    torch.testing.assert_close(out.x[1], x[out.index[1]])


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_the_trainer_hands_it_the_clean_saliency_computed_once():
    """In a training step the mixer gets the autograd input gradient's channel norm of the clean loss, and the
    network runs twice: once for that gradient, once on the mixed batch."""
    from openmix.lightning import MixClassifier

    tiny = {"channels": [4, 4, 4, 4], "stem_width": 4}
    model = MixClassifier(
        backbone="resnet10t", num_classes=4, in_chans=1, cifar_stem=True, backbone_kwargs=tiny,
        mixer="puzzlemix", mixer_kwargs={"grids": (2,)},
    )  # fmt: skip
    seen, calls = {}, []
    original = model.mixer.mix

    def spy(x, index, lam, generator, **context):
        seen["saliency"], seen["x"] = context["saliency"], x.clone()
        return original(x, index, lam, generator, **context)

    model.mixer.mix = spy
    model.network.register_forward_hook(lambda *args: calls.append(1))
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    model.training_step((x, y), 0)
    assert len(calls) == 2
    expected = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model.network(expected), y)
    (gradient,) = torch.autograd.grad(loss, expected)
    torch.testing.assert_close(seen["saliency"], gradient.norm(dim=1), rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(input_saliency(model.network, x, y), gradient.norm(dim=1), rtol=1e-4, atol=1e-8)


def test_registered_with_its_need():
    entry = openmix.get_mixer_entry("puzzlemix")
    assert entry.cls is PuzzleMix and entry.requires == ("saliency",) and entry.hooks == ("inputs",)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"grids": ()}, TypeError, "grids"),
        ({"grids": (0, 2)}, ValueError, "grids"),
        ({"n_labels": 1}, ValueError, "n_labels"),
        ({"neigh_size": 2.5}, TypeError, "neigh_size"),
        ({"beta": -1.0}, ValueError, "beta"),
        ({"t_eps": float("nan")}, ValueError, "t_eps"),
        ({"t_size": 0}, ValueError, "t_size"),
        ({"std": (0.0,)}, ValueError, "std"),
        ({"mean": "0.5"}, TypeError, "mean"),
        ({"transport": 1}, TypeError, "transport"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, words):
    with pytest.raises(error, match=words):
        PuzzleMix(**kwargs)


def test_bad_saliency_is_named(generator):
    x = torch.randn(2, 3, 8, 8, generator=generator)
    y = torch.arange(2)
    mixer = PuzzleMix()
    with pytest.raises(ValueError, match="saliency"):
        mixer(x, y)
    with pytest.raises(ValueError, match="saliency must have shape"):
        mixer(x, y, saliency=torch.rand(2, 4, 4))
    with pytest.raises(TypeError, match="saliency"):
        mixer(x, y, saliency=torch.ones(2, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="std has 2 values"):
        PuzzleMix(std=(0.5, 0.5))(x, y, saliency=torch.rand(2, 8, 8))


def test_saliency_values_are_checked_under_their_own_name(generator):
    x = torch.randn(2, 3, 8, 8, generator=generator)
    bad = torch.rand(2, 8, 8, generator=generator)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="saliency must hold finite values"):
        PuzzleMix()(x, torch.arange(2), saliency=bad)
    with pytest.raises(ValueError, match="saliency must hold finite values"):
        PuzzleMix()(x, torch.arange(2), saliency=-torch.rand(2, 8, 8, generator=generator))
