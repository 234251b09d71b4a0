"""The mixer contract: :class:`MixOutput` and the :class:`Mixer` base class.

A mixer takes a batch ``x`` (B, C, H, W) and its labels ``y`` and returns a :class:`MixOutput`. The base class owns
everything common to all methods: argument checks, partner pairing, lambda sampling (one per batch or one per
sample), explicit ``lam`` and the label bookkeeping. A subclass only implements :meth:`Mixer.mix`, which turns
(x, partner index, lambdas) into the mixed pixels.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from openmix.losses import mix_targets
from openmix.mixers import functional as F_mix

MODES = ("batch", "elem")


@dataclass
class MixOutput:
    """The result of a mixer call.

    Attributes:
        x: mixed batch (B, C, H, W), same dtype, device and memory format as the input.
        index: (B,) int64; sample i was mixed with input sample ``index[i]``.
        lam: (B,) float32 in [0, 1]; the share of sample i itself in ``x[i]`` and the weight of ``y_a``.
        y_a: labels of the samples themselves (the input ``y``).
        y_b: labels of the partners, ``y[index]``.
        mask: ``None`` for global interpolation, else the per-pixel weight of sample i itself, (1 or B, 1, H, W)
            float32, broadcastable to ``x``.
        label_lam: ``None``, or (B,) float32 weights of ``y_a`` in the targets when they differ from the pixel share
            ``lam`` (AutoMix labels its mix with the sampled lambda while its mask's mean only tracks it). Read it
            through :attr:`target_lam`.
    """

    x: Tensor
    index: Tensor
    lam: Tensor
    y_a: Tensor
    y_b: Tensor
    mask: Tensor | None = None
    label_lam: Tensor | None = None

    @property
    def target_lam(self) -> Tensor:
        """(B,) weight of ``y_a`` in the targets: ``label_lam`` when set, else ``lam``."""
        return self.lam if self.label_lam is None else self.label_lam

    @classmethod
    def identity(cls, x: Tensor, y: Tensor) -> MixOutput:
        """The unmixed batch in the same form: every sample its own partner, lam = 1, no copy of ``x``."""
        index = torch.arange(x.shape[0], device=x.device)
        return cls(x, index, torch.ones(x.shape[0], device=x.device), y, y, None)

    def soft_targets(self, num_classes: int, smoothing: float = 0.0) -> Tensor:
        """(B, K) float32 rows ``w * t(y_a) + (1 - w) * t(y_b)``, w = :attr:`target_lam`, t = (smoothed) one-hot
        or soft target."""
        return mix_targets(self.y_a, self.y_b, self.target_lam, num_classes, smoothing)


def check_positive(value: Any, name: str) -> float:
    """``value`` (a Python or NumPy number, not a bool) as a float > 0, else a ``ValueError``/``TypeError`` naming
    ``name``."""
    if not F_mix.is_real(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def check_choice(value: Any, choices: tuple[str, ...], name: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_network(network: Any, name: str = "model") -> nn.Module:
    """A network handed to a mixer (call-time ``model=``): an ``nn.Module``, else a ``TypeError`` naming ``name``."""
    if not isinstance(network, nn.Module):
        raise TypeError(
            f"{name} must be an nn.Module (the network whose features the mixer reads), got {type(network).__name__}"
        )
    return network


def check_batch(x: Any, y: Any) -> None:
    """Validate the (x, y) pair of the mixer contract; errors name the offending argument."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got {x.dim()} dimensions: {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating point tensor, got {x.dtype}")
    if x.shape[0] < 1 or x.numel() == 0:
        raise ValueError(f"x must hold at least one non-empty image, got shape {tuple(x.shape)}")
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if y.device != x.device:  # checked before any value of y is read: a clear error, not a device mismatch later
        raise ValueError(f"y is on {y.device} but x is on {x.device}: move both to the same device")
    if y.shape[0:1] != x.shape[0:1]:
        raise ValueError(f"y must have batch size {x.shape[0]} like x, got shape {tuple(y.shape)}")
    if y.dim() == 1:
        if y.dtype != torch.int64:
            raise TypeError(f"y with shape (B,) must hold int64 class ids, got {y.dtype}")
        if y.numel() and int(y.min()) < 0:
            raise ValueError(f"y holds negative class ids (min {int(y.min())})")
    elif y.dim() == 2:
        if not y.is_floating_point():
            raise TypeError(f"y with shape (B, K) must be a floating point target, got {y.dtype}")
    else:
        raise ValueError(f"y must have shape (B,) or (B, K), got {tuple(y.shape)}")


def check_call(mixer: nn.Module, x: Any, y: Any, generator: Any, context: dict[str, Any]) -> None:
    """Validate a mixer call: the batch, the generator and the call-time inputs the mixer ``requires``."""
    check_batch(x, y)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    requires = getattr(mixer, "requires", ())
    unknown = sorted(set(context) - set(requires))
    if unknown:
        raise ValueError(f"{type(mixer).__name__} got unexpected call arguments {unknown}; it takes {requires}")


class Mixer(nn.Module, abc.ABC):
    """Base class of every pixel-space mixer.

    Args:
        alpha: concentration of the Beta(alpha, alpha) distribution that lambda is drawn from (> 0).
        mode: ``"batch"`` draws one lambda (box, mask) for the whole batch, as in the papers; ``"elem"`` draws one
            per sample, vectorised over the batch.
        pairing: ``"random"`` pairs each sample with a random permutation of the batch; ``"flip"`` with the
            reversed batch (sample i with sample B-1-i).
        inplace: write the mixed pixels into the input tensor instead of a new one.

    Subclasses set ``requires`` to the names of the call-time inputs they need from a trainer (e.g. ``("model",)``),
    and ``shares_batch_mask = False`` when even batch mode gives each sample its own mask (AttentiveMix, whose cells
    come from each partner's attention).
    """

    requires: tuple[str, ...] = ()
    needs_network: bool = False  # True when a mixer may take a network at call time (the registry reads it)
    shares_batch_mask: bool = True
    registry_name: str = ""

    def __init__(self, alpha: float = 1.0, mode: str = "batch", pairing: str = "random", inplace: bool = False):
        super().__init__()
        self.alpha = check_positive(alpha, "alpha")
        self.mode = check_choice(mode, MODES, "mode")
        self.pairing = check_choice(pairing, F_mix.PAIRINGS, "pairing")
        self.inplace = F_mix.check_bool(inplace, "inplace")

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, mode={self.mode!r}, pairing={self.pairing!r}, inplace={self.inplace}"

    def forward(
        self,
        x: Tensor,
        y: Tensor,
        generator: torch.Generator | None = None,
        lam: float | Tensor | None = None,
        **context: Any,
    ) -> MixOutput:
        """Mix a batch.

        Args:
            x: (B, C, H, W) floating point images.
            y: (B,) int64 class ids or (B, K) soft / multi-hot targets.
            generator: a ``torch.Generator`` that makes the call reproducible; the global torch RNG if ``None``.
            lam: explicit lambda in [0, 1]: a number, or in ``elem`` mode also a (B,) tensor. Methods whose
                region is clipped to the image report the lambda they actually applied.
            **context: what a mixer that needs a network takes at call time (see ``requires``).
        """
        check_call(self, x, y, generator, context)
        root = x if x._base is None else x._base  # a view writes into the tensor it views
        if self.inplace and root.is_leaf and root.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                f"{type(self).__name__} was built with inplace=True, but x is a leaf tensor that requires grad (or a "
                "view of one), which autograd forbids writing into: build the mixer with inplace=False (the mix then "
                "carries gradients to x), or mix x.detach() or under torch.no_grad()"
            )
        batch_size = x.shape[0]
        lam_in = F_mix.check_lam(lam, batch_size, self.mode)
        index = F_mix.partner_index(batch_size, self.pairing, generator).to(x.device)
        mixed, lam_out, mask = self.mix(x, index, lam_in, generator, **context)
        lam_out = lam_out.to(device=x.device, dtype=torch.float32).clamp_(0.0, 1.0)
        return MixOutput(mixed, index, lam_out, y, y.index_select(0, index), mask)

    def draw_lam(self, lam_in: Tensor | None, batch_size: int, generator: torch.Generator | None) -> Tensor:
        """(B,) float64 CPU lambdas: the explicit ones, else Beta(alpha, alpha) draws (one per batch or sample)."""
        if lam_in is not None:
            return lam_in
        draws = F_mix.sample_beta(self.alpha, 1 if self.mode == "batch" else batch_size, generator)
        return draws.expand(batch_size) if self.mode == "batch" else draws

    @abc.abstractmethod
    def mix(
        self, x: Tensor, index: Tensor, lam: Tensor | None, generator: torch.Generator | None, **context: Any
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Mix ``x`` with ``x[index]``; return (mixed x, (B,) lambda actually applied, mask or None)."""

    def output_buffer(self, x: Tensor) -> Tensor:
        """The tensor the mixed batch is written to: ``x`` itself when ``inplace``, else a new one like it."""
        return x if self.inplace else torch.empty_like(x)
