"""TransMix: CutMix (or Mixup) on the inputs; the labels of a CutMix'ed image re-weighted by the ViT's attention.

Chen et al., "TransMix: Attend to Mix for Vision Transformers", CVPR 2022. https://arxiv.org/abs/2111.09833.
Authors' code: github.com/Beckschen/TransMix (commit 0e4d31e), ``transmix.py`` (a subclass of timm's ``Mixup``),
``train.py`` and ``configs/deit_s_transmix.yaml``.

Inputs (hook ``inputs``), as the authors' ``Mixup_transmix`` (transmix.py:50-64, timm ``Mixup._params_per_batch``):
with probability ``switch_prob`` the batch gets a CutMix box (Beta(alpha, alpha) lambda, uniform centre, clipped,
lambda corrected to the clipped area: timm ``cutmix_bbox_and_lam``, transmix.py:56-58), otherwise Mixup with
lambda ~ Beta(mixup_alpha, mixup_alpha) (transmix.py:60-62). The CutMix mask stays in the ``MixOutput``.

Targets (hook ``targets``, after the forward pass of the mixed batch): ``refine_targets(mix, attention=A)`` with A
(B, gh, gw) the class token's attention over the patch tokens in the last block, averaged over heads (the authors
take ``attn[:, :, 0, 1:].mean(1)`` of the last block, timm/models/vision_transformer.py:366-368). The pixel mask is
brought to the patch grid by nearest-neighbour interpolation (transmix.py:85, ``nn.Upsample`` whose default mode is
"nearest"; the paper's down-sampling operator) and

    lam_attn_i = sum_p A_i[p] * M_i[p] / sum_p A_i[p]          M_i = 1 on sample i's own patches

(transmix.py:87-88 compute the partner's share ``w2 / (w1 + w2)``, i.e. 1 - lam_attn). ``label_weights`` become
``(lam_attn, 1 - lam_attn)``; ``MixOutput.lam`` stays the pixel share (the contract). A batch that went through
Mixup keeps its Mixup label: the authors relabel only when CutMix was drawn (train.py:697-698).

Defaults (the authors' ImageNet recipe):

- ``alpha=1.0`` (CutMix Beta): configs/deit_s_transmix.yaml:8 (``cutmix: 1.0``).
- ``mixup_alpha=0.8``: configs/deit_s_transmix.yaml:7 (``mixup: 0.8``).
- ``switch_prob=0.8`` (probability of CutMix + TransMix): configs/deit_s_transmix.yaml:17 (``mixup-switch-prob``).
  OpenMixup's (Westlake-AI/openmixup, commit 37e1372) CIFAR-100 DeiT config uses the same three values
  (configs/classification/cifar100/mixups/vits/deit_tiny/deit_tiny_ep200/deit_t_transmix_p0_8_sz224_bs100_ep200.py
  lines 5-7: ``alpha=[0.8, 1.0]``, ``mix_prob=[0.2, 0.8]``).
- ``area_weight=0.0``: the paper labels with the attention share alone (lambda = A . downsample(M)). The authors'
  code averages it with the area share, ``lam = (lam_area + lam_attn) / 2`` (transmix.py:67 ``ratio=0.5``, line 89),
  as does OpenMixup (``openmixup/models/augments/transmix.py`` lines 18 and 108); ``area_weight=0.5`` reproduces it.
- Mixing is applied to every batch (timm ``prob``, train.py:205 default 1.0); timm pairs sample i with the flipped
  batch (transmix.py:58), openmix's ``pairing="flip"`` does the same (default ``"random"``, as every openmix mixer).

Modes: the authors' code is batch mode only (transmix.py:95). ``mode="elem"`` draws the switch, the lambda and the
box per sample (timm's elem mode); a sample that got Mixup then has a constant mask row equal to its lambda, and the
attention share of a constant mask is that lambda, so it keeps its Mixup label without any branch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from openmix.mixers import functional as F_mix
from openmix.mixers._base import MixOutput, PairMixer
from openmix.mixers._registry import register_mixer


def check_attention(attention: Any, mix: MixOutput, owner: str) -> Tensor:
    """The ``attention`` need: a (B, gh, gw) floating point tensor on the batch's device, else an error naming it."""
    if attention is None:
        raise ValueError(
            f"{owner} needs the class token's attention: call refine_targets(mix, attention=...) with (B, gh, gw) "
            "attention of the last block over the patch tokens, after the forward pass of the mixed batch"
        )
    if not isinstance(attention, Tensor):
        raise TypeError(f"attention must be a torch.Tensor of shape (B, gh, gw), got {type(attention).__name__}")
    batch_size = mix.lam.shape[0]
    if attention.dim() != 3 or attention.shape[0] != batch_size or min(attention.shape[1:]) < 1:
        raise ValueError(f"attention must have shape ({batch_size}, gh, gw), got {tuple(attention.shape)}")
    if not attention.is_floating_point():
        raise TypeError(f"attention must be a floating point tensor, got {attention.dtype}")
    if attention.device != mix.lam.device:
        raise ValueError(f"attention is on {attention.device} but the mix is on {mix.lam.device}")
    return attention


def attention_share(mask: Tensor, attention: Tensor, fallback: Tensor) -> Tensor:
    """(B,) float32 share of each sample's attention that falls on its own patches.

    ``mask`` (1 or B, 1, H, W) is the per-pixel weight of sample i; it is taken to the attention grid (gh, gw) by
    nearest-neighbour interpolation (patch p is sample i's when the pixel ``F.interpolate(mode="nearest")`` reads
    for it is: the top-left pixel of the patch when H and W are multiples of the grid). Where the attention sums to
    0 the share is ``fallback`` (the pixel share)."""
    own = F.interpolate(mask.float(), size=tuple(attention.shape[-2:]), mode="nearest")[:, 0]
    weights = attention.float()
    total = weights.sum(dim=(1, 2))
    kept = (weights * own).sum(dim=(1, 2))
    share = kept / torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, share, fallback.to(share))


def mixup_lam(lam: Tensor | None, alpha: float, num: int, generator: torch.Generator | None) -> Tensor:
    """(num,) float64 CPU lambdas of the Mixup branch: the explicit ones, else Beta(alpha, alpha) draws (ones when
    alpha is 0, the branch being off)."""
    if lam is not None:
        return lam[:num]
    if alpha <= 0:
        return torch.ones(num, dtype=torch.float64)
    return F_mix.sample_beta(alpha, num, generator)


def check_switch(mixup_alpha: Any, switch_prob: Any) -> tuple[float, float]:
    mixup_alpha = F_mix.check_real(
        mixup_alpha, "mixup_alpha", "be a finite number >= 0 (0: no Mixup branch)", lambda a: 0.0 <= a < float("inf")
    )
    switch_prob = F_mix.check_real(switch_prob, "switch_prob", "lie in [0, 1]", lambda p: 0.0 <= p <= 1.0)
    return mixup_alpha, switch_prob


def draw_switch(switch_prob: float, mixup_alpha: float, num: int, generator: torch.Generator | None) -> Tensor:
    """(num,) CPU bool: True where the region branch (CutMix / TokenMix) is used, False for Mixup."""
    draws = F_mix.sample_uniform(0.0, 1.0, num, generator)
    if mixup_alpha <= 0:
        return torch.ones(num, dtype=torch.bool)
    return draws < switch_prob


def blend_branches(
    x: Tensor,
    index: Tensor,
    region: Tensor,
    region_lam: Tensor,
    mixup: Tensor,
    use_region: Tensor,
    inplace: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Elem mode: rows that use the region branch take ``region`` (B, 1, H, W) keep masks, the others a constant
    mask equal to their Mixup lambda; one blend for the batch. Returns (mixed, (B,) lambda, mask)."""
    device = x.device
    flat = mixup.to(device=device, dtype=torch.float32, non_blocking=True).view(-1, 1, 1, 1)
    choose = use_region.to(device, non_blocking=True).view(-1, 1, 1, 1)
    mask = torch.where(choose, region, flat)
    mixed = F_mix.blend(x, index, mask, inplace)
    return mixed, torch.where(use_region, region_lam, mixup), mask


@register_mixer(
    "transmix",
    paper="TransMix: Attend to Mix for Vision Transformers (Chen et al., CVPR 2022)",
    url="https://arxiv.org/abs/2111.09833",
)
class TransMix(PairMixer):
    """TransMix.

    Args:
        alpha: Beta(alpha, alpha) concentration of the CutMix lambda.
        mixup_alpha: Beta concentration of the Mixup branch; 0 turns the branch off (CutMix + TransMix always).
        switch_prob: probability of the CutMix + TransMix branch (per batch, or per sample in elem mode).
        area_weight: weight of the area share in the label, ``(1 - area_weight) * lam_attn + area_weight * lam``;
            0 is the paper, 0.5 the authors' code.
        mode: ``"batch"`` (one branch, lambda and box for the batch) or ``"elem"`` (per sample).
        pairing: ``"random"`` or ``"flip"`` (the authors' timm ``Mixup`` flips the batch).
        inplace: write into the input tensor.

    Use: ``mix = mixer(x, y)``; ``logits = vit(mix.x)`` while recording the last block's class-token attention;
    ``mix = mixer.refine_targets(mix, attention=attention)``; the loss reads ``mix.label_weight_matrix()``. An
    explicit ``lam`` is used by whichever branch is drawn.
    """

    hooks = ("inputs", "targets")
    requires = ("attention",)

    def __init__(
        self,
        alpha: float = 1.0,
        mixup_alpha: float = 0.8,
        switch_prob: float = 0.8,
        area_weight: float = 0.0,
        mode: str = "batch",
        pairing: str = "random",
        inplace: bool = False,
    ):
        super().__init__(alpha, mode, pairing, inplace)
        self.mixup_alpha, self.switch_prob = check_switch(mixup_alpha, switch_prob)
        self.area_weight = F_mix.check_real(area_weight, "area_weight", "lie in [0, 1]", lambda w: 0.0 <= w <= 1.0)

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", mixup_alpha={self.mixup_alpha}, switch_prob={self.switch_prob}, area_weight={self.area_weight}"
        )

    def mix(
        self, x: Tensor, index: Tensor, lam: Tensor | None, generator: torch.Generator | None, **context: Any
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        batch_size, _, height, width = x.shape
        num = 1 if self.mode == "batch" else batch_size
        use_cutmix = draw_switch(self.switch_prob, self.mixup_alpha, num, generator)
        cut_lam = self.draw_lam(lam, batch_size, generator)[:num]
        blend_lam = mixup_lam(lam, self.mixup_alpha, num, generator)
        boxes = F_mix.boxes_from_lam(cut_lam, height, width, generator)
        if self.mode == "batch":
            if bool(use_cutmix[0]):
                mixed, mask = F_mix.paste_boxes(x, index, boxes, self.inplace)
                return mixed, F_mix.box_lam(boxes, height, width).expand(batch_size), mask
            weight = float(blend_lam[0])
            return F_mix.blend(x, index, weight, self.inplace), blend_lam.expand(batch_size), None
        region = F_mix.box_keep_mask(boxes, height, width, x.device)
        return blend_branches(
            x, index, region, F_mix.box_lam(boxes, height, width), blend_lam, use_cutmix, self.inplace
        )

    def refine_targets(self, mix: MixOutput, attention: Tensor | None = None, **needs: Any) -> MixOutput:
        """Hook ``targets``: label weights ``(w, 1 - w)``, ``w = (1 - area_weight) * lam_attn + area_weight *
        lam``, lam_attn the share of the class token's attention on sample i's own patches. A batch mixed by the
        Mixup branch (no mask) keeps its label."""
        if needs:
            raise ValueError(f"TransMix.refine_targets got unexpected arguments {sorted(needs)}; it takes attention")
        attention = check_attention(attention, mix, "transmix")
        if mix.mask is None:
            return mix
        share = attention_share(mix.mask, attention, mix.lam)
        if self.area_weight > 0:
            share = (1.0 - self.area_weight) * share + self.area_weight * mix.lam.to(share)
        return mix.with_label_weights(share)
