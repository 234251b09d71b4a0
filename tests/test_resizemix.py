"""ResizeMix pastes exactly what ``F.interpolate(mode="nearest")`` makes of the partner, in both modes.

The reference is PyTorch itself, called one sample at a time; nothing here uses openmix's index rule. The
elem path (box rows only, in blocks) is checked against ``resized_partners``, itself checked against
``F.interpolate`` here, and a call is checked to make no operation that would wait for a CUDA device.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import box_of

import openmix
from openmix.mixers import functional as F_mix
from openmix.mixers.resizemix import paste_resized_partners, resized_partners

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from count_syncs import count_sync_ops  # noqa: E402

MEMORY_FORMATS = [torch.contiguous_format, torch.channels_last]


def _all_boxes(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 4) [top, bottom, left, right]: one box of every size h x w (1 <= h <= H, 1 <= w <= W), placed at random."""
    sides = torch.cartesian_prod(torch.arange(1, height + 1), torch.arange(1, width + 1))
    box_h, box_w = sides[:, 0], sides[:, 1]
    top = (torch.rand(len(sides), generator=generator) * (height - box_h + 1)).long()
    left = (torch.rand(len(sides), generator=generator) * (width - box_w + 1)).long()
    return torch.stack([top, top + box_h, left, left + box_w], dim=1)


def _assert_pastes_interpolate(x: torch.Tensor, index: torch.Tensor, boxes: torch.Tensor, out: torch.Tensor) -> None:
    """Box i of ``out[i]`` equals ``F.interpolate(x[index[i]], size=box, mode="nearest")``, bit for bit."""
    wrong = []
    for i, (top, bottom, left, right) in enumerate(boxes.tolist()):
        expected = F.interpolate(x[index[i]][None], size=(bottom - top, right - left), mode="nearest")[0]
        if not torch.equal(out[i, :, top:bottom, left:right], expected):
            wrong.append((bottom - top, right - left))
    assert not wrong, f"{len(wrong)} of {len(boxes)} boxes differ from F.interpolate, e.g. (h, w) = {wrong[:5]}"


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS, ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(26, 26), (62, 62), (52, 39), (58, 56), (19, 45)])
def test_resized_partners_equal_interpolate_for_every_box_size(shape, memory_format):
    # every box size h x w up to the image, square and not. The shapes hold the (image, box) side pairs under 70 px
    # where float32 rounding makes F.interpolate read another row than exact arithmetic: 26/22, 62/14, 62/28,
    # 62/56, 52/22, 52/44, 39/33, 58/54, 56/46
    height, width = shape
    generator = torch.Generator().manual_seed(height * 100 + width)
    all_boxes = _all_boxes(height, width, generator)
    for boxes in all_boxes.split(512):
        x = torch.randn(len(boxes), 3, height, width, generator=generator).contiguous(memory_format=memory_format)
        index = torch.randperm(len(boxes), generator=generator)
        _assert_pastes_interpolate(x, index, boxes, resized_partners(x, index, boxes))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS, ids=["contiguous", "channels_last"])
def test_resized_partners_equal_interpolate_in_half_precision(dtype, memory_format):
    generator = torch.Generator().manual_seed(7)
    sides = torch.arange(1, 65)
    boxes = torch.stack([64 - sides, torch.full_like(sides, 64), torch.zeros_like(sides), sides], dim=1)  # squares
    x = torch.randn(64, 2, 64, 64, generator=generator).to(dtype).contiguous(memory_format=memory_format)
    index = torch.randperm(64, generator=generator)
    _assert_pastes_interpolate(x, index, boxes, resized_partners(x, index, boxes))


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS, ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(26, 26), (39, 39), (30, 52)])
def test_resizemix_elem_mode_pastes_interpolate(shape, memory_format):
    height, width = shape
    mixer = openmix.create_mixer("resizemix", mode="elem", scope=(0.1, 1.0))
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(256, 3, height, width, generator=generator).contiguous(memory_format=memory_format)
    out = mixer(x, torch.zeros(256, dtype=torch.int64), generator=generator)
    assert out.x.is_contiguous(memory_format=memory_format)
    boxes = torch.tensor([box_of(out.mask[i, 0]) for i in range(256)])
    sizes = {(bottom - top, right - left) for top, bottom, left, right in boxes.tolist()}
    assert len(sizes) > 100  # many box sizes, clipped ones included
    _assert_pastes_interpolate(x, out.index, boxes, out.x)
    keep = out.mask.bool().expand_as(x)
    assert torch.equal(out.x[keep], x[keep])


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS, ids=["contiguous", "channels_last"])
def test_resizemix_elem_mode_with_explicit_lam_reproduces_known_mismatch_sizes(memory_format):
    # a 22 x 22 box in a 26 x 26 image: floor(11 * 26 / 22) = 13, but F.interpolate reads row 12
    mixer = openmix.create_mixer("resizemix", mode="elem")
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(64, 3, 26, 26, generator=generator).contiguous(memory_format=memory_format)
    lam = torch.full((64,), 1 - (22 / 26 + 1e-9) ** 2, dtype=torch.float64)  # tau * 26 = 22: sides of 22 unclipped
    out = mixer(x, torch.zeros(64, dtype=torch.int64), generator=generator, lam=lam)
    boxes = torch.tensor([box_of(out.mask[i, 0]) for i in range(64)])
    sides = set(zip((boxes[:, 1] - boxes[:, 0]).tolist(), (boxes[:, 3] - boxes[:, 2]).tolist()))
    assert (22, 22) in sides
    _assert_pastes_interpolate(x, out.index, boxes, out.x)


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS, ids=["contiguous", "channels_last"])
def test_resizemix_batch_and_elem_modes_paste_the_same_content(memory_format):
    # batch mode calls F.interpolate itself; elem mode with the same box must agree with it exactly
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(6, 3, 26, 26, generator=generator).contiguous(memory_format=memory_format)
    y = torch.zeros(6, dtype=torch.int64)
    for side in range(2, 27, 2):
        lam = torch.tensor(1 - (side / 26 + 1e-9) ** 2, dtype=torch.float64).clamp(min=0)
        batch = openmix.create_mixer("resizemix", mode="batch")(
            x, y, generator=torch.Generator().manual_seed(side), lam=lam
        )
        top, bottom, left, right = box_of(batch.mask[0, 0])
        boxes = torch.tensor([[top, bottom, left, right]] * 6)
        _assert_pastes_interpolate(x, batch.index, boxes, batch.x)
        elem = resized_partners(x, batch.index, boxes)
        assert torch.equal(elem[:, :, top:bottom, left:right], batch.x[:, :, top:bottom, left:right])


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS, ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_resizemix_call_makes_no_sync_like_op(mode, memory_format):
    # boxes and pairs are host draws that reach the batch's device through to_device: a call reads nothing back
    mixer = openmix.create_mixer("resizemix", mode=mode)
    x = torch.randn(4, 3, 12, 12).contiguous(memory_format=memory_format)
    y = torch.tensor([0, 1, 2, 3])
    mixer(x, y, generator=torch.Generator().manual_seed(0))  # warm-up
    assert count_sync_ops(lambda: mixer(x, y, generator=torch.Generator().manual_seed(1))) == {}


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS, ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("block_rows", [None, 1, 7])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_paste_resized_partners_equals_blending_the_resized_partners(dtype, inplace, block_rows, memory_format):
    # elem mode writes only the box rows, in blocks; it must give what resizing every partner and blending with the
    # keep mask gives, empty, one-pixel and whole-image boxes included, whatever the block size
    generator = torch.Generator().manual_seed(4)
    height, width = 23, 31
    boxes = _all_boxes(height, width, generator)[::7]
    edge_cases = torch.tensor([[5, 5, 2, 9], [3, 8, 4, 4], [0, 0, 0, 0], [0, height, 0, width], [22, 23, 30, 31]])
    boxes = torch.cat([boxes, edge_cases])  # empty, whole-image and one-pixel boxes
    x = torch.randn(len(boxes), 3, height, width, generator=generator).to(dtype)
    x = x.contiguous(memory_format=memory_format)
    index = torch.randperm(len(boxes), generator=generator)
    mask = F_mix.box_keep_mask(boxes, height, width)
    direct = torch.ones(len(boxes), 1, height, width)
    for row, (top, bottom, left, right) in enumerate(boxes.tolist()):
        direct[row, :, top:bottom, left:right] = 0.0
    assert torch.equal(mask, direct)
    expected = torch.lerp(resized_partners(x, index, boxes), x, mask.to(dtype))
    target = x.clone()
    out = paste_resized_partners(target, index, boxes, target if inplace else target.clone(), block_rows=block_rows)
    assert (out.data_ptr() == target.data_ptr()) == inplace
    assert out.is_contiguous(memory_format=memory_format)
    assert torch.equal(out, expected)


def test_paste_resized_partners_leaves_everything_when_no_box_has_pixels():
    x = torch.randn(3, 2, 6, 7).contiguous(memory_format=torch.channels_last)
    boxes = torch.tensor([[2, 2, 0, 7], [0, 6, 3, 3], [6, 6, 7, 7]])
    out = paste_resized_partners(x, torch.tensor([2, 0, 1]), boxes, x.clone())
    assert torch.equal(out, x)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("layout", ["crop", "channels_last_crop"])
def test_elem_mode_on_strided_views_equals_it_on_a_dense_copy(layout, inplace):
    # rows of a crop are not rows of memory: the mix must still be the dense batch's, and in place land in the view
    generator = torch.Generator().manual_seed(2)
    if layout == "crop":
        base = torch.randn(5, 3, 21, 24, generator=generator)
    else:
        base = torch.randn(5, 21, 24, 3, generator=generator).permute(0, 3, 1, 2)
    view = base[:, :, 2:19, 3:20]
    dense = view.contiguous()
    y = torch.arange(5)
    expected = openmix.create_mixer("resizemix", mode="elem")(dense, y, generator=torch.Generator().manual_seed(7))
    mixer = openmix.create_mixer("resizemix", mode="elem", inplace=inplace)
    out = mixer(view, y, generator=torch.Generator().manual_seed(7))
    assert torch.equal(out.x, expected.x)
    assert torch.equal(view, expected.x if inplace else dense)


@pytest.mark.parametrize("block_rows", [0, -1, 2.0, True])
def test_paste_resized_partners_refuses_a_bad_block_size(block_rows):
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(ValueError, match="block_rows"):
        paste_resized_partners(x, torch.tensor([1, 0]), torch.tensor([[0, 2, 0, 2]] * 2), x.clone(), block_rows)
