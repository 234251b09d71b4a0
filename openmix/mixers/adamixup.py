"""AdaMixUp: mixup whose mixing ratio comes from a learned per-pair policy region, kept off the data manifold by an
intrusion discriminator.

Guo, Mao and Zhang, "MixUp as Locally Linear Out-Of-Manifold Regularization", AAAI 2019.
https://arxiv.org/abs/1809.02499. Authors' code (TensorFlow / tensorpack): github.com/SITE5039/AdaMixUp (commit
44d1bbc), one file, ``GitHub.AdaMixup.AAAI.MNIST.Cifar.py``; ``code:N`` below is a line of that file.

Manifold intrusion: a mix of x_i and x_j whose ratio puts it on the data manifold (for instance the midpoint of two
classes landing on a third) is given a label that contradicts the real samples there. AdaMixUp learns, per pair,
the interval the ratio is drawn from, and penalises mixes that look like real data.

For a pair (x_i, x_j), j = index[i]:

    g     = (m_1 * x_i + m_2 * x_j) / 2,  m_1, m_2 ~ TruncNormal(0, 1) per pixel, cut at 2 std     (code:205-207)
    (alpha, Delta, gamma) = softmax(W_2 W_1 f_pi(g))    f_pi: a copy of the classifier's architecture with its
                                                        own weights (code:209-233), W_1: 100 units, W_2: 3 units,
                                                        no nonlinearity between (code:235-238, 241-250)
    lam   = alpha + u * Delta,  u ~ U(0, 1) per pair   (the reparameterisation, code:254-258), so
            lam ~ U(alpha, alpha + Delta) with alpha + Delta = 1 - gamma <= 1
    x~    = lam * x_i + (1 - lam) * x_j,   y~ = lam * y_i + (1 - lam) * y_j                          (code:273-274)

The batch is split in two (code:183-194): the first half is mixed, the second is kept unmixed. The classifier is
trained on mixes and originals together, L_cls = mean soft-target cross entropy over both (code:277-282, 370-373).
The intrusion discriminator D is the classifier's own trunk h (shared weights: code:326-329, 367) followed by two
linear layers (``CLASS_NUM`` units, then 2; no nonlinearity; code:378-381). It is trained to call every original
sample of the batch (both halves) "original" (class 1) and every mix "mixed" (class 0) (code:341-357):

    L_intr = -( sum_{x original} log D(x) + sum_{x~ mixed} log(1 - D(x~)) ) / (#original + #mixed)   (code:383-384)

with D(x) the softmax probability of class 1 ("original").

and the whole model minimises L_cls + L_intr (code:387-388; plus weight decay on every weight, code:407-411) with
one optimizer over the classifier, the generator and the discriminator. The generator is not the discriminator's
adversary: it minimises L_intr too, through the pixels of the mixes, so it learns intervals whose mixes are easy to
tell from real data, i.e. off the manifold. It also receives the gradient of L_cls, through the mixed pixels only:
the labels use the same lam (code:274) but the loss stops the gradient at its labels (code:372, TensorFlow 1's
``tf.nn.softmax_cross_entropy_with_logits`` back-propagates into the logits only), so ``MixOutput.lam`` is detached.

In openmix: ``hooks = ("inputs", "loss")``. :meth:`AdaMixUp.forward` (hook ``inputs``) runs the policy generator and
returns the mixed batch (rows ``[0, n)`` mixed, the rest unmixed with lam = 1), its pixels differentiable with
respect to lam; the trainer's objective on it is L_cls. :meth:`AdaMixUp.own_loss` (hook ``loss``) is L_intr on the
training network handed over as ``model`` (the ``model`` need). Which parameters each term trains:

- L_cls: the training network (trunk and classifier head) and the generator (trunk and gate head).
- L_intr: the discriminator head, the training network's trunk (not its classifier head) and the generator.

Defaults (code lines):

- ``mix_fraction=0.5``: half the batch is mixed, the other half only feeds the discriminator's originals
  (code:183-194, ``tf.split(image_1, 2, 0)``); with ``BATCH_SIZE = 128`` (code:36) that is 64 mixes per step.
- ``gate_width=100``: the generator's first linear layer (code:235); the second has 3 units (code:237).
- ``discriminator_width=None``: the discriminator's first linear layer has ``CLASS_NUM`` units (code:378;
  ``CLASS_NUM = 10``, code:37); ``None`` reads the training network's number of classes.
- ``intrusion_weight=1.0``: the two losses are added with equal weight (code:388, ``(ce_cost1 + ce_cost2) / 1``).
- Every new linear layer starts from N(0, 0.001^2) weights and zero biases (code:236, 238, 379, 381), so the
  untrained policy is about (1/3, 1/3, 1/3): lam ~ U(1/3, 2/3).
- Partners: a random permutation of the batch (code:453-456), ``pairing="random"``.
- The authors' training recipes, for the configs: CIFAR-10 preact ResNet-18, SGD momentum 0.9 (code:414-417),
  lr 0.1 x 0.1 at epochs 100 and 150 (code:44, 622), weight decay 1e-4 (code:45, 408), batch 128 (code:36),
  1400 epochs (code:624); MNIST 4-layer CNN, Adam lr 1e-3 x 0.3 every 30 epochs (code:419-425), 400 epochs
  (code:637).

Departures from the code (docs/decisions.md):

- The code's classifier sees the originals of the *mixed* half (code:277); a mixer's output row i must hold sample i,
  so openmix's unmixed rows are the *other* half. The discriminator's data are the code's: all B originals and the
  n mixes.
- The generator's trunk starts as a copy of the training network's current weights (the code initialises its own
  variables independently); from then on the two are trained separately.
- ``lam`` given explicitly bypasses the policy: every row is mixed with it (and counts as a mix for L_intr).
- ``inplace=True`` writes the mixed rows into the input; the clean batch that L_intr needs is copied first.
- A mixed batch from ``pairing_scope: global`` carries no clean batch: :meth:`own_loss` refuses it.
- Policies that mix more than two samples are not implemented: the authors' code mixes pairs only.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openmix.mixers import functional as F_mix
from openmix.mixers._base import MixOutput, PairMixer, check_call, check_network
from openmix.mixers._registry import register_mixer

INIT_STD = 1e-3  # N(0, 0.001^2) weights of every new linear layer (code:236, 238, 379, 381)
NOISE_CUT = 2.0  # tf.truncated_normal re-draws values beyond 2 standard deviations (code:205-206)
CLASS_NUM = 10  # the discriminator's hidden width when the network's class count cannot be read (code:37, 378)
GATE_OUTPUTS = 3  # softmax over (alpha, Delta, discarded) (code:237, 241-242)


@dataclass
class AdaMixOutput(MixOutput):
    """:class:`~openmix.MixOutput` plus what the intrusion loss needs.

    Attributes:
        originals: the clean batch (B, C, H, W) the mix was made from: the discriminator's "original" examples.
        num_mixed: rows ``[0, num_mixed)`` of ``x`` are mixes (the discriminator's "mixed" examples); the others
            are unmixed (lam = 1).
        region: ``None`` when ``lam`` was given, else the (num_mixed, 2) float32 policy region ``(alpha,
            alpha + Delta)`` each mix's lam was drawn from (differentiable).
    """

    originals: Tensor | None = None
    num_mixed: int = 0
    region: Tensor | None = None


def pooled_features(network: nn.Module, images: Tensor) -> Tensor:
    """(n, D) pooled features of ``images``: a timm model's ``forward_head(forward_features(x), pre_logits=True)``;
    else ``forward_features`` (or the output) averaged over its spatial or token dimensions."""
    if hasattr(network, "forward_features") and hasattr(network, "forward_head"):
        return network.forward_head(network.forward_features(images), pre_logits=True).flatten(1)
    features = network.forward_features(images) if hasattr(network, "forward_features") else network(images)
    if not isinstance(features, Tensor) or features.dim() < 2:
        raise ValueError(f"the network must return (n, D), (n, N, D) or (n, C, h, w) features, got {features!r}")
    if features.dim() == 4:
        features = features.mean(dim=(2, 3))
    elif features.dim() == 3:
        features = features.mean(dim=1)
    return features.flatten(1)


def feature_width(network: nn.Module) -> int | None:
    """The width of :func:`pooled_features` when the network says it (timm's ``head_hidden_size`` or
    ``num_features``), else ``None``."""
    for name in ("head_hidden_size", "num_features"):
        value = getattr(network, name, None)
        if F_mix.is_int(value) and value > 0:
            return int(value)
    return None


def class_count(network: nn.Module) -> int | None:
    """The network's number of classes (timm's ``num_classes``, or its classifier's ``out_features``), or ``None``."""
    value = getattr(network, "num_classes", None)
    if F_mix.is_int(value) and value > 0:
        return int(value)
    classifier = network.get_classifier() if hasattr(network, "get_classifier") else None
    value = getattr(classifier, "out_features", None)
    return int(value) if F_mix.is_int(value) and value > 0 else None


def small_linear(width_in: int, width_out: int) -> nn.Linear:
    """A linear layer with N(0, INIT_STD^2) weights and zero bias, as every layer the authors add (code:236, 379)."""
    layer = nn.Linear(width_in, width_out)
    nn.init.normal_(layer.weight, std=INIT_STD)
    nn.init.zeros_(layer.bias)
    return layer


def derived_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded by one draw from ``generator`` (the global RNG when ``None``): the
    image-sized noise is drawn where the images are, and every draw still follows ``generator``."""
    source_device = generator.device if generator is not None else torch.device("cpu")
    seed = int(F_mix.host_values(torch.randint(0, 2**62, (1,), generator=generator, device=source_device))[0])
    local = torch.Generator(device=device)
    local.manual_seed(seed)
    return local


def truncated_normal(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """float32 N(0, 1) draws restricted to [-NOISE_CUT, NOISE_CUT] (inverse CDF of a uniform draw on the cut range),
    the distribution of ``tf.truncated_normal`` (code:205-206)."""
    bound = math.erf(NOISE_CUT / math.sqrt(2.0))
    uniform = torch.rand(shape, generator=generator, device=device)
    return math.sqrt(2.0) * torch.special.erfinv((2.0 * uniform - 1.0) * bound)


@register_mixer(
    "adamixup",
    paper="MixUp as Locally Linear Out-Of-Manifold Regularization (Guo, Mao and Zhang, AAAI 2019)",
    url="https://arxiv.org/abs/1809.02499",
)
class AdaMixUp(PairMixer):
    """AdaMixUp: a policy region generator draws each pair's lam, an intrusion discriminator on the classifier's
    trunk keeps the mixes off the data manifold.

    Args:
        mix_fraction: share of the batch that is mixed, in (0, 1] (rows ``[0, ceil(B * mix_fraction))``); the
            authors mix half (code:183-194).
        gate_width: width of the generator's hidden linear layer (code:235: 100).
        discriminator_width: width of the discriminator's hidden linear layer; ``None``: the network's number of
            classes, as the authors (code:378).
        intrusion_weight: weight of the intrusion loss :meth:`own_loss` (code:388: 1); 0 switches it off (the
            generator then learns from the classification loss only).
        generator_network: the policy generator's trunk (its pooled features feed the gate layers); ``None``: a copy
            of the training network's architecture with its own weights, made when a trainer binds the mixer
            (:meth:`check_network`) or on the first call, as the authors (code:209-233).
        pairing: ``"random"`` (a random permutation, code:453-456) or ``"flip"``.
        inplace: write the mixed rows into the input tensor (the clean batch is copied first for the discriminator).

    The policy draws one lam per mixed pair (code:254), so there is no ``mode``. Build it inside a trainer, or call
    :meth:`bind` with the training network before making the optimizer: the generator's and the discriminator's
    parameters are created there.
    """

    hooks = ("inputs", "loss")
    requires = ("model",)  # the discriminator is a head on the training network's trunk; the generator copies it
    shares_batch_mask = False  # every pair has its own policy region
    learned = True  # MixClassifier trains it: its parameters are the module's, its loss comes through own_loss

    def __init__(
        self,
        mix_fraction: float = 0.5,
        gate_width: int = 100,
        discriminator_width: int | None = None,
        intrusion_weight: float = 1.0,
        generator_network: nn.Module | None = None,
        pairing: str = "random",
        inplace: bool = False,
    ):
        super().__init__(1.0, "elem", pairing, inplace)
        del self.alpha  # no Beta(alpha, alpha): lam comes from the policy region
        self.mix_fraction = F_mix.check_real(mix_fraction, "mix_fraction", "lie in (0, 1]", lambda v: 0 < v <= 1)
        if not F_mix.is_int(gate_width) or gate_width < 1:
            raise ValueError(f"gate_width must be a positive int, got {gate_width!r}")
        if discriminator_width is not None and (not F_mix.is_int(discriminator_width) or discriminator_width < 1):
            raise ValueError(f"discriminator_width must be a positive int or None, got {discriminator_width!r}")
        self.intrusion_weight = F_mix.check_real(
            intrusion_weight, "intrusion_weight", "be a finite number >= 0", lambda v: 0 <= v < math.inf
        )
        if generator_network is not None and not isinstance(generator_network, nn.Module):
            raise TypeError(f"generator_network must be an nn.Module or None, got {type(generator_network).__name__}")
        self.gate_width = int(gate_width)
        self.discriminator_width = None if discriminator_width is None else int(discriminator_width)
        self.generator_network = generator_network
        self.gate: nn.Sequential | None = None  # W_2 W_1 (code:235-238), built once the trunk's width is known
        self.discriminator: nn.Sequential | None = None  # the two layers on the classifier's trunk (code:378-381)
        if generator_network is not None and feature_width(generator_network) is not None:
            self.build_gate(feature_width(generator_network))

    def extra_repr(self) -> str:
        return (
            f"mix_fraction={self.mix_fraction}, gate_width={self.gate_width}, "
            f"discriminator_width={self.discriminator_width}, intrusion_weight={self.intrusion_weight}, "
            f"pairing={self.pairing!r}, inplace={self.inplace}"
        )

    # ----- building the generator and the discriminator -------------------------------------------------------------
    def build_gate(self, width: int) -> None:
        self.gate = nn.Sequential(small_linear(width, self.gate_width), small_linear(self.gate_width, GATE_OUTPUTS))

    def build_discriminator(self, width: int, classes: int | None) -> None:
        hidden = self.discriminator_width or classes or CLASS_NUM
        self.discriminator = nn.Sequential(small_linear(width, hidden), small_linear(hidden, 2))

    def bind(self, network: nn.Module, strict: bool = False) -> None:
        """Create what is not built yet from the training ``network``: the generator's trunk (a copy of the
        network's architecture and weights, its classifier removed when timm can), the gate layers and the
        discriminator's layers. ``strict``: refuse a network whose feature width cannot be read (then the layers
        would be created on the first call, after a trainer made its optimizer)."""
        check_network(network)
        if self.generator_network is None:
            trunk = copy.deepcopy(network)
            if hasattr(trunk, "reset_classifier"):  # timm: the copy needs no classifier head
                trunk.reset_classifier(0)
            self.generator_network = trunk
        width = feature_width(network)
        gate_width = feature_width(self.generator_network)
        if strict and (width is None or gate_width is None):
            raise ValueError(
                f"adamixup cannot read the pooled feature width of {type(network).__name__} (timm's num_features): "
                "its generator and discriminator layers could not be built before the optimizer"
            )
        if self.gate is None and gate_width is not None:
            self.build_gate(gate_width)
        if self.discriminator is None and width is not None:
            self.build_discriminator(width, class_count(network))
        elif self.discriminator is not None and width is not None and self.discriminator[0].in_features != width:
            raise ValueError(
                f"adamixup's discriminator was built for {self.discriminator[0].in_features} features, but "
                f"{type(network).__name__} gives {width}"
            )
        device = next((p.device for p in network.parameters()), None)
        if device is not None:
            self.to(device)

    def check_network(self, network: nn.Module) -> None:
        """A trainer's network at construction: build the generator and the discriminator for it (see :meth:`bind`),
        so that their parameters are in the trainer's optimizer."""
        self.bind(network, strict=True)

    # ----- the policy region generator ------------------------------------------------------------------------------
    def policy_region(
        self, own: Tensor, partners: Tensor, generator: torch.Generator | None = None, model: nn.Module | None = None
    ) -> Tensor:
        """(n, 2) float32 policy region ``(alpha, alpha + Delta)`` of the pairs ``(own[k], partners[k])``
        (differentiable with respect to the generator). ``model``: the training network, to copy when the mixer is not
        bound yet."""
        if self.generator_network is None:
            if model is None:
                raise ValueError(
                    "adamixup needs model=... (the training network, whose architecture its policy generator copies) "
                    "or a generator_network"
                )
            self.bind(model)
        local = derived_generator(generator, own.device)
        noise = truncated_normal((2, *own.shape), local, own.device)
        gate_input = (noise[0] * own.float() + noise[1] * partners.float()) / 2  # code:207
        try:
            features = pooled_features(
                self.generator_network, F_mix.to_network_dtype(self.generator_network, gate_input)
            )
        except ValueError as error:  # batch norm in training mode on a single mixed image (a 1 x 1 feature map)
            raise ValueError(
                f"adamixup's policy network sees the {gate_input.shape[0]} mixed image(s) of the batch "
                f"(ceil(B * mix_fraction)), which its layers cannot take in training mode ({error}): use a larger "
                "batch or mix_fraction"
            ) from error
        if self.gate is None:
            self.build_gate(features.shape[1])
            self.gate.to(features.device)
        shares = torch.softmax(self.gate(features).float(), dim=1)  # (alpha, Delta, discarded), code:241-250
        return torch.stack([shares[:, 0], shares[:, 0] + shares[:, 1]], dim=1)

    def mixed_count(self, batch_size: int) -> int:
        """How many rows of a batch are mixed."""
        return min(batch_size, max(1, math.ceil(batch_size * self.mix_fraction)))

    # ----- hook "inputs" ------------------------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        y: Tensor,
        generator: torch.Generator | None = None,
        lam: float | Tensor | None = None,
        **context: Any,
    ) -> AdaMixOutput:
        """Mix a batch: rows ``[0, n)`` with their partners at lam drawn from each pair's policy region (the pixels
        differentiable with respect to the generator; ``lam``, the label weight, detached), the other rows unmixed.
        An explicit ``lam`` (a number or a (B,) tensor) bypasses the policy and mixes every row with it.
        ``model``: the training network (the ``model`` need)."""
        check_call(self, x, y, generator, context)
        root = x if x._base is None else x._base
        if self.inplace and root.is_leaf and root.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                "adamixup was built with inplace=True, but x is a leaf tensor that requires grad (or a view of one), "
                "which autograd forbids writing into: build it with inplace=False"
            )
        batch_size = x.shape[0]
        lam_in = F_mix.check_lam(lam, batch_size, self.mode)
        index = F_mix.partner_index(batch_size, self.pairing, generator).to(x.device)
        originals = x.clone() if self.inplace else x  # the discriminator's original examples (code:341)
        if lam_in is not None:
            weight = lam_in.to(device=x.device, dtype=torch.float32)
            mixed = F_mix.blend(x, index, F_mix.lam_to_weight(weight, "elem", x), self.inplace)
            return AdaMixOutput(mixed, index, weight, y, y.index_select(0, index), None, originals=originals,
                                num_mixed=batch_size)  # fmt: skip
        count = self.mixed_count(batch_size)
        own, partners = x[:count], x.index_select(0, index[:count])
        region = self.policy_region(own, partners, generator, context.get("model"))
        draws = torch.rand(count, generator=derived_generator(generator, x.device), device=x.device)
        lam_mixed = (region[:, 0] + draws * (region[:, 1] - region[:, 0])).clamp(0.0, 1.0)  # code:254-258
        weight = lam_mixed.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        rows = partners + weight * (own - partners)  # saves no tensor that the in-place write below changes
        if self.inplace:
            x[:count].copy_(rows)
            mixed = x
        else:
            mixed = torch.cat([rows, x[count:]]).contiguous(memory_format=F_mix.memory_format_of(x))
        # the labels take lam as a constant: the authors' loss (tf.nn.softmax_cross_entropy_with_logits, code:372)
        # stops the gradient at its labels, so the generator learns from the mixed pixels only
        lam_out = torch.cat([lam_mixed.detach(), lam_mixed.new_ones(batch_size - count)])
        return AdaMixOutput(mixed, index, lam_out, y, y.index_select(0, index), None, originals=originals,
                            num_mixed=count, region=region)  # fmt: skip

    def mix(self, x: Tensor, index: Tensor, lam: Tensor | None, generator: torch.Generator | None, **context: Any):
        raise NotImplementedError("AdaMixUp mixes in forward: it splits the batch and draws lam from its policy")

    # ----- hook "loss" --------------------------------------------------------------------------------------------
    def own_loss(self, mix: MixOutput, model: nn.Module | None = None, **needs: Any) -> Tensor:
        """The intrusion loss ``intrusion_weight * L_intr`` of a batch this mixer made: the discriminator (the
        training network's trunk ``model`` + this mixer's two layers) calls every original "original" (class 1) and
        every mix "mixed" (class 0), softmax cross entropy averaged over all of them (code:341-357, 383-384)."""
        if not isinstance(mix, AdaMixOutput) or mix.originals is None:
            raise ValueError(
                "adamixup's own_loss needs the AdaMixOutput its forward returned (with the clean batch); "
                f"got {type(mix).__name__} (pairing_scope 'global' gathers batches into a plain MixOutput: use 'local')"
            )
        if model is None:
            raise ValueError("adamixup's own_loss needs model=... (the training network: the discriminator's trunk)")
        check_network(model)
        if self.intrusion_weight == 0 or mix.num_mixed == 0:
            return mix.x.new_zeros((), dtype=torch.float32)
        images = torch.cat([mix.originals.to(mix.x.dtype), mix.x[: mix.num_mixed]])
        features = pooled_features(model, F_mix.to_network_dtype(model, images))
        if self.discriminator is None:
            self.build_discriminator(features.shape[1], class_count(model))
            self.discriminator.to(features.device)
        logits = self.discriminator(features).float()
        originals = mix.originals.shape[0]
        target = torch.zeros(images.shape[0], dtype=torch.int64, device=logits.device)
        target[:originals].fill_(1)  # originals: class 1 (code:346-348), mixes: class 0 (code:351-353)
        return self.intrusion_weight * F.cross_entropy(logits, target)
