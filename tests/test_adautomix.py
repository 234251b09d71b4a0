"""AdAutoMix: the k-source generator and its adversarial pipeline, against direct computations of the published
method (the paper, and the authors' code JinXins/Adversarial-AutoMixup where it is more precise)."""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from openmix.lightning import AdAutoMixClassifier, AutoMixClassifier, MixClassifier
from openmix.mixers import functional as F_mix
from openmix.mixers.adautomix import AdAutoMix, draw_shares
from openmix.mixers.automix import intermediate_features

TINY = {"backbone": "resnet10t", "backbone_kwargs": {"channels": (8, 8, 8, 8), "stem_width": 8}, "cifar_stem": True}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(**kwargs) -> AdAutoMixClassifier:
    torch.manual_seed(0)
    return AdAutoMixClassifier(**{**TINY, "num_classes": 4, "in_chans": 1, **kwargs}).train()


def batch(n: int = 8, size: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, size, size, generator=generator), torch.arange(n) % 4


def toy_batch(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes, each a bright quadrant in noise: a problem a tiny network learns in a few dozen steps."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = 0.3 * torch.randn(n, 1, 16, 16, generator=generator)
    for label in range(4):
        row, col = divmod(label, 2)
        x[y == label, :, row * 8 : row * 8 + 8, col * 8 : col * 8 + 8] += 1.0
    return x, y


def soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * logits.float().log_softmax(dim=-1)).sum(dim=1).mean()


def k_targets(y: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, classes: int = 4) -> torch.Tensor:
    """sum_j weights[:, j] * one_hot(y[indices[:, j]]): the soft target of a k-source mix."""
    return sum(weights[:, j : j + 1] * F.one_hot(y[indices[:, j]], classes).float() for j in range(indices.shape[1]))


def replay_terms(model: AdAutoMixClassifier, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> dict:
    """Every loss term of one step from the step's own draws (the teacher's pass, the generator's draw, the
    classifier's draw), each as its own tensor."""
    model.reseed_mixing(seed)
    features, sources = model.teacher_pass(x)
    adversarial, teacher_loss, similarity, block = model.generator_losses(x, y, features, sources, True)
    online_loss, mixed_logits, online = model.online_losses(x, y, features)
    terms = {
        "adversarial": adversarial,
        "cooperative": model.mixer.generator_loss(teacher_loss, similarity, adversarial=False),
        "similarity": similarity,
        "mixed": model.objective(mixed_logits, online),
        "clean": model.clean_loss(model(x), y),
    }
    if model.mixer.num_sources > 2:
        plain = model.mixer.plain_mix(x, online)
        terms["plain"] = model.objective(model(plain.x), plain)
    return {"terms": terms, "block": block, "online": online, "online_loss": online_loss}


# ------------------------------------------------------------------------------- which loss trains which network
@pytest.mark.parametrize("num_sources", [2, 3])
def test_each_loss_trains_exactly_what_the_paper_trains_with_it(num_sources):
    """The generator learns from its adversarial and cooperative losses only (through the frozen teacher), the
    classifier from its mixed, clean and plain-mixup losses only, the EMA teacher from none (torch.autograd.grad per
    term)."""
    model = tiny_model(mixer_kwargs={"num_sources": num_sources, "lam_margin": 0.0})
    x, y = batch()
    generator = list(model.mixer.parameters())
    online = list(model.network.parameters())
    assert generator and not any(p.requires_grad for p in model.ema_network.parameters())
    replay = replay_terms(model, x, y)
    for name, loss in replay["terms"].items():
        grads = torch.autograd.grad(loss, generator + online, retain_graph=True, allow_unused=True)
        to_generator, to_online = grads[: len(generator)], grads[len(generator) :]
        if name in ("adversarial", "cooperative", "similarity"):
            assert all(g is None for g in to_online), f"the generator's {name} loss must not reach the classifier"
            assert all(g is not None and bool(g.abs().sum() > 0) for g in to_generator), f"{name} trains the generator"
        else:
            assert all(g is None for g in to_generator), f"the classifier's {name} loss must not train the generator"
            assert all(g is not None for g in to_online), f"the classifier's {name} loss must reach every weight"
    block, online_mix = replay["block"], replay["online"]
    (through_teacher,) = torch.autograd.grad(replay["terms"]["cooperative"], block.masks, retain_graph=True)
    assert bool(through_teacher.abs().sum() > 0)  # the teacher's loss reaches the masks through the frozen teacher
    assert not online_mix.x.requires_grad and not online_mix.masks.requires_grad
    sum(replay["terms"].values()).backward()
    assert all(p.grad is None for p in model.ema_network.parameters()), "the EMA teacher learns from no loss"


# ----------------------------------------------------------------------------------- the alternation of the step
def test_training_step_alternates_adversarial_and_cooperative_steps():
    """Steps 0, 2, ... are adversarial (-beta L_T - (1 - beta) S), steps 1, 3, ... cooperative (L_T); each adds the
    classifier's losses, as AdAutoMix.py:284-305."""
    model = tiny_model()
    x, y = batch()
    for step, adversarial in enumerate([True, False, True, False]):
        assert model.is_adversarial_step() is adversarial
        loss = model.training_step((x, y), step)
        assert model.should_mix(step)  # the same batch draws the same decision and mixes again
        features, sources = model.teacher_pass(x, with_logits=adversarial)
        _, teacher_loss, similarity, _ = model.generator_losses(x, y, features, sources, adversarial)
        online_loss, _, _ = model.online_losses(x, y, features)
        generator_loss = -0.3 * teacher_loss - 0.7 * similarity if adversarial else teacher_loss
        torch.testing.assert_close(loss, online_loss + generator_loss)
        assert (similarity is None) is not adversarial  # the cooperative step needs no source outputs
    assert model.generator_steps == 4
    every_third = tiny_model(adversarial_interval=3)
    phases = []
    for steps in range(6):
        every_third.generator_steps = steps
        phases.append(every_third.is_adversarial_step())
    assert phases == [True, False, False, True, False, False]
    skipping = tiny_model(mix_prob=0.0)  # a step that does not mix leaves the generator and its phase alone
    skipping.training_step((x, y), 0)
    assert skipping.generator_steps == 0


def test_the_adversarial_step_raises_the_classifiers_loss_on_a_toy_problem():
    """From the same generator and draw, one gradient step on the adversarial loss (the defaults: beta 0.3, the
    paper's cosine sign) leaves the classifier with a higher loss on the generator's mix than one step on the
    cooperative loss, and higher than before; the cooperative step lowers it."""
    model = tiny_model()
    x, y = toy_batch()
    optimizer = torch.optim.SGD(model.network.parameters(), lr=0.1, momentum=0.9)
    for _ in range(40):  # a classifier that has learnt the toy problem; the teacher is that classifier
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.ema_network.load_state_dict(model.network.state_dict())
    start = copy.deepcopy(model.mixer.state_dict())

    def classifier_loss_on_the_mix(seed: int) -> float:
        model.reseed_mixing(seed)
        with torch.no_grad():
            block = model.draw(x, y, model.teacher_pass(x, with_logits=False)[0], "block")
            return float(model.objective(model(block.x), block))

    for seed in range(4):
        after = {}
        before = classifier_loss_on_the_mix(seed)
        for adversarial in (True, False):
            model.mixer.load_state_dict(start)
            model.reseed_mixing(seed)
            features, sources = model.teacher_pass(x)
            loss = model.generator_losses(x, y, features, sources, adversarial)[0]
            model.mixer.zero_grad()
            loss.backward()
            with torch.no_grad():
                for parameter in model.mixer.parameters():
                    parameter.sub_(0.5 * parameter.grad)
            after[adversarial] = classifier_loss_on_the_mix(seed)
        assert after[True] > before > after[False], (seed, before, after)
        model.mixer.load_state_dict(start)


# ------------------------------------------------------------------------------------- what is mixed, how labelled
@pytest.mark.parametrize("draw", ["block", "classifier"])
@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("num_sources", [2, 3, 4])
def test_what_is_mixed_is_what_is_labelled(num_sources, mode, draw):
    """out.x == sum_j masks_j x[indices_j]; the masks sum to 1 over the sources; weights are their means; the
    two-source fields are the first two columns; sample i itself is source 0 and its partners come largest first;
    the labels use the sampled shares, which sum to 1 (and in batch mode are one vector for the batch)."""
    torch.manual_seed(0)
    mixer = AdAutoMix(extractor=nn.Identity(), num_sources=num_sources, mode=mode, lam_margin=0.0)
    x = torch.randn(6, 3, 12, 12)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    features = torch.randn(6, 5, 3, 3)
    out = mixer(x, y, generator=torch.Generator().manual_seed(2), features=features, draw=draw)
    assert out.indices.shape == (6, num_sources) and out.masks.shape == (6, num_sources, 12, 12)
    expected = sum(out.masks[:, j : j + 1] * x[out.indices[:, j]] for j in range(num_sources))
    torch.testing.assert_close(out.x, expected)
    torch.testing.assert_close(out.masks.sum(dim=1), torch.ones(6, 12, 12))
    torch.testing.assert_close(out.weights, out.masks.mean(dim=(2, 3)))
    assert torch.equal(out.lam, out.weights[:, 0]) and torch.equal(out.index, out.indices[:, 1])
    assert torch.equal(out.mask, out.masks[:, :1]) and out.y_a is y and torch.equal(out.y_b, y[out.index])
    assert torch.equal(out.indices[:, 0], torch.arange(6))
    assert bool((out.weights[:, 1:-1] >= out.weights[:, 2:]).all())  # partners by pixel share, largest first
    shares = out.label_weights
    torch.testing.assert_close(shares.sum(dim=1), torch.ones(6))
    assert not torch.allclose(shares, out.weights, atol=1e-3)  # the learned masks' shares are not the labels'
    if mode == "batch":  # one share vector for the batch: the same own share, the same partner shares up to order
        assert bool((shares[:, 0] == shares[0, 0]).all())
        partners = shares[:, 1:].sort(dim=1).values
        torch.testing.assert_close(partners, partners[:1].expand_as(partners))
    torch.testing.assert_close(out.soft_targets(5), k_targets(y, out.indices, shares, classes=5))
    assert out.masks.requires_grad and not out.weights.requires_grad  # the generator learns through the masks


@pytest.mark.parametrize(("num_sources", "lam_embedding"), [(2, True), (3, False), (3, True)])
def test_generator_is_the_authors_attention_formula(num_sources, lam_embedding):
    """For source j: q_j = ReLU(W_q z~_j), k_j = ReLU(W_k z~_j), v_j = W_v z~_j with z~_j = [z_j; lambda_j]; the
    authors sum the attention logits q_j^T k_l over the other sources l (Ada_mix_pine.py:150-162; for k = 2 the pair's
    cross attention, :107-138); m = softmax over the sources of the bilinear upsampling of softmax(.) v_j
    (:277-278)."""
    torch.manual_seed(0)
    mixer = AdAutoMix(
        extractor=nn.Identity(), in_channels=6, num_sources=num_sources, lam_embedding=lam_embedding, mode="elem"
    )
    x, y = torch.randn(5, 2, 8, 8), torch.arange(5)
    features = torch.randn(5, 6, 4, 4)
    out = mixer(x, y, generator=torch.Generator().manual_seed(4), features=features, draw="block")

    def embed(layer, z):
        conv = layer[0] if isinstance(layer, nn.Sequential) else layer
        value = F.conv2d(z, conv.weight, conv.bias)
        return value.relu() if isinstance(layer, nn.Sequential) else value

    sources = []
    for j in range(num_sources):
        z = features[out.indices[:, j]]
        if lam_embedding:
            z = torch.cat([z, out.label_weights[:, j].view(-1, 1, 1, 1).expand(-1, 1, 4, 4)], dim=1)
        sources.append(z)
    q = [embed(mixer.query, z).flatten(2) for z in sources]  # (B, d, hw)
    k = [embed(mixer.key, z).flatten(2) for z in sources]
    v = [embed(mixer.value, z).flatten(2) for z in sources]  # (B, 1, hw)
    logits = []
    for j in range(num_sources):
        scores = sum(q[j].transpose(1, 2) @ k[other] for other in range(num_sources) if other != j)
        attention = torch.softmax(scores / math.sqrt(q[j].shape[1]), dim=-1)
        logits.append((attention @ v[j].transpose(1, 2)).view(5, 1, 4, 4))
    expected = torch.softmax(F.interpolate(torch.cat(logits, dim=1), size=(8, 8), mode="bilinear"), dim=1)
    torch.testing.assert_close(out.masks, expected, atol=1e-6, rtol=1e-5)
    assert mixer.query[0].weight.shape[0] == 3  # the embedding width: in_channels // reduction (6 // 2)


def test_shares_are_the_authors_draws():
    """k = 2: (lambda, 1 - lambda) with lambda ~ Beta(alpha, alpha) (AdAutoMix.py:279, mixup :529-530); k > 2: k
    Beta(alpha, alpha) draws normalised to sum 1 (:245, :260-261). An explicit lam is the share of source 0, the
    other sources keep their drawn proportions of the rest."""
    draws = F_mix.sample_beta(1.0, 12, torch.Generator().manual_seed(3)).view(4, 3)
    three = draw_shares(1.0, 3, 4, None, torch.Generator().manual_seed(3))
    torch.testing.assert_close(three, draws / draws.sum(dim=1, keepdim=True))
    pairs = F_mix.sample_beta(2.0, 8, torch.Generator().manual_seed(5)).view(4, 2)
    two = draw_shares(2.0, 2, 4, None, torch.Generator().manual_seed(5))
    torch.testing.assert_close(two, torch.stack([pairs[:, 0], 1 - pairs[:, 0]], dim=1))
    own = torch.tensor([0.5, 1.0, 0.0, 0.2], dtype=torch.float64)
    explicit = draw_shares(1.0, 3, 4, own, torch.Generator().manual_seed(3))
    torch.testing.assert_close(explicit[:, 0], own)
    torch.testing.assert_close(explicit.sum(dim=1), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(explicit[:, 1] * three[:, 2] * (1 - own), explicit[:, 2] * three[:, 1] * (1 - own))


def test_the_losses_use_the_label_weights_the_mix_reports():
    """The teacher's loss and the cosine similarity weigh each source by the mix's ``label_weights`` (the sampled
    shares, AdAutoMix.py:449-457, :468-478); the classifier's loss too, and with k = 3 its clean term is
    (1 - r) CE(clean) + r CE(plain mixup of the same sources at those shares), r = 0.5 (:383-401)."""
    model = tiny_model()
    x, y = batch()
    model.reseed_mixing(0)
    features, sources = model.teacher_pass(x)
    _, teacher_loss, similarity, block = model.generator_losses(x, y, features, sources, True)
    logits = model.ema_network(block.x)
    torch.testing.assert_close(teacher_loss, soft_ce(logits, k_targets(y, block.indices, block.label_weights)))
    cosines = torch.stack(
        [F.cosine_similarity(logits, model.ema_network(x)[block.indices[:, j]], dim=1) for j in range(3)], dim=1
    )
    torch.testing.assert_close(similarity, (block.label_weights * cosines).sum(dim=1).mean())
    loss, mixed_logits, online = model.online_losses(x, y, features)
    shares = online.label_weights
    plain = sum(shares[:, j].view(-1, 1, 1, 1) * x[online.indices[:, j]] for j in range(3))
    targets = k_targets(y, online.indices, shares)
    expected = (
        soft_ce(mixed_logits, targets) + 0.5 * F.cross_entropy(model(x), y) + 0.5 * soft_ce(model(plain), targets)
    )
    torch.testing.assert_close(loss, expected)
    two = tiny_model(mixer_kwargs={"num_sources": 2})
    two.reseed_mixing(0)
    loss, mixed_logits, online = two.online_losses(x, y)
    expected = soft_ce(mixed_logits, k_targets(y, online.indices, online.label_weights)) + F.cross_entropy(two(x), y)
    torch.testing.assert_close(loss, expected)  # k = 2: the clean term alone (AdAutoMix.py:402-403)


def test_the_margin_gives_the_classifier_plain_mixup_and_never_touches_the_generators_draw():
    """A share of sample i itself within lam_margin of 0 or 1: the classifier's mix uses constant masks (the shares),
    per sample in elem mode; the generator's own draw keeps its learned masks (AdAutoMix.py:506-511, 547-550)."""
    torch.manual_seed(0)
    mixer = AdAutoMix(extractor=nn.Identity(), mode="elem", lam_margin=0.03)
    x, y = torch.randn(4, 1, 8, 8), torch.arange(4)
    lam = torch.tensor([0.01, 0.5, 0.99, 0.3])
    features = torch.randn(4, 4, 2, 2)
    for draw in ("classifier", "block"):
        out = mixer(x, y, generator=torch.Generator().manual_seed(0), lam=lam, features=features, draw=draw)
        constant = out.label_weights.view(4, 3, 1, 1).expand(-1, -1, 8, 8)
        at_edge = [torch.equal(out.masks[i], constant[i]) for i in range(4)]
        assert at_edge == ([True, False, True, False] if draw == "classifier" else [False] * 4)
    torch.testing.assert_close(out.label_weights[:, 0], lam)
    identity = mixer(x, y, generator=torch.Generator().manual_seed(0), lam=1.0, features=features)
    assert torch.equal(identity.x, x) and bool((identity.lam == 1).all())


def test_cosine_sign_paper_raises_the_similarity_and_code_lowers_it():
    """The paper: the cosine term keeps the mix's meaning, so the adversarial loss subtracts it; the authors' code
    adds + (1 - beta) S to the minimised loss (AdAutoMix.py:295-296)."""
    teacher_loss, similarity = torch.tensor(2.0), torch.tensor(0.6)
    paper = AdAutoMix(adversarial_weight=0.3)
    code = AdAutoMix(adversarial_weight=0.3, cosine_sign="code")
    torch.testing.assert_close(paper.generator_loss(teacher_loss, similarity, True), torch.tensor(-0.6 - 0.42))
    torch.testing.assert_close(code.generator_loss(teacher_loss, similarity, True), torch.tensor(-0.6 + 0.42))
    for mixer in (paper, code):
        assert mixer.generator_loss(teacher_loss, similarity, False) is teacher_loss


# ------------------------------------------------------------------------------------------- cost of one step
@pytest.mark.parametrize("clean_forward", ["separate", "joint"])
def test_one_step_runs_each_network_only_as_often_as_the_method_needs(clean_forward):
    """The teacher: one pass of the clean batch (features and, in an adversarial step, its logits for every source:
    a permutation has the same batch statistics, so one pass gives what the authors' pass per source gives) and one
    pass of the generator's mix. The classifier: the clean batch, the plain mixup (k > 2) and the generator's mix."""
    model = tiny_model(clean_forward=clean_forward)
    first_conv = next(m for m in model.ema_network.modules() if isinstance(m, nn.Conv2d))
    seen = {"teacher": [], "head": [], "online": []}
    first_conv.register_forward_hook(lambda m, args, out: seen["teacher"].append(args[0].shape[0]))
    model.ema_network.get_classifier().register_forward_hook(lambda m, args, out: seen["head"].append(1))
    model.network.register_forward_pre_hook(lambda m, args: seen["online"].append(args[0].shape[0]))
    x, y = batch()
    for step, heads in ((0, 2), (1, 1)):  # adversarial, then cooperative (no source outputs: stopped early)
        for values in seen.values():
            values.clear()
        model.training_step((x, y), step)
        assert seen["teacher"] == [8, 8] and len(seen["head"]) == heads
        assert seen["online"] == ([8, 8, 8] if clean_forward == "separate" else [24])
    features, logits = model.teacher_pass(x)
    torch.testing.assert_close(features, intermediate_features(model.ema_network, x, -2))
    torch.testing.assert_close(logits, model.ema_network(x))


# --------------------------------------------------------------------------------------- training and checkpoints
def test_fit_trains_the_generator_and_a_checkpoint_keeps_the_phase(tmp_path):
    model = tiny_model(mixer_kwargs={"alpha": 1.5})
    x, y = toy_batch(24)
    before = copy.deepcopy(model.mixer.state_dict())
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8))
    assert model.generator_steps == 3
    assert any(not torch.equal(before[key], value) for key, value in model.mixer.state_dict().items())
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    back = AdAutoMixClassifier.load_from_checkpoint(tmp_path / "model.ckpt", weights_only=False)
    assert back.generator_steps == 3 and not back.is_adversarial_step()
    assert repr(back.mixer) == repr(model.mixer) and back.hparams.adversarial_interval == 2


# ------------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"mixer": "automix"}, "AdAutoMix's generator"),
        ({"mix_block": "samix"}, "AdAutoMix's generator"),
        ({"pairing_scope": "global"}, "pairing_scope"),
        ({"mask_loss_weight": 0.1}, "mask_loss_weight"),
        ({"block_loss_prob": 0.5}, "block_loss_prob"),
        ({"block_loss_prob": True}, "block_loss_prob"),
        ({"adversarial_interval": 0}, "adversarial_interval"),
        ({"mixup_ratio": 1.5}, "mixup_ratio"),
        ({"generator_loss_weight": -1.0}, "generator_loss_weight"),
        ({"mixer_kwargs": {"num_sources": 1}}, "num_sources"),
        ({"mixer_kwargs": {"cosine_sign": "minus"}}, "cosine_sign"),
        ({"mixer_kwargs": {"adversarial_weight": 1.5}}, "adversarial_weight"),
    ],
)
def test_bad_arguments_are_refused_naming_them(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        AdAutoMixClassifier(**TINY, num_classes=4, in_chans=1, **kwargs)


def test_other_trainers_refuse_the_generator():
    with pytest.raises(ValueError, match="AdAutoMixClassifier"):
        MixClassifier(**TINY, num_classes=4, in_chans=1, mixer="adautomix")
    with pytest.raises(ValueError, match="AdAutoMixClassifier"):  # refused when built, not at its first step
        AutoMixClassifier(**TINY, num_classes=4, in_chans=1, mix_block="adautomix")
    assert AdAutoMixClassifier(**TINY, num_classes=4, in_chans=1, mixer="adautomix").hparams.mixer == "adautomix"


def test_a_model_that_is_not_a_network_is_named():
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        AdAutoMix()(torch.randn(4, 3, 16, 16), torch.arange(4), model="resnet")
