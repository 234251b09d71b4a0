"""AdaMixUp: the policy region generator, the intrusion discriminator and the loss each part learns from, against
direct computations of the published method (the authors' code SITE5039/AdaMixUp, GitHub.AdaMixup.AAAI.MNIST.Cifar.py,
``code:N`` below), and its effect on a toy problem with manifold intrusion."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import openmix
from openmix.lightning import MixClassifier
from openmix.losses import SoftTargetCrossEntropy, soft_target_cross_entropy
from openmix.mixers.adamixup import AdaMixOutput, AdaMixUp

CNN = {"backbone": "resnet10t", "num_classes": 4, "in_chans": 1, "cifar_stem": True,
       "backbone_kwargs": {"channels": [4, 4, 4, 4], "stem_width": 4}}  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only contend (on a loaded 2-core machine a step then takes seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def batch(size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 1, 16, 16, generator=generator), torch.arange(size) % 4


def tiny_model(**mixer_kwargs) -> MixClassifier:
    torch.manual_seed(0)
    return MixClassifier(**CNN, mixer=AdaMixUp(**mixer_kwargs)).train()


def grads(loss: torch.Tensor, parameters: list[nn.Parameter]) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True))


def reached(gradients: list[torch.Tensor | None]) -> bool:
    """Some gradient is non-zero."""
    return any(g is not None and bool(g.abs().sum() > 0) for g in gradients)


def untouched(gradients: list[torch.Tensor | None]) -> bool:
    """No parameter is on the loss's graph."""
    return all(g is None for g in gradients)


# ------------------------------------------------------------------------------------------ registry and defaults
def test_registered_with_its_hooks_needs_and_the_authors_defaults():
    entry = openmix.get_mixer_entry("adamixup")
    assert entry.cls is AdaMixUp and "1809.02499" in entry.url
    assert entry.hooks == ("inputs", "loss") and entry.requires == ("model",) and entry.learned
    assert AdaMixUp.trained_by is None  # MixClassifier trains it: no pipeline of its own
    assert entry.defaults == {
        "mix_fraction": 0.5,  # code:183-194, half the batch is mixed
        "gate_width": 100,  # code:235
        "discriminator_width": None,  # code:378, CLASS_NUM: the network's number of classes
        "intrusion_weight": 1.0,  # code:388
        "generator_network": None,  # code:209-233, a copy of the classifier's architecture
        "pairing": "random",
        "inplace": False,
    }
    assert "mode" not in entry.defaults and not AdaMixUp.shares_batch_mask  # one lam per pair (code:254)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"mix_fraction": 0.0}, ValueError, "mix_fraction"),
        ({"mix_fraction": 1.5}, ValueError, "mix_fraction"),
        ({"mix_fraction": "half"}, TypeError, "mix_fraction"),
        ({"gate_width": 0}, ValueError, "gate_width"),
        ({"gate_width": 2.5}, ValueError, "gate_width"),
        ({"discriminator_width": 0}, ValueError, "discriminator_width"),
        ({"intrusion_weight": -1.0}, ValueError, "intrusion_weight"),
        ({"intrusion_weight": float("nan")}, ValueError, "intrusion_weight"),
        ({"intrusion_weight": True}, TypeError, "intrusion_weight"),
        ({"generator_network": "resnet18"}, TypeError, "generator_network"),
        ({"pairing": "sorted"}, ValueError, "pairing"),
        ({"inplace": 1}, TypeError, "inplace"),
    ],
)
def test_bad_arguments_are_refused_naming_them(kwargs, error, name):
    with pytest.raises(error, match=name):
        AdaMixUp(**kwargs)


def test_calls_without_a_network_or_with_a_foreign_mix_are_refused():
    x, y = batch()
    with pytest.raises(ValueError, match="model="):
        AdaMixUp()(x, y)
    model = tiny_model()
    mix = model.mixer(x, y, model=model.network)
    plain = openmix.MixOutput(mix.x, mix.index, mix.lam, mix.y_a, mix.y_b)  # what pairing_scope 'global' returns
    with pytest.raises(ValueError, match="global"):
        model.mixer.own_loss(plain, model=model.network)
    with pytest.raises(ValueError, match="model="):
        model.mixer.own_loss(mix)


# ------------------------------------------------------------------------------------------ the policy generator
def test_the_generator_is_a_copy_of_the_network_and_the_new_layers_start_small():
    model = tiny_model()
    mixer = model.mixer
    trunk = mixer.generator_network
    assert type(trunk) is type(model.network) and trunk is not model.network
    assert all(p is not q for p, q in zip(trunk.parameters(), model.network.parameters()))  # own weights
    assert trunk.num_classes == 0  # its classifier is dropped: only its pooled features feed the gate
    width = model.network.num_features
    assert [tuple(layer.weight.shape) for layer in mixer.gate] == [(100, width), (3, 100)]  # code:235-238
    assert [tuple(layer.weight.shape) for layer in mixer.discriminator] == [(4, width), (2, 4)]  # code:378-381
    for layer in [*mixer.gate, *mixer.discriminator]:  # N(0, 0.001^2) weights, zero biases (code:236, 379)
        assert float(layer.weight.detach().std()) < 3e-3 and torch.equal(layer.bias, torch.zeros_like(layer.bias))
    assert AdaMixUp(discriminator_width=7).discriminator is None  # built with the network (bind)


def test_untrained_policy_region_is_about_one_third_to_two_thirds_and_lam_is_drawn_inside_it():
    """softmax of near-zero logits is (1/3, 1/3, 1/3): lam ~ U(alpha, alpha + Delta) = U(1/3, 2/3) (code:241-258)."""
    model = tiny_model()
    x, y = batch(8)
    mix = model.mixer(x, y, generator=torch.Generator().manual_seed(0), model=model.network)
    assert isinstance(mix, AdaMixOutput) and mix.num_mixed == 4  # ceil(8 * 0.5) (code:183)
    torch.testing.assert_close(mix.region.detach(), torch.tensor([[1 / 3, 2 / 3]]).expand(4, 2), atol=1e-3, rtol=0)
    lam = mix.lam[:4]
    assert bool(((lam >= mix.region[:, 0]) & (lam <= mix.region[:, 1])).all())
    assert lam.unique().numel() == 4  # one uniform draw per pair (code:254)
    torch.testing.assert_close(mix.lam[4:], torch.ones(4))
    assert torch.equal(mix.x[4:], x[4:]) and mix.originals is x  # the other half stays clean


def test_the_mix_is_the_lam_interpolation_and_the_labels_use_the_same_lam():
    model = tiny_model()
    x, y = batch(6)
    mix = model.mixer(x, y, generator=torch.Generator().manual_seed(3), model=model.network)
    weight = mix.lam.view(-1, 1, 1, 1)
    torch.testing.assert_close(mix.x, weight * x + (1 - weight) * x[mix.index])  # code:273
    expected = mix.lam.view(-1, 1) * F.one_hot(y, 4) + (1 - mix.lam.view(-1, 1)) * F.one_hot(y[mix.index], 4)
    torch.testing.assert_close(mix.soft_targets(4), expected)  # code:274, the label weight is the pixel share
    assert mix.label_weights is None


def test_the_generators_input_is_the_noise_weighted_average_of_the_pair():
    """code:205-207: g = (m1 * x_i + m2 * x_j) / 2, m ~ N(0, 1) cut at 2 std; the gate sees its pooled features."""
    model = tiny_model()
    mixer = model.mixer
    seen = []
    first_conv = next(m for m in mixer.generator_network.modules() if isinstance(m, nn.Conv2d))
    handle = first_conv.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    own, partners = torch.ones(64, 1, 16, 16), 3 * torch.ones(64, 1, 16, 16)
    mixer.policy_region(own, partners, torch.Generator().manual_seed(0))
    handle.remove()
    gate = seen[0]  # (m1 + 3 m2) / 2 with m1, m2 independent truncated N(0, 1)
    variance = (1 + 9) / 4 * (1 - 2 * 2 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(2 / math.sqrt(2)))
    assert abs(float(gate.mean())) < 0.05 and abs(float(gate.var()) - variance) < 0.1
    assert float(gate.abs().max()) <= (1 + 3) * 2 / 2 + 1e-5  # both draws cut at 2 std


# ----------------------------------------------------------------------------------- which loss trains which part
def test_gradients_reach_exactly_the_parts_each_loss_trains():
    """L_cls (the objective on the mix) trains the classifier and the generator, not the discriminator head; L_intr
    trains the discriminator head, the classifier's shared trunk (code:326-329, 367) and the generator (through the
    mixed pixels), not the classifier's head. The labels carry no gradient (code:372: the loss stops at its labels)."""
    model = tiny_model()
    mixer, network = model.mixer, model.network
    classifier_head = list(network.get_classifier().parameters())
    head_ids = {id(p) for p in classifier_head}
    trunk = [p for p in network.parameters() if id(p) not in head_ids]
    generator = list(mixer.generator_network.parameters()) + list(mixer.gate.parameters())
    gate = list(mixer.gate.parameters())
    discriminator = list(mixer.discriminator.parameters())
    x, y = batch(8)
    mix = mixer(x, y, generator=torch.Generator().manual_seed(0), model=network)
    classification = SoftTargetCrossEntropy()(model(mix.x), mix)
    intrusion = mixer.own_loss(mix, model=network)

    assert reached(grads(classification, trunk)) and reached(grads(classification, classifier_head))
    assert reached(grads(classification, gate)) and reached(grads(classification, generator))
    assert untouched(grads(classification, discriminator))

    assert reached(grads(intrusion, discriminator)) and reached(grads(intrusion, trunk))
    assert reached(grads(intrusion, gate)) and reached(grads(intrusion, generator))
    assert untouched(grads(intrusion, classifier_head))

    assert not mix.lam.requires_grad and not mix.soft_targets(4).requires_grad  # pixels only
    assert mix.region.requires_grad and mix.x.requires_grad


def test_the_intrusion_loss_is_the_discriminators_cross_entropy_originals_1_mixes_0():
    """code:341-357, 378-384: every original of the batch (both halves) has class 1, every mix class 0; softmax cross
    entropy averaged over all of them; the loss is added with weight intrusion_weight (code:388)."""
    model = tiny_model(intrusion_weight=0.5)
    mixer, network = model.mixer, model.network
    x, y = batch(6)
    mix = mixer(x, y, generator=torch.Generator().manual_seed(1), model=network)
    images = torch.cat([x, mix.x[: mix.num_mixed]])
    features = network.forward_head(network.forward_features(images), pre_logits=True)
    first, second = mixer.discriminator
    logits = features @ first.weight.T + first.bias
    logits = logits @ second.weight.T + second.bias  # two linear layers, no nonlinearity
    p_original = logits.log_softmax(dim=1)[:, 1]
    p_mixed = logits.log_softmax(dim=1)[:, 0]
    expected = -(p_original[:6].sum() + p_mixed[6:].sum()) / (6 + mix.num_mixed)
    torch.testing.assert_close(mixer.own_loss(mix, model=network), 0.5 * expected)
    mixer.intrusion_weight = 0.0
    assert float(mixer.own_loss(mix, model=network)) == 0.0


# ---------------------------------------------------------------------------------------- options and the trainer
def test_explicit_lam_bypasses_the_policy_and_mixes_every_row():
    model = tiny_model()
    x, y = batch(4)
    lam = torch.tensor([1.0, 0.8, 0.6, 0.4])
    mix = model.mixer(x, y, generator=torch.Generator().manual_seed(0), lam=lam, model=model.network)
    torch.testing.assert_close(mix.lam, lam)
    assert mix.num_mixed == 4 and mix.region is None
    assert bool(torch.isfinite(model.mixer.own_loss(mix, model=model.network)))


def test_inplace_writes_the_mix_into_the_input_and_keeps_the_clean_batch_for_the_discriminator():
    model = tiny_model(inplace=True)
    x, y = batch(6)
    pristine = x.clone()
    mix = model.mixer(x, y, generator=torch.Generator().manual_seed(0), model=model.network)
    assert mix.x.data_ptr() == x.data_ptr() and torch.equal(mix.originals, pristine)
    assert not torch.equal(x[:3], pristine[:3]) and torch.equal(x[3:], pristine[3:])
    intrusion = model.mixer.own_loss(mix, model=model.network)
    assert reached(grads(intrusion, list(model.mixer.gate.parameters())))  # the in-place mix keeps the graph
    intrusion.backward()


def test_mix_fraction_sets_how_many_rows_are_mixed():
    for fraction, batch_size, expected in ((0.5, 7, 4), (0.25, 8, 2), (1.0, 5, 5), (0.01, 3, 1)):
        assert AdaMixUp(mix_fraction=fraction).mixed_count(batch_size) == expected


def test_a_training_step_adds_the_intrusion_loss_and_trains_all_three_parts():
    model = tiny_model()
    x, y = batch(8)
    assert {id(p) for p in model.mixer.parameters()} <= {id(p) for p in model.parameters()}  # in the optimizer
    optimizer = model.optimizer_factory(model.parameter_groups())
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimized for p in model.mixer.parameters())
    used = {}
    original = model.mixer.own_loss
    model.mixer.own_loss = lambda mix, **needs: used.setdefault("intrusion", original(mix, **needs))
    loss = model.training_step((x, y), 0)
    assert float(loss.detach()) > float(used["intrusion"].detach()) > 0
    loss.backward()
    assert all(p.grad is not None for p in model.network.parameters())
    for part in (model.mixer.gate, model.mixer.discriminator):
        assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in part.parameters())


def test_a_rebuilt_model_loads_the_trained_generator_and_discriminator():
    model = tiny_model()
    state = model.state_dict()
    assert any(key.startswith("mixer.generator_network.") for key in state)
    assert {"mixer.gate.0.weight", "mixer.discriminator.1.weight"} <= set(state)
    rebuilt = MixClassifier(**CNN, mixer="adamixup")
    rebuilt.load_state_dict(state)  # strict: the same parameters exist right after construction
    torch.testing.assert_close(rebuilt.mixer.gate[1].weight, model.mixer.gate[1].weight)


# ------------------------------------------------------------------------------------- the toy intrusion problem
class ToyNet(nn.Module):
    """A two-layer ReLU trunk on 4x4 images and a linear classifier, with timm's feature interface."""

    num_features, num_classes = 32, 3

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.fc = nn.Linear(32, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return features if pre_logits else self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# Three classes on one line of the 4x4 image space, x = s * ones: A has s in [0.8, 1], B s in [-1, -0.8] and C s in
# [-0.2, 0.2]. The mix of A and B at lam has s ~ 2 lam - 1, so lam in [0.4, 0.6] lands on C's manifold and lam below
# 0.1 or above 0.9 on B's or A's; lam in (0.1, 0.4) or (0.6, 0.9) lands between the manifolds.
TOY_K = 16
TOY_LABELS = torch.tensor([0] * TOY_K + [2] * (2 * TOY_K) + [1] * TOY_K)  # A | C C | B: flip pairs A with B
TOY_LOW, TOY_HIGH = torch.tensor([0.8, -1.0, -0.2]), torch.tensor([1.0, -0.8, 0.2])
INTRUDING = ((0.0, 0.1), (0.4, 0.6), (0.9, 1.0))


def toy_batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    share = torch.rand(len(TOY_LABELS), generator=generator)
    s = TOY_LOW[TOY_LABELS] + share * (TOY_HIGH[TOY_LABELS] - TOY_LOW[TOY_LABELS])
    return s.view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous(), TOY_LABELS


def intruding_share(region: torch.Tensor) -> float:
    """The mean share of each policy region U(low, high) whose mixes land on a class manifold."""
    low, high = region[:, 0].double(), region[:, 1].double()
    inside = sum((high.clamp(max=b) - low.clamp(min=a)).clamp(min=0) for a, b in INTRUDING)
    return float((inside / (high - low).clamp(min=1e-12)).mean())


def toy_policy(intrusion_weight: float, seed: int, warm_up: int = 100, steps: int = 200) -> tuple[float, float]:
    """Train classifier, generator and discriminator on the toy problem with Adam at the authors' MNIST rate 1e-3
    (code:420, 425); the first ``warm_up`` steps leave the generator at its initial policy while the classifier and
    the discriminator learn the data. Returns the intruding share of the A-B policy regions before and after."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    network = ToyNet()
    mixer = AdaMixUp(mix_fraction=0.25, intrusion_weight=intrusion_weight, pairing="flip")
    mixer.bind(network, strict=True)
    policy = [*mixer.generator_network.parameters(), *mixer.gate.parameters()]
    optimizer = torch.optim.Adam([*network.parameters(), *mixer.parameters()], lr=1e-3)

    def share() -> float:
        x, _ = toy_batch(torch.Generator().manual_seed(99))
        with torch.no_grad():
            region = mixer.policy_region(x[:TOY_K], x.flip(0)[:TOY_K], torch.Generator().manual_seed(1))
        return intruding_share(region)

    before = share()
    for step in range(warm_up + steps):
        x, y = toy_batch(generator)
        mix = mixer(x, y, generator=generator, model=network)
        loss = soft_target_cross_entropy(network(mix.x), mix.soft_targets(3)) + mixer.own_loss(mix, model=network)
        optimizer.zero_grad()
        loss.backward()
        if step < warm_up:
            for parameter in policy:
                parameter.grad = None
        optimizer.step()
    return before, share()


def test_the_intrusion_loss_keeps_the_policy_off_the_data_manifold_on_a_toy_problem():
    """The untrained policy U(1/3, 2/3) puts 60% of the A-B mixes on class C's manifold. After 200 steps of the
    joint objective (L_cls + L_intr) the policy regions no longer reach any class manifold (measured: 0.0 for
    seeds 0-5, regions about (0.27, 0.29)); trained without the intrusion loss, the regions slide to lam < 0.1, where
    the mixes land on B's manifold (measured: 0.37-0.52 for seeds 0-5, regions about (0.01-0.05, 0.16-0.23))."""
    results = {(weight, seed): toy_policy(weight, seed) for weight in (1.0, 0.0) for seed in (0, 1)}
    for (weight, seed), (before, after) in results.items():
        assert before == pytest.approx(0.6, abs=0.01)  # U(1/3, 2/3): [0.4, 0.6] is 60% of it
        if weight == 1.0:
            assert after < 0.1, (seed, after)
        else:
            assert after > 0.25, (seed, after)


def test_a_single_mixed_image_the_policy_cannot_take_is_a_clear_error():
    """A batch of 2 mixes one image; a network whose last map is 1 x 1 cannot run batch norm in training mode on it:
    the error names the batch and mix_fraction instead of batch norm's internals."""
    import timm

    network = timm.create_model("resnet10t", num_classes=4, channels=[4, 4, 4, 4], stem_width=4).train()
    mixer = openmix.create_mixer("adamixup")
    mixer.check_network(network)
    with pytest.raises(ValueError, match="mix_fraction"):
        mixer(torch.randn(2, 3, 32, 32), torch.arange(2), model=network)
