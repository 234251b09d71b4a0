"""SnapMix: paste a resized box of the partner into a box of sample i; label the mix by class activation maps.

Huang, Wang and Tao, "SnapMix: Semantically Proportional Mixing for Augmenting Fine-grained Data", AAAI 2021.
https://arxiv.org/abs/2012.04846. Authors' code: github.com/Shaoli-Huang/SnapMix (commit 245bda4),
``utils/mixmethod.py`` (``get_spm`` lines 12-52, ``snapmix`` lines 56-92).

The method (file:line of the authors' code for each step):

- Semantic percent map of each clean image: the class activation map of its own label (``cam``, (B, h, w), the
  trainer's ``cam`` need), bilinearly upsampled to the image (``align_corners=False``, mixmethod.py:41-43), minus its
  minimum, divided by its sum (mixmethod.py:47-49), so every map sums to 1 (a constant map gives 0 / 0 = NaN).
- Two independent lambdas from Beta(alpha, alpha) (mixmethod.py:66-67): one sets the CutMix box of sample i, the
  other a box of a different size and place in the partner (both ``utils.rand_bbox``, utils/custom_ops.py:3-39:
  sides ``int(side * sqrt(1 - lam))``, uniform centre, clipped; mixmethod.py:73-74). The partner's box is resized
  bilinearly (``align_corners=True``) into sample i's box (mixmethod.py:80-82). Nothing is mixed when either box is
  empty (mixmethod.py:79); then the labels stay (1, 0) (mixmethod.py:59-60).
- Label weights (mixmethod.py:83-84): ``w_a = 1 - S_i[box_i].sum() / (S_i.sum() + 1e-8)`` and
  ``w_b = S_j[box_j].sum() / (S_j.sum() + 1e-8)``, S the semantic percent maps, j the partner. They need not sum to
  1. A NaN weight (a constant CAM) falls back to the box-area share: ``w_a = lam``, ``w_b = 1 - lam`` with
  ``lam = 1 - area(box_i) / (H * W)`` (mixmethod.py:88-90).
- ``MixOutput.lam`` is the pixel share of sample i, ``1 - area(box_i) / (H * W)`` (the contract); the targets use
  ``label_weights = (w_a, w_b)``.

Defaults:

- ``alpha=5.0`` (the code's ``beta``): the authors' README.md:78 ("we used the hyperparameter values (prob=1.,
  beta=5) for SnapMix in most of the experiments", fine-tuning ImageNet-pretrained networks). Their argparse default
  is 1.0 (utils/conf.py:157), which their from-scratch runs use (README.md:130-132, ``--prob 0.5``).
- ``prob=1.0``: README.md:78 and utils/conf.py:156; the draw is ``np.random.rand(1) < conf.prob`` (mixmethod.py:58,
  63), one per batch.
- OpenMixup (Westlake-AI/openmixup, commit 37e1372, ``openmixup/models/augments/snapmix.py``) reimplements the
  same steps (lines 66-102; its own default ``alpha=1.0`` at line 11, no ``prob``) and has no SnapMix config for
  CIFAR or ImageNet (only the Stanford-Cars ``configs/classification/cars/mixups/basic/r18_mixups_CE_none.py``,
  alpha 0.2 at line 10, shared by all methods of that file).

Option kept from the code: when sample i and its partner have the same label, the authors add the two weights and
give the sum to both columns (mixmethod.py:72, 85-87), so that label's total weight becomes ``2 (w_a + w_b)``. The
paper does not do this (its label is ``w_a y_i + w_b y_j``); ``merge_same_label=True`` restores the code's behaviour.

Modes: ``"batch"`` uses one pair of boxes and one prob draw for the batch (as the code); ``"elem"`` one pair and one
draw per sample, pasted in one vectorised bilinear gather for the whole batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from openmix.mixers import functional as F_mix
from openmix.mixers._base import MixOutput, PairMixer
from openmix.mixers._registry import register_mixer

EPS = 1e-8  # the authors' guard in the label weights (mixmethod.py:83-84)


def check_cam(cam: Any, x: Tensor, owner: str = "snapmix") -> Tensor:
    """The ``cam`` need: a (B, h, w) floating point tensor on ``x``'s device, else an error naming ``cam``."""
    if cam is None:
        raise ValueError(
            f"{owner} needs the class activation maps: call it with cam=... of shape (B, h, w), the CAM of each "
            "sample's own label on the clean batch"
        )
    if not isinstance(cam, Tensor):
        raise TypeError(f"cam must be a torch.Tensor of shape (B, h, w), got {type(cam).__name__}")
    if cam.dim() != 3 or cam.shape[0] != x.shape[0] or cam.shape[1] < 1 or cam.shape[2] < 1:
        raise ValueError(f"cam must have shape ({x.shape[0]}, h, w) like the batch, got {tuple(cam.shape)}")
    if not cam.is_floating_point():
        raise TypeError(f"cam must be a floating point tensor, got {cam.dtype}")
    if cam.device != x.device:
        raise ValueError(f"cam is on {cam.device} but x is on {x.device}: move both to the same device")
    return cam


def semantic_percent_maps(cam: Tensor, height: int, width: int) -> Tensor:
    """(B, H, W) float32: each CAM upsampled (bilinear) to the image, minus its minimum, divided by its sum.

    As the authors' ``get_spm`` (mixmethod.py:41-49); a constant map becomes NaN (0 / 0), which the label weights
    replace by the area share."""
    maps = F.interpolate(cam.float().unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False)
    maps = maps.squeeze(1)
    maps = maps - maps.amin(dim=(1, 2), keepdim=True)
    return maps / maps.sum(dim=(1, 2), keepdim=True)


def _bilinear_taps(
    dst_start: Tensor, dst_size: Tensor, src_start: Tensor, src_size: Tensor, length: int
) -> tuple[Tensor, Tensor, Tensor]:
    """For every output position 0..length-1 of n segments: the two source positions and the weight of the second
    when the source segment [src_start, src_start + src_size) is resized bilinearly (``align_corners=True``) onto
    [dst_start, dst_start + dst_size). Positions outside the destination clamp to its ends; all (n, length).

    The rule of ``F.interpolate(mode="bilinear", align_corners=True)``: scale = (in - 1) / (out - 1) in float32
    (0 when out is 1), source = scale * offset, taps floor(source) and the next one, clamped to the segment."""
    device = dst_start.device
    last_dst = (dst_size - 1).clamp(min=0).view(-1, 1)
    last_src = (src_size - 1).clamp(min=0).view(-1, 1)
    offset = torch.minimum(
        (torch.arange(length, device=device).view(1, -1) - dst_start.view(-1, 1)).clamp(min=0), last_dst
    )
    scale = torch.where(dst_size > 1, (src_size - 1).clamp(min=0).float() / (dst_size - 1).clamp(min=1).float(), 0.0)
    source = offset.float() * scale.view(-1, 1)
    first = torch.minimum(source.floor().long(), last_src)
    weight = source - first.float()
    second = torch.minimum(first + 1, last_src)
    base = src_start.view(-1, 1)
    return (base + first).clamp(0, length - 1), (base + second).clamp(0, length - 1), weight


def resized_crops(x: Tensor, index: Tensor, src_boxes: Tensor, dst_boxes: Tensor) -> Tensor:
    """(B, C, H, W): inside ``dst_boxes[i]``, the crop ``src_boxes[i]`` of ``x[index[i]]`` resized bilinearly
    (``align_corners=True``) to that box; elsewhere other pixels (a caller masks them out).

    Separable and vectorised over the batch: one gather of rows and one of columns (two taps each), the same
    interpolation as ``F.interpolate`` on each crop up to float rounding. Reduced precision inputs are interpolated in
    float32."""
    batch_size, channels, height, width = x.shape
    device = x.device
    src = F_mix.to_device(src_boxes, device)
    dst = F_mix.to_device(dst_boxes, device)
    row_a, row_b, row_w = _bilinear_taps(dst[:, 0], dst[:, 1] - dst[:, 0], src[:, 0], src[:, 1] - src[:, 0], height)
    col_a, col_b, col_w = _bilinear_taps(dst[:, 2], dst[:, 3] - dst[:, 2], src[:, 2], src[:, 3] - src[:, 2], width)
    partners = x.index_select(0, index)
    if partners.dtype in (torch.float16, torch.bfloat16):
        partners = partners.float()
    shape = (batch_size, channels, height, width)

    def rows(taps: Tensor) -> Tensor:
        return partners.gather(2, taps.view(batch_size, 1, height, 1).expand(shape))

    vertical = torch.lerp(rows(row_a), rows(row_b), row_w.view(batch_size, 1, height, 1).to(partners.dtype))

    def cols(taps: Tensor) -> Tensor:
        return vertical.gather(3, taps.view(batch_size, 1, 1, width).expand(shape))

    resized = torch.lerp(cols(col_a), cols(col_b), col_w.view(batch_size, 1, 1, width).to(partners.dtype))
    return resized.to(x.dtype).contiguous(memory_format=F_mix.memory_format_of(x))


def _box_area(boxes: Tensor) -> Tensor:
    return (boxes[:, 1] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 2]).clamp(min=0)


@register_mixer(
    "snapmix",
    paper="SnapMix: Semantically Proportional Mixing for Augmenting Fine-grained Data (Huang, Wang and Tao, AAAI 2021)",
    url="https://arxiv.org/abs/2012.04846",
)
class SnapMix(PairMixer):
    """SnapMix.

    Args:
        alpha: Beta(alpha, alpha) concentration of both box lambdas (the authors' ``beta``: 5 in most experiments).
        prob: probability of mixing a batch (elem mode: a sample); otherwise it is left as it is, labels (1, 0).
        merge_same_label: give both columns ``w_a + w_b`` when a sample and its partner share the label (the
            authors' code; not in the paper).
        mode: ``"batch"`` (one pair of boxes) or ``"elem"`` (one pair per sample).
        pairing: ``"random"`` or ``"flip"``.
        inplace: write into the input tensor; in batch mode only the box is written.

    Call: ``mixer(x, y, generator=None, lam=None, cam=...)`` with ``cam`` (B, h, w) the raw class activation map of
    each sample's own label on the clean batch. An explicit ``lam`` sets sample i's box (its pixel share before
    clipping); the partner's box is still drawn from Beta(alpha, alpha).
    """

    hooks = ("inputs",)
    requires = ("cam",)
    moves_partner = True  # a box of the partner, resized into sample i's box

    def __init__(
        self,
        alpha: float = 5.0,
        prob: float = 1.0,
        merge_same_label: bool = False,
        mode: str = "batch",
        pairing: str = "random",
        inplace: bool = False,
    ):
        super().__init__(alpha, mode, pairing, inplace)
        self.prob = F_mix.check_real(prob, "prob", "lie in [0, 1]", lambda p: 0.0 <= p <= 1.0)
        self.merge_same_label = F_mix.check_bool(merge_same_label, "merge_same_label")
        self._pending: tuple[Tensor, Tensor, Tensor] | None = None

    def extra_repr(self) -> str:
        return super().extra_repr() + f", prob={self.prob}, merge_same_label={self.merge_same_label}"

    def forward(
        self,
        x: Tensor,
        y: Tensor,
        generator: torch.Generator | None = None,
        lam: float | Tensor | None = None,
        **context: Any,
    ) -> MixOutput:
        """Mix a batch (see :meth:`PairMixer.forward`); the output's ``label_weights`` are the CAM weights."""
        self._pending = None
        out = super().forward(x, y, generator, lam, **context)
        weight_a, weight_b, pasted = self._pending
        self._pending = None
        if self.merge_same_label:
            labels_a, labels_b = out.y_a, out.y_b
            same = labels_a == labels_b if labels_a.dim() == 1 else (labels_a == labels_b).all(dim=1)
            same = same.to(weight_a.device) & pasted
            weight_a, weight_b = (
                torch.where(same, weight_a + weight_b, weight_a),
                torch.where(same, weight_b + weight_a, weight_b),
            )
        # a constant CAM gives NaN: fall back to the areas, as the authors (mixmethod.py:88-90)
        lam_out = out.lam.to(weight_a.device)
        weight_a = torch.where(torch.isnan(weight_a), lam_out, weight_a)
        weight_b = torch.where(torch.isnan(weight_b), 1.0 - lam_out, weight_b)
        return out.with_label_weights(torch.stack([weight_a, weight_b], dim=1))

    def mix(
        self, x: Tensor, index: Tensor, lam: Tensor | None, generator: torch.Generator | None, **context: Any
    ) -> tuple[Tensor, Tensor, Tensor]:
        batch_size, _, height, width = x.shape
        device = x.device
        maps = semantic_percent_maps(check_cam(context.get("cam"), x), height, width)
        num = 1 if self.mode == "batch" else batch_size
        apply = F_mix.sample_uniform(0.0, 1.0, num, generator) < self.prob
        own_lam = self.draw_lam(lam, batch_size, generator)[:num]
        partner_lam = F_mix.sample_beta(self.alpha, num, generator)
        boxes = F_mix.boxes_from_lam(own_lam, height, width, generator)  # sample i's box
        sources = F_mix.boxes_from_lam(partner_lam, height, width, generator)  # the partner's box
        pasted = apply & (_box_area(boxes) > 0) & (_box_area(sources) > 0)
        boxes = torch.where(pasted.view(-1, 1), boxes, torch.zeros_like(boxes))  # nothing pasted: an empty box
        mask = F_mix.box_keep_mask(boxes, height, width, device)
        if self.mode == "batch":
            mixed = x if self.inplace else x.clone()
            if bool(F_mix.host_values(pasted)[0]):
                top, bottom, left, right = F_mix.host_values(boxes[0]).tolist()
                src_top, src_bottom, src_left, src_right = F_mix.host_values(sources[0]).tolist()
                crops = x[:, :, src_top:src_bottom, src_left:src_right]
                patch = F.interpolate(crops, size=(bottom - top, right - left), mode="bilinear", align_corners=True)
                mixed[:, :, top:bottom, left:right] = patch.index_select(0, index)
        else:
            partners = resized_crops(x, index, sources, boxes)
            mixed = F_mix.lerp_into(partners, x, mask.to(x.dtype), out=x if self.inplace else partners)
        # label weights from the semantic percent maps of the clean images (mixmethod.py:83-84)
        inside_own = 1.0 - mask[:, 0]  # (n, H, W): sample i's box
        inside_partner = 1.0 - F_mix.box_keep_mask(sources, height, width, device)[:, 0]  # the partner's box
        partner_maps = maps.index_select(0, index)
        weight_a = 1.0 - (maps * inside_own).sum(dim=(1, 2)) / (maps.sum(dim=(1, 2)) + EPS)
        weight_b = (partner_maps * inside_partner).sum(dim=(1, 2)) / (partner_maps.sum(dim=(1, 2)) + EPS)
        pasted_here = F_mix.to_device(pasted, device).expand(batch_size)
        weight_a = torch.where(pasted_here, weight_a, torch.ones_like(weight_a))  # unmixed: (1, 0), mixmethod.py:59-60
        weight_b = torch.where(pasted_here, weight_b, torch.zeros_like(weight_b))
        self._pending = (weight_a, weight_b, pasted_here)
        return mixed, F_mix.box_lam(boxes, height, width).expand(batch_size), mask
