"""SUMix: re-estimate each sample's label share from what the network sees, and regularise with the mix's uncertainty.

Qin, Jin, Zhu, Liao, El-Yacoubi and Gao, "SUMix: Mixup with Semantic and Uncertain Information", ECCV 2024.
https://arxiv.org/abs/2407.07805. Authors' code: JinXins/SUMix (commit 0469ec2), an OpenMixup fork: the head
``ClsUncertainMixupHead`` in ``openmixup/models/heads/cls_mixup_head.py`` (lines 355-526, its loss ``IN_loss`` at
464-526) and the ``is_IN`` branch of ``openmixup/models/classifiers/mixup_classification.py`` (lines 285-288 and
357-361). Below, ``head:N`` is a line of cls_mixup_head.py and ``model:N`` one of mixup_classification.py.

SUMix is a plug-in: any two-source mixer acting on the images (CutMix, FMix, SaliencyMix, ResizeMix, Mixup, ...)
makes the pixels, which SUMix leaves untouched; it changes the targets and adds a loss. For sample i, mixed with its
partner j = index[i] (labels y_a = y_i, y_b = y_j, prior shares w_a, w_b: the base mixer's label weights, (lam,
1 - lam) for a pixel mixer):

- The clean batch goes through the network once more, with gradients, in its current mode (model:285-288); p and
  p_mix are the softmax of the clean and the mixed logits (the latter from the trainer's forward pass), without
  gradients (head:487).
- Semantic vectors (head:488-492): ``q_a = p_i`` with its entry y_b set to 0, ``q_b = p_j`` with its entry y_a set to
  0 (what sample i, resp. its partner, says about its own class, the other label left out).
- The similarity function (head:494-495): ``s_a = scale * normalize(softmax(q_a - p_mix_i))`` and likewise ``s_b``
  with q_b: a softmax over the classes of the difference of two probability vectors, divided by its L2 norm, times
  ``scale`` (the code multiplies by the batch size, ``avg_factor``, head:484); the code's sign is the opposite, see
  "Departures".
- The re-estimated ratio (head:501-514): ``lam_hat_i = w_a e^{-s_a[y_a]} / (w_a e^{-s_a[y_a]} + w_b e^{-s_b[y_b]})``,
  computed in log space (a softmax over the two sources), so that a large batch does not underflow e^{-s}. The
  labels of the mix become ``(lam_hat_i, 1 - lam_hat_i)`` (``label_weights``, no gradient): the objective, e.g. the
  soft-target cross entropy, is then ``mean_i [lam_hat_i CE(z_mix_i, y_a) + (1 - lam_hat_i) CE(z_mix_i, y_b)]``.
- The uncertainty (head:453, 497-498): ``u = normalize(softmax(U e))`` for the pooled embedding e of a clean or mixed
  image (the classifier's input) and a linear layer U (num_features -> num_classes, its own parameters, head:394);
  ``beta_a = u_i + u_mix_i``, ``beta_b = u_j + u_mix_i``. Without the layer (``uncertainty_head=False``, the code's
  ``is_norm=False``, head:455-456) u is the network's raw logits.
- The regulariser (head:505-506, 518-520): ``L_reg = mean_i [w_a CE(exp(-(beta_a + s_a)), y_a) + w_b
  CE(exp(-(beta_b + s_b)), y_b)]``, the exponentials used as logits; the mixer's own loss is ``gamma * L_reg``.

What each loss trains: the objective trains the network (not U: the label weights carry no gradient); ``L_reg``
trains U and the network's feature extractor through both embeddings (the clean pass included, model:286-288), but
not the network's classifier, whose outputs enter only without gradient (with ``uncertainty_head=False`` it trains
the classifier too, through the raw logits).

Departures from the released code:

- Per-sample ratios, as the paper writes the loss: the code (head:516-517) multiplies the batch-mean cross entropy
  by each sample's lam_hat and averages, which weights every sample by the batch-average ratio; here each sample's
  loss gets its own lam_hat (the objective reads the per-sample ``label_weights``). The code cannot run as released
  anyway: it returns an undefined ``info`` (head:526), allocates on ``'cuda'`` (head:508-509), and only the static
  mixers give it a partner index (model:320-326).
- The base mixer may draw one lambda per sample (``mode="elem"``): w_a, w_b are then per sample too, in the ratio
  and in the regulariser (the code's lam is one number per batch).
- The ratio is computed in log space (same value; no 0 / 0 when e^{-s} underflows, s reaching the batch size).

- The sign of the similarity (``similarity="visible"``, the default): the released code reads the label's entry of a
  softmax of ``p_mix - q`` (head:494-495), so the share of y_a *grows* as the mixed image's probability of y_a falls
  below the clean image's: a mix that hides sample i's object gives y_a more weight, the opposite of the paper's
  stated aim (its abstract: a mixed label that matches what the mixed image shows, where an occluded object should
  not keep its share). The default reads
  ``softmax(q - p_mix)`` instead: the probability the mix *loses* of each class, a distance that is small for the
  class the mix shows, so that class gets the larger share. ``similarity="released"`` keeps the code's sign. The
  paper's own equation for the similarity could not be read when this was written; the direction follows its text.

Kept from the code: the partner's label is zeroed in q_a even when both labels are equal (head:490-492).

Cost: one extra forward and backward pass per step, of the clean batch (as the code, model:285-288). The mixed
batch's embedding and logits are those of the trainer's own forward pass: the ``embedding`` need, the classifier's
input recorded during that pass with its graph (logits = classifier(embedding)). Called outside a trainer without
``embedding``, the mixed batch is run once more.

Defaults (the authors' configs, ``configs/classification/<dataset>/mixups/uncertain/``):

- Base ``cutmix`` with ``alpha=0.2``: cifar100/.../r18_mixups_none.py:10-11 (likewise rx50 and wrn28_8, Tiny-ImageNet
  r18 and rx50, CUB-200 and Aircraft rx50); ResizeMix with alpha 1.0 for CUB-200 and Aircraft r18 (line 10-11), mixup
  with alpha 1 on ImageNet (imagenet/.../r18_mixups_CE_none_4xb64.py:10-11).
- ``gamma=0.5``: cifar100/.../r18_mixups_none.py:37 (also the rx50, wrn28_8, CUB-200, Aircraft and ImageNet configs);
  1.0 for Tiny-ImageNet (tiny_imagenet/.../r18_mixups_none.py:38). The head's own signature default, 0.1 (head:371),
  is used by no released config.
- ``uncertainty_head=True``: ``is_norm=True`` in every config but ImageNet's (``is_norm=False``, line 38).
- ``distance_scale=None``: the batch size, as the code (head:484, 494-495).
- U keeps PyTorch's default ``nn.Linear`` initialisation: OpenMixup calls the head's ``init_weights`` only when
  loading pretrained weights (model:168-172).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openmix.mixers import functional as F_mix
from openmix.mixers._base import (
    MODES,
    Mixer,
    MixOutput,
    PairMixer,
    check_call,
    check_choice,
    check_network,
    check_positive,
)
from openmix.mixers._registry import accepts_argument, create_mixer, get_mixer_entry, register_mixer
from openmix.targets import one_hot_targets

SIMILARITIES = ("visible", "released")  # the sign of the similarity (module docstring)


# ----------------------------------------------------------------------------------------------- the formulas
def class_ids(y: Tensor) -> Tensor:
    """(B,) class ids from class ids or (B, K) soft / multi-hot targets (their arg-max)."""
    return y if y.dim() == 1 else y.argmax(dim=-1)


def semantic_similarity(
    clean_logits: Tensor,
    mixed_logits: Tensor,
    index: Tensor,
    y_a: Tensor,
    y_b: Tensor,
    scale: float,
    similarity: str = "visible",
) -> tuple[Tensor, Tensor]:
    """(s_a, s_b), each (B, K) float32 without gradient: SUMix's similarity of the mixed sample i to sample i itself
    (s_a) and to its partner ``index[i]`` (s_b), per class.

    ``s = scale * normalize(softmax(q - p_mix))`` (L2 over the classes; ``similarity="visible"``, the default) or
    ``scale * normalize(softmax(p_mix - q))`` (``"released"``, head:494-495), with p_mix the mixed sample's class
    probabilities and q the clean sample's, its entry of the other source's label set to 0 (head:487-492). A small
    ``s`` at a label's entry means a large share for it: with ``"visible"`` that is a label whose probability the mix
    keeps (the class the mix shows), with ``"released"`` one whose probability the mix loses (module docstring)."""
    probs = clean_logits.detach().float().softmax(dim=-1)
    mixed = mixed_logits.detach().float().softmax(dim=-1)
    classes = probs.shape[-1]
    own = probs * (1.0 - one_hot_targets(y_b, classes))  # sample i, its partner's label left out
    partner = probs.index_select(0, index) * (1.0 - one_hot_targets(y_a, classes))  # the partner, y_a left out
    sign = 1.0 if similarity == "released" else -1.0
    s_a = F.normalize((sign * (mixed - own)).softmax(dim=-1), dim=-1) * scale
    s_b = F.normalize((sign * (mixed - partner)).softmax(dim=-1), dim=-1) * scale
    return s_a, s_b


def reestimated_weights(prior: Tensor, distance_a: Tensor, distance_b: Tensor) -> Tensor:
    """(B, 2) float32 label weights ``(lam_hat, 1 - lam_hat)``, ``lam_hat = w_a e^{-d_a} / (w_a e^{-d_a} + w_b
    e^{-d_b})`` (head:501-514) with (w_a, w_b) the rows of ``prior``; computed as a softmax over the two sources of
    ``log w - d``. A row whose prior weights are both 0 keeps them."""
    prior = prior.float()
    logits = prior.clamp(min=0).log() - torch.stack([distance_a, distance_b], dim=1).float()
    weights = logits.softmax(dim=1)
    alive = prior.clamp(min=0).sum(dim=1, keepdim=True) > 0
    return torch.where(alive, weights, prior)


def uncertainty(values: Tensor, normalised: bool) -> Tensor:
    """The uncertainty vectors u of head:453 (``normalize(softmax(U e))``) from ``values`` = U e, or the raw
    values themselves when not ``normalised`` (the code's ``is_norm=False``: the classifier's logits, head:456)."""
    values = values.float()
    return F.normalize(values.softmax(dim=-1), dim=-1) if normalised else values


def uncertainty_regularizer(
    clean_uncertainty: Tensor,
    mixed_uncertainty: Tensor,
    s_a: Tensor,
    s_b: Tensor,
    index: Tensor,
    y_a: Tensor,
    y_b: Tensor,
    prior: Tensor,
) -> Tensor:
    """SUMix's regulariser (head:497-498, 505-506, 518-520), a scalar:
    ``mean_i [w_a CE(exp(-(beta_a + s_a)), y_a) + w_b CE(exp(-(beta_b + s_b)), y_b)]`` with ``beta_a = u_i +
    u_mix_i``, ``beta_b = u_index[i] + u_mix_i`` and (w_a, w_b) the rows of ``prior``; the exponentials are the
    logits of the cross entropies."""
    beta_a = clean_uncertainty + mixed_uncertainty
    beta_b = clean_uncertainty.index_select(0, index) + mixed_uncertainty
    loss_a = F.cross_entropy(torch.exp(-(beta_a + s_a)), y_a, reduction="none")
    loss_b = F.cross_entropy(torch.exp(-(beta_b + s_b)), y_b, reduction="none")
    prior = prior.to(loss_a)
    return (prior[:, 0] * loss_a + prior[:, 1] * loss_b).mean()


def classifier_inputs(network: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(embedding, logits) of ``x`` from one forward pass of ``network`` with gradients: the (B, D) input of its
    classifier (``get_classifier()``, the pooled pre-logits features) and the (B, K) logits."""
    classifier = network.get_classifier()
    seen: list[Tensor] = []
    handle = classifier.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    try:
        logits = network(x)
    finally:
        handle.remove()
    if len(seen) != 1 or not isinstance(seen[0], Tensor) or seen[0].dim() != 2:
        shapes = [tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__ for s in seen]
        raise ValueError(
            f"sumix reads the pooled (B, D) embedding the classifier of {type(network).__name__} gets once per "
            f"forward pass; its classifier was called {len(seen)} time(s) with {shapes}"
        )
    return seen[0], logits


# ----------------------------------------------------------------------------------------------- the base mixer
def build_base(spec: Any, shared: dict[str, Any]) -> Mixer:
    """The mixer SUMix wraps: a built mixer, a registered name, a mapping ``{"name": ..., **kwargs}`` or a config's
    ``{"class_path": ..., "init_args": {...}}``. The ``shared`` options go to a base built here that takes them."""
    if isinstance(spec, nn.Module):
        base = spec
    elif isinstance(spec, str):
        base = create_mixer(spec, **_taken(get_mixer_entry(spec).cls, shared))
    elif isinstance(spec, Mapping) and "class_path" in spec:
        extra = sorted(set(spec) - {"class_path", "init_args"})
        if extra:
            raise ValueError(f"mixer given as a class_path mapping takes only class_path and init_args, got {extra}")
        cls = _import_mixer_class(spec["class_path"])
        init_args = spec.get("init_args") or {}
        if not isinstance(init_args, Mapping):
            raise TypeError(f"mixer init_args must be a mapping, got {type(init_args).__name__}")
        base = cls(**{**_taken(cls, shared), **init_args})
    elif isinstance(spec, Mapping):
        if "name" not in spec:
            raise ValueError(f"mixer given as a mapping needs a 'name' or 'class_path' key, got keys {sorted(spec)}")
        kwargs = {key: value for key, value in spec.items() if key != "name"}
        base = create_mixer(spec["name"], **{**_taken(get_mixer_entry(spec["name"]).cls, shared), **kwargs})
    else:
        raise TypeError(f"mixer must be a mixer, a registered name or a mapping, got {type(spec).__name__}")
    check_base(base)
    return base


def _import_mixer_class(path: Any) -> type:
    if not isinstance(path, str) or "." not in path:
        raise ValueError(f"mixer class_path must be a dotted path such as 'openmix.mixers.CutMix', got {path!r}")
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise ValueError(f"mixer class_path {path!r} names no class") from None
    if not (isinstance(cls, type) and issubclass(cls, Mixer)):
        raise TypeError(f"mixer class_path {path!r} is not an openmix Mixer class")
    return cls


def _taken(cls: type, shared: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in shared.items() if accepts_argument(cls, key)}


def check_base(base: Any) -> None:
    """SUMix wraps a two-source mixer that acts on the images only; anything else is a ``TypeError`` /
    ``ValueError`` naming ``mixer``."""
    if not isinstance(base, Mixer):
        raise TypeError(f"mixer must be an openmix Mixer, got {type(base).__name__}")
    hooks = tuple(getattr(base, "hooks", ()))
    if not isinstance(base, PairMixer) or hooks != ("inputs",) or getattr(base, "takes_services", False):
        raise ValueError(
            "mixer must be a two-source mixer that acts on the images only (cut-based or pixel mixing: cutmix, "
            f"fmix, saliencymix, resizemix, mixup, ...), got {type(base).__name__} with hooks {hooks}"
        )


# ----------------------------------------------------------------------------------------------- the mixer
@register_mixer(
    "sumix",
    paper="SUMix: Mixup with Semantic and Uncertain Information (Qin et al., ECCV 2024)",
    url="https://arxiv.org/abs/2407.07805",
)
class SUMix(Mixer):
    """SUMix around a cut-based or pixel mixer.

    Args:
        mixer: the base mixer that makes the pixels: a built mixer (in a config ``{class_path:
            openmix.mixers.FMix, init_args: {...}}``), a registered name, or a mapping ``{"name": ..., **kwargs}``.
            It must mix two sources on the images only (hooks ``("inputs",)``).
        alpha: Beta concentration of a base built here from a name or mapping (a mapping's own ``alpha`` wins; a
            built mixer keeps its own).
        gamma: weight of the uncertainty regulariser in the loss (>= 0).
        distance_scale: factor of the similarity; ``None`` is the batch size, as the authors' code.
        uncertainty_head: learn the uncertainty with a linear layer on the pooled embedding (the code's
            ``is_norm=True``); ``False`` uses the network's raw logits instead (``is_norm=False``).
        similarity: ``"visible"`` (a label's share grows with how much of its class the mix shows, the paper's aim)
            or ``"released"`` (the authors' code, which has the opposite sign; module docstring).
        num_features, num_classes: the layer's sizes; ``None`` takes them from the network's classifier when the
            trainer checks the network (:meth:`check_network`, at construction, before the optimizer is built).
        mode, pairing, inplace: passed to a base built here from a name or mapping.

    Call: ``mix = sumix(x, y, model=network)`` (the base mixer's pixels, lam and mask), then after the forward pass
    ``mix = sumix.refine_targets(mix, model=network, embedding=e)`` (label weights ``(lam_hat, 1 - lam_hat)``) and
    ``loss = objective(logits, mix) + sumix.own_loss(mix, model=network, embedding=e)``, with ``e`` the classifier's
    input in that forward pass (the trainer records it; without it the mixed batch is run again). ``refine_targets``
    and ``own_loss`` take the output of the last call; the regulariser computed by ``refine_targets`` is kept for
    ``own_loss``. Labels given as (B, K) targets enter the similarity and the regulariser through their arg-max.
    """

    hooks = ("inputs", "targets", "loss")
    requires = ("model", "embedding")

    def __init__(
        self,
        mixer: Mixer | str | Mapping[str, Any] = "cutmix",
        alpha: float = 0.2,
        gamma: float = 0.5,
        distance_scale: float | None = None,
        uncertainty_head: bool = True,
        similarity: str = "visible",
        num_features: int | None = None,
        num_classes: int | None = None,
        mode: str = "batch",
        pairing: str = "random",
        inplace: bool = False,
    ):
        super().__init__()
        shared = {
            "alpha": check_positive(alpha, "alpha"),
            "mode": check_choice(mode, MODES, "mode"),
            "pairing": check_choice(pairing, F_mix.PAIRINGS, "pairing"),
            "inplace": F_mix.check_bool(inplace, "inplace"),
        }
        self.gamma = F_mix.check_real(gamma, "gamma", "be a finite number >= 0", lambda g: 0.0 <= g < float("inf"))
        if distance_scale is not None:
            distance_scale = check_positive(distance_scale, "distance_scale")
        self.distance_scale = distance_scale
        self.uncertainty_head = F_mix.check_bool(uncertainty_head, "uncertainty_head")
        self.similarity = check_choice(similarity, SIMILARITIES, "similarity")
        for name, value in (("num_features", num_features), ("num_classes", num_classes)):
            if value is not None and (not F_mix.is_int(value) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        self.mixer = build_base(mixer, shared)
        self.alpha = shared["alpha"]
        # what the mix is, is the base mixer's
        self.requires = tuple(sorted({"model", "embedding", *self.mixer.requires}))
        self.shares_batch_mask = bool(getattr(self.mixer, "shares_batch_mask", True))
        self.moves_partner = bool(getattr(self.mixer, "moves_partner", False))
        self.moves_own = bool(getattr(self.mixer, "moves_own", False))
        self.inplace = bool(getattr(self.mixer, "inplace", False))
        self.register_module("uncertainty", None)
        if self.uncertainty_head and num_features is not None and num_classes is not None:
            self.uncertainty = nn.Linear(int(num_features), int(num_classes))
        self._sizes = (num_features, num_classes)
        self._last: dict[str, Any] | None = None  # the last call: clean batch, mixed batch, prior label weights
        self._cached: dict[str, Any] | None = None  # refine_targets' regulariser, for own_loss

    def extra_repr(self) -> str:
        scale = "batch size" if self.distance_scale is None else self.distance_scale
        return (
            f"gamma={self.gamma}, distance_scale={scale}, uncertainty_head={self.uncertainty_head}, "
            f"similarity={self.similarity!r}"
        )

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_last": None, "_cached": None}  # the step's tensors (and graphs) are not pickled

    # ----- construction: the network ---------------------------------------------------------------------------
    def check_network(self, network: nn.Module) -> None:
        """The network must have a linear classifier (``get_classifier()``) that gets the pooled embedding; builds
        the uncertainty layer from its sizes (or checks the given ones). Called by the trainer at construction."""
        classifier = network.get_classifier() if callable(getattr(network, "get_classifier", None)) else None
        if not isinstance(classifier, nn.Linear):
            kind = "none" if classifier is None else type(classifier).__name__
            raise ValueError(
                f"sumix reads the pooled embedding the classifier gets: it needs a network whose get_classifier() is "
                f"an nn.Linear; {type(network).__name__}'s is {kind}"
            )
        self.mixer.check_network(network)
        if not self.uncertainty_head:
            return
        sizes = (classifier.in_features, classifier.out_features)
        given = tuple(s if s is not None else n for s, n in zip(self._sizes, sizes))
        if given != sizes:
            raise ValueError(
                f"sumix was built with num_features={self._sizes[0]}, num_classes={self._sizes[1]}, but "
                f"{type(network).__name__}'s classifier maps {sizes[0]} features to {sizes[1]} classes"
            )
        if self.uncertainty is None:
            weight = classifier.weight
            self.uncertainty = nn.Linear(*sizes).to(device=weight.device, dtype=weight.dtype)

    # ----- hook inputs -----------------------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        y: Tensor,
        generator: torch.Generator | None = None,
        lam: float | Tensor | None = None,
        **needs: Any,
    ) -> MixOutput:
        """Mix with the base mixer (its needs are passed on); keep the clean batch for the passes after the forward
        (a copy only when the base writes into ``x``)."""
        check_call(self, x, y, generator, needs)
        clean = x.detach().clone() if self.inplace else x.detach()
        base_needs = {key: value for key, value in needs.items() if key in self.mixer.requires}
        out = self.mixer(x, y, generator=generator, lam=lam, **base_needs)
        self._last = {"clean": clean, "x": out.x, "prior": out.label_weight_matrix().detach()}
        self._cached = None
        return out

    # ----- hooks targets and loss ------------------------------------------------------------------------------
    def refine_targets(
        self, mix: MixOutput, model: nn.Module | None = None, embedding: Tensor | None = None, **needs: Any
    ) -> MixOutput:
        """Hook ``targets``: label weights ``(lam_hat, 1 - lam_hat)`` from the similarity of the mixed sample to its
        two sources (one pass of the clean and of the mixed batch through ``model``, with gradients); the
        regulariser of the same passes is kept for :meth:`own_loss`."""
        self._check_needs(needs)
        weights, regularizer = self._evaluate(mix, model, embedding)
        self._cached = {"x": mix.x, "regularizer": regularizer}
        return mix.with_label_weights(weights)

    def own_loss(
        self, mix: MixOutput, model: nn.Module | None = None, embedding: Tensor | None = None, **needs: Any
    ) -> Tensor:
        """Hook ``loss``: ``gamma`` times the uncertainty regulariser (the one :meth:`refine_targets` computed for
        this mix, else computed now). Releases the step's state."""
        self._check_needs(needs)
        cached = self._cached
        if cached is not None and cached["x"] is mix.x:
            regularizer = cached["regularizer"]
        else:
            _, regularizer = self._evaluate(mix, model, embedding)
        self._last = self._cached = None
        return self.gamma * regularizer

    def _check_needs(self, needs: dict[str, Any]) -> None:
        unknown = sorted(set(needs) - set(self.requires))
        if unknown:
            raise ValueError(f"SUMix got unexpected arguments {unknown}; it takes {self.requires}")

    def _evaluate(self, mix: MixOutput, model: nn.Module | None, embedding: Tensor | None) -> tuple[Tensor, Tensor]:
        """(label weights (B, 2), regulariser) of ``mix``, the output of the last call; ``embedding`` is the mixed
        batch's classifier input recorded in the step's forward pass (``None``: the mixed batch is run again)."""
        if model is None:
            raise ValueError("sumix needs the training network after the forward pass: pass model=...")
        network = check_network(model, "model")
        last = self._last
        if last is None or last["x"] is not mix.x:
            raise ValueError(
                "sumix refines the output of its last call: call refine_targets / own_loss with the MixOutput that "
                "call returned (partners drawn across ranks, pairing_scope 'global', are not supported)"
            )
        if mix.indices is not None:
            raise ValueError("sumix re-weights two-source mixes; this MixOutput has k sources")
        if self.uncertainty_head and self.uncertainty is None:
            raise ValueError(
                "sumix's uncertainty layer is not built: call check_network(model) first (the trainer does at "
                "construction) or give num_features and num_classes"
            )
        batch_size = mix.x.shape[0]
        clean_embedding, clean_logits = classifier_inputs(network, last["clean"])
        if embedding is None:  # called outside a training step: one more pass of the mixed batch
            mixed_embedding, mixed_logits = classifier_inputs(network, mix.x)
        else:
            if not isinstance(embedding, Tensor) or embedding.dim() != 2 or embedding.shape[0] != batch_size:
                shape = tuple(embedding.shape) if isinstance(embedding, Tensor) else type(embedding).__name__
                raise ValueError(
                    f"embedding must be the ({batch_size}, D) classifier input of the mixed batch, got {shape}"
                )
            mixed_embedding, mixed_logits = embedding, network.get_classifier()(embedding)
        index = mix.index.to(clean_logits.device)
        y_a = class_ids(mix.y_a).to(clean_logits.device)
        y_b = class_ids(mix.y_b).to(clean_logits.device)
        scale = float(batch_size) if self.distance_scale is None else self.distance_scale
        s_a, s_b = semantic_similarity(clean_logits, mixed_logits, index, y_a, y_b, scale, self.similarity)
        prior = last["prior"].to(s_a.device)
        rows = torch.arange(batch_size, device=s_a.device)
        weights = reestimated_weights(prior, s_a[rows, y_a], s_b[rows, y_b])
        if self.uncertainty_head:
            clean_u = uncertainty(self.uncertainty(clean_embedding), True)
            mixed_u = uncertainty(self.uncertainty(mixed_embedding), True)
        else:
            clean_u, mixed_u = uncertainty(clean_logits, False), uncertainty(mixed_logits, False)
        regularizer = uncertainty_regularizer(clean_u, mixed_u, s_a, s_b, index, y_a, y_b, prior)
        return weights, regularizer
