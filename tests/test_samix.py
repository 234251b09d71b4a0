"""SAMix: the Mix Block's SAMix configuration against direct computations, trained by the AutoMix pipeline."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_automix import assert_gradient_routing, batch, pair_targets, soft_ce, tiny_model
from torch import nn

import openmix
from openmix.cli import run_lightning
from openmix.lightning import AutoMixClassifier
from openmix.mixers.automix import AutoMix
from openmix.mixers.samix import SAMix, eta_balanced_cross_entropy, rescale_lam

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_samix(**kwargs) -> AutoMixClassifier:
    return tiny_model("samix", **kwargs)


# ------------------------------------------------------------------------------------------------- registration
def test_samix_is_a_mix_block_trained_by_the_automix_pipeline():
    entry = openmix.get_mixer_entry("samix")
    assert issubclass(entry.cls, AutoMix) and entry.learned
    assert entry.cls.trained_by == AutoMix.trained_by == "openmix.lightning.AutoMixClassifier"
    assert "2111.15454" in entry.url
    model = tiny_samix()
    assert type(model.mixer) is SAMix and model.hparams.mixer == "samix"
    assert type(AutoMixClassifier(**dict(model.hparams)).mixer) is SAMix  # a checkpoint's hparams rebuild it


def test_defaults_are_the_authors_cifar_samix_config():
    """configs/classification/cifar100/samix/basic/r18_l2_a2_bili_val_dp0_mul_x_cat_L1_var_01_mlr5e_2.py."""
    defaults = openmix.get_mixer_entry("samix").defaults
    expected = {
        "alpha": 2.0,  # line 18
        "mask_adjust": 0.0,  # line 22
        "lam_margin": 0.08,  # line 23
        "reduction": 2,  # line 34
        "upsampling": "bilinear",  # line 35
        "lam_mul": 1.0,  # line 37 (lam_mul=True)
        "lam_residual": True,  # line 37
        "lam_mul_k": 0.25,  # line 37
        "value_dropout": 0.0,  # line 12
        "x_qk_concat": True,  # line 39
        "mask_loss_mode": "L1+Variance",  # line 41
        "mask_margin": 0.1,  # line 41
        "neg_weight": 0.5,  # line 55
    }
    assert {key: defaults[key] for key in expected} == expected


# --------------------------------------------------------------------------------- the block against the formula
def test_rescaled_lambda_is_the_authors_cubic():
    lam = torch.linspace(0, 1, 11, dtype=torch.float64)
    expected = (4 / 3 * lam**3 - 2 * lam**2 + 1.25 * lam) / (1.25 - 2 / 3)  # k = 0.25, k' = 1.25
    torch.testing.assert_close(rescale_lam(lam, 0.25), expected)
    torch.testing.assert_close(rescale_lam(lam, 0.25)[[0, 5, 10]], torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(rescale_lam(1 - lam, 0.25), 1 - rescale_lam(lam, 0.25))
    assert float((rescale_lam(lam, 10.0) - lam).abs().max()) < 0.02  # a large k leaves lambda nearly unchanged


def direct_partner_mask(mixer: SAMix, features, index, lam, size):
    """The SAMix block written out: lambda scaling (residual or plain), q and k from the concatenated pair (or q from
    sample i and k, through q's weights, from its partner), the value path conv - BN (batch statistics) - ELU -
    conv, scaled dot-product attention, bilinear upsampling, sigmoid."""
    lam_r = rescale_lam(lam.view(-1, 1, 1, 1), mixer.lam_mul_k)
    if mixer.lam_residual:
        own, partner = features * (1 + lam_r), features[index] * (1 + (1 - lam_r))
    else:
        own, partner = features * lam_r, features[index] * (1 - lam_r)
    if mixer.x_qk_concat:
        both = torch.cat([own, partner], dim=1)
        q = F.conv2d(both, mixer.query.weight, mixer.query.bias).flatten(2)  # (B, d, hw)
        k = F.conv2d(both, mixer.key.weight, mixer.key.bias).flatten(2)
    else:
        q = F.conv2d(own, mixer.query.weight, mixer.query.bias).flatten(2)
        k = F.conv2d(partner, mixer.query.weight, mixer.query.bias).flatten(2)
    conv1, norm, _, conv2, _ = mixer.value
    hidden = F.conv2d(partner, conv1.weight)
    mean, var = hidden.mean(dim=(0, 2, 3), keepdim=True), hidden.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    hidden = (hidden - mean) / torch.sqrt(var + norm.eps) * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
    v = F.conv2d(F.elu(hidden), conv2.weight).flatten(2).transpose(1, 2)  # (B, hw, 1)
    attention = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(q.shape[1]), dim=-1)
    logits = (attention @ v).transpose(1, 2).reshape(features.shape[0], 1, *features.shape[-2:])
    return torch.sigmoid(F.interpolate(logits, size=size, mode="bilinear", align_corners=False))


@pytest.mark.parametrize(
    "options", [{}, {"lam_residual": False}, {"x_qk_concat": False}], ids=["defaults", "plain_scaling", "no_concat"]
)
def test_block_is_the_samix_formula(options):
    torch.manual_seed(0)
    mixer = SAMix(extractor=nn.Identity(), in_channels=6, mode="elem", **options)
    with torch.no_grad():  # weights large enough for the attention to matter
        for parameter in mixer.parameters():
            parameter.normal_(std=0.5)
    features = torch.randn(5, 6, 3, 4, generator=torch.Generator().manual_seed(1))
    index, lam = torch.tensor([3, 0, 4, 1, 2]), torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    mask = mixer.partner_mask(features, index, lam, (9, 12))
    expected = direct_partner_mask(mixer, features, index, lam, (9, 12))
    torch.testing.assert_close(mask, expected)
    assert float(expected.detach().std()) > 0.01


def test_lambda_conditions_the_block():
    torch.manual_seed(0)
    mixer = SAMix(extractor=nn.Identity(), in_channels=4, mode="elem")
    features = torch.randn(4, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    index = torch.tensor([1, 0, 3, 2])
    low = mixer.partner_mask(features, index, torch.full((4,), 0.2), (6, 6))
    high = mixer.partner_mask(features, index, torch.full((4,), 0.8), (6, 6))
    assert not torch.allclose(low, high)


# ----------------------------------------------------------------------------------------------- the two losses
def test_l1_plus_variance_mask_loss_is_the_authors():
    """pmix_block.py:369-372 on the partner's mask m: max(|1 - mean(m) - lam| - margin, 0) - 2 sum((m - mean(m))^2)
    / (n h w), the means over the whole batch."""
    mixer = SAMix(extractor=nn.Identity())
    own = torch.rand(4, 1, 5, 5, generator=torch.Generator().manual_seed(2))
    partner = 1 - own
    lam = 0.8
    mean = partner.sum() / (4 * 5 * 5)
    expected = (1 - mean - lam).abs().sub(0.1).clamp(min=0) - 2 * ((partner - mean) ** 2).sum() / (4 * 5 * 5)
    torch.testing.assert_close(mixer.mask_loss(own, torch.full((4,), lam)), expected)
    binary = (own > 0.5).float()  # a 0/1 mask has more variance: a lower loss at the same mean
    assert float(mixer.mask_loss(binary, torch.full((4,), 0.5))) < float(mixer.mask_loss(own, torch.full((4,), 0.5)))


def eta_formula(logits: torch.Tensor, y_a, y_b, lam: torch.Tensor, eta: float) -> torch.Tensor:
    """Per sample: p = softmax(z), P = the probability of the pair's classes; the local cross entropy between the
    pair's classes renormalised, plus eta times -log P (the push away from every other class)."""
    p = logits.softmax(dim=-1)
    rows = []
    for i in range(logits.shape[0]):
        a, b, weight = int(y_a[i]), int(y_b[i]), float(lam[i])
        pair_mass = p[i, a] + (p[i, b] if b != a else 0)
        local = -weight * torch.log(p[i, a] / pair_mass) - (1 - weight) * torch.log(p[i, b] / pair_mass)
        rows.append(local - eta * torch.log(pair_mass))
    return torch.stack(rows).mean()


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_eta_balanced_cross_entropy_is_its_formula(eta):
    logits = torch.randn(5, 6, generator=torch.Generator().manual_seed(3), requires_grad=True)
    y_a, y_b = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([5, 2, 2, 0, 1])  # row 2: a pair of one class
    lam = torch.tensor([0.3, 0.5, 0.9, 0.7, 0.1])
    targets = lam.view(-1, 1) * F.one_hot(y_a, 6) + (1 - lam.view(-1, 1)) * F.one_hot(y_b, 6)
    loss = eta_balanced_cross_entropy(logits, targets, eta)
    torch.testing.assert_close(loss, eta_formula(logits, y_a, y_b, lam, eta))
    if eta == 1.0:  # the plain soft cross entropy
        torch.testing.assert_close(loss, soft_ce(logits, targets))
    (gradient,) = torch.autograd.grad(loss, logits)
    outside = targets == 0
    if eta == 0.0:  # nothing pushes the other classes away
        assert float(gradient[outside].abs().max()) < 1e-7
    else:  # lowering any class outside the pair lowers the loss
        assert bool((gradient[outside] > 0).all())


def test_block_loss_is_the_eta_cross_entropy_on_the_sampled_lambda():
    model = tiny_samix(mixer_kwargs={"neg_weight": 0.25})
    x, y = batch()
    model.reseed_mixing(0)
    block_loss, _, block = model.block_losses(x, y, lam=0.3)
    torch.testing.assert_close(block.target_lam, torch.full((8,), 0.3))
    expected = eta_formula(model.ema_network(block.x), y, y[block.index], block.target_lam, 0.25)
    torch.testing.assert_close(block_loss, expected)
    torch.testing.assert_close(block.x, block.mask * x + (1 - block.mask) * x[block.index])
    # the classifier's mix: its objective, its sampled lambda
    loss, mixed_logits, online = model.online_losses(x, y)
    torch.testing.assert_close(online.x, online.mask * x + (1 - online.mask) * x[online.index])
    expected = soft_ce(mixed_logits, pair_targets(y, online.index, online.target_lam)) + F.cross_entropy(model(x), y)
    torch.testing.assert_close(loss, expected)


def test_each_loss_trains_exactly_what_the_paper_trains_with_it():
    assert_gradient_routing(tiny_samix())


def test_samix_block_is_trained_within_the_margin():
    model = tiny_samix()
    x, y = batch()
    block_loss, mask_loss, block = model.block_losses(x, y, lam=0.03)
    assert block.mask.requires_grad
    grads = torch.autograd.grad(block_loss + mask_loss, list(model.mixer.parameters()))
    assert all(bool(g.abs().sum() > 0) for g in grads)


def test_mask_adjust_gives_the_classifier_masks_of_mean_lambda():
    model = tiny_samix(mixer_kwargs={"mask_adjust": 1.0})
    x, y = batch()
    online = model.draw(x, y, model.batch_features(x), "classifier", lam=0.35)
    torch.testing.assert_close(online.lam, torch.full((8,), 0.35))
    torch.testing.assert_close(online.x, online.mask * x + (1 - online.mask) * x[online.index])


def test_global_pairing_on_one_process_is_local_pairing():
    x, y = batch()
    losses = [tiny_samix(pairing_scope=scope).training_step((x, y), 2) for scope in ("local", "global")]
    torch.testing.assert_close(losses[0], losses[1])


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"lam_mul": 2.0}, "lam_mul"),
        ({"lam_mul_k": -1.0}, "lam_mul_k"),
        ({"lam_mul_k": 11.0}, "lam_mul_k"),
        ({"value_hidden": 0}, "value_hidden"),
        ({"value_dropout": 1.0}, "value_dropout"),
        ({"neg_weight": 1.5}, "neg_weight"),
        ({"x_qk_concat": "yes"}, "x_qk_concat"),
        ({"mask_loss_mode": "L2+Variance"}, "mask_loss_mode"),
    ],
)
def test_samix_rejects_bad_arguments(kwargs, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        openmix.create_mixer("samix", **kwargs)


# ---------------------------------------------------------------------------------------------------- the configs
def built_model(*configs: str, extra: tuple[str, ...] = ()) -> AutoMixClassifier:
    args = [arg for name in configs for arg in ("--config", str(CONFIGS / name))]
    tiny = ("--model.init_args.backbone=resnet10t", "--model.init_args.backbone_kwargs={channels: [8, 8, 8, 8]}")
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        return run_lightning([*args, *tiny, *extra, "--trainer.logger=false"], run=False).model
    finally:
        sys.argv = argv


def test_cifar_config_follows_the_authors_recipe():
    model = built_model("data/cifar100.yaml", "model/cifar_resnet18.yaml", "mixers/cifar/samix.yaml")
    mixer = model.mixer
    assert type(mixer) is SAMix and (mixer.lam_mul_k, mixer.mask_adjust, mixer.neg_weight) == (0.25, 0.25, 0.5)
    assert mixer.upsampling == "bilinear" and mixer.mask_loss_mode == "L1+Variance" and mixer.x_qk_concat
    assert (model.hparams.momentum, model.hparams.momentum_end, model.hparams.momentum_hold) == (0.999, 0.999999, 0.1)
    assert model.hparams.mask_loss_weight == 0.1
    scheduler = model.scheduler_factory(model.optimizer_factory(model.parameters()))
    assert (scheduler.min_lr, scheduler.warmup_epochs) == (0.05, 0)


def test_imagenet_and_fashion_mnist_configs_build_samix():
    imagenet = built_model("mixers/imagenet/samix.yaml")
    assert type(imagenet.mixer) is SAMix and imagenet.mixer.lam_mul_k is None and imagenet.mixer.neg_weight == 1.0
    assert imagenet.mixer.value_dropout == 0.1 and imagenet.hparams.momentum_end == 0.99999
    fmnist = built_model("model/resnet_tiny_fmnist.yaml", "mixers/fashion_mnist/samix.yaml")
    assert type(fmnist.mixer) is SAMix and fmnist.hparams.mix_block_lr == 1.0
