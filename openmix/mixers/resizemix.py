"""ResizeMix: paste the whole partner image, shrunk, into a box of sample i.

Qin et al., "ResizeMix: Mixing Data with Preserved Object Information and True Labels", 2020.
https://arxiv.org/abs/2012.11101

The box side is tau times the image side, tau ~ U(scope) with scope (0.1, 0.8); its centre is uniform and it is
clipped to the image; the partner is resized (nearest neighbour by default) to the clipped box, and
lam = 1 - (box area) / (H * W). An explicit ``lam`` sets tau = sqrt(1 - lam).

The boxes and the pairs are host draws; they reach the batch's device through ``functional.to_device`` and nothing
is read back, so a call never waits for a device. Elem mode resizes each partner to its own box without a loop over
samples: only the box rows are rebuilt and written (:func:`paste_resized_partners`), in blocks that stay in cache on
the CPU. :func:`resized_partners` (every partner resized whole, by two gathers) is the simpler form it is tested
against. Both give what ``F.interpolate(mode="nearest")`` gives, bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from openmix.mixers import functional as F_mix
from openmix.mixers._base import PairMixer
from openmix.mixers._registry import register_mixer
from openmix.mixers.functional import host_values, to_device


def _nearest_source_index(offset: Tensor, in_size: int, out_size: Tensor) -> Tensor:
    """Source index read by output index ``offset`` when ``in_size`` pixels are resized to ``out_size`` (nearest).

    The rule and the rounding of ``F.interpolate(mode="nearest")``: scale = in_size / out_size and
    src = floor(offset * scale), both in float32 (as ATen's ``nearest_idx`` does), clamped to [0, in_size - 1].
    Exact integer arithmetic, floor(offset * in_size / out_size), differs from it by one where float32 rounds the
    product just below an integer (e.g. in 26, out 22, offset 11: 12, not 13). Broadcasts ``offset`` against
    ``out_size``; offsets outside [0, out_size) clamp to the border.
    """
    out_float = out_size.clamp(min=1).to(torch.float32)
    scale = torch.full_like(out_float, float(in_size)) / out_float  # a true float32 division, not a reciprocal
    return torch.floor(offset.to(torch.float32) * scale).long().clamp(0, in_size - 1)


def resized_partners(x: Tensor, index: Tensor, boxes: Tensor) -> Tensor:
    """(B, C, H, W): inside box i, ``x[index[i]]`` resized (nearest) to the box; outside, other pixels of it.

    Output pixel (r, c) of box [top, bottom, left, right] reads the partner's row ``_nearest_source_index(r - top,
    H, h)`` and column ``_nearest_source_index(c - left, W, w)``, h, w the box sides: exactly what
    ``F.interpolate(partner, size=(h, w), mode="nearest")`` puts there, with its float32 index rounding (which
    ATen uses on CPU for float16, bfloat16 and float32 inputs, and on CUDA for every dtype).
    Vectorised over the batch and separable: one gather of whole rows, then one gather of columns.
    """
    batch_size, channels, height, width = x.shape
    device = x.device
    top, bottom, left, right = (side.view(-1, 1) for side in to_device(boxes, device).unbind(1))
    rows = torch.arange(height, device=device).view(1, -1)
    cols = torch.arange(width, device=device).view(1, -1)
    src_rows = _nearest_source_index(rows - top, height, bottom - top)  # (B, H)
    src_cols = _nearest_source_index(cols - left, width, right - left)  # (B, W)
    partner = to_device(index, device).view(-1, 1)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        # rows of W * C values in (B, H, W, C) memory; columns are whole pixels
        row_ids = (partner * height + src_rows).flatten()
        picked = x.permute(0, 2, 3, 1).reshape(batch_size * height, width * channels).index_select(0, row_ids)
        picked = picked.view(batch_size, height, width, channels)
        index_cols = src_cols.view(batch_size, 1, width, 1).expand(batch_size, height, width, channels)
        return picked.gather(2, index_cols).permute(0, 3, 1, 2)
    # rows of W values in (B, C, H, W) memory
    row_ids = (
        (partner.view(-1, 1, 1) * channels + torch.arange(channels, device=device).view(1, -1, 1)) * height
        + src_rows.view(batch_size, 1, height)
    ).flatten()
    picked = x.reshape(batch_size * channels * height, width).index_select(0, row_ids)
    picked = picked.view(batch_size, channels * height, width)
    index_cols = src_cols.view(batch_size, 1, width).expand(batch_size, channels * height, width)
    return picked.gather(2, index_cols).view(batch_size, channels, height, width)


def _box_rows(boxes: Tensor, height: int) -> np.ndarray:
    """(R, 3) int64 (sample, partner row read, row written) for each row of each box with pixels, in sample order
    (R = the sum of their heights), from the (B, 4) host ``boxes``: host bookkeeping, no device involved."""
    sample, offset, heights = F_mix.box_rows(boxes)
    read = _nearest_source_index(F_mix.host_tensor(offset), height, F_mix.host_tensor(heights))
    top = host_values(boxes)[sample, 0].astype(np.int64)
    return np.stack([sample, host_values(read), top + offset], axis=1)


def paste_resized_partners(
    x: Tensor, index: Tensor, boxes: Tensor, out: Tensor, block_rows: int | None = None
) -> Tensor:
    """Write ``x[index[i]]`` resized (nearest) into box i of ``out`` (``x`` itself or a copy of it) and return
    ``out``: bit for bit ``lerp(resized_partners(x, index, boxes), x, keep mask)``, in either memory format, for
    finite values (pixels are copied, not blended: a NaN or inf in the partner stays inside the box, where the blend
    would spread it to the sample's own pixels).

    Only the box rows are rebuilt (:func:`openmix.mixers.functional.merge_rows`): box row r of sample i reads the
    partner's row ``_nearest_source_index(r - top, H, h)`` and, inside the box, its columns
    ``_nearest_source_index(c - left, W, w)``; outside the box the row keeps sample i's own pixels. This reads and
    writes far less than resizing every partner and blending the whole batch.

    Args:
        x: (B, C, H, W) batch, read only (it may be ``out``).
        index: (B,) int64 partners, on ``x``'s device.
        boxes: (B, 4) int64 host [top, bottom, left, right] (the row bookkeeping is made on the host and moved with
            :func:`to_device`, so nothing is read back from a device).
        out: the tensor written, ``x`` or a tensor of its shape and memory format.
        block_rows: box rows per block of work (see ``merge_rows``: one block in place); a positive int or ``None``.

    Returns:
        ``out``, written in place.
    """
    height, width = x.shape[-2:]
    rows = _box_rows(boxes, height)
    if rows.shape[0] == 0:
        return out
    device = x.device
    sample, read, write = to_device(F_mix.host_tensor(rows), device).unbind(1)  # (R,) each
    left, right = (side.view(-1, 1) for side in to_device(boxes[:, 2:4], device).unbind(1))
    cols = torch.arange(width, device=device).view(1, -1)
    inside = (cols >= left) & (cols < right)
    # (B, W) pixel each output column takes from [partner row | own row]: resized inside the box, own outside
    columns = torch.where(inside, _nearest_source_index(cols - left, width, right - left), cols + width)
    partner_rows = index.index_select(0, sample) * height + read  # (R,) image rows, b * H + h
    return F_mix.merge_rows(x, out, partner_rows, sample * height + write, columns.index_select(0, sample), block_rows)


@register_mixer(
    "resizemix",
    paper="ResizeMix: Mixing Data with Preserved Object Information and True Labels (Qin et al., 2020)",
    url="https://arxiv.org/abs/2012.11101",
)
class ResizeMix(PairMixer):
    """ResizeMix.

    Args:
        scope: (min, max) of the box side as a fraction of the image side.
        use_alpha: draw tau from Beta(alpha, alpha) (redrawn uniformly in ``scope`` when it falls outside) instead
            of U(scope), as some of OpenMixup's configs do.
        alpha: Beta concentration, used only with ``use_alpha``.
        interpolation: ``"nearest"`` (paper and OpenMixup default, vectorised in elem mode) or ``"bilinear"``
            (batch mode only).
        mode: ``"batch"`` (one box) or ``"elem"`` (one per sample).
        pairing: ``"random"`` or ``"flip"``.
        inplace: write into the input tensor; in batch mode only the box is written.
    """

    moves_partner = True  # the whole partner image, resized into the box

    def __init__(
        self,
        scope: tuple[float, float] = (0.1, 0.8),
        use_alpha: bool = False,
        alpha: float = 1.0,
        interpolation: str = "nearest",
        mode: str = "batch",
        pairing: str = "random",
        inplace: bool = False,
    ):
        super().__init__(alpha, mode, pairing, inplace)
        low, high = F_mix.check_pair(scope, "scope")
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"scope must be (min, max) with 0 < min <= max <= 1, got {scope!r}")
        self.use_alpha = F_mix.check_bool(use_alpha, "use_alpha")
        if not isinstance(interpolation, str) or interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")
        if interpolation == "bilinear" and mode == "elem":
            raise ValueError("interpolation='bilinear' is only available with mode='batch'")
        self.scope = (low, high)
        self.interpolation = interpolation

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scope={self.scope}, interpolation={self.interpolation!r}"

    def draw_scale(self, num: int, generator: torch.Generator | None) -> Tensor:
        """(num,) float64 box-side ratios tau."""
        low, high = self.scope
        uniform = F_mix.sample_uniform(low, high, num, generator)
        if not self.use_alpha:
            return uniform
        tau = F_mix.sample_beta(self.alpha, num, generator)
        return torch.where((tau < low) | (tau > high), uniform, tau)

    def mix(
        self, x: Tensor, index: Tensor, lam: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        batch_size, _, height, width = x.shape
        num_boxes = 1 if self.mode == "batch" else batch_size
        tau = self.draw_scale(num_boxes, generator) if lam is None else (1.0 - lam[:num_boxes]).clamp(min=0).sqrt()
        boxes = F_mix.boxes_from_ratio(tau, height, width, generator)
        if num_boxes > 1:
            mask = F_mix.box_keep_mask(boxes, height, width, x.device)
            mixed = paste_resized_partners(x, index, boxes, x if self.inplace else x.clone())
        else:
            top, bottom, left, right = host_values(boxes[0]).tolist()
            mask = F_mix.box_keep_mask(boxes, height, width, x.device)
            mixed = x if self.inplace else x.clone()
            if bottom > top and right > left:
                # resizing then permuting equals permuting then resizing, and reads only the pixels it keeps
                patch = F.interpolate(x, size=(bottom - top, right - left), mode=self.interpolation)
                mixed[:, :, top:bottom, left:right] = patch.index_select(0, index)
        return mixed, F_mix.box_lam(boxes, height, width).expand(batch_size), mask
