"""SaliencyMix keeps everything that depends on the saliency peaks on the batch's device: the boxes, the paste and
the reported lambda follow the reference rules (``functional.boxes_from_ratio`` with the peaks as centres,
``functional.box_lam``) exactly, and a call makes no operation that would wait for a CUDA device."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import openmix
from openmix.mixers import functional as F_mix
from openmix.mixers.saliencymix import box_area_lam, box_inside, boxes_around, saliency_peaks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from count_syncs import count_sync_ops  # noqa: E402


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_saliencymix_call_makes_no_sync_like_op(mode):
    # the peaks are device data: boxes, paste and lambda are built from them without reading them back
    mixer = openmix.create_mixer("saliencymix", mode=mode)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    mixer(x, y, generator=torch.Generator().manual_seed(0))  # warm-up
    assert count_sync_ops(lambda: mixer(x, y, generator=torch.Generator().manual_seed(1))) == {}


def test_boxes_around_the_peaks_follow_boxes_from_ratio():
    generator = torch.Generator().manual_seed(0)
    height, width = 37, 50
    peaks = torch.stack(
        [torch.randint(0, height, (200,), generator=generator), torch.randint(0, width, (200,), generator=generator)], 1
    )
    ratio = torch.rand(200, generator=generator, dtype=torch.float64)
    ratio[:4] = torch.tensor([0.0, 1.0, 0.02, 0.999])  # empty, whole image, under one pixel, almost whole
    boxes = boxes_around(peaks, ratio, height, width)
    assert boxes.dtype == torch.int64
    assert torch.equal(boxes, F_mix.boxes_from_ratio(ratio, height, width, centers=peaks))
    assert torch.equal(box_area_lam(boxes, height, width), F_mix.box_lam(boxes, height, width))
    assert torch.equal(
        box_inside(boxes, height, width).logical_not().float(), F_mix.box_keep_mask(boxes, height, width)
    )


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_saliencymix_pastes_the_partner_inside_the_box_around_its_peak(mode, inplace):
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, 20, 24, generator=generator)
    lam = torch.tensor([0.2, 0.5, 0.7, 0.95, 0.0], dtype=torch.float64)
    lam = lam if mode == "elem" else lam[0]
    mixer = openmix.create_mixer("saliencymix", mode=mode, inplace=inplace)
    source = x.clone()
    out = mixer(source, torch.arange(5), generator=generator, lam=lam)
    assert (out.x.data_ptr() == source.data_ptr()) == inplace
    peaks = saliency_peaks(x[out.index[:1] if mode == "batch" else out.index], "torch", mixer.max_saliency_size)
    ratio = (1.0 - lam.reshape(-1)).sqrt()
    boxes = F_mix.boxes_from_ratio(ratio, 20, 24, centers=peaks)
    for i in range(5):
        top, bottom, left, right = boxes[i if mode == "elem" else 0].tolist()
        expected = x[i].clone()
        expected[:, top:bottom, left:right] = x[out.index[i], :, top:bottom, left:right]
        assert torch.equal(out.x[i], expected)
        assert float(out.lam[i]) == pytest.approx(1 - (bottom - top) * (right - left) / (20 * 24), abs=1e-7)
    assert out.mask.shape == (5 if mode == "elem" else 1, 1, 20, 24)
