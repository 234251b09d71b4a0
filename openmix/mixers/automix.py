"""AutoMix's Mix Block: a learned, per-pixel mixing mask from the two samples' features.

Liu et al., "AutoMix: Unveiling the Power of Mixup for Stronger Classifiers", ECCV 2022.
https://arxiv.org/abs/2103.13027

For sample i and its partner j = index[i], with intermediate feature maps z_i, z_j (C, h, w) of a (momentum)
network and the target share lambda of sample i:

    z~_i = [z_i ; lambda],  z~_j = [z_j ; 1 - lambda]        (the lambda embedding: one extra constant channel)
    q = W_q z~_i,  k = W_q z~_j,  v = W_v z~_j               (1x1 convolutions; keys share the query weights)
    P = softmax(q^T k / sqrt(d))                              ((hw, hw) cross attention, rows over j's patches)
    m_j = sigmoid(Upsample(P v)),  m_i = 1 - m_j             (partner mask, then sample i's own share)

The block is trained to produce masks whose mean tracks lambda: ``mask_loss`` = max(|mean(m_i) - lambda| - margin,
0), optionally plus a term 4 * mean(m (1 - m)) that pushes the mask towards 0/1. The momentum pipeline that trains it
lives in :class:`openmix.lightning.AutoMixClassifier`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openmix.mixers import functional as F_mix
from openmix.mixers._base import MixOutput, PairMixer, check_network
from openmix.mixers._registry import register_mixer


def intermediate_features(network: nn.Module, images: Tensor, stage: int) -> Tensor:
    """(n, C, h, w) output of stage ``stage`` of a timm model (``forward_intermediates``), else its
    ``forward_features`` or its output."""
    if hasattr(network, "forward_intermediates"):  # stop after the stage: the rest of the network is not needed
        return network.forward_intermediates(images, indices=[stage], intermediates_only=True, stop_early=True)[0]
    features = network.forward_features(images) if hasattr(network, "forward_features") else network(images)
    if not isinstance(features, Tensor) or features.dim() != 4:
        raise ValueError(f"the feature network must return a (n, C, h, w) map, got {type(features).__name__}")
    return features


@register_mixer(
    "automix",
    paper="AutoMix: Unveiling the Power of Mixup for Stronger Classifiers (Liu et al., ECCV 2022)",
    url="https://arxiv.org/abs/2103.13027",
)
class AutoMix(PairMixer):
    """The Mix Block.

    Args:
        alpha: Beta(alpha, alpha) concentration of the target lambda (OpenMixup's tables use 2).
        extractor: the network whose intermediate features feed the block (AutoMix uses the momentum copy of the
            classifier); ``None``: passed at call time as ``model=`` (``requires == ("model",)``).
        feature_stage: index of the stage whose output is used (timm ``forward_intermediates`` index; the
            default -2 is the third of four ResNet stages, as in the paper).
        in_channels: channels of those features; ``None`` infers them on the first call.
        reduction: channel reduction of the query / key embedding.
        lam_embedding: append lambda as a constant feature channel (the paper's lambda encoding).
        upsampling: ``nearest`` or ``bilinear`` upsampling of the mask to the image size.
        mask_margin: no mask loss while |mean(mask) - lambda| is within this margin.
        binary_weight: weight of the term that pushes masks towards 0/1 (0 disables it).
        lam_margin: for lambda within this margin of 0 or 1 the call falls back to plain mixup (the learned mask is
            unreliable there).
        mode: ``"batch"`` (one lambda for the batch) or ``"elem"`` (one per sample); masks are per sample in both.
        pairing, inplace: as every mixer (``inplace`` writes a detached mix into the input).
    """

    shares_batch_mask = False
    requires = ("model",)  # a network's features (the momentum network's, in training) make the masks
    optional_inputs = ("features",)  # features a trainer already computed for this batch, reused for two draws
    learned = True
    trained_by = "openmix.lightning.AutoMixClassifier"  # its weights learn through a momentum pipeline

    def __init__(
        self,
        alpha: float = 2.0,
        extractor: nn.Module | None = None,
        feature_stage: int = -2,
        in_channels: int | None = None,
        reduction: int = 2,
        lam_embedding: bool = True,
        upsampling: str = "nearest",
        mask_margin: float = 0.1,
        binary_weight: float = 0.0,
        lam_margin: float = 0.08,
        mode: str = "batch",
        pairing: str = "random",
        inplace: bool = False,
    ):
        super().__init__(alpha, mode, pairing, inplace)
        if extractor is not None and not isinstance(extractor, nn.Module):
            raise TypeError(f"extractor must be an nn.Module or None, got {type(extractor).__name__}")
        if not F_mix.is_int(feature_stage):
            raise TypeError(f"feature_stage must be an int (a stage index), got {type(feature_stage).__name__}")
        if in_channels is not None and (not F_mix.is_int(in_channels) or in_channels < 1):
            raise ValueError(f"in_channels must be a positive int or None, got {in_channels!r}")
        if not F_mix.is_int(reduction) or reduction < 1:
            raise ValueError(f"reduction must be a positive int, got {reduction!r}")
        if not isinstance(upsampling, str) or upsampling not in ("nearest", "bilinear"):
            raise ValueError(f"upsampling must be 'nearest' or 'bilinear', got {upsampling!r}")
        for name, value, high in (("mask_margin", mask_margin, 1.0), ("lam_margin", lam_margin, 0.5)):
            if not F_mix.is_real(value) or not 0 <= value < high:
                raise ValueError(f"{name} must lie in [0, {high}), got {value!r}")
        if not F_mix.is_real(binary_weight) or not 0 <= binary_weight < float("inf"):
            raise ValueError(f"binary_weight must be a finite number >= 0, got {binary_weight!r}")
        lam_embedding = F_mix.check_bool(lam_embedding, "lam_embedding")
        self.extractor = extractor
        # call-time inputs: the feature network (unless built with one) and, optionally, features a trainer has
        # already computed for this batch (AutoMixClassifier reuses them for its two draws)
        self.requires = ("model",) if extractor is None else ()
        self.feature_stage = int(feature_stage)
        self.reduction = int(reduction)
        self.lam_embedding = lam_embedding
        self.upsampling = upsampling
        self.mask_margin = float(mask_margin)
        self.binary_weight = float(binary_weight)
        self.lam_margin = float(lam_margin)
        self.query: nn.Conv2d | None = None  # built once the feature channel count is known
        self.value: nn.Conv2d | None = None
        self.built = False
        if in_channels is not None:
            self.build(int(in_channels))

    def build(self, in_channels: int) -> None:
        """Create the 1x1 convolutions for ``in_channels`` feature channels (called on the first mix if needed)."""
        extra = 1 if self.lam_embedding else 0
        self.query = nn.Conv2d(in_channels + extra, max(in_channels // self.reduction, 1), 1)
        self.value = nn.Conv2d(in_channels + extra, 1, 1)
        for conv in (self.query, self.value):  # small initial weights: masks start near 1/2 everywhere
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        self.built = True

    def extra_repr(self) -> str:
        return super().extra_repr() + f", feature_stage={self.feature_stage}, built={self.built}"

    def features(self, x: Tensor, network: nn.Module) -> Tensor:
        """Intermediate features of ``x`` from ``network``, without gradients (the block learns from the mix)."""
        with torch.no_grad():
            images = F_mix.to_network_dtype(network, x.detach())
            return intermediate_features(network, images, self.feature_stage).float()

    def partner_mask(self, features: Tensor, index: Tensor, lam: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, 1, H, W) the partner's share of each pixel (the block's output before ``1 - m``)."""
        batch_size, channels, height, width = features.shape
        if not self.built:
            self.build(channels)
            self.to(features.device)
        own, partner = features, features.index_select(0, index)
        if self.lam_embedding:  # lambda as a constant extra channel: lambda for sample i, 1 - lambda for j
            share = lam.to(features).view(-1, 1, 1, 1).expand(-1, 1, height, width)
            own, partner = torch.cat([own, share], dim=1), torch.cat([partner, 1 - share], dim=1)
        query = self.query(own).flatten(2).transpose(1, 2)  # (B, hw, d)
        key = self.query(partner).flatten(2)  # (B, d, hw): keys share the query embedding
        value = self.value(partner).flatten(2).transpose(1, 2)  # (B, hw, 1)
        attention = torch.softmax(query @ key / query.shape[-1] ** 0.5, dim=-1)  # (B, hw, hw)
        logits = (attention @ value).transpose(1, 2).reshape(batch_size, 1, height, width)
        align = None if self.upsampling == "nearest" else False
        return torch.sigmoid(F.interpolate(logits, size=size, mode=self.upsampling, align_corners=align))

    def forward(
        self,
        x: Tensor,
        y: Tensor,
        generator: torch.Generator | None = None,
        lam: float | Tensor | None = None,
        **context: Any,
    ) -> MixOutput:
        """Mix a batch (see :meth:`Mixer.forward`). ``lam`` of the output is the mean of each learned mask (the
        contract's pixel share); the targets use the sampled lambda (``label_weights``), as in the paper (Sec. 3.2:
        the mixed sample is labelled with lambda, the mask loss pulls the mask's mean towards it) and the authors'
        code (OpenMixup ``openmixup/models/classifiers/automix_V1plus.py``: ``forward_k`` and ``forward_q`` build
        the targets ``(y, y[index], lam)`` from the sampled ``lam``)."""
        out = super().forward(x, y, generator, lam, **context)
        return out.with_label_weights(self.last_target_lam)

    def mix(
        self, x: Tensor, index: Tensor, lam: Tensor | None, generator: torch.Generator | None, **context: Any
    ) -> tuple[Tensor, Tensor, Tensor]:
        batch_size, _, height, width = x.shape
        features = context.get("features")
        network = self.extractor if self.extractor is not None else context.get("model")
        if features is None and network is None:
            raise ValueError("automix built without an extractor needs model=... (or features=...) at call time")
        if features is not None:
            if not isinstance(features, Tensor) or features.dim() != 4 or features.shape[0] != batch_size:
                shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
                raise ValueError(f"features must be a ({batch_size}, C, h, w) tensor (one map per sample), got {shape}")
        elif self.extractor is None:
            check_network(network)
        target = self.draw_lam(lam, batch_size, generator)  # (B,) float64 CPU
        self.last_target_lam = target.float().to(x.device)  # what mask_loss compares the mask with
        near_edge = (target <= self.lam_margin) | (target >= 1 - self.lam_margin)
        if bool(near_edge.all()):  # plain mixup: a constant mask of lambda
            mask = target.float().to(x.device).view(-1, 1, 1, 1).expand(-1, 1, height, width).contiguous()
        else:
            features = self.features(x, network) if features is None else features.detach().float()
            mask = 1.0 - self.partner_mask(features, index, self.last_target_lam, (height, width))
            constant = target.float().to(x.device).view(-1, 1, 1, 1).expand_as(mask)
            mask = torch.where(near_edge.to(x.device).view(-1, 1, 1, 1), constant, mask)
        weight = mask.detach() if self.inplace else mask  # an in-place mix cannot carry gradients
        mixed = F_mix.blend(x, index, weight, self.inplace)
        return mixed, mask.detach().mean(dim=(1, 2, 3)).double(), mask

    def mask_loss(self, mask: Tensor, target: Tensor | None = None) -> Tensor:
        """Keep each mask's mean within ``mask_margin`` of its target lambda (default: the last call's)."""
        target = self.last_target_lam if target is None else target
        share = mask.float().mean(dim=(1, 2, 3))
        loss = (share - target.to(share)).abs().sub(self.mask_margin).clamp(min=0).mean()
        if self.binary_weight > 0:
            loss = loss + self.binary_weight * 4 * (mask * (1 - mask)).mean()
        return loss
