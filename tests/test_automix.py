"""AutoMix: the Mix Block and its momentum pipeline, against direct computations of the published method (the
paper, and the authors' code Westlake-AI/openmixup where it is more precise)."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import openmix
from openmix.lightning import AutoMixClassifier, MixClassifier
from openmix.mixers.automix import AutoMix, adjust_to_lam

TINY = {"backbone": "resnet10t", "backbone_kwargs": {"channels": (8, 8, 16, 16), "stem_width": 8}, "cifar_stem": True}
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def tiny_model(mix_block: str = "automix", **kwargs) -> AutoMixClassifier:
    torch.manual_seed(0)
    model = AutoMixClassifier(**{**TINY, "num_classes": 4, "in_chans": 1, "mix_block": mix_block, **kwargs})
    return model.train()


def tiny_automix(**kwargs) -> AutoMixClassifier:
    return tiny_model("automix", **kwargs)


def batch(n: int = 8, size: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, size, size, generator=generator), torch.arange(n) % 4


def soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * logits.float().log_softmax(dim=-1)).sum(dim=1).mean()


def pair_targets(y: torch.Tensor, index: torch.Tensor, lam: torch.Tensor, classes: int = 4) -> torch.Tensor:
    lam = lam.view(-1, 1)
    return lam * F.one_hot(y, classes) + (1 - lam) * F.one_hot(y[index], classes)


# ------------------------------------------------------------------------------- which loss trains which network
def loss_terms(model: AutoMixClassifier, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four loss terms of one step, from the step's own two draws (the block's at lambda 0.2, so that the mask
    loss is not inside its margin at the untrained block's masks of about 1/2)."""
    model.reseed_mixing(0)
    features = model.mixing_features(model.batch_features(x))
    block_loss, mask_loss, _ = model.block_losses(x, y, features, lam=0.2)
    online_loss, mixed_logits, online = model.online_losses(x, y, features)
    mixed = model.objective(mixed_logits, online)
    clean = model.clean_loss(model(x), y)
    torch.testing.assert_close(online_loss, mixed + clean)  # the online loss is exactly these two terms
    return {"block": block_loss, "mask": mask_loss, "mixed": mixed, "clean": clean}


def assert_gradient_routing(model: AutoMixClassifier) -> None:
    """The Mix Block learns from its block loss and its mask loss only, the online network from its own mixed and
    clean losses only, the momentum network from none (torch.autograd.grad per term)."""
    x, y = batch()
    block = [p for p in model.mixer.parameters()]
    online = [p for p in model.network.parameters()]
    assert block and not any(p.requires_grad for p in model.ema_network.parameters())
    terms = loss_terms(model, x, y)
    for name, loss in terms.items():
        grads = torch.autograd.grad(loss, block + online, retain_graph=True, allow_unused=True)
        to_block, to_online = grads[: len(block)], grads[len(block) :]
        if name in ("block", "mask"):
            assert all(g is None for g in to_online), f"the {name} loss must not reach the online network"
            reached = [g is not None and bool(g.abs().sum() > 0) for g in to_block]
            assert all(reached) if name == "block" else any(reached), f"the {name} loss must train the block"
        else:
            assert all(g is None for g in to_block), f"the online {name} loss must not train the block"
            assert all(g is not None for g in to_online), f"the online {name} loss must reach every online weight"
    sum(terms.values()).backward()
    assert all(p.grad is None for p in model.ema_network.parameters()), "the momentum network learns from no loss"
    assert all(p.grad is not None for p in block + online)


def test_each_loss_trains_exactly_what_the_paper_trains_with_it():
    assert_gradient_routing(tiny_automix())


def test_training_step_combines_the_four_losses():
    model = tiny_automix(mask_loss_weight=0.3, clean_loss_weight=0.5)
    x, y = batch()
    loss = model.training_step((x, y), 0)
    assert model.should_mix(0)  # the same batch draws the same mix decision and two pairs again
    features = model.batch_features(x)
    block_loss, mask_loss, _ = model.block_losses(x, y, features)
    online_loss, _, _ = model.online_losses(x, y, features)
    torch.testing.assert_close(loss, online_loss + block_loss + 0.3 * mask_loss)


# ------------------------------------------------------------------------------------ what is mixed, how labelled
def test_both_draws_mix_pixels_and_labels_consistently_and_the_losses_read_the_sampled_lambda():
    model = tiny_automix(mixer_kwargs={"lam_margin": 0.0})
    x, y = batch()
    model.reseed_mixing(0)
    block_loss, _, block = model.block_losses(x, y, lam=0.3)
    for mix in (block,):
        expected = mix.mask * x + (1 - mix.mask) * x[mix.index]
        torch.testing.assert_close(mix.x, expected)
        torch.testing.assert_close(mix.lam, mix.mask.detach().mean(dim=(1, 2, 3)))  # the pixel share
        torch.testing.assert_close(mix.target_lam, torch.full((8,), 0.3))  # the label weight: the sampled lambda
    direct = soft_ce(model.ema_network(block.x), pair_targets(y, block.index, block.target_lam))
    torch.testing.assert_close(block_loss, direct)  # the block's loss uses the label weight the output reports
    loss, mixed_logits, online = model.online_losses(x, y)
    torch.testing.assert_close(online.x, online.mask * x + (1 - online.mask) * x[online.index])
    assert not online.x.requires_grad and not online.mask.requires_grad  # the classifier gets no path to the block
    assert not torch.allclose(online.lam, online.target_lam)  # a learned mask's mean is not lambda
    expected = soft_ce(mixed_logits, pair_targets(y, online.index, online.target_lam)) + F.cross_entropy(model(x), y)
    torch.testing.assert_close(loss, expected)


# ------------------------------------------------------------------------------------------------- the block
def test_block_is_the_papers_formula():
    """q = W_q [z_i; lambda], k = W_q [z_j; 1 - lambda], v = W_v [z_j; 1 - lambda], m_j = sigmoid(nearest
    upsampling of softmax(q^T k / sqrt(d)) v); the classifier's mix keeps 1 - m_j of sample i."""
    torch.manual_seed(0)
    mixer = AutoMix(extractor=nn.Identity(), in_channels=6, mode="elem", lam_margin=0.0)
    with torch.no_grad():
        for parameter in mixer.parameters():
            parameter.normal_(std=0.5)
    features = torch.randn(4, 6, 2, 3, generator=torch.Generator().manual_seed(1))
    index, lam = torch.tensor([2, 0, 3, 1]), torch.tensor([0.2, 0.4, 0.6, 0.8])
    share = lam.view(-1, 1, 1, 1).expand(-1, 1, 2, 3)
    own, partner = torch.cat([features, share], dim=1), torch.cat([features[index], 1 - share], dim=1)
    q = F.conv2d(own, mixer.query.weight, mixer.query.bias).flatten(2)
    k = F.conv2d(partner, mixer.query.weight, mixer.query.bias).flatten(2)
    v = F.conv2d(partner, mixer.value.weight, mixer.value.bias).flatten(2).transpose(1, 2)
    logits = (torch.softmax(q.transpose(1, 2) @ k / math.sqrt(q.shape[1]), dim=-1) @ v).transpose(1, 2)
    expected = torch.sigmoid(logits.reshape(4, 1, 2, 3).repeat_interleave(4, dim=2).repeat_interleave(4, dim=3))
    torch.testing.assert_close(mixer.partner_mask(features, index, lam, (8, 12)), expected)
    x, y = torch.randn(4, 1, 8, 12, generator=torch.Generator().manual_seed(4)), torch.arange(4)
    out = mixer(x, y, lam=lam, features=features, generator=torch.Generator().manual_seed(0))
    expected = 1 - mixer.partner_mask(features, out.index, lam, (8, 12))
    torch.testing.assert_close(out.mask, expected)


# ------------------------------------------------------------------------------------------------- the mask loss
def test_mask_loss_is_the_hinge_on_the_batch_mean_by_default():
    """pmix_block.py:361-365: m_mean = mask.sum() / (n h w) over the batch, loss = max(|1 - m_mean - lam| - margin,
    0), with the partner's mask m (the second channel)."""
    mixer = AutoMix(extractor=nn.Identity(), mask_margin=0.1)
    own = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.3  # means near 0.15
    lam = torch.full((3,), 0.6)
    partner = 1 - own
    expected = (1 - partner.sum() / (3 * 4 * 4) - 0.6).abs().sub(0.1).clamp(min=0)
    torch.testing.assert_close(mixer.mask_loss(own, lam), expected)
    # the batch mean can sit on lambda while no single mask does: no loss, unlike the per-sample form
    halves = torch.stack([torch.full((1, 4, 4), 0.2), torch.full((1, 4, 4), 0.8)])
    assert float(mixer.mask_loss(halves, torch.full((2,), 0.5))) == 0.0
    per_sample = AutoMix(extractor=nn.Identity(), mask_margin=0.1, mask_loss_reduction="sample")
    torch.testing.assert_close(per_sample.mask_loss(halves, torch.full((2,), 0.5)), torch.tensor(0.2))


def test_mask_loss_per_sample_option_and_binary_term():
    mixer = AutoMix(extractor=nn.Identity(), mask_margin=0.1, binary_weight=0.5, mask_loss_reduction="sample")
    mask = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0.2, 0.5, 0.9])
    share = mask.mean(dim=(1, 2, 3))
    expected = (share - target).abs().sub(0.1).clamp(min=0).mean() + 0.5 * 4 * (mask * (1 - mask)).mean()
    torch.testing.assert_close(mixer.mask_loss(mask, target), expected)


# ------------------------------------------------------------------------- lambda near 0 or 1: the lam_margin
def test_the_block_is_trained_within_the_margin_and_the_classifier_gets_plain_mixup():
    """classifiers/automix.py:548-551: only the classifier's mask becomes the constant lambda near 0 or 1; the
    block's own draw keeps its learned mask, so its losses train it on every lambda."""
    model = tiny_automix()
    x, y = batch()
    model.reseed_mixing(0)
    block_loss, mask_loss, block = model.block_losses(x, y, lam=0.05)
    assert block.mask.requires_grad and not torch.allclose(block.mask.detach(), torch.full_like(block.mask, 0.05))
    grads = torch.autograd.grad(block_loss + mask_loss, list(model.mixer.parameters()))
    assert all(bool(g.abs().sum() > 0) for g in grads)
    classifier = model.draw(x, y, model.batch_features(x), "classifier", lam=0.05)
    assert torch.all(classifier.mask == 0.05)
    skipping = tiny_automix(mixer_kwargs={"margin_skips_block": True})  # openmix's earlier behaviour, as an option
    _, _, block = skipping.block_losses(x, y, lam=0.05)
    assert torch.all(block.mask == 0.05) and not block.mask.requires_grad


def test_lambda_near_zero_or_one_falls_back_to_plain_mixup_per_sample():
    mixer = openmix.create_mixer("automix", extractor=nn.Conv2d(1, 4, 3, stride=2, padding=1), mode="elem")
    x, y = batch(4)
    out = mixer(x, y, lam=torch.tensor([0.05, 0.5, 0.95, 0.3]))
    assert torch.all(out.mask[0] == 0.05) and torch.all(out.mask[2] == 0.95)
    assert out.mask[1].std() > 0 and out.mask[3].std() > 0  # learned masks elsewhere
    torch.testing.assert_close(out.lam[[0, 2]], torch.tensor([0.05, 0.95]))
    block = mixer(x, y, lam=torch.tensor([0.05, 0.5, 0.95, 0.3]), draw="block")  # the block's own draw: learned
    assert not torch.allclose(block.mask[[0, 2]].detach(), out.mask[[0, 2]]) and block.mask.requires_grad


# ----------------------------------------------------------------------------------------------- mask_adjust
def authors_adjust(mask: torch.Tensor, lam: float) -> torch.Tensor:
    """The authors' in-place version (classifiers/automix.py:533-547) on a (N, 2, H, W) own/partner mask."""
    mask_bb = torch.cat([mask, 1 - mask], dim=1).clone()
    eps = 1e-8
    _mask = mask_bb[:, 0].clamp(min=eps, max=1 - eps)
    mean = _mask.mean(dim=[1, 2])
    larger, smaller = mean > lam + eps, mean < lam - eps
    mask_bb[larger, 0] = _mask[larger] * (lam / mean[larger].view(-1, 1, 1))
    mask_bb[larger, 1] = 1 - mask_bb[larger, 0]
    mask_bb[smaller, 1] = (1 - _mask[smaller]) * ((1 - lam) / (1 - mean[smaller].view(-1, 1, 1)))
    mask_bb[smaller, 0] = 1 - mask_bb[smaller, 1]
    return mask_bb[:, :1]


def test_mask_adjust_rescales_the_classifier_mask_to_lambda_as_the_authors_do():
    mask = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    mask[0] = 0.4  # already at lambda: kept
    adjusted = adjust_to_lam(mask, torch.full((4,), 0.4))
    torch.testing.assert_close(adjusted, authors_adjust(mask, 0.4))
    torch.testing.assert_close(adjusted.mean(dim=(1, 2, 3)), torch.full((4,), 0.4))
    mixer = openmix.create_mixer("automix", extractor=nn.Conv2d(1, 4, 3, padding=1), mask_adjust=1.0)
    x, y = batch(4)
    out = mixer(x, y, lam=0.3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.lam, torch.full((4,), 0.3))  # pixel share == label weight == lambda
    torch.testing.assert_close(out.target_lam, torch.full((4,), 0.3))
    block = mixer(x, y, lam=0.3, draw="block", generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(block.lam, torch.full((4,), 0.3))  # the block's own draw is never adjusted


# ---------------------------------------------------------------------- the momentum network and its schedule
@pytest.mark.parametrize("momentum_bn", ["eval", "train"])
def test_ema_update_is_exact(momentum_bn):
    model = tiny_automix(momentum_bn=momentum_bn)
    with torch.no_grad():
        for parameter in model.network.parameters():
            parameter.add_(torch.randn_like(parameter))
    before = [p.clone() for p in model.ema_network.parameters()]
    online = [p.clone() for p in model.network.parameters()]
    model.update_ema(0.9)
    for ema, old, new in zip(model.ema_network.parameters(), before, online):
        torch.testing.assert_close(ema, 0.9 * old + 0.1 * new, rtol=0, atol=1e-6)
    model.network(torch.randn(4, 1, 16, 16))  # moves the online network's batch-norm statistics
    ema_before = [b.clone() for b in model.ema_network.buffers()]
    model.update_ema(0.9)
    for ema_buffer, old, buffer in zip(model.ema_network.buffers(), ema_before, model.network.buffers()):
        # "eval": the online statistics are copied; "train" (the authors'): the momentum network keeps its own
        assert torch.equal(ema_buffer, buffer if momentum_bn == "eval" else old)
    assert model.ema_network.training == (momentum_bn == "train")  # the authors' backbone_k runs in train mode


def test_momentum_is_held_then_rises_on_the_authors_cosine():
    """CosineScheduleHook(adjust_scope=[0.1, 1.0], warming_up="constant"): the base momentum for the first 10% of
    the iterations, then end - (end - base) (cos(pi k / K) + 1) / 2 with k counted from the start."""
    model = tiny_automix(momentum=0.99, momentum_end=0.999999)

    class Fixed:  # the schedule reads the run's length from the trainer
        estimated_stepping_batches = 100

    def cosine(k: int) -> float:
        return 0.999999 - (0.999999 - 0.99) * (math.cos(math.pi * k / 100) + 1) / 2

    model._trainer = Fixed()
    assert [model.momentum_at(k) for k in (0, 5, 9)] == [0.99] * 3
    assert model.momentum_at(10) == pytest.approx(cosine(10)) and cosine(10) > 0.99
    assert model.momentum_at(50) == pytest.approx((0.99 + 0.999999) / 2)
    assert model.momentum_at(100) == pytest.approx(0.999999)
    unheld = tiny_automix(momentum=0.99, momentum_end=0.999999, momentum_hold=0.0)
    unheld._trainer = Fixed()
    assert unheld.momentum_at(5) == pytest.approx(cosine(5))
    model._trainer = unheld._trainer = None


# ------------------------------------------------------------------------------------------- cost of one step
def first_conv(network: nn.Module) -> nn.Module:
    return next(module for module in network.modules() if isinstance(module, nn.Conv2d))


@pytest.mark.parametrize("clean_forward", ["separate", "joint"])
def test_one_step_runs_each_network_only_as_often_as_the_method_needs(clean_forward):
    """The momentum network: one feature pass of the clean batch (stopped after the Mix Block's stage: its
    classifier never runs) shared by both draws, one full pass of the block's mix. The online network: the clean
    batch and the classifier's mix, in two passes (the authors' forward_q) or one."""
    model = tiny_automix(clean_forward=clean_forward)
    seen: dict[str, list] = {"ema": [], "ema_head": [], "online": []}
    first_conv(model.ema_network).register_forward_hook(lambda m, args, out: seen["ema"].append(args[0].shape[0]))
    model.ema_network.get_classifier().register_forward_hook(lambda m, a, o: seen["ema_head"].append(1))
    model.network.register_forward_pre_hook(lambda m, args: seen["online"].append(args[0].detach().clone()))
    x, y = batch()
    model.training_step((x, y), 0)
    assert seen["ema"] == [8, 8] and seen["ema_head"] == [1]
    if clean_forward == "separate":
        assert [inputs.shape[0] for inputs in seen["online"]] == [8, 8] and torch.equal(seen["online"][0], x)
    else:
        assert [inputs.shape[0] for inputs in seen["online"]] == [16] and torch.equal(seen["online"][0][:8], x)


def test_block_loss_prob_skips_only_the_momentum_pass_on_its_share_of_steps():
    """block_loss_prob (the authors' switch_off): on a skipped step the momentum network runs its feature pass only,
    the loss is the online loss plus the mask loss, and the block still learns from the mask loss; the skip draws
    come from their own stream (the mixes are those of block_loss_prob=1), the same on every rank."""
    x, y = batch()
    always, never = tiny_automix(mask_loss_weight=0.3), tiny_automix(mask_loss_weight=0.3, block_loss_prob=0.0)
    seen: list[int] = []
    first_conv(never.ema_network).register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    loss = never.training_step((x, y), 0)
    assert seen == [8], "a skipped step runs the momentum network for the features only"
    loss.backward()
    assert all(p.grad is not None for p in never.mixer.parameters()), "the mask loss still reaches the block"
    assert never.should_mix(0)
    features = never.batch_features(x)
    block_loss, mask_loss, _ = never.block_losses(x, y, features, with_block_loss=False)
    assert block_loss is None
    online_loss, _, _ = never.online_losses(x, y, features)
    torch.testing.assert_close(loss, online_loss + 0.3 * mask_loss)
    # a skipped step trains the online network on the mix block_loss_prob=1 would draw (the block's draw still runs)
    half = tiny_automix(block_loss_prob=0.5)
    step = next(index for index in range(50) if not half.trains_block_loss(index))
    mixes = []
    for model in (always, half):
        inputs: list[torch.Tensor] = []
        model.network.register_forward_pre_hook(lambda m, args, inputs=inputs: inputs.append(args[0].detach()))
        model.training_step((x, y), step)
        mixes.append(inputs[-1])  # the classifier's mix (after the clean batch)
    torch.testing.assert_close(mixes[0], mixes[1])
    # the share of steps that run it: binomial(400, 0.3) lies within 4.5 standard deviations of 120 (p < 1e-5)
    model = tiny_automix(block_loss_prob=0.3)
    runs = [model.trains_block_loss(index) for index in range(400)]
    assert abs(sum(runs) - 120) < 4.5 * math.sqrt(400 * 0.3 * 0.7)
    assert runs == [model.trains_block_loss(index) for index in range(400)], "a batch's draw is fixed"
    assert tiny_automix(block_loss_prob=np.float32(0.3)).hparams.block_loss_prob == pytest.approx(0.3)
    with pytest.raises(TypeError, match="block_loss_prob"):
        tiny_automix(block_loss_prob=True)


def test_separate_clean_forward_normalises_the_clean_and_the_mixed_batch_apart():
    x, y = batch()
    losses = {}
    for mode in ("separate", "joint"):
        model = tiny_automix(clean_forward=mode)
        model.reseed_mixing(0)
        losses[mode] = model.online_losses(x, y)[0]
    assert not torch.allclose(losses["separate"], losses["joint"])  # batch norm's statistics differ


# ------------------------------------------------------------------------------------------- global pairing
def test_global_pairing_on_one_process_is_local_pairing():
    x, y = batch()
    losses = [tiny_automix(pairing_scope=scope).training_step((x, y), 3) for scope in ("local", "global")]
    torch.testing.assert_close(losses[0], losses[1])


class FakeWorld:
    """Two ranks of a process group stood in for: this rank's tensors and the other rank's (by shape)."""

    def __init__(self, rank: int, others: dict[tuple, torch.Tensor]):
        self.rank, self.others = rank, others

    def all_gather(self, outputs: list, tensor: torch.Tensor) -> None:
        other = tensor.clone() if tensor.shape == (1,) else self.others[tuple(tensor.shape)]
        pair = [tensor, other] if self.rank == 0 else [other, tensor]
        for out, value in zip(outputs, pair):
            out.copy_(value)

    def install(self, monkeypatch) -> None:
        import torch.distributed as dist

        monkeypatch.setattr(dist, "is_available", lambda: True)
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
        monkeypatch.setattr(dist, "get_rank", lambda group=None: self.rank)
        monkeypatch.setattr(dist, "all_gather", self.all_gather)


@pytest.mark.parametrize("rank", [0, 1])
def test_global_pairing_draws_partners_and_features_from_every_rank(monkeypatch, rank):
    """Without a process group: a stand-in 2-rank world. The Mix Block sees every rank's features in rank order,
    the mask of this rank's samples is the global one's slice, and pixels and labels follow the global partners."""
    model = tiny_automix(pairing_scope="global", mixer_kwargs={"mode": "elem", "lam_margin": 0.0})
    x, y = batch(6, seed=1)
    x_other, y_other = batch(6, seed=2)
    y_other = y_other.flip(0)
    features, features_other = model.batch_features(x), model.batch_features(x_other)
    FakeWorld(rank, {(6, 1, 16, 16): x_other, (6,): y_other, tuple(features.shape): features_other}).install(
        monkeypatch
    )
    seen = []
    partner_mask = model.mixer.partner_mask
    model.mixer.partner_mask = lambda f, *args: seen.append(f) or partner_mask(f, *args)
    model.reseed_mixing(0)
    block_loss, mask_loss, block = model.block_losses(x, y)
    mine = slice(0, 6) if rank == 0 else slice(6, 12)
    x_all = torch.cat([x, x_other] if rank == 0 else [x_other, x])
    y_all = torch.cat([y, y_other] if rank == 0 else [y_other, y])
    features_all = torch.cat([features, features_other] if rank == 0 else [features_other, features])
    torch.testing.assert_close(seen[0], features_all)
    torch.testing.assert_close(block.x, block.mask * x + (1 - block.mask) * x_all[block.index])
    assert torch.equal(block.y_b, y_all[block.index]) and int(block.index.max()) < 12
    model.reseed_mixing(0)  # the same draws on the global batch in one process: this rank's rows of them
    monkeypatch.undo()
    whole = model.mixer(x_all, y_all, generator=model.mixing_generator, features=features_all, draw="block")
    torch.testing.assert_close(block.mask, whole.mask[mine])
    torch.testing.assert_close(block.target_lam, whole.target_lam[mine])
    grads = torch.autograd.grad(block_loss + mask_loss, list(model.mixer.parameters()))
    assert all(bool(g.abs().sum() > 0) for g in grads)


# ------------------------------------------------------------------------------------- construction and options
def test_the_plain_classifier_refuses_a_learned_mixer():
    with pytest.raises(ValueError, match="AutoMixClassifier"):
        MixClassifier(**TINY, num_classes=4, in_chans=1, mixer="automix")
    with pytest.raises(ValueError, match="trains a Mix Block"):
        AutoMixClassifier(**TINY, num_classes=4, in_chans=1, mixer="mixup")
    assert AutoMixClassifier(**TINY, num_classes=4, in_chans=1, mixer="automix").hparams.mixer == "automix"
    with pytest.raises(ValueError, match="disagree"):
        AutoMixClassifier(**TINY, num_classes=4, in_chans=1, mix_block="samix", mixer="automix")


def test_a_checkpoints_hparams_rebuild_the_same_model():
    model = tiny_automix(mixer_kwargs={"alpha": 1.5}, momentum_hold=0.2)
    again = AutoMixClassifier(**dict(model.hparams))
    assert repr(again.mixer) == repr(model.mixer) and again.hparams.momentum_hold == 0.2


def test_mix_block_has_its_own_learning_rate():
    model = tiny_automix(mix_block_lr=0.7)
    groups = model.parameter_groups()
    assert groups[1]["lr"] == 0.7 and len(groups[1]["params"]) == len(list(model.mixer.parameters()))


def test_one_step_on_the_mask_loss_moves_the_batch_mean_towards_lambda():
    """The published (batch-mean) mask loss: a gradient step on it alone brings the batch's mean share closer to
    lambda, from either side."""
    x, y = batch()
    for lam in (0.2, 0.8):
        model = tiny_automix(mixer_kwargs={"mask_margin": 0.0})
        optimizer = torch.optim.SGD(model.mixer.parameters(), lr=50.0)
        model.reseed_mixing(0)
        _, mask_loss, block = model.block_losses(x, y, lam=lam)
        before = abs(float(block.mask.detach().mean()) - lam)
        mask_loss.backward()
        optimizer.step()
        model.reseed_mixing(0)
        _, _, block = model.block_losses(x, y, lam=lam)
        assert abs(float(block.mask.detach().mean()) - lam) < before - 0.01


@pytest.mark.slow
@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")
def test_mask_mean_tracks_lambda_on_fashion_mnist():
    """With a lambda per sample and the per-sample mask loss (openmix's options), a few dozen steps at the Mix
    Block's own rate of 1 teach the block to keep each mask's mean within the margin of its lambda."""
    from openmix.data import FashionMNISTData

    model = tiny_automix(
        num_classes=10,
        mix_block_lr=1.0,
        mask_loss_weight=1.0,
        mixer_kwargs={"mode": "elem", "mask_loss_reduction": "sample"},
    )
    gaps = []
    loss_of = model.mixer.mask_loss

    def recording(mask, target):
        gaps.append((mask.detach().mean(dim=(1, 2, 3)) - target).abs())
        return loss_of(mask, target)

    model.mixer.mask_loss = recording
    data = FashionMNISTData(limit_train=64 * 60, limit_val=64, batch_size=64, augment=False)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, data)
    assert len(gaps) == 60
    first, last = torch.cat(gaps[:5]), torch.cat(gaps[-10:])
    margin = model.mixer.mask_margin
    assert (first <= margin).float().mean() < 0.6, "the untrained block should not already track lambda"
    assert (last <= margin + 0.02).float().mean() > 0.9


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"momentum": 0.9999, "momentum_end": 0.999}, "momentum"),
        ({"momentum": 1.5, "momentum_end": 1.5}, "momentum"),
        ({"momentum_hold": 1.0}, "momentum_hold"),
        ({"mask_loss_weight": -1.0}, "mask_loss_weight"),
        ({"clean_forward": "both"}, "clean_forward"),
        ({"block_loss_prob": 1.5}, "block_loss_prob"),
        ({"mix_block": "cutmix"}, "trains a Mix Block"),
    ],
)
def test_automix_classifier_rejects_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        tiny_model(**kwargs)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"reduction": 0}, "reduction"),
        ({"upsampling": "cubic"}, "upsampling"),
        ({"mask_margin": 1.5}, "mask_margin"),
        ({"lam_margin": 0.6}, "lam_margin"),
        ({"binary_weight": -1.0}, "binary_weight"),
        ({"mask_adjust": 1.5}, "mask_adjust"),
        ({"mask_loss_mode": "L2"}, "mask_loss_mode"),
        ({"mask_loss_reduction": "mean"}, "mask_loss_reduction"),
        ({"extractor": "resnet18"}, "extractor must be an nn.Module"),
    ],
)
def test_mix_block_rejects_bad_arguments(kwargs, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        openmix.create_mixer("automix", **kwargs)


def test_mix_block_without_a_network_says_what_it_needs():
    mixer = openmix.create_mixer("automix")
    x, y = batch(4)
    with pytest.raises(ValueError, match="model="):
        mixer(x, y, lam=0.5)
    with pytest.raises(ValueError, match="draw must be one of"):
        mixer(x, y, lam=0.5, model=nn.Conv2d(1, 2, 1), draw="online")
