"""What a mixer may need from the training step, one providing function per need (DESIGN.md, "Mixing protocol").

A mixer names its needs in ``requires`` (vocabulary ``openmix.mixers._base.NEEDS``). :class:`StepServices` holds
what one training step knows (the network, the clean batch, optionally a momentum network) and computes each need
at most once, on demand: the trainer, ``openmix show``, the benchmarks and the tests all hand needs over through
:meth:`StepServices.provide`, so no consumer knows which method it serves. The functions are plain torch (no
Lightning) and work on any device without synchronising the host with it.

Besides the needs, this module finds a backbone's feature stages (:func:`feature_stages`) and runs the network with
a hidden state replaced at one of them (:func:`forward_with_stage_hook`), which the ``features`` hook uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from openmix.losses import one_hot_targets, soft_target_cross_entropy
from openmix.mixers._base import NEEDS

AFTER_FORWARD = ("attention", "embedding")
"""Needs known only once the mixed batch went through the network (handed to ``refine_targets``)."""


def _labels(y: Tensor) -> Tensor:
    """Class ids (B,) from class ids or (B, K) soft targets (their arg-max)."""
    return y if y.dim() == 1 else y.argmax(dim=-1)


# ----- saliency ------------------------------------------------------------------------------------------------------
def input_saliency(network: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """(B, H, W) float32: the L2 norm over channels of d(clean loss)/dx, the loss being the mean soft-target cross
    entropy of ``network(x)`` against ``y`` (class ids or (B, K) targets).

    One extra forward and backward, with gradients to ``x`` only (the network's parameters collect none). The network
    runs in its current mode (training mode in a training step, as PuzzleMix's reference code does), so batch norm
    layers see the clean batch once more.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = network(x).float()
        loss = soft_target_cross_entropy(logits, one_hot_targets(y, logits.shape[-1]))
        (gradient,) = torch.autograd.grad(loss, x)
    return gradient.float().norm(dim=1)


# ----- class activation maps ---------------------------------------------------------------------------------------
def check_cam_network(network: nn.Module) -> None:
    """A network whose class activation maps :func:`class_activation_maps` can compute: a timm-style model with
    ``forward_features`` returning (B, C, h, w) maps and ``get_classifier()`` a ``nn.Linear`` after global
    average pooling; else a ``ValueError`` naming what is missing."""
    name = type(network).__name__
    if not all(callable(getattr(network, method, None)) for method in ("forward_features", "get_classifier")):
        raise ValueError(
            f"class activation maps need a timm model with forward_features and get_classifier; {name} has not"
        )
    head = network.get_classifier()
    if not isinstance(head, nn.Linear):
        raise ValueError(
            f"class activation maps need a linear classifier after global average pooling; {name}'s classifier is "
            f"{type(head).__name__}"
        )
    if getattr(network, "patch_embed", None) is not None:
        raise ValueError(f"class activation maps need a CNN's (B, C, h, w) feature map; {name} works on tokens")
    head_module = getattr(network, "head", None)
    norm = getattr(head_module, "norm", None)
    if isinstance(norm, nn.Module) and not isinstance(norm, nn.Identity):
        raise ValueError(
            f"class activation maps need the linear classifier right after global average pooling; {name}'s head "
            f"normalises the pooled features first ({type(norm).__name__})"
        )
    pool = getattr(network, "global_pool", getattr(head_module, "global_pool", None))
    pool_type = pool if isinstance(pool, str) else getattr(pool, "pool_type", "avg")
    if pool_type not in ("avg", "fast_avg", ""):
        raise ValueError(f"class activation maps need global average pooling; {name} pools with {pool_type!r}")


@torch.no_grad()
def class_activation_maps(network: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """(B, h, w) float32: the class activation map of each sample's own label (Zhou et al., CVPR 2016, eq. 2),
    ``M_i(u, v) = sum_c W[y_i, c] f_i(c, u, v) + b[y_i]`` on the last feature map f (B, C, h, w), raw (no ReLU, no
    normalisation, no upsampling). Computed without gradients, in the network's current mode."""
    check_cam_network(network)
    features = network.forward_features(x)
    if not isinstance(features, Tensor) or features.dim() != 4:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"class activation maps need (B, C, h, w) features, got {shape}")
    head = network.get_classifier()
    labels = _labels(y)
    weight = head.weight.index_select(0, labels).float()  # (B, C)
    maps = torch.einsum("bchw,bc->bhw", features.float(), weight)
    if head.bias is not None:
        maps = maps + head.bias.index_select(0, labels).float()[:, None, None]
    return maps


# ----- class-token attention (ViTs) --------------------------------------------------------------------------------
def check_attention_network(network: nn.Module) -> None:
    """A ViT whose last block's class-token attention :class:`AttentionRecorder` can read (timm
    ``VisionTransformer``: ``blocks[-1].attn`` with ``qkv``, a class token and ``patch_embed.grid_size``)."""
    name = type(network).__name__
    blocks = getattr(network, "blocks", None)
    attn = getattr(blocks[-1], "attn", None) if isinstance(blocks, nn.Sequential) and len(blocks) else None
    if attn is None or not isinstance(getattr(attn, "qkv", None), nn.Linear):
        raise ValueError(
            f"class-token attention needs a ViT (timm VisionTransformer: blocks[-1].attn.qkv); {name} has none"
        )
    if getattr(network, "cls_token", None) is None:
        raise ValueError(f"class-token attention needs a class token; {name} has none (class_token=False)")
    if getattr(getattr(network, "patch_embed", None), "grid_size", None) is None:
        raise ValueError(f"class-token attention needs patch_embed.grid_size; {name} has none")


class AttentionRecorder:
    """Records, during a forward pass, the class token's attention over the patch tokens in the last block.

    Use as a context manager around the forward pass; :attr:`attention` is then (B, gh, gw) float32: the softmax row
    of the class token (query) over the patch tokens (keys), averaged over heads. The last block's input is captured
    by a forward pre-hook and q, k recomputed from its ``qkv`` projection (timm's fused attention never materialises
    the weights), so the forward pass itself is unchanged.
    """

    def __init__(self, network: nn.Module):
        check_attention_network(network)
        self.network = network
        self.attn = network.blocks[-1].attn
        self.grid = tuple(int(s) for s in network.patch_embed.grid_size)
        self.prefix = int(getattr(network, "num_prefix_tokens", 1))
        self.attention: Tensor | None = None
        self._tokens: Tensor | None = None

    def _capture(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        self._tokens = inputs[0]

    def __enter__(self) -> AttentionRecorder:
        self._handle = self.attn.register_forward_pre_hook(self._capture)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()
        if exc[0] is None and self._tokens is not None:
            with torch.no_grad():
                self.attention = self._class_attention(self._tokens)
        self._tokens = None

    def mixed_part(self, batch_size: int) -> Tensor | None:
        """The attention of the last ``batch_size`` samples (the mixed half when the clean batch went alongside)."""
        return None if self.attention is None else self.attention[-batch_size:]

    def _class_attention(self, tokens: Tensor) -> Tensor:
        attn = self.attn
        batch, count, _ = tokens.shape
        heads = attn.num_heads
        qkv = attn.qkv(tokens).reshape(batch, count, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        q, k = attn.q_norm(q) if hasattr(attn, "q_norm") else q, attn.k_norm(k) if hasattr(attn, "k_norm") else k
        scale = getattr(attn, "scale", q.shape[-1] ** -0.5)
        logits = (q[:, :, :1].float() * scale) @ k.float().transpose(-2, -1)  # (B, heads, 1, N): the class token's row
        weights = logits.softmax(dim=-1).mean(dim=1)[:, 0]  # (B, N)
        return weights[:, self.prefix :].reshape(batch, *self.grid)


# ----- the classifier's input (pooled embedding) --------------------------------------------------------------------
def check_embedding_network(network: nn.Module) -> None:
    """A network whose classifier input :class:`EmbeddingRecorder` can record: ``get_classifier()`` an ``nn.Linear``
    (the pooled pre-logits features go in, the logits come out); else a ``ValueError`` naming what is missing."""
    name = type(network).__name__
    classifier = network.get_classifier() if callable(getattr(network, "get_classifier", None)) else None
    if not isinstance(classifier, nn.Linear):
        kind = "none" if classifier is None else type(classifier).__name__
        raise ValueError(
            f"the pooled embedding is the input of a linear classifier (get_classifier()); {name}'s is {kind}"
        )


class EmbeddingRecorder:
    """Records, during a forward pass, the input of the network's classifier: (n, D), with its graph.

    A context manager around the forward pass (a forward pre-hook on ``get_classifier()``); :attr:`embedding` is
    then what the classifier received, so ``classifier(embedding)`` gives the pass's logits. The forward pass itself
    is unchanged."""

    def __init__(self, network: nn.Module):
        check_embedding_network(network)
        self.classifier = network.get_classifier()
        self.embedding: Tensor | None = None
        self._calls = 0

    def _capture(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        self.embedding = inputs[0]
        self._calls += 1

    def __enter__(self) -> EmbeddingRecorder:
        self._handle = self.classifier.register_forward_pre_hook(self._capture)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()
        if exc[0] is None and self._calls != 1:
            raise ValueError(f"the classifier ran {self._calls} times in one forward pass; expected once")

    def mixed_part(self, batch_size: int) -> Tensor | None:
        """The embedding of the last ``batch_size`` samples (the mixed half when the clean batch went alongside)."""
        return None if self.embedding is None else self.embedding[-batch_size:]


RECORDERS = {"attention": AttentionRecorder, "embedding": EmbeddingRecorder}
"""The recorder of each need of ``AFTER_FORWARD``: built on the network, entered around the step's forward pass."""


# ----- feature stages ----------------------------------------------------------------------------------------------
def feature_stages(network: nn.Module) -> list[str]:
    """Module names of the network's feature stages: timm's ``feature_info`` entries, without a CNN stem's (a first
    entry at reduction 2 followed by a coarser one): a ResNet's layer1..layer4, a ConvNeXt's stages, a ViT's blocks
    (whatever its patch size). Stage k of a feature-level mixer is the output of the k-th name; an empty list when
    the network declares none."""
    info = getattr(network, "feature_info", None)
    entries = [
        entry
        for entry in (info if isinstance(info, list) else getattr(info, "info", None) or [])
        if entry.get("module")
    ]
    if len(entries) > 1 and entries[0].get("reduction") == 2 and entries[1].get("reduction", 2) > 2:
        entries = entries[1:]  # the stem
    return [entry["module"] for entry in entries]


def check_stages(network: nn.Module, deepest: int, mixer_name: str) -> list[str]:
    """The network's feature stages, refusing a network with fewer than ``deepest`` (a ``ValueError`` naming both)."""
    stages = feature_stages(network)
    if deepest > len(stages):
        raise ValueError(
            f"{mixer_name} mixes hidden states up to stage {deepest}, but {type(network).__name__} exposes "
            f"{len(stages)} feature stages (timm feature_info, the stem left out: {stages}); choose layers <= "
            f"{len(stages)} or a timm backbone with feature_info"
        )
    return stages


@torch.no_grad()
def stage_features(network: nn.Module, x: Tensor) -> list[Tensor]:
    """The hidden states of ``x`` at every feature stage of ``network`` (:func:`feature_stages`), in order, from one
    forward pass without gradients."""
    stages = feature_stages(network)
    if not stages:
        raise ValueError(f"{type(network).__name__} declares no feature stages (timm feature_info)")
    recorded: list[Tensor] = []
    handles = [
        network.get_submodule(name).register_forward_hook(lambda module, inputs, out: recorded.append(out))
        for name in stages
    ]
    try:
        network(x)
    finally:
        for handle in handles:
            handle.remove()
    return recorded


@contextlib.contextmanager
def stage_hook(network: nn.Module, stage: str, replace: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Within the block, the output h of module ``stage`` is replaced by ``replace(h)`` in every forward pass."""
    module = network.get_submodule(stage)

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> Tensor:
        return replace(output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# ----- one step's services -------------------------------------------------------------------------------------------
class StepServices:
    """What a mixer may need in one training step, each computed at most once and only when asked for.

    Args:
        network: the training network (what ``model`` hands over, and what saliency and CAMs are computed with).
        x: the clean batch (B, C, H, W).
        y: its labels, (B,) class ids or (B, K) targets.
        momentum_model: the momentum copy of the network, for trainers that keep one.
        attention, embedding: the values recorded during the forward pass (``AFTER_FORWARD``), once known; the
            trainer hands them over with :meth:`record`.

    :meth:`provide` maps names from ``NEEDS`` to values; an unknown or unavailable need raises ``ValueError``.
    """

    def __init__(
        self,
        network: nn.Module,
        x: Tensor,
        y: Tensor,
        momentum_model: nn.Module | None = None,
        attention: Tensor | None = None,
        embedding: Tensor | None = None,
    ):
        self.network = network
        self.x = x
        self.y = y
        self.momentum_model = momentum_model
        self.recorded: dict[str, Tensor | None] = {"attention": attention, "embedding": embedding}
        self._cache: dict[str, Any] = {}
        self._providers: dict[str, Callable[[], Any]] = {
            "model": lambda: self.network,
            "saliency": lambda: input_saliency(self.network, self.x, self.y),
            "cam": lambda: class_activation_maps(self.network, self.x, self.y),
            "features": lambda: stage_features(self.network, self.x),
            "attention": lambda: self._recorded("attention"),
            "embedding": lambda: self._recorded("embedding"),
            "momentum_model": self._momentum_model,
        }

    def record(self, need: str, value: Tensor | None) -> None:
        """Hand over a need recorded during the forward pass (``AFTER_FORWARD``); it replaces any earlier value."""
        if need not in AFTER_FORWARD:
            raise ValueError(f"only the needs recorded in the forward pass {AFTER_FORWARD} are recorded, not {need!r}")
        self.recorded[need] = value
        self._cache.pop(need, None)

    def _recorded(self, need: str) -> Tensor:
        value = self.recorded.get(need)
        if value is None:
            raise ValueError(f"{need} is known only after the forward pass (hooks 'targets' and 'loss')")
        return value

    def _momentum_model(self) -> nn.Module:
        if self.momentum_model is None:
            raise ValueError("this trainer keeps no momentum network (momentum_model)")
        return self.momentum_model

    def get(self, need: str) -> Any:
        """The value of one need, computed on first use."""
        if need not in self._providers:
            raise ValueError(f"unknown need {need!r}; the vocabulary is {NEEDS}")
        if need not in self._cache:
            self._cache[need] = self._providers[need]()
        return self._cache[need]

    def provide(self, needs: Sequence[str], exclude: Sequence[str] = ()) -> dict[str, Any]:
        """``{need: value}`` for each of ``needs`` not in ``exclude``."""
        return {need: self.get(need) for need in needs if need not in exclude}

    def before_forward(self, needs: Sequence[str]) -> dict[str, Any]:
        """``{need: value}`` for the needs known before the forward pass (all but ``AFTER_FORWARD``)."""
        return self.provide(needs, exclude=AFTER_FORWARD)

    def after_forward(self, needs: Sequence[str]) -> dict[str, Any]:
        """``{need: value}`` for the needs of ``needs`` known once the forward pass ran: those recorded during it
        (``AFTER_FORWARD``) and those already computed this step for the mixer's call. Nothing new is computed, so a
        mixer that asked for its needs itself (``takes_services``) gets back only the ones it asked for."""
        return {need: self.get(need) for need in needs if need in AFTER_FORWARD or need in self._cache}

    def mixer_inputs(self, mixer: nn.Module) -> dict[str, Any]:
        """The call-time arguments of ``mixer`` before the forward pass: these services themselves for a mixer that
        asks for its needs once it knows them (``takes_services``), else the values of its needs."""
        if getattr(mixer, "takes_services", False):
            return {"services": self}
        return self.before_forward(getattr(mixer, "requires", ()))


def check_services(network: nn.Module, needs: Sequence[str], owner: str) -> None:
    """Refuse, at construction, a network that cannot give what ``owner`` needs (a ``ValueError`` naming both)."""
    checks = {"cam": check_cam_network, "attention": check_attention_network, "embedding": check_embedding_network}
    for need in needs:
        if need in checks:
            try:
                checks[need](network)
            except ValueError as error:
                raise ValueError(f"{owner} needs {need!r}, which this backbone cannot give: {error}") from None


def mixer_inputs(mixer: nn.Module, network: nn.Module, x: Tensor, y: Tensor) -> dict[str, Any]:
    """What ``mixer`` needs before the forward pass (its ``requires`` but ``attention``), computed with ``network`` on
    the clean batch ``(x, y)``: the one function through which a consumer outside a training step (``openmix
    show``, the benchmarks, the tests) hands a mixer its needs, as the trainer does with :class:`StepServices`."""
    return StepServices(network, x, y).mixer_inputs(mixer)
