"""AutoMix: the Mix Block and its momentum pipeline."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch

import openmix
from openmix.lightning import AutoMixClassifier, MixClassifier
from openmix.mixers.automix import AutoMix

TINY = {"backbone": "resnet10t", "backbone_kwargs": {"channels": (8, 8, 16, 16), "stem_width": 8}, "cifar_stem": True}
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def tiny_automix(**kwargs) -> AutoMixClassifier:
    torch.manual_seed(0)
    return AutoMixClassifier(**{**TINY, "num_classes": 4, "in_chans": 1, **kwargs})


def batch(n: int = 8, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, size, size, generator=generator), torch.arange(n) % 4


def test_the_block_learns_from_its_mixed_loss_and_the_online_network_gets_nothing_through_the_mask():
    model = tiny_automix()
    model.train()
    x, y = batch()
    model.reseed_mixing(0)
    block_loss, mask_loss, _ = model.block_losses(x, y)
    block_params = list(model.mixer.parameters())
    online_params = list(model.network.parameters())
    mask_grads = torch.autograd.grad(mask_loss, block_params, retain_graph=True, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in mask_grads), "the mask loss must train the block"
    grads = torch.autograd.grad(block_loss, block_params + online_params, allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads[: len(block_params)]), "block gets no gradient"
    assert all(g is None for g in grads[len(block_params) :]), "the block's loss must not reach the online network"
    assert not any(p.requires_grad for p in model.ema_network.parameters())
    online_loss, _, online = model.online_losses(x, y)
    assert not online.mask.requires_grad and not online.x.requires_grad
    grads = torch.autograd.grad(online_loss, block_params + online_params, allow_unused=True)
    assert all(g is None for g in grads[: len(block_params)]), "the online loss must not train the block"
    assert all(g is not None for g in grads[len(block_params) :])


def test_training_step_combines_the_three_losses():
    model = tiny_automix(mask_loss_weight=0.3, clean_loss_weight=0.5)
    model.train()
    x, y = batch()
    loss = model.training_step((x, y), 0)
    assert model.should_mix(0)  # the same batch draws the same mix decision and two pairs again
    block_loss, mask_loss, _ = model.block_losses(x, y)
    online_loss, _, _ = model.online_losses(x, y)
    torch.testing.assert_close(loss, online_loss + block_loss + 0.3 * mask_loss)


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


def test_momentum_rises_on_a_cosine(tmp_path):
    model = tiny_automix(momentum=0.99, momentum_end=0.999999)

    class Fixed:  # the schedule reads the run's length from the trainer
        estimated_stepping_batches = 100

    model._trainer = Fixed()
    assert model.momentum_at(0) == pytest.approx(0.99)
    assert model.momentum_at(100) == pytest.approx(0.999999)
    assert model.momentum_at(50) == pytest.approx((0.99 + 0.999999) / 2)
    assert model.momentum_at(25) == pytest.approx(0.999999 - (0.999999 - 0.99) * (math.cos(math.pi / 4) + 1) / 2)
    model._trainer = None


def test_lambda_near_zero_or_one_falls_back_to_plain_mixup():
    mixer = openmix.create_mixer("automix", extractor=torch.nn.Conv2d(1, 4, 3, stride=2, padding=1), mode="elem")
    x, y = batch(4)
    out = mixer(x, y, lam=torch.tensor([0.05, 0.5, 0.95, 0.3]))
    assert torch.all(out.mask[0] == 0.05) and torch.all(out.mask[2] == 0.95)
    assert out.mask[1].std() > 0 and out.mask[3].std() > 0  # learned masks elsewhere
    torch.testing.assert_close(out.lam[[0, 2]], torch.tensor([0.05, 0.95]))


def test_mask_loss_formula():
    mixer = AutoMix(extractor=torch.nn.Identity(), mask_margin=0.1, binary_weight=0.5)
    mask = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0.2, 0.5, 0.9])
    share = mask.mean(dim=(1, 2, 3))
    expected = (share - target).abs().sub(0.1).clamp(min=0).mean() + 0.5 * 4 * (mask * (1 - mask)).mean()
    torch.testing.assert_close(mixer.mask_loss(mask, target), expected)


def test_the_plain_classifier_refuses_a_learned_mixer():
    with pytest.raises(ValueError, match="AutoMixClassifier"):
        MixClassifier(**TINY, num_classes=4, in_chans=1, mixer="automix")
    with pytest.raises(ValueError, match="always trains the 'automix'"):
        AutoMixClassifier(**TINY, num_classes=4, in_chans=1, mixer="mixup")
    assert AutoMixClassifier(**TINY, num_classes=4, in_chans=1, mixer="automix").hparams.mixer == "automix"


def test_mix_block_has_its_own_learning_rate():
    model = tiny_automix(mix_block_lr=0.7)
    groups = model.parameter_groups()
    assert groups[1]["lr"] == 0.7 and len(groups[1]["params"]) == len(list(model.mixer.parameters()))


@pytest.mark.slow
@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")
def test_mask_mean_tracks_lambda_on_fashion_mnist():
    """After a few dozen steps the block's masks keep their mean within the margin of the drawn lambda."""
    from openmix.data import FashionMNISTData

    model = tiny_automix(num_classes=10, mix_block_lr=1.0, mask_loss_weight=1.0, mixer_kwargs={"mode": "elem"})
    gaps = []
    loss_of = model.mixer.mask_loss

    def recording(mask, target=None):
        gaps.append((mask.detach().mean(dim=(1, 2, 3)) - model.mixer.last_target_lam).abs())
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
        ({"mask_loss_weight": -1.0}, "mask_loss_weight"),
        ({"pairing_scope": "global"}, "pairing_scope"),
    ],
)
def test_automix_classifier_rejects_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        tiny_automix(**kwargs)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"reduction": 0}, "reduction"),
        ({"upsampling": "cubic"}, "upsampling"),
        ({"mask_margin": 1.5}, "mask_margin"),
        ({"lam_margin": 0.6}, "lam_margin"),
        ({"binary_weight": -1.0}, "binary_weight"),
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
