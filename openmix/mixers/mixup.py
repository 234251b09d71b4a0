"""Mixup: global linear interpolation of two images and their labels.

Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018. https://arxiv.org/abs/1710.09412

    x~ = lam * x_i + (1 - lam) * x_j,   y~ = lam * y_i + (1 - lam) * y_j,   lam ~ Beta(alpha, alpha)
"""

from __future__ import annotations

import torch
from torch import Tensor

from openmix.mixers import functional as F_mix
from openmix.mixers._base import PairMixer
from openmix.mixers._registry import register_mixer


@register_mixer(
    "mixup",
    paper="mixup: Beyond Empirical Risk Minimization (Zhang et al., ICLR 2018)",
    url="https://arxiv.org/abs/1710.09412",
)
class Mixup(PairMixer):
    """Mixup. ``alpha`` = 1 (the paper's ImageNet and CIFAR choice is 0.2-1; OpenMixup's CIFAR tables use 1).

    Args:
        alpha: Beta(alpha, alpha) concentration.
        mode: ``"batch"`` (one lambda) or ``"elem"`` (one per sample).
        pairing: ``"random"`` or ``"flip"``.
        inplace: write into the input tensor.
    """

    reads_pixels = False  # its draws depend on the sizes and the generator alone

    def __init__(self, alpha: float = 1.0, mode: str = "batch", pairing: str = "random", inplace: bool = False):
        super().__init__(alpha, mode, pairing, inplace)

    def mix(
        self, x: Tensor, index: Tensor, lam: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, None]:
        lam = self.draw_lam(lam, x.shape[0], generator)  # (B,)
        mixed = F_mix.blend(x, index, F_mix.lam_to_weight(lam, self.mode, x), self.inplace)
        return mixed, lam, None
