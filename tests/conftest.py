"""Shared helpers: building any registered mixer for tests, and an independent partner reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import openmix
from openmix.mixers.resizemix import ResizeMix


class TinyExtractor(nn.Module):
    """A small fixed feature extractor for mixers that need a network (any channel count)."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.mean(dim=1, keepdim=True))


def build_mixer(name: str, **kwargs) -> nn.Module:
    """``create_mixer`` with a tiny extractor for mixers whose registry entry says they need a network."""
    if openmix.get_mixer_entry(name).needs_network:
        kwargs.setdefault("extractor", TinyExtractor())
    return openmix.create_mixer(name, **kwargs)


def box_of(mask_row: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) bounding box of the zeros of an (H, W) mask, None when there are none."""
    rows, cols = torch.nonzero(mask_row < 0.5, as_tuple=True)
    if rows.numel() == 0:
        return None
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


def partner_pixels(mixer: nn.Module, x: torch.Tensor, out: openmix.MixOutput) -> torch.Tensor:
    """What the (1 - mask) part of ``out.x`` must hold, computed independently of the mixer's code.

    For every method it is the partner ``x[index]``, except ResizeMix, which pastes the partner resized to the box:
    here each box is read back from the mask and filled with ``F.interpolate(nearest)`` one sample at a time.
    """
    partners = x[out.index].float()
    if not isinstance(mixer, ResizeMix):
        return partners
    for i in range(x.shape[0]):
        mask_row = out.mask[i if out.mask.shape[0] > 1 else 0, 0]
        box = box_of(mask_row)
        if box is None:
            continue
        top, bottom, left, right = box
        resized = F.interpolate(x[out.index[i]][None].float(), size=(bottom - top, right - left), mode="nearest")
        partners[i, :, top:bottom, left:right] = resized[0]
    return partners


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
