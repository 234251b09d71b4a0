"""SnapMix against direct computations: boxes read back from the pixels, CAM masses summed sample by sample.

The images carry their own coordinates (channel 0 = row, channel 1 = column, channel 2 = sample id), so the pasted
content tells which partner and which box of it were used: with ``align_corners=True`` the corners of the
destination box read the corners of the source box exactly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import openmix
from openmix.mixers.snapmix import SnapMix

H, W = 24, 20


def coded_batch(batch_size: int, seed: int = 0) -> torch.Tensor:
    """(B, 4, H, W): row index, column index, sample id, noise."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(H, dtype=torch.float32).view(1, H, 1).expand(batch_size, H, W)
    cols = torch.arange(W, dtype=torch.float32).view(1, 1, W).expand(batch_size, H, W)
    ids = torch.arange(batch_size, dtype=torch.float32).view(-1, 1, 1).expand(batch_size, H, W)
    noise = torch.randn(batch_size, H, W, generator=generator)
    return torch.stack([rows, cols, ids, noise], dim=1).contiguous()


def box_of_zeros(mask_row: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the zeros of an (H, W) 0/1 mask, after checking they form one rectangle."""
    rows = [r for r in range(mask_row.shape[0]) if bool((mask_row[r] < 0.5).any())]
    cols = [c for c in range(mask_row.shape[1]) if bool((mask_row[:, c] < 0.5).any())]
    if not rows:
        return None
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    assert bool((mask_row[top:bottom, left:right] == 0).all()), "the partner's region must be one rectangle"
    assert float(mask_row.sum()) == mask_row.numel() - (bottom - top) * (right - left)
    return top, bottom, left, right


def spm(cam_row: torch.Tensor) -> torch.Tensor:
    """The authors' semantic percent map of one (h, w) CAM: bilinear to the image, minus min, over sum."""
    up = F.interpolate(cam_row[None, None].float(), size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    up = up - up.min()
    return up / up.sum()


def mask_row(out: openmix.MixOutput, i: int) -> torch.Tensor:
    return out.mask[i if out.mask.shape[0] > 1 else 0, 0]


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_pixels_lam_and_label_weights_match_a_direct_computation(mode):
    batch_size = 6
    x = coded_batch(batch_size)
    y = torch.arange(batch_size)
    generator = torch.Generator().manual_seed(3)
    cam = torch.randn(batch_size, 5, 4, generator=generator)
    mixer = SnapMix(mode=mode)
    checked = 0
    for _ in range(4):
        out = mixer(x, y, generator=generator, cam=cam)
        assert out.label_weights.shape == (batch_size, 2) and out.label_weights.dtype == torch.float32
        for i in range(batch_size):
            box = box_of_zeros(mask_row(out, i))
            keep = mask_row(out, i)
            assert torch.equal(out.x[i] * keep, x[i] * keep), "sample i keeps its pixels outside its box"
            if box is None:
                assert out.lam[i] == 1 and out.label_weights[i].tolist() == [1.0, 0.0]
                continue
            top, bottom, left, right = box
            assert abs(float(out.lam[i]) - (1 - (bottom - top) * (right - left) / (H * W))) < 1e-6
            inside = out.x[i, :, top:bottom, left:right]
            j = int(out.index[i])
            assert bool(((inside[2] - j).abs() < 1e-4).all()), "the box holds the partner"
            if bottom - top < 2 or right - left < 2:
                continue  # a one-pixel side reads one source row or column: the source box is not recoverable
            src_top, src_bottom = round(float(inside[0, 0, 0])), round(float(inside[0, -1, 0])) + 1
            src_left, src_right = round(float(inside[1, 0, 0])), round(float(inside[1, 0, -1])) + 1
            crop = x[j : j + 1, :, src_top:src_bottom, src_left:src_right]
            expected = F.interpolate(crop, size=(bottom - top, right - left), mode="bilinear", align_corners=True)[0]
            torch.testing.assert_close(inside, expected, atol=1e-5, rtol=1e-5)
            own, partner = spm(cam[i]), spm(cam[j])
            weight_a = 1 - own[top:bottom, left:right].sum() / (own.sum() + 1e-8)
            weight_b = partner[src_top:src_bottom, src_left:src_right].sum() / (partner.sum() + 1e-8)
            torch.testing.assert_close(out.label_weights[i], torch.stack([weight_a, weight_b]), atol=1e-5, rtol=0)
            checked += 1
    assert checked >= 4


def test_batch_mode_uses_one_pair_of_boxes():
    x = coded_batch(5)
    generator = torch.Generator().manual_seed(0)
    out = SnapMix(mode="batch")(x, torch.arange(5), generator=generator, cam=torch.randn(5, 3, 3, generator=generator))
    assert out.mask.shape == (1, 1, H, W)
    box = box_of_zeros(out.mask[0, 0])
    assert box is not None
    top, bottom, left, right = box
    assert torch.equal(
        out.x[:, :2, top:bottom, left:right], out.x[:1, :2, top:bottom, left:right].expand(5, -1, -1, -1)
    )


def test_rows_need_not_sum_to_one_and_soft_targets_use_them():
    batch_size = 8
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(batch_size, 3, H, W, generator=generator), torch.arange(batch_size)
    out = SnapMix(mode="elem")(x, y, generator=generator, cam=torch.randn(batch_size, 6, 5, generator=generator))
    sums = out.label_weights.sum(dim=1)
    assert float((sums - 1).abs().max()) > 1e-3
    targets = out.soft_targets(batch_size)
    for i in range(batch_size):
        expected = torch.zeros(batch_size)
        expected[y[i]] += out.label_weights[i, 0]
        expected[y[out.index[i]]] += out.label_weights[i, 1]
        torch.testing.assert_close(targets[i], expected)
    assert not torch.allclose(out.target_lam, out.lam), "the labels follow the CAMs, not the areas"


def test_constant_cam_falls_back_to_the_areas():
    # a constant CAM makes the semantic percent map 0 / 0 (NaN); zeros stay exactly constant when upsampled (other
    # constants pick up rounding noise in the bilinear upsampling, as in the authors' code)
    batch_size = 6
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(batch_size, 3, H, W, generator=generator), torch.arange(batch_size)
    cam = torch.zeros(batch_size, 4, 4)
    out = SnapMix(mode="elem", alpha=1.0)(x, y, generator=generator, cam=cam)
    assert bool(torch.isfinite(out.label_weights).all())
    pasted = out.lam < 1
    assert bool(pasted.any())
    torch.testing.assert_close(out.label_weights[pasted, 0], out.lam[pasted])
    torch.testing.assert_close(out.label_weights[pasted, 1], 1 - out.lam[pasted])
    torch.testing.assert_close(out.label_weights[~pasted], torch.tensor([[1.0, 0.0]]).expand(int((~pasted).sum()), 2))


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_empty_box_or_no_draw_leaves_the_batch_and_labels_alone(mode):
    batch_size = 5
    generator = torch.Generator().manual_seed(4)
    x, y = torch.randn(batch_size, 3, H, W, generator=generator), torch.arange(batch_size)
    cam = torch.randn(batch_size, 4, 4, generator=generator)
    for out in (
        SnapMix(mode=mode)(x, y, generator=generator, lam=1.0, cam=cam),  # a zero-area box for sample i
        SnapMix(mode=mode, prob=0.0)(x, y, generator=generator, cam=cam),  # never applied
    ):
        assert torch.equal(out.x, x)
        assert torch.all(out.lam == 1)
        assert out.label_weights.tolist() == [[1.0, 0.0]] * batch_size


def test_merge_same_label_gives_both_columns_the_sum():
    batch_size = 6
    x = torch.randn(batch_size, 3, H, W, generator=torch.Generator().manual_seed(5))
    y = torch.zeros(batch_size, dtype=torch.int64)  # every pair shares its label
    cam = torch.randn(batch_size, 4, 4, generator=torch.Generator().manual_seed(6))
    plain = SnapMix(mode="elem")(x, y, generator=torch.Generator().manual_seed(7), cam=cam)
    merged = SnapMix(mode="elem", merge_same_label=True)(x, y, generator=torch.Generator().manual_seed(7), cam=cam)
    assert torch.equal(plain.x, merged.x)
    total = plain.label_weights.sum(dim=1)
    pasted = plain.lam < 1
    torch.testing.assert_close(merged.label_weights[pasted], total[pasted, None].expand(-1, 2))
    torch.testing.assert_close(merged.label_weights[~pasted], plain.label_weights[~pasted])


def test_registry_and_capabilities():
    entry = openmix.get_mixer_entry("snapmix")
    assert entry.cls is SnapMix and entry.hooks == ("inputs",) and entry.requires == ("cam",)
    assert entry.defaults["alpha"] == 5.0 and entry.defaults["prob"] == 1.0
    assert SnapMix.moves_partner


def test_errors():
    x, y = torch.randn(3, 3, H, W), torch.arange(3)
    mixer = SnapMix()
    with pytest.raises(ValueError, match="cam"):
        mixer(x, y)
    with pytest.raises(ValueError, match="cam"):
        mixer(x, y, cam=torch.randn(2, 4, 4))  # wrong batch size
    with pytest.raises(ValueError, match="cam"):
        mixer(x, y, cam=torch.randn(3, 1, 4, 4))  # (B, 1, h, w) is not (B, h, w)
    with pytest.raises(TypeError, match="cam"):
        mixer(x, y, cam=torch.ones(3, 4, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="cam"):
        mixer(x, y, cam=[[0.0]])
    with pytest.raises(ValueError, match="unexpected"):
        mixer(x, y, cam=torch.randn(3, 4, 4), attention=torch.rand(3, 2, 2))
    with pytest.raises(ValueError, match="prob"):
        SnapMix(prob=1.5)
    with pytest.raises(TypeError, match="merge_same_label"):
        SnapMix(merge_same_label="yes")
