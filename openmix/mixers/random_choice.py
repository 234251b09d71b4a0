"""RandomChoiceMixer: one of several mixers per batch, chosen at random, or no mixing at all.

The DeiT recipe (Touvron et al., "Training data-efficient image transformers & distillation through attention",
ICML 2021) switches between mixup (alpha 0.8) and CutMix (alpha 1.0) with probability 0.5 per batch; that is the
registered default. Composition is kept out of the mixers themselves: each child is a complete mixer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from openmix.mixers import functional as F_mix
from openmix.mixers._base import MODES, Mixer, MixOutput, check_call, check_choice
from openmix.mixers._registry import accepts_argument, create_mixer, get_mixer_entry, register_mixer
from openmix.mixers.functional import PAIRINGS, check_bool, check_lam, is_real

# DeiT's switch: mixup with alpha 0.8 or CutMix with alpha 1.0, each with probability 0.5
DEIT_MIXERS = ({"name": "mixup", "alpha": 0.8}, {"name": "cutmix", "alpha": 1.0})


def _build_child(spec: str | Mapping[str, Any] | nn.Module, shared: dict[str, Any]) -> nn.Module:
    """A child mixer from a name, a mapping ``{"name": ..., **kwargs}`` or a built module. The ``shared`` options
    go to the children that take them (Co-Mixup has no ``mode`` or ``pairing``)."""
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, str):
        return create_mixer(spec, **_taken(spec, shared))
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise ValueError(f"a mixer given as a mapping needs a 'name' key, got keys {sorted(spec)}")
        kwargs = {key: value for key, value in spec.items() if key != "name"}
        return create_mixer(spec["name"], **{**_taken(spec["name"], shared), **kwargs})
    raise TypeError(f"mixers must hold names, mappings or nn.Modules, got {type(spec).__name__}")


def _taken(name: Any, shared: dict[str, Any]) -> dict[str, Any]:
    """The ``shared`` options that mixer ``name`` takes (an unknown name keeps them all: create_mixer names it)."""
    try:
        cls = get_mixer_entry(name).cls
    except (TypeError, ValueError):
        return shared
    return {key: value for key, value in shared.items() if accepts_argument(cls, key)}


@register_mixer(
    "randomchoice",
    paper="Training data-efficient image transformers & distillation through attention (Touvron et al., ICML 2021)",
    url="https://arxiv.org/abs/2012.12877",
)
class RandomChoiceMixer(Mixer):
    """Apply one of ``mixers`` per call, with probabilities ``probs``, or no mixing with ``no_mix_prob``.

    Args:
        mixers: children, each a built mixer (in a config: ``{class_path: openmix.mixers.CutMix, init_args: ...}``),
            a registered name, or a mapping ``{"name": ..., **kwargs}``. Children that act on hidden features
            (hook ``features``) are refused: the stage is drawn before the mixer. A child that re-weights the labels
            after the forward pass (hook ``targets``) does so when it was the one chosen.
        probs: relative probabilities of the children (normalised); uniform when ``None``.
        no_mix_prob: probability that a call returns the batch unmixed (lam = 1, each sample its own partner).
        mode, pairing, inplace: passed to children built from names or mappings.
    """

    registry_name = "randomchoice"
    takes_services = True  # the trainer hands over its step's services: only the chosen child's needs are computed
    optional_inputs = ("services",)

    def __init__(
        self,
        mixers: Sequence[Mixer | str | Mapping[str, Any]] = DEIT_MIXERS,
        probs: Sequence[float] | None = None,
        no_mix_prob: float = 0.0,
        mode: str = "batch",
        pairing: str = "random",
        inplace: bool = False,
    ):
        super().__init__()
        if isinstance(mixers, (str, Mapping, nn.Module)) or (isinstance(mixers, Sequence) and len(mixers) == 0):
            given = repr(mixers) if isinstance(mixers, (str, Sequence)) else f"a single {type(mixers).__name__}"
            raise ValueError(f"mixers must be a non-empty sequence of mixers, got {given}")
        if not isinstance(mixers, Sequence):
            raise TypeError(f"mixers must be a non-empty sequence of mixers, got {type(mixers).__name__}")
        shared = {
            "mode": check_choice(mode, MODES, "mode"),
            "pairing": check_choice(pairing, PAIRINGS, "pairing"),
            "inplace": check_bool(inplace, "inplace"),
        }
        self.mixers = nn.ModuleList(_build_child(spec, shared) for spec in mixers)
        if probs is None:
            weights = [1.0] * len(self.mixers)
        else:
            if isinstance(probs, np.ndarray):
                probs = probs.tolist()
            if isinstance(probs, (str, bytes)) or not isinstance(probs, Sequence):
                raise TypeError(f"probs must be a sequence of numbers (one per mixer) or None, got {probs!r}")
            if not all(is_real(p) for p in probs):
                raise TypeError(f"probs must hold numbers, got {list(probs)!r}")
            weights = [float(p) for p in probs]
        if len(weights) != len(self.mixers):
            raise ValueError(f"probs has {len(weights)} entries for {len(self.mixers)} mixers")
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"probs must be finite, >= 0 and not all 0, got {list(weights)}")
        if not is_real(no_mix_prob) or not 0.0 <= no_mix_prob <= 1.0:
            raise ValueError(f"no_mix_prob must be a number in [0, 1], got {no_mix_prob!r}")
        self.probs = [w / sum(weights) for w in weights]
        self.no_mix_prob = float(no_mix_prob)
        self.shares_batch_mask = all(getattr(child, "shares_batch_mask", True) for child in self.mixers)
        self.reads_pixels = any(getattr(child, "reads_pixels", True) for child in self.mixers)  # the draw does not
        self.requires = tuple(sorted({need for child in self.mixers for need in getattr(child, "requires", ())}))
        child_hooks = {hook for child in self.mixers for hook in getattr(child, "hooks", ("inputs",))}
        if "features" in child_hooks or "loss" in child_hooks:
            raise ValueError(
                "mixers must act on the inputs (and may re-weight the targets): a child with hooks 'features' or "
                f"'loss' cannot be chosen per batch, got children with hooks {sorted(child_hooks)}"
            )
        self.hooks = tuple(hook for hook in ("inputs", "targets") if hook in child_hooks or hook == "inputs")
        # whether a call may overwrite its input: any child built in place (given as a module, or through `inplace`)
        self.inplace = any(bool(getattr(child, "inplace", False)) for child in self.mixers)
        self.chosen_index: int | None = None  # the child of the last call (None: unmixed), for refine_targets

    def extra_repr(self) -> str:
        return f"probs={[round(p, 4) for p in self.probs]}, no_mix_prob={self.no_mix_prob}"

    @property
    def chosen(self) -> nn.Module | None:
        """The child that mixed the last call (``None``: it returned the batch unmixed)."""
        return None if self.chosen_index is None else self.mixers[self.chosen_index]

    def forward(
        self,
        x: Tensor,
        y: Tensor,
        generator: torch.Generator | None = None,
        lam: float | Tensor | None = None,
        services: Any = None,
        **context: Any,
    ) -> MixOutput:
        """Mix with one child. A trainer passes its step's ``services`` (anything with ``before_forward(needs)``)
        so that only the chosen child's needs are computed; a caller may pass the needs themselves instead."""
        check_call(self, x, y, generator, context)
        check_lam(lam, x.shape[0], "elem")  # before the draw, so bad input fails whichever branch is taken
        device = generator.device if generator is not None else torch.device("cpu")
        # one uniform draw decides the branch (read on the host: the generator's own device when it is a CUDA one)
        draw = float(F_mix.host_values(torch.rand((), generator=generator, device=device)))
        self.chosen_index = None
        if draw < self.no_mix_prob:
            return MixOutput.identity(x, y)
        position = (draw - self.no_mix_prob) / max(1.0 - self.no_mix_prob, 1e-12)  # uniform in [0, 1) again
        cumulative = np.cumsum(np.asarray(self.probs, dtype=np.float64))
        choice = min(int((cumulative <= position).sum()), len(self.mixers) - 1)
        child = self.mixers[choice]
        self.chosen_index = choice
        needs = getattr(child, "requires", ())
        if services is not None:
            context = {**services.before_forward(needs), **context}
        return child(x, y, generator=generator, lam=lam, **{k: v for k, v in context.items() if k in needs})

    def refine_targets(self, mix: MixOutput, **needs: Any) -> MixOutput:
        """The chosen child's label re-weighting (hook ``targets``), if it has one; else ``mix`` as it is."""
        chosen = self.chosen
        if chosen is None or "targets" not in getattr(chosen, "hooks", ()):
            return mix
        wanted = getattr(chosen, "requires", ())
        return chosen.refine_targets(mix, **{key: value for key, value in needs.items() if key in wanted})
