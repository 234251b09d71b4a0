"""AdAutoMix's generator: a learned k-source mixing mask, trained adversarially against an EMA teacher.

Qin et al., "Adversarial AutoMixup", ICLR 2024. https://arxiv.org/abs/2312.11954 ; the authors' code:
JinXins/Adversarial-AutoMixup ``openmixup/models/heads/Ada_mix_pine.py`` (the generator, ``AdaptiveMask``) and
``openmixup/models/classifiers/AdAutoMix.py`` (the pipeline that trains it); OpenMixup's port:
Westlake-AI/openmixup ``openmixup/models/classifiers/adautomix.py`` and ``openmixup/models/heads/adaptive_mask.py``.

Output i mixes k inputs: sample i itself (source 0) and k - 1 partners drawn from independent random permutations.
With z_j the momentum network's intermediate features (C, h, w) of source j and lambda_j its share of the labels:

    z~_j = [z_j ; lambda_j]                                   (optional constant channel, ``lam_embedding``)
    q_j = ReLU(W_q z~_j),  k_j = ReLU(W_k z~_j),  v_j = W_v z~_j      (1x1 convolutions, d = C / reduction)
    P_j = softmax(q_j^T (sum_{l != j} k_l) / sqrt(d))          ((hw, hw): source j attends to the other sources)
    M = softmax_j(Upsample(P_j v_j))                            (per-pixel weights of the k sources, summing to 1)
    x_mix = sum_j M_j * x_{source j},   y_mix = sum_j lambda_j y_{source j}

The shares: k = 2 draws lambda ~ Beta(alpha, alpha) and uses (lambda, 1 - lambda); k > 2 draws k Beta(alpha,
alpha) values and normalises them to sum 1 (AdAutoMix.py:245, 260-261). The labels use these sampled shares
(``label_weights``); the pixel shares (``weights``, ``lam``) are the means of the masks, which the generator is free
to choose (the method has no mask loss).

The generator's losses, on its own ("block") draw through the frozen EMA teacher T (Westlake-AI/openmixup
``classifiers/adautomix.py:300-305``; JinXins ``AdAutoMix.py:293-297``):

    cooperative step:  L_G = CE(T(x_mix), y_mix)                     (as AutoMix's Mix Block)
    adversarial step:  L_G = -beta CE(T(x_mix), y_mix) - (1 - beta) S     (``cosine_sign="paper"``)
    S = mean_i sum_j lambda_ij cos(T(x_mix_i), T(x_{source j of i}))       (the teacher's logits)

The adversarial step raises the teacher's loss on the mix (hard samples) while S keeps each mix close to its
sources: the paper introduces the teacher and the cosine term so that the mixed images keep their meaning. The
authors' code adds ``+ (1 - beta) * S`` to the loss it minimises, which lowers the similarity instead;
``cosine_sign="code"`` reproduces it.

For k > 2 the authors mix k random permutations of the batch (AdAutoMix.py:252-258); here source 0 is sample i
itself and the k - 1 others are random permutations, which gives the same set of mixes up to the order of the
outputs (and matches their k = 2 case, which keeps sample i). The alternation and the target classifier's losses live in
:class:`openmix.lightning.AdAutoMixClassifier`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openmix.mixers import functional as F_mix
from openmix.mixers._base import MixOutput, check_call, check_choice, check_inplace_target, check_network
from openmix.mixers._registry import register_mixer
from openmix.mixers.automix import DRAWS, AutoMix, check_fraction

COSINE_SIGNS = ("paper", "code")
"""How the adversarial step uses the cosine similarity: ``"paper"`` raises it (the stated purpose: keep the mix's
meaning), ``"code"`` lowers it (the authors' ``+ (1 - beta_radio) * cos_simi_weight`` in a minimised loss)."""
MAX_SOURCES = 8


def draw_shares(
    alpha: float, num_sources: int, rows: int, own: Tensor | None, generator: torch.Generator | None
) -> Tensor:
    """(rows, k) float64 CPU label shares of the k sources, rows summing to 1: (lambda, 1 - lambda) for k = 2, k
    normalised Beta(alpha, alpha) draws for k > 2 (AdAutoMix.py:245, 260-261). ``own`` (rows,): an explicit share
    of source 0; the other sources then split 1 - own in the drawn proportions."""
    draws = F_mix.sample_beta(alpha, rows * num_sources, generator).view(rows, num_sources)
    if num_sources == 2:
        shares = torch.stack([draws[:, 0], 1.0 - draws[:, 0]], dim=1)
    else:
        shares = draws / draws.sum(dim=1, keepdim=True)
    if own is None:
        return shares
    rest = shares[:, 1:]
    total = rest.sum(dim=1, keepdim=True)
    rest = torch.where(total > 0, rest / total.clamp(min=1e-300), torch.full_like(rest, 1.0 / rest.shape[1]))
    return torch.cat([own.view(-1, 1), rest * (1.0 - own.view(-1, 1))], dim=1)


def mix_sources(x: Tensor, indices: Tensor, masks: Tensor) -> Tensor:
    """``sum_j masks[:, j] * x[indices[:, j]]`` (B, C, H, W) in a new tensor of ``x``'s dtype and memory format;
    differentiable in ``masks`` (and ``x``)."""
    weights = masks.to(x.dtype).unsqueeze(2)  # (B, k, 1, H, W)
    mixed = weights[:, 0] * x.index_select(0, indices[:, 0])
    for j in range(1, indices.shape[1]):
        mixed = mixed + weights[:, j] * x.index_select(0, indices[:, j])
    return mixed.contiguous(memory_format=F_mix.memory_format_of(x))


def projection(in_channels: int, out_channels: int, norm: bool) -> nn.Sequential:
    """A 1x1 convolution (with a bias unless normalised), optional batch norm, ReLU: mmcv's ``ConvModule`` with its
    default ReLU, as the authors build the query and key embeddings (Ada_mix_pine.py:52-65)."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@register_mixer(
    "adautomix",
    paper="Adversarial AutoMixup (Qin et al., ICLR 2024)",
    url="https://arxiv.org/abs/2312.11954",
)
class AdAutoMix(AutoMix):
    """AdAutoMix's generator (k-source Mix Block). Trained by :class:`openmix.lightning.AdAutoMixClassifier`.

    Args:
        alpha: Beta(alpha, alpha) concentration of the shares (AdAutoMix.py:31, every recipe 1.0).
        num_sources: k, the number of inputs each output mixes, >= 2 (AdAutoMix.py:32 ``mix_samples=3``; CIFAR
            recipes 3, ImageNet recipes 2).
        extractor, feature_stage, in_channels, reduction: as :class:`~openmix.mixers.automix.AutoMix` (the
            authors read the third stage: ``out_indices=(2, 3)`` and ``backbone_k(img)[0]``, AdAutoMix.py:250).
        lam_embedding: append each source's share as a constant feature channel (the authors' ``lam_concat``:
            Ada_mix_pine.py:21 default True; their CIFAR recipes turn it off, their ImageNet ones keep it).
        upsampling: ``bilinear`` (every published recipe) or ``nearest`` (Ada_mix_pine.py:23 default) upsampling
            of the mask logits, before the softmax over the sources.
        query_key_norm: batch norm in the query and key embeddings (the authors' ``att_norm_cfg``: none by default,
            BN in their ImageNet ResNet-50 recipe).
        lam_margin: when the share of sample i itself is within this margin of 0 or 1, the classifier's draw uses
            constant masks (plain k-source mixup) instead of the generator's (AdAutoMix.py:507, 548).
        adversarial_weight: beta, the weight of the teacher's loss in the adversarial step; 1 - beta weighs the
            cosine similarity (AdAutoMix.py:38 ``beta_radio=0.3``; ImageNet recipes 0.1).
        cosine_sign: ``"paper"`` (the adversarial step keeps the mix similar to its sources) or ``"code"`` (the
            authors' sign, which pushes the similarity down).
        mode: ``"batch"`` (one share vector per batch, as the authors) or ``"elem"`` (one per output).
        inplace: write the (detached) mix into the input.

    Output: the k-source form of :class:`~openmix.mixers._base.MixOutput`. ``indices[:, 0]`` is sample i itself,
    the other columns its partners ordered by pixel share, largest first; ``masks`` the softmax masks, ``weights``
    their means, ``label_weights`` the sampled shares (what the loss uses); ``draw="block"`` keeps the masks'
    gradient (the generator's training draw, never within the margin), ``"classifier"`` (the default) applies
    ``lam_margin``.
    """

    trained_by = "openmix.lightning.AdAutoMixClassifier"  # adversarial steps through an EMA teacher

    def __init__(
        self,
        alpha: float = 1.0,
        num_sources: int = 3,
        extractor: nn.Module | None = None,
        feature_stage: int = -2,
        in_channels: int | None = None,
        reduction: int = 2,
        lam_embedding: bool = True,
        upsampling: str = "bilinear",
        query_key_norm: bool = False,
        lam_margin: float = 0.03,
        adversarial_weight: float = 0.3,
        cosine_sign: str = "paper",
        mode: str = "batch",
        inplace: bool = False,
    ):
        super().__init__(
            alpha=alpha,
            extractor=extractor,
            feature_stage=feature_stage,
            in_channels=None,  # built below, once this block's own options are set
            reduction=reduction,
            lam_embedding=lam_embedding,
            upsampling=upsampling,
            lam_margin=lam_margin,
            mode=mode,
            inplace=inplace,
        )
        if in_channels is not None and (not F_mix.is_int(in_channels) or in_channels < 1):
            raise ValueError(f"in_channels must be a positive int or None, got {in_channels!r}")
        if not F_mix.is_int(num_sources) or not 2 <= num_sources <= MAX_SOURCES:
            raise ValueError(f"num_sources must be an int in [2, {MAX_SOURCES}], got {num_sources!r}")
        self.num_sources = int(num_sources)
        self.query_key_norm = F_mix.check_bool(query_key_norm, "query_key_norm")
        self.adversarial_weight = check_fraction(adversarial_weight, "adversarial_weight", closed=True)
        self.cosine_sign = check_choice(cosine_sign, COSINE_SIGNS, "cosine_sign")
        if in_channels is not None:
            self.build(int(in_channels))

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, num_sources={self.num_sources}, mode={self.mode!r}, "
            f"feature_stage={self.feature_stage}, reduction={self.reduction}, lam_embedding={self.lam_embedding}, "
            f"upsampling={self.upsampling!r}, query_key_norm={self.query_key_norm}, lam_margin={self.lam_margin}, "
            f"adversarial_weight={self.adversarial_weight}, "
            f"cosine_sign={self.cosine_sign!r}, inplace={self.inplace}, built={self.built}"
        )

    # ----- the generator's layers ---------------------------------------------------------------------------------
    def build(self, in_channels: int) -> None:
        """Create the query, key and value embeddings for ``in_channels`` feature channels (the lambda channel comes
        on top; the embedding width is ``in_channels // reduction``, Ada_mix_pine.py:32, 47-67)."""
        channels = in_channels + (1 if self.lam_embedding else 0)
        width = max(in_channels // self.reduction, 1)
        self.query = projection(channels, width, self.query_key_norm)
        self.key = projection(channels, width, self.query_key_norm)
        self.value = nn.Conv2d(channels, 1, 1)
        self.init_block_weights()  # N(0, 0.01) convolutions, unit batch norms (AdAutoMix.py:119)
        self.built = True

    def source_masks(self, features: Tensor, indices: Tensor, shares: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, k, H, W) float32 per-pixel weights of the k sources ``indices`` (B, k), from the features (n, C, h, w)
        of the batch they index and the shares (B, k) (the lambda channel)."""
        batch_size, num_sources = indices.shape
        channels, height, width = features.shape[1:]
        if not self.built:
            self.build(channels)
            self.to(features.device)
        sources = features.index_select(0, indices.t().reshape(-1))  # (k B, C, h, w), source-major
        if self.lam_embedding:
            share = shares.t().reshape(-1, 1, 1, 1).to(sources).expand(-1, 1, height, width)
            sources = torch.cat([sources, share], dim=1)
        queries = self.query(sources).flatten(2).view(num_sources, batch_size, -1, height * width)  # (k, B, d, hw)
        keys = self.key(sources).flatten(2).view(num_sources, batch_size, -1, height * width)
        values = self.value(sources).flatten(2).view(num_sources, batch_size, 1, height * width)
        scale = queries.shape[2] ** 0.5
        logits = []
        for j in range(num_sources):
            others = sum(keys[other] for other in range(num_sources) if other != j)  # (B, d, hw)
            attention = torch.softmax(queries[j].transpose(1, 2) @ others / scale, dim=-1)  # (B, hw, hw)
            logits.append((attention @ values[j].transpose(1, 2)).view(batch_size, 1, height, width))
        align = None if self.upsampling == "nearest" else False
        upsampled = F.interpolate(torch.cat(logits, dim=1), size=size, mode=self.upsampling, align_corners=align)
        return torch.softmax(upsampled, dim=1)

    # ----- mixing --------------------------------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        y: Tensor,
        generator: torch.Generator | None = None,
        lam: float | Tensor | None = None,
        **context: Any,
    ) -> MixOutput:
        """Mix a batch (see :meth:`Mixer.forward`): ``lam`` is the share of sample i itself (the others split the
        rest in drawn proportions); ``draw="block"`` or ``"classifier"`` (the default) says what the mix is for;
        ``features`` (n, C, h, w) of the batch may be given instead of ``model``."""
        check_call(self, x, y, generator, context)
        check_inplace_target(self, x)
        batch_size, _, height, width = x.shape
        draw = check_choice(context.get("draw", "classifier"), DRAWS, "draw")
        features = context.get("features")
        network = self.extractor if self.extractor is not None else context.get("model")
        if features is None and network is None:
            raise ValueError("adautomix built without an extractor needs model=... (or features=...) at call time")
        if features is None and self.extractor is None:
            check_network(network)
        if features is not None and (
            not isinstance(features, Tensor) or features.dim() != 4 or features.shape[0] != batch_size
        ):
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"features must be a ({batch_size}, C, h, w) tensor (one map per sample), got {shape}")
        own = F_mix.check_lam(lam, batch_size, self.mode)
        rows = 1 if self.mode == "batch" else batch_size
        partners = [F_mix.partner_index(batch_size, "random", generator) for _ in range(self.num_sources - 1)]
        indices = torch.stack([torch.arange(batch_size), *partners], dim=1).to(x.device)
        shares = draw_shares(self.alpha, self.num_sources, rows, None if own is None else own[:rows], generator)
        shares = shares.expand(batch_size, -1)
        near_edge = (shares[:, 0] <= self.lam_margin) | (shares[:, 0] >= 1 - self.lam_margin)  # on the host
        shares = F_mix.to_device(shares, x.device, torch.float32)
        self.last_target_lam = shares[:, 0]
        if draw == "block":
            near_edge = torch.zeros_like(near_edge)  # the generator learns from every share (AdAutoMix.py:494)
        constant = shares.view(batch_size, -1, 1, 1).expand(-1, -1, height, width)
        if F_mix.host_values(near_edge).all():  # plain k-source mixup: constant masks, no features needed
            masks = constant.contiguous()
        else:
            features = self.features(x, network) if features is None else features.detach().float()
            masks = self.source_masks(features, indices, shares, (height, width))
            masks = torch.where(near_edge.view(-1, 1, 1, 1), constant, masks)
        weights = masks.detach().mean(dim=(2, 3))
        order = torch.argsort(weights[:, 1:], dim=1, descending=True, stable=True) + 1  # partners, largest first
        order = torch.cat([torch.zeros_like(order[:, :1]), order], dim=1)
        indices, weights, shares = indices.gather(1, order), weights.gather(1, order), shares.gather(1, order)
        masks = masks.gather(1, order.view(batch_size, -1, 1, 1).expand(-1, -1, height, width))
        mixed = mix_sources(x, indices, masks.detach() if self.inplace else masks)
        if self.inplace:
            mixed = x.copy_(mixed)
        index = indices[:, 1]
        return MixOutput(
            mixed,
            index,
            weights[:, 0].clamp(0.0, 1.0),
            y,
            y.index_select(0, index),
            masks[:, :1],
            label_weights=shares,
            indices=indices,
            weights=weights,
            masks=masks,
        )

    def plain_mix(self, x: Tensor, mix: MixOutput) -> MixOutput:
        """The same sources at constant masks equal to the label shares (k-source mixup): the extra mix the target
        classifier trains on when k > 2 (``co_mixed_x``, AdAutoMix.py:383-385)."""
        batch_size, _, height, width = x.shape
        shares = mix.label_weight_matrix()
        masks = shares.view(batch_size, -1, 1, 1).expand(-1, -1, height, width).contiguous()
        weights = masks.mean(dim=(2, 3))
        mixed = mix_sources(x, mix.indices, masks)  # never in place: the step still needs the clean batch
        return MixOutput(
            mixed,
            mix.index,
            weights[:, 0],
            mix.y_a,
            mix.y_b,
            masks[:, :1],
            label_weights=shares,
            indices=mix.indices,
            weights=weights,
            masks=masks,
        )

    # ----- the generator's losses ---------------------------------------------------------------------------------
    def source_similarity(self, mixed_logits: Tensor, source_logits: Tensor, mix: MixOutput) -> Tensor:
        """S = mean_i sum_j w_ij cos(mixed_logits_i, source_logits[indices_ij]): the teacher's outputs on the mix
        against those on each source (``source_logits``: the teacher on the clean batch), weighted by the label
        shares w (AdAutoMix.py:462-478)."""
        mixed = mixed_logits.float()
        sources = source_logits.detach().float()
        similarity = torch.stack(
            [
                F.cosine_similarity(mixed, sources.index_select(0, mix.indices[:, j]), dim=-1, eps=1e-8)
                for j in range(mix.indices.shape[1])
            ],
            dim=1,
        )
        return (mix.label_weight_matrix().to(similarity) * similarity).sum(dim=1).mean()

    def generator_loss(self, teacher_loss: Tensor, similarity: Tensor | None, adversarial: bool) -> Tensor:
        """L_G: the teacher's mixed loss in a cooperative step; -beta L_T - (1 - beta) S in an adversarial one
        (``cosine_sign="code"``: + (1 - beta) S, the authors' AdAutoMix.py:295-296)."""
        if not adversarial:
            return teacher_loss
        if similarity is None:
            raise ValueError("an adversarial step needs the cosine similarity of the mix to its sources")
        sign = -1.0 if self.cosine_sign == "paper" else 1.0
        beta = self.adversarial_weight
        return -beta * teacher_loss + sign * (1.0 - beta) * similarity

    def mask_loss(self, mask: Tensor, target: Tensor | None = None) -> Tensor:
        """AdAutoMix has no mask loss: its generator is trained by the teacher's loss and the cosine similarity."""
        raise ValueError(
            "adautomix has no mask loss (its generator learns adversarially through an EMA teacher): train it with "
            "openmix.lightning.AdAutoMixClassifier, not AutoMixClassifier"
        )

    def block_loss(self, logits: Tensor, mix: MixOutput, objective: nn.Module) -> Tensor:
        """The teacher's mixed loss: the trainer's objective on the teacher's ``logits`` of the generator's mix,
        labelled with the sampled shares (``head_mix_k``'s ``co_loss``, AdAutoMix.py:452-457)."""
        return objective(logits, mix)
