"""Losses and mixing objectives (the targets they compare with live in :mod:`openmix.targets`).

Every loss takes logits (B, K).

The objective modules (``SoftTargetCrossEntropy``, ``MixedBinaryCrossEntropy``, ``DecoupledMixupLoss``,
``RegMixupLoss``) take the mixer's :class:`~openmix.MixOutput` directly, so a training step is
``loss = objective(model(out.x), out)`` whatever the method.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openmix._checks import check_bool, is_real
from openmix.targets import check_smoothing, check_tensor, mix_targets, one_hot_targets

if TYPE_CHECKING:  # the type is only needed for annotations
    from openmix.mixers._base import MixOutput

__all__ = [
    "DecoupledMixupLoss",
    "MixedBinaryCrossEntropy",
    "Objective",
    "RegMixupLoss",
    "SoftTargetCrossEntropy",
    "binary_cross_entropy",
    "decoupled_regularizer",
    "mix_targets",
    "one_hot_targets",
    "regmixup_loss",
    "soft_target_cross_entropy",
]

REDUCTIONS = ("mean", "sum", "none")


def _check_mix(mix: Any) -> None:
    if not callable(getattr(mix, "soft_targets", None)):
        raise TypeError(f"mix must be the mixer's MixOutput, got {type(mix).__name__}")


def _check_eta(eta: Any) -> float:
    if not is_real(eta) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    return float(eta)


def _check_threshold(target_threshold: Any) -> float | None:
    if target_threshold is None:
        return None
    if not is_real(target_threshold):
        raise TypeError(f"target_threshold must be a number in [0, 1) or None, got {target_threshold!r}")
    if not 0.0 <= target_threshold < 1.0:
        raise ValueError(f"target_threshold must lie in [0, 1) or be None, got {target_threshold}")
    return float(target_threshold)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def soft_target_cross_entropy(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """Cross entropy against a target distribution: ``-sum_k t_k log softmax(z)_k`` per sample."""
    check_tensor(logits, "logits")
    check_tensor(targets, "targets")
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have the same shape")
    loss = -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)
    return _reduce(loss, reduction)


def binary_cross_entropy(
    logits: Tensor, targets: Tensor, target_threshold: float | None = None, reduction: str = "mean"
) -> Tensor:
    """Per-class sigmoid BCE against (mixed) soft targets, as timm's ``BinaryCrossEntropy``.

    With ``target_threshold`` the targets are binarised first (``t > threshold``), so every class present in the
    mix above that share counts as a positive. The per-sample loss is the mean over classes.
    """
    check_tensor(logits, "logits")
    check_tensor(targets, "targets")
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have the same shape")
    target_threshold = _check_threshold(target_threshold)
    if target_threshold is not None:
        targets = targets.gt(target_threshold).to(targets.dtype)
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none").mean(dim=-1)
    return _reduce(loss, reduction)


def _check_lam_eps(lam_eps: Any) -> float | None:
    if lam_eps is None:
        return None
    if not is_real(lam_eps) or not 0.0 <= lam_eps < 0.5:
        raise ValueError(f"lam_eps must be None or a number in [0, 0.5), got {lam_eps!r}")
    return float(lam_eps)


def decoupled_regularizer(
    logits: Tensor,
    y_a: Tensor,
    y_b: Tensor,
    lam: Tensor,
    lam_weighted: bool = True,
    reduction: str = "mean",
    lam_eps: float | None = None,
) -> Tensor:
    """The Decoupled Mixup (DM) term: each mixed class is scored by a softmax that excludes its competitor.

    For a sample mixing classes a and b with share lam of a (Liu et al., "Harnessing Hard Mixed Samples with
    Decoupled Regularizer", NeurIPS 2023):

        DM = -w_a log( e^{z_a} / sum_{c != b} e^{z_c} ) - w_b log( e^{z_b} / sum_{c != a} e^{z_c} )

    with (w_a, w_b) = (lam, 1 - lam) when ``lam_weighted`` (OpenMixup's published configs) else (1, 1). Removing the
    competitor from the softmax means the network is not penalised for being confident in both mixed classes.
    Samples with a == b carry no decoupled term (0). With ``lam_eps`` set, neither do samples whose lam lies within
    ``lam_eps`` of 0 or 1 (``min(lam, 1 - lam) <= lam_eps``), as in the reference code: OpenMixup's
    ``soft_mix_cross_entropy`` (``openmixup/models/losses/cross_entropy_loss.py``, lines 130-146) counts a class as
    mixed only when its label share exceeds ``max(1e-3, eps_smooth)`` and leaves samples with fewer mixed classes
    to the plain soft CE. There the shares are compared after label smoothing; here lam itself is compared.
    :class:`DecoupledMixupLoss`, the training objective, uses the reference's 1e-3; this function defaults to
    ``None`` (the bare formula for every pair of distinct classes). The skip is a ``torch.where`` over a per-sample
    mask: no host synchronisation, no boolean indexing, and the mean still divides by the whole batch.

    Args:
        logits: (B, K) logits of the mixed batch.
        y_a, y_b: (B,) int64 class ids of each sample and of its partner.
        lam: (B,) share of sample a.
        lam_weighted: weight the two terms by (lam, 1 - lam) rather than (1, 1).
        reduction: ``"mean"`` (over all B samples, skipped ones counting as 0), ``"sum"`` or ``"none"``.
        lam_eps: samples with lam or 1 - lam at most this carry no decoupled term (the reference uses 1e-3; 0 skips
            lam exactly 0 or 1); ``None`` skips none for their lam.
    """
    lam_eps = _check_lam_eps(lam_eps)
    lam_weighted = check_bool(lam_weighted, "lam_weighted")
    check_tensor(logits, "logits", dims=(2,))
    check_tensor(lam, "lam")
    for name, labels in (("y_a", y_a), ("y_b", y_b)):
        check_tensor(labels, name)
        if labels.dim() != 1 or labels.dtype != torch.int64:
            raise TypeError(f"{name} must be (B,) int64 class ids for the decoupled regularizer, got {labels.dtype}")
    logits = logits.float()
    num_classes = logits.shape[-1]
    log_prob_a = F.log_softmax(logits.masked_fill(one_hot_targets(y_b, num_classes).bool(), float("-inf")), dim=-1)
    log_prob_b = F.log_softmax(logits.masked_fill(one_hot_targets(y_a, num_classes).bool(), float("-inf")), dim=-1)
    nll_a = -log_prob_a.gather(1, y_a[:, None]).squeeze(1)
    nll_b = -log_prob_b.gather(1, y_b[:, None]).squeeze(1)
    lam = lam.to(device=logits.device, dtype=torch.float32)
    weight_a, weight_b = (lam, 1.0 - lam) if lam_weighted else (torch.ones_like(lam), torch.ones_like(lam))
    # mixed: two distinct classes, each with a share above lam_eps. Where a == b the masked softmax excludes the
    # target itself (-inf): torch.where, not a product, keeps those inf / NaN values out of the loss and its gradient
    mixed = y_a != y_b
    if lam_eps is not None:
        mixed = mixed & (torch.minimum(lam, 1.0 - lam) > lam_eps)
    loss = torch.where(mixed, weight_a * nll_a + weight_b * nll_b, torch.zeros_like(lam))
    return _reduce(loss, reduction)


def regmixup_loss(
    clean_logits: Tensor, clean_targets: Tensor, mixed_logits: Tensor, mixed_targets: Tensor, eta: float = 1.0
) -> Tensor:
    """RegMixup (Pinto et al., NeurIPS 2022): CE on the clean batch + eta * CE on the mixed batch."""
    eta = _check_eta(eta)
    return soft_target_cross_entropy(clean_logits, clean_targets) + eta * soft_target_cross_entropy(
        mixed_logits, mixed_targets
    )


class Objective(nn.Module):
    """Base class of the training objectives: ``objective(logits, mix)`` (and ``clean_logits`` when
    ``uses_clean_batch``), a scalar loss. A trainer takes any subclass as a typed component (in a config:
    ``objective: {class_path: openmix.losses.RegMixupLoss, init_args: {eta: 1.0}}``)."""

    uses_clean_batch = False  # True: the trainer passes the clean batch's logits too (RegMixup)


class SoftTargetCrossEntropy(Objective):
    """Mixed cross entropy: soft-target CE against ``mix.soft_targets(K, smoothing)``."""

    def __init__(self, smoothing: float = 0.0):
        super().__init__()
        self.smoothing = check_smoothing(smoothing)

    def forward(self, logits: Tensor, mix: MixOutput) -> Tensor:
        check_tensor(logits, "logits", dims=(2,))
        _check_mix(mix)
        return soft_target_cross_entropy(logits, mix.soft_targets(logits.shape[-1], self.smoothing))


class MixedBinaryCrossEntropy(Objective):
    """BCE against the mixed targets (optionally binarised at ``target_threshold``), as in timm / DeiT III."""

    def __init__(self, smoothing: float = 0.0, target_threshold: float | None = None):
        super().__init__()
        self.smoothing = check_smoothing(smoothing)
        self.target_threshold = _check_threshold(target_threshold)

    def forward(self, logits: Tensor, mix: MixOutput) -> Tensor:
        check_tensor(logits, "logits", dims=(2,))
        _check_mix(mix)
        targets = mix.soft_targets(logits.shape[-1], self.smoothing)
        return binary_cross_entropy(logits, targets, self.target_threshold)


class DecoupledMixupLoss(Objective):
    """Mixed CE + ``eta`` * the decoupled regularizer (:func:`decoupled_regularizer`).

    Args:
        eta: weight of the decoupled term (OpenMixup's DM configs use 0.1).
        smoothing: label smoothing of the mixed CE's targets.
        lam_weighted: weight the decoupled terms by (lam, 1 - lam).
        lam_eps: samples with lam within this of 0 or 1 carry no decoupled term (the reference's 1e-3; ``None``:
            none skipped for their lam).

    Soft or multi-hot (B, K) labels are accepted: the mixed CE uses them as they are, the decoupled term uses the
    arg-max class of each (the method is defined for two competing classes).
    """

    def __init__(
        self, eta: float = 0.1, smoothing: float = 0.0, lam_weighted: bool = True, lam_eps: float | None = 1e-3
    ):
        super().__init__()
        self.eta = _check_eta(eta)
        self.smoothing = check_smoothing(smoothing)
        self.lam_weighted = check_bool(lam_weighted, "lam_weighted")
        self.lam_eps = _check_lam_eps(lam_eps)

    def forward(self, logits: Tensor, mix: MixOutput) -> Tensor:
        check_tensor(logits, "logits", dims=(2,))
        _check_mix(mix)
        mixed = soft_target_cross_entropy(logits, mix.soft_targets(logits.shape[-1], self.smoothing))
        # soft (B, K) labels: the decoupled term pits the two arg-max classes against each other
        y_a = mix.y_a if mix.y_a.dim() == 1 else mix.y_a.argmax(dim=-1)
        y_b = mix.y_b if mix.y_b.dim() == 1 else mix.y_b.argmax(dim=-1)
        decoupled = decoupled_regularizer(logits, y_a, y_b, mix.target_lam, self.lam_weighted, lam_eps=self.lam_eps)
        return mixed + self.eta * decoupled


class RegMixupLoss(Objective):
    """RegMixup: CE on the clean batch + ``eta`` * mixed CE. The clean and mixed batches go through the network
    together (``model(torch.cat([x, mix.x]))``), so ``uses_clean_batch`` tells the trainer to concatenate them."""

    uses_clean_batch = True

    def __init__(self, eta: float = 1.0, smoothing: float = 0.0):
        super().__init__()
        self.eta = _check_eta(eta)
        self.smoothing = check_smoothing(smoothing)

    def forward(self, logits: Tensor, mix: MixOutput, clean_logits: Tensor) -> Tensor:
        check_tensor(logits, "logits", dims=(2,))
        check_tensor(clean_logits, "clean_logits", dims=(2,))
        _check_mix(mix)
        num_classes = logits.shape[-1]
        clean_targets = one_hot_targets(mix.y_a, num_classes, self.smoothing)
        mixed_targets = mix.soft_targets(num_classes, self.smoothing)
        return regmixup_loss(clean_logits, clean_targets, logits, mixed_targets, self.eta)
