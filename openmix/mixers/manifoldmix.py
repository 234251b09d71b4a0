"""Manifold Mixup: interpolate the hidden states of two samples at a layer drawn at random.

Verma et al., "Manifold Mixup: Better Representations by Interpolating Hidden States", ICML 2019.
https://arxiv.org/abs/1806.05236

    k ~ U(layers),   lam ~ Beta(alpha, alpha)
    h~_i = lam * h_k(x_i) + (1 - lam) * h_k(x_partner),   y~_i = lam * y_i + (1 - lam) * y_partner

Hook ``features``: the trainer asks :meth:`ManifoldMix.draw_stage` for k (0 = the input image, k >= 1 = the output of
the network's k-th feature stage: layer1..layer4 of a ResNet, block k of a ViT), runs the network up to there and hands
the hidden state h, (B, C, h, w), (B, N, D) or (B, D), to :meth:`ManifoldMix.forward`.

Defaults, with their sources:

- ``layers = (0, 1, 2)``: the authors' code (vikasverma1077/manifold_mixup) draws ``layer_mix = random.randint(0,2)``
  (both ends included) in supervised/models/preresnet.py:107 (wide_resnet.py:121 likewise) and mixes at the input
  (preresnet.py:123), after layer1 (:129) and after layer2 (:134). OpenMixup (Westlake-AI/openmixup) agrees:
  openmixup/models/classifiers/mixup_classification.py:110 ``manifoldmix=dict(layer=(0, 3))``, drawn at :272 with
  ``np.random.randint`` (upper end excluded), applied in openmixup/models/backbones/resnet_mmcls.py:872 (input) and
  :891 (after residual stage i when ``i + 1 == layer``): the same numbering as openmix's stages.
- ``alpha = 2.0``: the authors' README for CIFAR-10/100 and SVHN (supervised/README.md:33, 48, 63, 81, 96, 111,
  ``--train mixup_hidden --mixup_alpha 2.0``) and OpenMixup's CIFAR tables (docs/en/mixup_benchmarks/Mixup_cifar.md:67
  CIFAR-10, :115 CIFAR-100, alpha 2). ImageNet uses 0.2 (OpenMixup docs/en/mixup_benchmarks/Mixup_imagenet.md:70),
  Tiny-ImageNet 0.2 (authors' README:186): see configs/mixers/imagenet/manifoldmix.yaml.
- one lambda per batch (``mode="batch"``): supervised/models/preresnet.py:116 draws one ``get_lambda(mixup_alpha)``
  per forward pass and supervised/utils.py:127-131 mixes the whole batch with it.

The authors train with a binary cross-entropy on the softmax of the logits against the mixed one-hot targets
(supervised/main.py:237); that is the objective's business, not the mixer's (openmix's default is the soft-target
cross-entropy, which mixup and OpenMixup use).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from openmix.mixers import functional as F_mix
from openmix.mixers._base import PairMixer
from openmix.mixers._registry import register_mixer


def check_layers(layers: Any, name: str = "layers") -> tuple[int, ...]:
    """``layers`` as a tuple of distinct stage numbers >= 0 (0 = the input), else a ``ValueError`` naming ``name``."""
    if isinstance(layers, np.ndarray):
        layers = layers.tolist()
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise ValueError(f"{name} must be a sequence of stage numbers (0 = the input), got {layers!r}")
    values = tuple(layers)
    if not values:
        raise ValueError(f"{name} must name at least one stage (0 = the input, k = the k-th feature stage), got ()")
    if not all(F_mix.is_int(value) for value in values):
        kinds = ", ".join(type(value).__name__ for value in values)
        raise ValueError(f"{name} must hold int stage numbers, got ({kinds}): {values!r}")
    stages = tuple(int(value) for value in values)
    if min(stages) < 0:
        raise ValueError(f"{name} must hold stage numbers >= 0 (0 = the input), got {stages!r}")
    if len(set(stages)) != len(stages):
        raise ValueError(f"{name} must not repeat a stage (each is drawn with the same probability), got {stages!r}")
    return stages


def draw_layer(layers: tuple[int, ...], num_stages: Any, generator: torch.Generator | None, name: str) -> int:
    """One stage drawn uniformly from ``layers`` with ``generator`` (on its device, read on the CPU); a
    ``ValueError`` when the network has fewer than ``max(layers)`` feature stages."""
    if not F_mix.is_int(num_stages) or num_stages < 0:
        raise ValueError(f"num_stages must be an int >= 0 (the network's feature stages), got {num_stages!r}")
    if max(layers) > num_stages:
        raise ValueError(
            f"{name} mixes at stages {layers}, but the network has {num_stages} feature stages: choose layers <= "
            f"{num_stages}"
        )
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    position = int(F_mix.host_values(F_mix.sample_int(len(layers), 1, generator))[0])  # a host draw
    return layers[position]


@register_mixer(
    "manifoldmix",
    paper="Manifold Mixup: Better Representations by Interpolating Hidden States (Verma et al., ICML 2019)",
    url="https://arxiv.org/abs/1806.05236",
)
class ManifoldMix(PairMixer):
    """Manifold Mixup: mixup of the hidden states at a stage drawn uniformly from ``layers``.

    Args:
        alpha: Beta(alpha, alpha) concentration (2.0, the authors' CIFAR setting; 0.2 on ImageNet).
        layers: the eligible stages, drawn uniformly: 0 = the input, k = the output of the network's k-th feature
            stage (a ResNet's layer k). Default (0, 1, 2), the authors' PreActResNet set.
        mode: ``"batch"`` (one lambda, as the paper) or ``"elem"`` (one per sample).
        pairing: ``"random"`` or ``"flip"``.
        inplace: write the mix into ``x`` (4-d inputs only: other ranks refuse ``inplace=True`` with a ``ValueError``).
    """

    hooks = ("features",)
    input_ranks = (2, 3, 4)

    def __init__(
        self,
        alpha: float = 2.0,
        layers: Sequence[int] = (0, 1, 2),
        mode: str = "batch",
        pairing: str = "random",
        inplace: bool = False,
    ):
        super().__init__(alpha, mode, pairing, inplace)
        self.layers = check_layers(layers)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, layers={self.layers}"

    def draw_stage(self, num_stages: int, generator: torch.Generator | None = None) -> int:
        """A stage drawn uniformly from ``layers`` (``num_stages``: how many feature stages the network has)."""
        return draw_layer(self.layers, num_stages, generator, "layers")

    def max_stage(self) -> int:
        return max(self.layers)

    def mix(
        self, x: Tensor, index: Tensor, lam: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, None]:
        lam = self.draw_lam(lam, x.shape[0], generator)  # (B,) float64 CPU
        # lerp(h[index], h, lam) = lam * h + (1 - lam) * h[index]; the weight is a float (batch) or (B, 1, ...) (elem)
        mixed = F_mix.blend(x, index, F_mix.lam_to_weight(lam, self.mode, x), self.inplace)
        return mixed, lam, None
