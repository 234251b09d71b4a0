"""CutMix: paste a rectangle of the partner image; labels mixed by the pasted area.

Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features", ICCV 2019.
https://arxiv.org/abs/1905.04899

The box has sides sqrt(1 - lam) times the image's and a uniform centre; it is clipped to the image and lambda is
recomputed from the clipped area, as the authors do: lam = 1 - (box area) / (H * W).
"""

from __future__ import annotations

import torch
from torch import Tensor

from openmix.mixers import functional as F_mix
from openmix.mixers._base import PairMixer
from openmix.mixers._registry import register_mixer


@register_mixer(
    "cutmix",
    paper="CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features "
    "(Yun et al., ICCV 2019)",
    url="https://arxiv.org/abs/1905.04899",
)
class CutMix(PairMixer):
    """CutMix.

    Args:
        alpha: Beta(alpha, alpha) concentration of lambda (the paper uses 1).
        minmax: optional (min, max) fractions of the image side: box sides are drawn uniformly in that range and the
            box is placed fully inside the image (timm's ``cutmix_minmax``). Used when no explicit ``lam`` is given.
        mode: ``"batch"`` (one box) or ``"elem"`` (one per sample).
        pairing: ``"random"`` or ``"flip"``.
        inplace: write into the input tensor; in batch mode only the box is written.
    """

    reads_pixels = False  # its draws depend on the sizes and the generator alone
    pastes_boxes = True  # draw_boxes gives its boxes; a collate function pastes them itself

    def __init__(
        self,
        alpha: float = 1.0,
        minmax: tuple[float, float] | None = None,
        mode: str = "batch",
        pairing: str = "random",
        inplace: bool = False,
    ):
        super().__init__(alpha, mode, pairing, inplace)
        if minmax is not None:
            low, high = F_mix.check_pair(minmax, "minmax")
            if not 0.0 <= low < high <= 1.0:
                raise ValueError(f"minmax must be (min, max) with 0 <= min < max <= 1, got {minmax!r}")
            minmax = (low, high)
        self.minmax = minmax

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", minmax={self.minmax}" if self.minmax else "")

    def mix(
        self, x: Tensor, index: Tensor, lam: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        batch_size, _, height, width = x.shape
        boxes = self.draw_boxes(batch_size, height, width, lam, generator)
        mixed, mask = F_mix.paste_boxes(x, index, boxes, self.inplace)
        return mixed, F_mix.box_lam(boxes, height, width).expand(batch_size), mask

    def draw_boxes(
        self, batch_size: int, height: int, width: int, lam: Tensor | None, generator: torch.Generator | None
    ) -> Tensor:
        """The boxes of a call, drawn from ``generator`` after the partners: (1, 4) in batch mode, (B, 4) in elem
        mode, int64 host [top, bottom, left, right], clipped to the image. ``lam``: the call's checked explicit
        lambdas ((B,) float64) or ``None`` (Beta(alpha, alpha) draws, or ``minmax`` sides)."""
        num_boxes = 1 if self.mode == "batch" else batch_size
        if self.minmax is not None and lam is None:
            return F_mix.boxes_from_minmax(self.minmax, num_boxes, height, width, generator)
        lam = self.draw_lam(lam, batch_size, generator)
        return F_mix.boxes_from_lam(lam[:num_boxes], height, width, generator)
