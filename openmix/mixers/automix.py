"""AutoMix's Mix Block: a learned, per-pixel mixing mask from the two samples' features.

Liu et al., "AutoMix: Unveiling the Power of Mixup for Stronger Classifiers", ECCV 2022.
https://arxiv.org/abs/2103.13027 ; the authors' code: Westlake-AI/openmixup, ``openmixup/models/heads/pmix_block.py``
(the block) and ``openmixup/models/classifiers/automix.py`` (the pipeline that trains it).

For sample i and its partner j = index[i], with intermediate feature maps z_i, z_j (C, h, w) of the momentum
network and the target share lambda of sample i:

    z~_i = [z_i ; lambda],  z~_j = [z_j ; 1 - lambda]        (the lambda embedding: one extra constant channel)
    q = W_q z~_i,  k = W_q z~_j,  v = W_v z~_j               (1x1 convolutions; keys share the query weights)
    P = softmax(q^T k / sqrt(d))                              ((hw, hw) cross attention, rows over j's patches)
    m_j = sigmoid(Upsample(P v)),  m_i = 1 - m_j             (partner mask, upsampled before the sigmoid)

The mask loss keeps the mask's mean near lambda: max(|mean(m_i) - lambda| - margin, 0), the mean taken over the
whole batch as in the authors' ``PixelMixBlock.mask_loss`` (``mask_loss_reduction="sample"``: per sample, then
averaged). A training step makes two draws from the block (``draw=``): the ``"block"`` draw, whose mixed loss through
the momentum network and mask loss train the block (always the learned mask), and the ``"classifier"`` draw the
online network trains on (plain mixup within ``lam_margin`` of 0 or 1, optionally rescaled to lambda by
``mask_adjust``). SAMix (:mod:`openmix.mixers.samix`) is this block with another lambda encoding, value path and
loss. The momentum pipeline lives in :class:`openmix.lightning.AutoMixClassifier`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openmix.mixers import functional as F_mix
from openmix.mixers._base import MixOutput, PairMixer, check_choice, check_network
from openmix.mixers._registry import register_mixer

DRAWS = ("classifier", "block")
"""What a draw of the Mix Block is for: the classifier's mix, or the block's own training mix."""
MASK_LOSS_MODES = ("L1", "L1+Variance")
MASK_LOSS_REDUCTIONS = ("batch", "sample")
VARIANCE_WEIGHT = 2.0
"""Weight of the variance term of the "L1+Variance" mask loss (pmix_block.py:369-372: ``- 2 * Var(mask)``)."""
ADJUST_EPS = 1e-8
"""Clamp of the mask and tolerance around lambda in ``mask_adjust`` (classifiers/automix.py:534-539)."""


def intermediate_features(network: nn.Module, images: Tensor, stage: int) -> Tensor:
    """(n, C, h, w) output of stage ``stage`` of a timm model (``forward_intermediates``), else its
    ``forward_features`` or its output."""
    if hasattr(network, "forward_intermediates"):  # stop after the stage: the rest of the network is not needed
        return network.forward_intermediates(images, indices=[stage], intermediates_only=True, stop_early=True)[0]
    features = network.forward_features(images) if hasattr(network, "forward_features") else network(images)
    if not isinstance(features, Tensor) or features.dim() != 4:
        raise ValueError(f"the feature network must return a (n, C, h, w) map, got {type(features).__name__}")
    return features


def check_fraction(value: Any, name: str, high: float = 1.0, closed: bool = False) -> float:
    """``value`` as a float in [0, high) (``closed``: [0, high]); a ``TypeError`` / ``ValueError`` naming ``name``."""
    condition = f"lie in [0, {high}{']' if closed else ')'}"
    return F_mix.check_real(value, name, condition, lambda v: 0 <= v <= high if closed else 0 <= v < high)


def adjust_to_lam(mask: Tensor, lam: Tensor) -> Tensor:
    """Rescale each own-share mask (B, 1, H, W) so that its mean is exactly its lambda (B,), as the authors'
    ``mask_adjust`` does (classifiers/automix.py:533-547): a mask whose mean is above lambda is scaled down towards 0,
    one below lambda has its partner share scaled down towards 0; a mask already at lambda is kept."""
    clamped = mask.clamp(ADJUST_EPS, 1 - ADJUST_EPS)
    mean = clamped.mean(dim=(1, 2, 3), keepdim=True)
    lam = lam.to(mask).view(-1, 1, 1, 1)
    lowered = clamped * (lam / mean)
    raised = 1 - (1 - clamped) * ((1 - lam) / (1 - mean))
    return torch.where(mean > lam + ADJUST_EPS, lowered, torch.where(mean < lam - ADJUST_EPS, raised, mask))


@register_mixer(
    "automix",
    paper="AutoMix: Unveiling the Power of Mixup for Stronger Classifiers (Liu et al., ECCV 2022)",
    url="https://arxiv.org/abs/2103.13027",
)
class AutoMix(PairMixer):
    """The Mix Block.

    Args:
        alpha: Beta(alpha, alpha) concentration of the target lambda (OpenMixup's configs use 2).
        extractor: the network whose intermediate features feed the block (AutoMix uses the momentum copy of the
            classifier); ``None``: passed at call time as ``model=`` (``requires == ("model",)``).
        feature_stage: index of the stage whose output is used (timm ``forward_intermediates`` index; the
            default -2 is the third of four ResNet stages, the authors' ``mask_layer=2``).
        in_channels: channels of those features; ``None`` infers them on the first call.
        reduction: channel reduction of the query / key embedding (pmix_block.py:84).
        lam_embedding: append lambda as a constant feature channel (the paper's lambda embedding, the authors'
            ``lam_concat``; their CIFAR configs turn it off).
        upsampling: ``nearest`` or ``bilinear`` upsampling of the mask logits to the image size.
        mask_margin: no mask loss while the mask's mean is within this margin of lambda.
        mask_loss_mode: ``"L1"`` (AutoMix) or ``"L1+Variance"`` (SAMix: minus 2 x the variance of the mask).
        mask_loss_reduction: ``"batch"`` (the authors': the mean over the whole batch against lambda) or
            ``"sample"`` (each mask's own mean, the hinge averaged over the batch).
        binary_weight: weight of an extra term 4 * mean(m (1 - m)) that pushes masks towards 0/1 (openmix's own
            option; 0, the default, leaves the published loss).
        lam_margin: for lambda within this margin of 0 or 1 the classifier's draw falls back to plain mixup.
        margin_skips_block: apply ``lam_margin`` to the block's draw too, so the block is not trained on such
            lambdas (openmix's earlier behaviour; the authors apply it to the classifier's mix only).
        mask_adjust: probability that the classifier's mask is rescaled so that its mean is exactly lambda
            (the authors' ``mask_adjust``; 0 for AutoMix).
        mode: ``"batch"`` (one lambda for the batch) or ``"elem"`` (one per sample); masks are per sample in both.
        pairing, inplace: as every mixer (``inplace`` writes a detached mix into the input).
    """

    shares_batch_mask = False
    requires = ("model",)  # a network's features (the momentum network's, in training) make the masks
    optional_inputs = ("features", "draw")  # precomputed features of this batch; what the draw is for
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
        mask_loss_mode: str = "L1",
        mask_loss_reduction: str = "batch",
        binary_weight: float = 0.0,
        lam_margin: float = 0.08,
        margin_skips_block: bool = False,
        mask_adjust: float = 0.0,
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
        self.mask_margin = check_fraction(mask_margin, "mask_margin")
        self.lam_margin = check_fraction(lam_margin, "lam_margin", high=0.5)
        self.mask_adjust = check_fraction(mask_adjust, "mask_adjust", closed=True)
        self.binary_weight = F_mix.check_real(
            binary_weight, "binary_weight", "be a finite number >= 0", lambda v: 0 <= v < float("inf")
        )
        self.mask_loss_mode = check_choice(mask_loss_mode, MASK_LOSS_MODES, "mask_loss_mode")
        self.mask_loss_reduction = check_choice(mask_loss_reduction, MASK_LOSS_REDUCTIONS, "mask_loss_reduction")
        self.lam_embedding = F_mix.check_bool(lam_embedding, "lam_embedding")
        self.margin_skips_block = F_mix.check_bool(margin_skips_block, "margin_skips_block")
        self.extractor = extractor
        # call-time inputs: the feature network (unless built with one) and, optionally, features a trainer has
        # already computed for this batch (AutoMixClassifier reuses them for its two draws)
        self.requires = ("model",) if extractor is None else ()
        self.feature_stage = int(feature_stage)
        self.reduction = int(reduction)
        self.upsampling = upsampling
        self.query: nn.Module | None = None  # built once the feature channel count is known
        self.key: nn.Module | None = None  # None: the keys share the query embedding
        self.value: nn.Module | None = None
        self.built = False
        if in_channels is not None:
            self.build(int(in_channels))

    # ----- the block's layers -------------------------------------------------------------------------------------
    def build(self, in_channels: int) -> None:
        """Create the 1x1 convolutions for ``in_channels`` feature channels (called on the first mix if needed)."""
        extra = 1 if self.lam_embedding else 0
        self.query = nn.Conv2d(in_channels + extra, max(in_channels // self.reduction, 1), 1)
        self.value = nn.Conv2d(in_channels + extra, 1, 1)
        self.init_block_weights()
        self.built = True

    def init_block_weights(self) -> None:
        """The authors' initialisation (pmix_block.py:167-181 with AutoMixup's ``init_linear='normal'``): every
        convolution N(0, 0.01) with zero bias, batch norms weight 1 and bias 0 (masks start near 1/2 everywhere)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", feature_stage={self.feature_stage}, built={self.built}"

    def features(self, x: Tensor, network: nn.Module) -> Tensor:
        """Intermediate features of ``x`` from ``network``, without gradients (the block learns from the mix)."""
        with torch.no_grad():
            images = F_mix.to_network_dtype(network, x.detach())
            return intermediate_features(network, images, self.feature_stage).float()

    # ----- the steps of the block, each replaceable by a variant (SAMix) ------------------------------------------
    def encode_lam(self, own: Tensor, partner: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
        """The features with lambda (B, 1, 1, 1) encoded: a constant channel lambda for sample i, 1 - lambda for its
        partner (``lam_embedding``), else unchanged."""
        if not self.lam_embedding:
            return own, partner
        share = lam.expand(-1, 1, *own.shape[-2:])
        return torch.cat([own, share], dim=1), torch.cat([partner, 1 - share], dim=1)

    def query_key_inputs(self, own: Tensor, partner: Tensor) -> tuple[Tensor, Tensor]:
        """What the queries and the keys are computed from: sample i's and its partner's features."""
        return own, partner

    def partner_mask(self, features: Tensor, index: Tensor, lam: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, 1, H, W) the partner's share of each pixel (the block's output before ``1 - m``)."""
        batch_size, channels, height, width = features.shape
        if not self.built:
            self.build(channels)
            self.to(features.device)
        own, partner = self.encode_lam(features, features.index_select(0, index), lam.to(features).view(-1, 1, 1, 1))
        value = self.value(partner).flatten(2).transpose(1, 2)  # (B, hw, 1)
        query_input, key_input = self.query_key_inputs(own, partner)
        key_embedding = self.query if self.key is None else self.key
        query = self.query(query_input).flatten(2).transpose(1, 2)  # (B, hw, d)
        key = key_embedding(key_input).flatten(2)  # (B, d, hw)
        attention = torch.softmax(query @ key / query.shape[-1] ** 0.5, dim=-1)  # (B, hw, hw)
        logits = (attention @ value).transpose(1, 2).reshape(batch_size, 1, height, width)
        align = None if self.upsampling == "nearest" else False
        return torch.sigmoid(F.interpolate(logits, size=size, mode=self.upsampling, align_corners=align))

    # ----- mixing --------------------------------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        y: Tensor,
        generator: torch.Generator | None = None,
        lam: float | Tensor | None = None,
        **context: Any,
    ) -> MixOutput:
        """Mix a batch (see :meth:`Mixer.forward`); ``draw="block"`` or ``"classifier"`` (the default) says what the
        mix is for. ``lam`` of the output is the mean of each mask (the contract's pixel share); the targets use the
        sampled lambda (``label_weights``), as in the authors' code (classifiers/automix.py:427 and :453 build the
        targets ``(y, y[index], lam)`` from the sampled ``lam``)."""
        out = super().forward(x, y, generator, lam, **context)
        return out.with_label_weights(self.last_target_lam)

    def mix(
        self, x: Tensor, index: Tensor, lam: Tensor | None, generator: torch.Generator | None, **context: Any
    ) -> tuple[Tensor, Tensor, Tensor]:
        batch_size, _, height, width = x.shape
        draw = check_choice(context.get("draw", "classifier"), DRAWS, "draw")
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
        self.last_target_lam = F_mix.to_device(target, x.device, torch.float32)  # what the labels and mask loss use
        near_edge = (target <= self.lam_margin) | (target >= 1 - self.lam_margin)
        if draw == "block" and not self.margin_skips_block:
            near_edge = torch.zeros_like(near_edge)  # the block learns from every lambda (automix.py:548-551)
        adjust = draw == "classifier" and self.mask_adjust > 0 and self.draw_adjust(generator)
        constant = self.last_target_lam.view(-1, 1, 1, 1).expand(-1, 1, height, width)
        if F_mix.host_values(near_edge).all():  # plain mixup: a constant mask of lambda, no features needed
            mask = constant.contiguous()
        else:
            features = self.features(x, network) if features is None else features.detach().float()
            mask = 1.0 - self.partner_mask(features, index, self.last_target_lam, (height, width))
            if adjust:  # the authors adjust first, then apply the margin (automix.py:533-551)
                mask = adjust_to_lam(mask, self.last_target_lam)
            mask = torch.where(near_edge.to(x.device).view(-1, 1, 1, 1), constant, mask)
        weight = mask.detach() if self.inplace else mask  # an in-place mix cannot carry gradients
        mixed = F_mix.blend(x, index, weight, self.inplace)
        return mixed, mask.detach().mean(dim=(1, 2, 3)).double(), mask

    def draw_adjust(self, generator: torch.Generator | None) -> bool:
        """Whether this classifier draw rescales its mask to lambda (probability ``mask_adjust``)."""
        device = generator.device if generator is not None else torch.device("cpu")
        return bool(torch.rand((), generator=generator, device=device) < self.mask_adjust)

    # ----- the block's losses ---------------------------------------------------------------------------------------
    def mask_loss(self, mask: Tensor, target: Tensor | None = None) -> Tensor:
        """The mask loss of own-share masks (B, 1, H, W) against their target lambdas (default: the last call's):
        the hinge max(|share - lambda| - mask_margin, 0) on the batch mean (``mask_loss_reduction="batch"``, the
        authors' pmix_block.py:361-365) or per sample; ``"L1+Variance"`` subtracts 2 x the variance of the masks
        around that mean (pmix_block.py:369-372)."""
        target = (self.last_target_lam if target is None else target).to(device=mask.device, dtype=torch.float32)
        mask = mask.float()
        share = mask.mean(dim=(1, 2, 3))
        if self.mask_loss_reduction == "batch":
            gap, centre = (share.mean() - target.mean()).abs(), mask.mean()
        else:
            gap, centre = (share - target).abs(), share.view(-1, 1, 1, 1)
        loss = gap.sub(self.mask_margin).clamp(min=0).mean()
        if self.mask_loss_mode == "L1+Variance":
            loss = loss - VARIANCE_WEIGHT * (mask - centre).square().mean()
        if self.binary_weight > 0:
            loss = loss + self.binary_weight * 4 * (mask * (1 - mask)).mean()
        return loss

    def block_loss(self, logits: Tensor, mix: MixOutput, objective: nn.Module) -> Tensor:
        """The loss of the momentum network's ``logits`` on the block's mix ``mix``: the trainer's objective, as the
        authors' ``head_mix_k`` is their classifier's mixup head (automix.py:140, :453-454)."""
        return objective(logits, mix)
