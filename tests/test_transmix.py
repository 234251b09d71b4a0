"""TransMix against direct computations: the attention share of each sample's own patches, summed patch by patch."""

from __future__ import annotations

import pytest
import torch

import openmix
from openmix.mixers.transmix import TransMix


def own_patches(mask_row: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(gh, gw) 0/1: patch (a, b) is sample i's when the pixel nearest-neighbour down-sampling reads for it,
    (floor(a * H / gh), floor(b * W / gw)), is."""
    height, width = mask_row.shape
    own = torch.zeros(grid)
    for a in range(grid[0]):
        for b in range(grid[1]):
            own[a, b] = mask_row[(a * height) // grid[0], (b * width) // grid[1]]
    return own


def direct_share(out: openmix.MixOutput, attention: torch.Tensor) -> torch.Tensor:
    shares = []
    for i in range(attention.shape[0]):
        row = out.mask[i if out.mask.shape[0] > 1 else 0, 0]
        own = own_patches(row, tuple(attention.shape[1:]))
        shares.append((attention[i] * own).sum() / attention[i].sum())
    return torch.stack(shares)


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize(("shape", "grid"), [((32, 32), (4, 4)), ((30, 26), (4, 3))])
def test_label_weights_are_the_attention_share_of_own_patches(mode, shape, grid):
    batch_size = 6
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch_size, 3, *shape, generator=generator), torch.arange(batch_size)
    mixer = TransMix(switch_prob=1.0, mode=mode)  # always the CutMix branch
    for _ in range(3):
        out = mixer(x, y, generator=generator)
        assert out.mask is not None and out.label_weights is None
        attention = torch.rand(batch_size, *grid, generator=generator) * 0.05  # softmax entries: sum < 1
        refined = mixer.refine_targets(out, attention=attention)
        share = direct_share(out, attention)
        torch.testing.assert_close(refined.label_weights, torch.stack([share, 1 - share], dim=1))
        # lam stays the pixel share, in the refined output too
        pixel_share = out.mask.expand(batch_size, 1, *shape).mean(dim=(1, 2, 3))
        torch.testing.assert_close(out.lam, pixel_share, atol=1e-6, rtol=0)
        assert torch.equal(refined.lam, out.lam) and refined.x is out.x and torch.equal(refined.index, out.index)
        torch.testing.assert_close(refined.target_lam, share)


def test_area_weight_reproduces_the_authors_average():
    batch_size = 5
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(batch_size, 3, 32, 32, generator=generator), torch.arange(batch_size)
    mixer = TransMix(switch_prob=1.0, area_weight=0.5)
    out = mixer(x, y, generator=generator)
    attention = torch.rand(batch_size, 4, 4, generator=generator)
    refined = mixer.refine_targets(out, attention=attention)
    partner_attention = 1 - direct_share(out, attention)
    partner_area = 1 - out.lam
    # the authors' transmix_label: lam = (area + attention share of the pasted box) / 2 is the partner's weight
    expected_partner = (partner_area + partner_attention) / 2
    torch.testing.assert_close(refined.label_weights[:, 1], expected_partner)
    torch.testing.assert_close(refined.label_weights[:, 0], 1 - expected_partner)


def test_mixup_branch_keeps_its_label():
    batch_size = 6
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(batch_size, 3, 16, 16, generator=generator), torch.arange(batch_size)
    attention = torch.rand(batch_size, 2, 2, generator=generator)
    batch = TransMix(switch_prob=0.0)
    out = batch(x, y, generator=generator)
    assert out.mask is None and torch.all(out.lam == out.lam[0])
    torch.testing.assert_close(out.x, out.lam[0] * x + (1 - out.lam[0]) * x[out.index])
    refined = batch.refine_targets(out, attention=attention)
    assert refined.label_weights is None and torch.equal(refined.target_lam, out.lam)
    # elem mode: a Mixup row has a constant mask equal to its lambda, whose attention share is that lambda
    elem = TransMix(switch_prob=0.0, mode="elem")
    out = elem(x, y, generator=generator)
    assert out.lam.unique().numel() > 1
    torch.testing.assert_close(out.mask, out.lam.view(-1, 1, 1, 1).expand(-1, 1, 16, 16))
    torch.testing.assert_close(elem.refine_targets(out, attention=attention).target_lam, out.lam)


def test_elem_mode_mixes_branches_per_sample():
    batch_size = 16
    generator = torch.Generator().manual_seed(3)
    x, y = torch.randn(batch_size, 2, 16, 16, generator=generator), torch.arange(batch_size)
    out = TransMix(mode="elem", switch_prob=0.5)(x, y, generator=generator)
    binary = ((out.mask == 0) | (out.mask == 1)).flatten(1).all(dim=1)
    assert bool(binary.any()) and bool((~binary).any()), "some samples CutMix'ed, some Mixup'ed"
    torch.testing.assert_close(out.x, out.mask * x + (1 - out.mask) * x[out.index])
    torch.testing.assert_close(out.lam, out.mask.mean(dim=(1, 2, 3)), atol=1e-6, rtol=0)


def test_registry_and_capabilities():
    entry = openmix.get_mixer_entry("transmix")
    assert entry.cls is TransMix and entry.hooks == ("inputs", "targets") and entry.requires == ("attention",)
    assert entry.defaults["alpha"] == 1.0 and entry.defaults["mixup_alpha"] == 0.8
    assert entry.defaults["switch_prob"] == 0.8 and entry.defaults["area_weight"] == 0.0


def test_errors():
    x, y = torch.randn(4, 3, 16, 16), torch.arange(4)
    mixer = TransMix(switch_prob=1.0)
    out = mixer(x, y, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="attention"):
        mixer.refine_targets(out)
    with pytest.raises(ValueError, match="attention"):
        mixer.refine_targets(out, attention=torch.rand(3, 2, 2))  # wrong batch size
    with pytest.raises(ValueError, match="attention"):
        mixer.refine_targets(out, attention=torch.rand(4, 4))  # (B, N) is not (B, gh, gw)
    with pytest.raises(TypeError, match="attention"):
        mixer.refine_targets(out, attention=torch.ones(4, 2, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="attention"):
        mixer.refine_targets(out, attention=[[0.5]])
    with pytest.raises(ValueError, match="unexpected"):
        mixer.refine_targets(out, attention=torch.rand(4, 2, 2), cam=torch.rand(4, 2, 2))
    with pytest.raises(ValueError, match="mixup_alpha"):
        TransMix(mixup_alpha=-1.0)
    with pytest.raises(ValueError, match="switch_prob"):
        TransMix(switch_prob=1.5)
    with pytest.raises(ValueError, match="area_weight"):
        TransMix(area_weight=2.0)
