"""TokenMix against direct computations: masks constant on every patch cell, lambda the share of own pixels, label
weights the attention share of each sample's own tokens, token counts as the authors' rule."""

from __future__ import annotations

import pytest
import torch

import openmix
from openmix.mixers.tokenmix import TokenMix, block_token_masks


def cells_of(length: int, cells: int) -> list[list[int]]:
    """The pixels of each cell along one side: pixel r is in cell floor(r * cells / length)."""
    groups: list[list[int]] = [[] for _ in range(cells)]
    for r in range(length):
        groups[(r * cells) // length].append(r)
    return groups


def token_values(mask_row: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(gh, gw) value of the mask on each cell, after checking it is constant there."""
    rows, cols = cells_of(mask_row.shape[0], grid[0]), cells_of(mask_row.shape[1], grid[1])
    values = torch.zeros(grid)
    for a, row_pixels in enumerate(rows):
        for b, col_pixels in enumerate(cols):
            cell = mask_row[row_pixels[0] : row_pixels[-1] + 1, col_pixels[0] : col_pixels[-1] + 1]
            assert bool((cell == cell[0, 0]).all()), f"mask not constant on cell ({a}, {b})"
            values[a, b] = cell[0, 0]
    return values


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize(("shape", "patch_size", "grid"), [((56, 56), 8, (7, 7)), ((60, 44), 8, (7, 5))])
def test_masks_are_constant_on_cells_and_lam_is_the_own_pixel_share(mode, shape, patch_size, grid):
    batch_size = 5
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch_size, 3, *shape, generator=generator), torch.arange(batch_size)
    mixer = TokenMix(patch_size=patch_size, minimum_tokens=3, mixup_alpha=0.0, mode=mode)  # always TokenMix
    for _ in range(3):
        out = mixer(x, y, generator=generator)
        assert out.mask.shape == ((1 if mode == "batch" else batch_size), 1, *shape)
        for i in range(batch_size):
            row = out.mask[i if out.mask.shape[0] > 1 else 0, 0]
            values = token_values(row, grid)
            assert set(values.unique().tolist()) <= {0.0, 1.0}
            own_pixels = float(row.sum()) / row.numel()
            assert abs(float(out.lam[i]) - own_pixels) < 1e-6
            torch.testing.assert_close(out.x[i], row * x[i] + (1 - row) * x[out.index[i]])
        assert bool((out.lam < 1).all()), "ratio 0.5 always pastes tokens"


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_label_weights_are_the_attention_share_of_own_tokens(mode):
    batch_size, grid = 6, (4, 4)
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(batch_size, 3, 32, 32, generator=generator), torch.arange(batch_size)
    mixer = TokenMix(patch_size=8, minimum_tokens=2, mixup_alpha=0.0, mode=mode)
    out = mixer(x, y, generator=generator)
    attention = torch.rand(batch_size, *grid, generator=generator) * 0.05
    refined = mixer.refine_targets(out, attention=attention)
    expected = []
    for i in range(batch_size):
        own = token_values(out.mask[i if out.mask.shape[0] > 1 else 0, 0], grid)
        expected.append((attention[i] * own).sum() / attention[i].sum())
    share = torch.stack(expected)
    torch.testing.assert_close(refined.label_weights, torch.stack([share, 1 - share], dim=1))
    assert torch.equal(refined.lam, out.lam), "lam stays the pixel share"
    torch.testing.assert_close(out.lam, out.mask.expand(batch_size, 1, 32, 32).mean(dim=(1, 2, 3)))


def test_token_counts_follow_the_authors_rule():
    # 224 px, 16 px patches: 14 x 14 tokens, min(196, floor(0.5 * 196) + 14) = 112 asked
    x, y = torch.zeros(4, 1, 224, 224), torch.arange(4)
    random_mixer = TokenMix(mask_type="random", mixup_alpha=0.0, mode="elem")
    out = random_mixer(x, y, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out.lam, torch.full((4,), 1 - 112 / 196))
    block_mixer = TokenMix(mixup_alpha=0.0, mode="elem")
    out = block_mixer(x, y, generator=torch.Generator().manual_seed(3))
    taken = torch.round((1 - out.lam) * 196)
    assert bool((taken <= 112).all()) and bool((taken >= 100).all())
    # an explicit lam asks round((1 - lam) * N) tokens, without the minimum
    out = random_mixer(x, y, generator=torch.Generator().manual_seed(4), lam=0.75)
    torch.testing.assert_close(out.lam, torch.full((4,), 1 - 49 / 196))
    out = block_mixer(x, y, generator=torch.Generator().manual_seed(4), lam=1.0)
    assert torch.equal(out.x, x) and torch.all(out.lam == 1)


def test_block_masks_are_rectangles_within_the_count():
    generator = torch.Generator().manual_seed(5)
    counts = torch.tensor([0, 1, 20, 112, 196])
    masks = block_token_masks(counts, (14, 14), generator)
    taken = masks.sum(dim=(1, 2))
    assert taken[0] == 0 and taken[1] == 1
    assert bool((taken <= counts).all()) and int(taken[3]) >= 100
    again = block_token_masks(counts, (14, 14), torch.Generator().manual_seed(5))
    assert torch.equal(masks, again)
    # one token asked: a 1 x 1 block (larger blocks add more than the remaining count and are refused)
    single = block_token_masks(torch.ones(64, dtype=torch.int64), (14, 14), torch.Generator().manual_seed(6))
    assert torch.equal(single.sum(dim=(1, 2)), torch.ones(64, dtype=torch.int64))
    # blocks are strictly smaller than the grid: a 2 x 2 grid only takes 1 x 1 blocks, one token at a time
    small = block_token_masks(torch.full((64,), 3), (2, 2), torch.Generator().manual_seed(7))
    assert bool((small.sum(dim=(1, 2)) <= 3).all())


def test_mixup_branch_keeps_its_label():
    batch_size = 4
    generator = torch.Generator().manual_seed(7)
    x, y = torch.randn(batch_size, 3, 32, 32, generator=generator), torch.arange(batch_size)
    mixer = TokenMix(switch_prob=0.0)
    out = mixer(x, y, generator=generator)
    assert out.mask is None
    refined = mixer.refine_targets(out, attention=torch.rand(batch_size, 2, 2, generator=generator))
    assert refined.label_weights is None and torch.equal(refined.target_lam, out.lam)


def test_registry_and_capabilities():
    entry = openmix.get_mixer_entry("tokenmix")
    assert entry.cls is TokenMix and entry.hooks == ("inputs", "targets") and entry.requires == ("attention",)
    defaults = entry.defaults
    assert defaults["ratio"] == 0.5 and defaults["minimum_tokens"] == 14 and defaults["mask_type"] == "block"
    assert defaults["patch_size"] is None and defaults["mixup_alpha"] == 0.8 and defaults["switch_prob"] == 0.5


def test_the_patch_size_is_the_vits_and_a_grid_without_room_for_a_block_is_refused():
    from openmix.lightning import MixClassifier

    tiny = {"img_size": 16, "patch_size": 4, "depth": 1, "embed_dim": 16, "num_heads": 2}
    vit = {"backbone": "vit_tiny_patch16_224", "num_classes": 4, "in_chans": 1, "backbone_kwargs": tiny}
    assert MixClassifier(**vit, mixer="tokenmix").mixer.patch_size == 4  # taken from the ViT
    with pytest.raises(ValueError, match=r"patch_size=16\) masks 16 px tokens, but the backbone's patches are 4 x 4"):
        MixClassifier(**vit, mixer=TokenMix(patch_size=16))
    with pytest.raises(ValueError, match="1 x 1 token grid"):
        TokenMix(patch_size=16)(torch.randn(2, 1, 16, 16), torch.arange(2))
    alone = TokenMix(switch_prob=1.0, minimum_tokens=0)(torch.randn(2, 1, 28, 28), torch.arange(2), lam=0.5)
    mask = alone.mask[0, 0]  # None alone: a 14 x 14 grid of 2 px cells, constant on each cell
    assert torch.equal(mask[0::2, 0::2], mask[1::2, 1::2]) and float(alone.lam[0]) == pytest.approx(0.5, abs=1 / 196)


def test_errors():
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    mixer = TokenMix(mixup_alpha=0.0)
    out = mixer(x, y, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="attention"):
        mixer.refine_targets(out)
    with pytest.raises(ValueError, match="attention"):
        mixer.refine_targets(out, attention=torch.rand(5, 2, 2))
    with pytest.raises(ValueError, match="attention"):
        mixer.refine_targets(out, attention=torch.rand(4, 2, 2, 1))
    with pytest.raises(TypeError, match="attention"):
        mixer.refine_targets(out, attention=torch.ones(4, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask_type"):
        TokenMix(mask_type="grid")
    with pytest.raises(ValueError, match="patch_size"):
        TokenMix(patch_size=0)
    with pytest.raises(ValueError, match="minimum_tokens"):
        TokenMix(minimum_tokens=-1)
    with pytest.raises(ValueError, match="ratio"):
        TokenMix(ratio=(0.8, 0.2))
    with pytest.raises(ValueError, match="ratio"):
        TokenMix(ratio=1.5)
