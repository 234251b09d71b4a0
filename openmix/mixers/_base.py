"""The mixer contract: :class:`MixOutput`, the protocol root :class:`Mixer` and the two-source base
:class:`PairMixer`.

A training step with mixing has four hook points (``HOOKS``, DESIGN.md "Mixing protocol"): ``inputs`` (before the
forward pass, on the images), ``features`` (on a hidden state inside the forward pass), ``targets`` (after the
forward pass, re-weighting the labels from what the network saw) and ``loss`` (a learned mixer's own loss). A mixer
class declares where it acts (``hooks``) and what it needs from the trainer (``requires``, from the closed
vocabulary ``NEEDS``) as class attributes; the registry, the trainer, ``openmix show`` and the benchmarks read them
and nothing else. :class:`PairMixer` owns everything common to the two-source methods: argument checks, partner
pairing, lambda sampling (one per batch or one per sample), explicit ``lam`` and the label bookkeeping; a subclass
only implements :meth:`PairMixer.mix`, which turns (x, partner index, lambdas) into the mixed pixels.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from openmix._checks import check_class_ids
from openmix.mixers import functional as F_mix
from openmix.targets import mix_targets, one_hot_targets

MODES = ("batch", "elem")
HOOKS = ("inputs", "features", "targets", "loss")
"""Where a mixer acts in a training step, in this order."""
NEEDS = ("model", "saliency", "features", "attention", "cam", "momentum_model", "embedding")
"""What a mixer may need from the trainer (one providing function each, :mod:`openmix.lightning.services`):

- ``model``: the training network (``nn.Module``).
- ``saliency``: (B, H, W) float32, the L2 norm over channels of d(clean loss)/dx on the clean batch (one extra
  forward and backward per step, shared by every consumer).
- ``features``: the hidden states of the network at its feature stages.
- ``attention``: (B, gh, gw) float32, the class token's attention over the patch tokens in the last block of a ViT,
  averaged over heads (a row of the softmax, so the patch entries sum to less than 1).
- ``cam``: (B, h, w) float32, the class activation map of each sample's own label on the clean batch, at the
  last feature map's resolution, before any normalisation (needs a global-pool + linear classifier).
- ``momentum_model``: a momentum (EMA) copy of the training network.
- ``embedding``: (B, D), the pooled pre-logits features of the mixed batch, i.e. the input of the classifier
  (``get_classifier()``) in the step's own forward pass, with its graph (no extra pass; known after the forward).
"""


@dataclass
class MixOutput:
    """The result of a mixer call.

    Attributes:
        x: mixed batch (B, C, H, W), same dtype, device and memory format as the input.
        index: (B,) int64; sample i was mixed with input sample ``index[i]``.
        lam: (B,) float32 in [0, 1]; the share of sample i itself in ``x[i]`` and the weight of ``y_a`` (k sources:
            the share of ``indices[:, 0]``).
        y_a: labels of the samples themselves (the input ``y``).
        y_b: labels of the partners, ``y[index]``.
        mask: ``None`` for global interpolation, else the per-pixel weight of sample i itself (k sources: of
            ``indices[:, 0]``), (1 or B, 1, H, W) float32, broadcastable to ``x``.
        indices: ``None`` for two sources, else (B, k) int64: output i mixes the inputs ``indices[i]`` (k-source
            methods: Co-Mixup, AdAutoMix). ``indices[:, 0]`` is the source whose share is ``lam``: sample i itself
            for methods that keep one, else the largest source (Co-Mixup orders its sources by share, largest
            first); ``indices[:, 1]`` is the largest other source, so ``index == indices[:, 1]``; ``y_a`` must then
            hold the whole batch's labels. k is fixed per call: a method pads the rows that use fewer sources (for
            Co-Mixup with weight 0, a zero mask and the index ``indices[:, 0]``).
        weights: ``None`` for two sources, else (B, k) float32 pixel shares of the k sources (rows sum to 1;
            ``lam == weights[:, 0]``).
        masks: ``None``, or with ``indices`` the (B, k, H, W) float32 per-pixel weight of each of the k sources
            (summing to 1 over k at every pixel): ``x[i] == sum_j masks[i, j] * x_in[indices[i, j]]`` for a method
            that moves no content, ``weights == masks.mean((2, 3))``, and ``mask == masks[:, :1]``.
        label_weights: ``None``, or (B, 2) / (B, k) float32 weights of each source's label in the targets when they
            differ from the pixel shares: AutoMix labels its mix with the sampled lambda, TransMix / TokenMix with
            attention, SnapMix with class activation maps (its rows need not sum to 1). ``lam`` stays the pixel share
            (the contract); the loss reads :meth:`label_weight_matrix`.

    The two-source form (``index``, ``lam``, ``y_a``, ``y_b``, ``mask``) is always filled; k-source methods add
    ``indices`` / ``weights`` (and, when they mask pixels, ``masks``), and the two-source fields then describe the two
    largest sources.
    """

    x: Tensor
    index: Tensor
    lam: Tensor
    y_a: Tensor
    y_b: Tensor
    mask: Tensor | None = None
    label_weights: Tensor | None = None
    indices: Tensor | None = None
    weights: Tensor | None = None
    masks: Tensor | None = None

    @property
    def target_lam(self) -> Tensor:
        """(B,) weight of sample i's own label ``y_a`` in the targets (the first column of
        :meth:`label_weight_matrix`)."""
        return self.label_weight_matrix()[:, 0]

    def label_weight_matrix(self) -> Tensor:
        """(B, k) float32 weight of each source's label in the targets: ``label_weights`` when set, else the pixel
        shares (``weights``, or ``(lam, 1 - lam)`` for two sources)."""
        if self.label_weights is not None:
            return self.label_weights
        if self.weights is not None:
            return self.weights
        return torch.stack([self.lam, 1.0 - self.lam], dim=1)

    def source_labels(self) -> list[Tensor]:
        """The labels of the k sources, one (B,) or (B, K) tensor per column of :meth:`label_weight_matrix`."""
        if self.indices is None:
            return [self.y_a, self.y_b]
        return [self.y_a.index_select(0, self.indices[:, j]) for j in range(self.indices.shape[1])]

    def with_label_weights(self, label_weights: Tensor) -> MixOutput:
        """A copy whose targets use ``label_weights`` ((B, 2) or (B, k), or (B,) for the weight of ``y_a`` with
        ``1 - w`` for ``y_b``); the pixels and ``lam`` are unchanged."""
        if label_weights.dim() == 1:
            label_weights = torch.stack([label_weights, 1.0 - label_weights], dim=1)
        return replace(self, label_weights=label_weights.to(torch.float32))

    @classmethod
    def identity(cls, x: Tensor, y: Tensor) -> MixOutput:
        """The unmixed batch in the same form: every sample its own partner, lam = 1, no copy of ``x``."""
        index = torch.arange(x.shape[0], device=x.device)
        return cls(x, index, torch.ones(x.shape[0], device=x.device), y, y, None)

    def soft_targets(self, num_classes: int, smoothing: float = 0.0) -> Tensor:
        """(B, K) float32 rows ``sum_j w_j * t(y_j)`` over the sources j, w = :meth:`label_weight_matrix`, t =
        (smoothed) one-hot or soft target; for two sources ``w * t(y_a) + (1 - w) * t(y_b)``."""
        if self.label_weights is None and self.indices is None:
            return mix_targets(self.y_a, self.y_b, self.lam, num_classes, smoothing)
        weights = self.label_weight_matrix()
        targets = [one_hot_targets(labels, num_classes, smoothing) for labels in self.source_labels()]
        return sum(weights[:, j : j + 1].to(t.device) * t for j, t in enumerate(targets))


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


def check_batch(x: Any, y: Any, ranks: Sequence[int] = (4,)) -> None:
    """Validate the (x, y) pair of the mixer contract; errors name the offending argument. ``ranks``: the numbers
    of dimensions ``x`` may have (images: 4; a feature-stage mixer also takes (B, N, D) tokens or (B, D))."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in ranks:
        expected = "(B, C, H, W)" if tuple(ranks) == (4,) else f"one of {tuple(ranks)} dimensions"
        raise ValueError(f"x must have shape {expected}, got {x.dim()} dimensions: {tuple(x.shape)}")
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
        check_class_ids(y)
    elif y.dim() == 2:
        if not y.is_floating_point():
            raise TypeError(f"y with shape (B, K) must be a floating point target, got {y.dtype}")
    else:
        raise ValueError(f"y must have shape (B,) or (B, K), got {tuple(y.shape)}")


def check_call(mixer: nn.Module, x: Any, y: Any, generator: Any, context: dict[str, Any]) -> None:
    """Validate a mixer call: the batch, the generator and the call-time inputs the mixer ``requires``."""
    check_batch(x, y, getattr(mixer, "input_ranks", (4,)))
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    takes = (*getattr(mixer, "requires", ()), *getattr(mixer, "optional_inputs", ()))
    unknown = sorted(set(context) - set(takes))
    if unknown:
        raise ValueError(f"{type(mixer).__name__} got unexpected call arguments {unknown}; it takes {takes}")


def check_inplace_target(mixer: nn.Module, x: Tensor) -> None:
    """An in-place mixer cannot write into a leaf tensor that requires grad (or a view of one): a ``ValueError``
    saying how to call it instead."""
    root = x if x._base is None else x._base  # a view writes into the tensor it views
    if getattr(mixer, "inplace", False) and root.is_leaf and root.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"{type(mixer).__name__} was built with inplace=True, but x is a leaf tensor that requires grad (or a "
            "view of one), which autograd forbids writing into: build the mixer with inplace=False (the mix then "
            "carries gradients to x), or mix x.detach() or under torch.no_grad()"
        )


class Mixer(nn.Module, abc.ABC):
    """The protocol root of every mixer: where it acts and what it needs, declared once on the class.

    Class attributes (read by the registry, the trainer, ``openmix show`` and the benchmarks; no code branches on a
    method's name or class):

    - ``hooks``: the hook points it acts at, from ``HOOKS``: ``"inputs"`` (``forward(x, y, generator, lam,
      **needs)`` before the forward pass), ``"features"`` (``forward`` on the hidden state at the stage
      :meth:`draw_stage` picks), ``"targets"`` (:meth:`refine_targets` after the forward pass), ``"loss"`` (a
      learned mixer's own loss).
    - ``requires``: what it needs from the trainer, from ``NEEDS``; the trainer hands each one over as a keyword
      argument of the same name (to ``forward`` or :meth:`refine_targets`, whichever declares it). An instance may
      narrow it (a mixer given its own feature extractor no longer needs the training ``model``).
    - ``optional_inputs``: call-time arguments it accepts besides its needs (not provided by the trainer's services).
    - ``takes_services``: ``forward`` takes the step's ``services`` and asks for its needs itself, when it knows which
      (``RandomChoiceMixer``: the chosen child's only); the trainer then computes none in advance.
    - ``input_ranks``: the numbers of dimensions ``forward`` accepts for ``x`` (images: 4).
    - ``shares_batch_mask``: whether ``mode="batch"`` gives every sample the same mask.
    - ``moves_partner``: the partner's content is resized, cropped or aligned before it is mixed in (ResizeMix,
      SnapMix, AlignMix), so ``(1 - mask)`` holds a transform of ``x[index]``, not ``x[index]`` itself.
    - ``moves_own``: sample i's own content is rearranged too before the blend (PuzzleMix's transport), so ``mask``
      holds a transform of ``x[i]``; an instance sets it from its options.
    - ``learned``: its parameters are trained during training (then ``trained_by`` names the module class that can).
    - ``takes_lam``: ``forward`` accepts an explicit ``lam`` (Co-Mixup does not: it chooses every output's shares by
      optimisation and refuses a ``lam`` with a ``ValueError``).
    - ``reads_pixels``: its draws (partners, lambdas, masks) may depend on the pixels (SaliencyMix's peak, a
      network's attention). ``False`` declares they depend on the batch and image sizes and the generator alone and
      that the output is ``mask * x[i] + (1 - mask) * x[index[i]]``: a collate function (``openmix.collate``) may
      then draw the mix on a small stand-in and apply it to uint8 pixels. A subclass that reads pixels sets it back.
    - ``pastes_boxes``: the mix is a box paste, drawn by ``draw_boxes(batch_size, height, width, lam, generator)``
      right after the partners: sample i keeps its pixels outside box i and takes ``x[index[i]]``'s inside, at the
      same place, and lam is the share outside the box (CutMix). A collate function then draws the boxes alone and
      copies the boxes of uint8 pixels, without a stand-in or a mask. A subclass that mixes otherwise sets it back.
    - ``solves_on_host``: each call solves an optimisation on the CPU (PuzzleMix's and Co-Mixup's graph cuts), so it
      copies the batch's saliency to the host and waits for the device by design. Every other mixer makes its draws
      on the host and reads nothing back from the device: a training step with it never synchronises
      (``tests/test_count_syncs.py``, docs/benchmarks/syncs.md).
    """

    hooks: ClassVar[tuple[str, ...]] = ("inputs",)
    requires: tuple[str, ...] = ()
    optional_inputs: ClassVar[tuple[str, ...]] = ()
    takes_services: ClassVar[bool] = False
    input_ranks: ClassVar[tuple[int, ...]] = (4,)
    shares_batch_mask: bool = True
    moves_partner: ClassVar[bool] = False
    moves_own: bool = False
    learned: ClassVar[bool] = False
    takes_lam: ClassVar[bool] = True
    solves_on_host: ClassVar[bool] = False
    reads_pixels: bool = True
    pastes_boxes: bool = False
    trained_by: ClassVar[str | None] = None
    inplace: bool = False
    registry_name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_capabilities(cls.__name__, cls.hooks, cls.requires)

    @abc.abstractmethod
    def forward(
        self, x: Tensor, y: Tensor, generator: torch.Generator | None = None, lam: Any = None, **needs: Any
    ) -> MixOutput:
        """Hooks ``inputs`` / ``features``: mix ``x`` (images, or the hidden state at the drawn stage) and return a
        :class:`MixOutput`; ``needs`` are the values named in ``requires`` that are known before the forward pass."""

    def refine_targets(self, mix: MixOutput, **needs: Any) -> MixOutput:
        """Hook ``targets``: re-weight the labels of ``mix`` after the forward pass (``label_weights``); the
        default keeps them."""
        return mix

    def draw_stage(self, num_stages: int, generator: torch.Generator | None = None) -> int:
        """Hook ``features``: the stage to mix at, 0 for the input or k in 1..``num_stages`` for the output of the
        network's k-th feature stage. Mixers without the hook mix the input."""
        return 0

    def max_stage(self) -> int:
        """The deepest stage :meth:`draw_stage` may return (the trainer refuses a backbone with fewer)."""
        return 0

    def check_network(self, network: nn.Module) -> None:
        """Called by a trainer at construction with its network: raise a ``ValueError`` naming both when the mixer's
        settings cannot work with it (TokenMix: a patch size that is not the ViT's). Default: nothing to check."""


def check_capabilities(owner: str, hooks: Any, requires: Any) -> None:
    """``hooks`` and ``requires`` must be tuples from the closed vocabularies ``HOOKS`` and ``NEEDS``."""
    if not isinstance(hooks, tuple) or not hooks or any(hook not in HOOKS for hook in hooks):
        raise ValueError(f"{owner}.hooks must be a non-empty tuple from {HOOKS}, got {hooks!r}")
    if not isinstance(requires, tuple) or any(need not in NEEDS for need in requires):
        raise ValueError(f"{owner}.requires must be a tuple from {NEEDS}, got {requires!r}")


class PairMixer(Mixer):
    """Base class of the two-source mixers (every sample mixed with one partner).

    Args:
        alpha: concentration of the Beta(alpha, alpha) distribution that lambda is drawn from (> 0).
        mode: ``"batch"`` draws one lambda (box, mask) for the whole batch, as in the papers; ``"elem"`` draws one
            per sample, vectorised over the batch.
        pairing: ``"random"`` pairs each sample with a random permutation of the batch; ``"flip"`` with the
            reversed batch (sample i with sample B-1-i).
        inplace: write the mixed pixels into the input tensor instead of a new one.

    A subclass implements :meth:`mix`; what it needs at call time arrives as keyword arguments named in
    ``requires``.
    """

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
        if self.inplace and x.dim() != 4:
            raise ValueError(f"{type(self).__name__} mixes hidden states out of place: build it with inplace=False")
        check_inplace_target(self, x)
        batch_size = x.shape[0]
        lam_in = F_mix.check_lam(lam, batch_size, self.mode)
        index = F_mix.to_device(F_mix.partner_index(batch_size, self.pairing, generator), x.device)
        mixed, lam_out, mask = self.mix(x, index, lam_in, generator, **context)
        return self.output(mixed, index, lam_out, y, mask)

    @staticmethod
    def output(mixed: Tensor, index: Tensor, lam: Tensor, y: Tensor, mask: Tensor | None) -> MixOutput:
        """The call's :class:`MixOutput` from what :meth:`mix` returns: ``lam`` (B,) float64 host values become a
        new float32 tensor on ``mixed``'s device, clamped to [0, 1]; ``y_b`` is ``y[index]``."""
        lam = F_mix.to_device(lam, mixed.device, torch.float32).clamp(0.0, 1.0)  # new: not the mixer's tensor
        return MixOutput(mixed, index, lam, y, y.index_select(0, index), mask)

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
