"""SAMix: AutoMix's Mix Block with the Scenario-Agnostic Mixup changes, trained by the same momentum pipeline.

Li et al., "Boosting Discriminative Visual Representation Learning with Scenario-Agnostic Mixup", arXiv 2111.15454.
https://arxiv.org/abs/2111.15454 ; the authors' code: Westlake-AI/openmixup ``openmixup/models/heads/pmix_block.py``
(``PixelMixBlock`` with its SAMix options) and ``configs/classification/cifar100/samix/basic/
r18_l2_a2_bili_val_dp0_mul_x_cat_L1_var_01_mlr5e_2.py`` (CIFAR-100, ResNet-18), whose values are the defaults here.

For sample i, its partner j and lambda (features z_i, z_j of the momentum network, C channels):

    lambda' = (4/3 lambda^3 - 2 lambda^2 + (k+1) lambda) / (k + 1/3)        (rescaled lambda, ``lam_mul_k`` = k)
    z~_i = z_i (1 + lambda' s),  z~_j = z_j (1 + (1 - lambda') s)            (residual scaling, ``lam_mul`` = s)
    q = W_q [z~_i ; z~_j],  k = W_k [z~_i ; z~_j]                          (``x_qk_concat``: both see the pair)
    v = W_2 ELU(BN(W_1 z~_j))                                               (non-linear value path, C -> C/2 -> 1)
    m_j = sigmoid(Upsample(softmax(q^T k / sqrt(d)) v)),  m_i = 1 - m_j

The block's losses: the mask loss "L1+Variance" (the L1 hinge on the batch mean minus 2 x the variance of the
masks), and the eta-balanced cross entropy of the momentum network's prediction on the block's mix
(:func:`eta_balanced_cross_entropy`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from openmix.mixers import functional as F_mix
from openmix.mixers._base import MixOutput
from openmix.mixers._registry import register_mixer
from openmix.mixers.automix import AutoMix, check_fraction

MAX_LAM_MUL_K = 10.0  # the authors cap k at 10 (pmix_block.py:107)


def rescale_lam(lam: Tensor, k: float) -> Tensor:
    """SAMix's rescaled lambda (pmix_block.py:223-228): with k' = k + 1,
    (4/3 lambda^3 - 2 lambda^2 + k' lambda) / (k' - 2/3). It keeps 0, 1/2 and 1 fixed and is symmetric about 1/2
    (1 - f(lambda) = f(1 - lambda)); a small k pushes lambda towards 1/2, a large one leaves it near lambda."""
    k1 = k + 1.0
    return (4.0 / 3.0 * lam**3 - 2.0 * lam**2 + k1 * lam) / (k1 - 2.0 / 3.0)


def eta_balanced_cross_entropy(logits: Tensor, targets: Tensor, eta: float) -> Tensor:
    """The eta-balanced mixup cross entropy, averaged over the batch.

    With p = softmax(logits), t the mixed targets (rows summing to 1) and S the classes of the pair (t_c > 0),
    the soft cross entropy -sum_c t_c log p_c splits exactly into a local term, the cross entropy among the pair's
    classes only, and a global term, -log sum_{c in S} p_c, which pushes probability away from every class outside
    the pair:

        loss = -sum_{c in S} t_c log(p_c / P_S)  +  eta * (sum_{c in S} t_c) * (-log P_S),   P_S = sum_{c in S} p_c

    eta = 1 is the plain soft cross entropy; eta < 1 weakens the push away from the classes not in the pair.
    """
    logits = logits.float()
    targets = targets.to(logits)
    pair = targets > 0
    pair_lse = logits.masked_fill(~pair, float("-inf")).logsumexp(dim=-1, keepdim=True)  # log sum_{c in S} e^z
    within = torch.where(pair, logits - pair_lse, torch.zeros_like(logits))  # log(p_c / P_S) on the pair
    local = -(targets * within).sum(dim=-1)
    outside = (logits.logsumexp(dim=-1, keepdim=True) - pair_lse).squeeze(-1)  # -log P_S >= 0
    return (local + eta * targets.sum(dim=-1) * outside).mean()


@register_mixer(
    "samix",
    paper="Boosting Discriminative Visual Representation Learning with Scenario-Agnostic Mixup (Li et al., 2021)",
    url="https://arxiv.org/abs/2111.15454",
)
class SAMix(AutoMix):
    """SAMix's Mix Block (a configuration of :class:`~openmix.mixers.automix.AutoMix`'s block with SAMix's lambda
    encoding, value path, query/key input and losses). Trained by :class:`openmix.lightning.AutoMixClassifier`
    (``mix_block: samix``).

    Args:
        alpha, extractor, feature_stage, in_channels, reduction, mask_margin, mask_loss_reduction, lam_margin,
            margin_skips_block, mode, pairing, inplace: as :class:`~openmix.mixers.automix.AutoMix`.
        upsampling: upsampling of the mask logits (SAMix: ``bilinear``).
        mask_loss_mode: ``"L1+Variance"`` (SAMix) or ``"L1"``.
        mask_adjust: probability that the classifier's mask is rescaled to mean lambda (the authors' CIFAR-100
            base config: 0, "0.25 for CIFAR" in its comment and in its 800-epoch config).
        lam_mul: strength s of the lambda scaling of the features (0 disables it; the authors' ``lam_mul=True``).
        lam_mul_k: k of the lambda rescaling (None: lambda itself, the authors' -1 of their ImageNet configs).
        lam_residual: residual scaling z (1 + lambda' s) (True) or plain scaling z lambda' (False).
        value_hidden: hidden channels of the value path (``None``: half the feature channels, as the authors'
            ``conv1x1`` necks: 256 -> 128 on CIFAR, 1024 -> 512 on ImageNet).
        value_dropout: dropout after the value path (CIFAR 0, ImageNet 0.1; it draws from the global torch RNG).
        x_qk_concat: queries and keys both from the concatenated pair (True), else the query from sample i and
            the key, through the query's weights, from its partner (AutoMix's way).
        neg_weight: eta of the block's eta-balanced cross entropy (the weight of the push away from the classes
            not in the pair; 1 is the plain soft cross entropy).
    """

    def __init__(
        self,
        alpha: float = 2.0,
        extractor: nn.Module | None = None,
        feature_stage: int = -2,
        in_channels: int | None = None,
        reduction: int = 2,
        upsampling: str = "bilinear",
        mask_margin: float = 0.1,
        mask_loss_mode: str = "L1+Variance",
        mask_loss_reduction: str = "batch",
        lam_margin: float = 0.08,
        margin_skips_block: bool = False,
        mask_adjust: float = 0.0,
        lam_mul: float = 1.0,
        lam_mul_k: float | None = 0.25,
        lam_residual: bool = True,
        value_hidden: int | None = None,
        value_dropout: float = 0.0,
        x_qk_concat: bool = True,
        neg_weight: float = 0.5,
        mode: str = "batch",
        pairing: str = "random",
        inplace: bool = False,
    ):
        super().__init__(
            alpha=alpha,
            extractor=extractor,
            feature_stage=feature_stage,
            in_channels=None,  # built below, once SAMix's own options are set
            reduction=reduction,
            lam_embedding=False,  # lambda enters by scaling the features (the authors forbid both)
            upsampling=upsampling,
            mask_margin=mask_margin,
            mask_loss_mode=mask_loss_mode,
            mask_loss_reduction=mask_loss_reduction,
            binary_weight=0.0,
            lam_margin=lam_margin,
            margin_skips_block=margin_skips_block,
            mask_adjust=mask_adjust,
            mode=mode,
            pairing=pairing,
            inplace=inplace,
        )
        self.lam_mul = check_fraction(lam_mul, "lam_mul", closed=True)
        if lam_mul_k is not None:
            lam_mul_k = check_fraction(lam_mul_k, "lam_mul_k", high=MAX_LAM_MUL_K, closed=True)
        self.lam_mul_k = lam_mul_k
        self.lam_residual = F_mix.check_bool(lam_residual, "lam_residual")
        if value_hidden is not None and (not F_mix.is_int(value_hidden) or value_hidden < 1):
            raise ValueError(f"value_hidden must be a positive int or None, got {value_hidden!r}")
        self.value_hidden = None if value_hidden is None else int(value_hidden)
        self.value_dropout = check_fraction(value_dropout, "value_dropout")
        self.x_qk_concat = F_mix.check_bool(x_qk_concat, "x_qk_concat")
        self.neg_weight = check_fraction(neg_weight, "neg_weight", closed=True)
        if in_channels is not None:
            if not F_mix.is_int(in_channels) or in_channels < 1:
                raise ValueError(f"in_channels must be a positive int or None, got {in_channels!r}")
            self.build(int(in_channels))

    def build(self, in_channels: int) -> None:
        """Query and key 1x1 convolutions (on the concatenated pair when ``x_qk_concat``) and the value path
        conv - BN - ELU - conv (no biases), as the authors' ``ConvNeck`` (necks/conv_necks.py:91-111)."""
        qk_channels = 2 * in_channels if self.x_qk_concat else in_channels
        inner = max(in_channels // self.reduction, 1)
        hidden = self.value_hidden or max(in_channels // 2, 1)
        self.query = nn.Conv2d(qk_channels, inner, 1)
        self.key = nn.Conv2d(qk_channels, inner, 1) if self.x_qk_concat else None
        self.value = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ELU(),
            nn.Conv2d(hidden, 1, 1, bias=False),
            nn.Dropout(self.value_dropout),
        )
        self.init_block_weights()
        self.built = True

    def extra_repr(self) -> str:
        return super().extra_repr() + f", lam_mul_k={self.lam_mul_k}, neg_weight={self.neg_weight}"

    def encode_lam(self, own: Tensor, partner: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
        """Scale the features by the (rescaled) lambda: residually z (1 + lambda' s) and z_j (1 + (1 - lambda') s),
        or plainly z lambda' and z_j (1 - lambda') (pmix_block.py:257-271)."""
        if self.lam_mul <= 0:
            return own, partner
        scaled = lam if self.lam_mul_k is None else rescale_lam(lam, self.lam_mul_k)
        if self.lam_residual:
            return own * (1 + scaled * self.lam_mul), partner * (1 + (1 - scaled) * self.lam_mul)
        return own * scaled, partner * (1 - scaled)

    def query_key_inputs(self, own: Tensor, partner: Tensor) -> tuple[Tensor, Tensor]:
        """The concatenated pair for both queries and keys (``x_qk_concat``, pmix_block.py:299-301)."""
        if not self.x_qk_concat:
            return own, partner
        both = torch.cat([own, partner], dim=1)
        return both, both

    def block_loss(self, logits: Tensor, mix: MixOutput, objective: Any) -> Tensor:
        """The eta-balanced cross entropy of the momentum network's ``logits`` against the block mix's targets
        (labels weighted by the sampled lambda, without label smoothing, as the authors' ``head_mix_k``)."""
        return eta_balanced_cross_entropy(logits, mix.soft_targets(logits.shape[-1]), self.neg_weight)
