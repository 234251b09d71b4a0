"""MixClassifier: backbone, mixing policy, objectives, metrics and schedule."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from openmix.lightning import MixClassifier, WarmupCosineLR, build_backbone
from openmix.lightning.module import OBJECTIVES

TINY = {"backbone": "resnet10t", "backbone_kwargs": {"channels": (8, 8, 8, 8), "stem_width": 8}, "cifar_stem": True}


class RandomImages(L.LightningDataModule):
    """Tiny separable data: the class is written into the image's mean brightness."""

    def __init__(self, n: int = 64, num_classes: int = 4, size: int = 12, batch_size: int = 16):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.y = torch.arange(n) % num_classes
        self.x = torch.randn(n, 1, size, size, generator=generator) * 0.1 + self.y.view(-1, 1, 1, 1).float()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size, shuffle=False, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size)


def tiny_model(**kwargs) -> MixClassifier:
    return MixClassifier(**{**TINY, "num_classes": 4, "in_chans": 1, **kwargs})


def fit(model: MixClassifier, tmp_path, epochs: int = 1, **trainer_kwargs) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        default_root_dir=tmp_path,
        logger=L.pytorch.loggers.CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **trainer_kwargs,
    )
    trainer.fit(model, RandomImages())
    return trainer


def test_cifar_stem_replaces_the_first_conv_and_the_max_pool():
    model = build_backbone("resnet18", 10, in_chans=1, cifar_stem=True, channels=(8, 16, 32, 64), stem_width=8)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.in_channels == 1
    assert isinstance(model.maxpool, nn.Identity)
    features = model.forward_features(torch.randn(2, 1, 32, 32))
    assert features.shape[-2:] == (4, 4)  # 32 / 8: only the three stage strides remain
    plain = build_backbone("resnet18", 10, in_chans=1, channels=(8, 16, 32, 64), stem_width=8)
    assert plain.forward_features(torch.randn(2, 1, 32, 32)).shape[-2:] == (1, 1)


def test_cifar_stem_on_another_family():
    model = build_backbone("convnext_atto", 5, cifar_stem=True)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.kernel_size == (3, 3) and first.stride == (1, 1)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_training_step_for_every_objective(objective):
    model = tiny_model(mixer="cutmix", objective=objective)
    seen = []
    model.network.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    x, y = torch.randn(6, 1, 12, 12), torch.arange(6) % 4
    loss = model.training_step((x, y), 0)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.network.parameters() if p.requires_grad)
    # RegMixup sends the clean and the mixed batch through the network together
    assert seen == ([12] if objective == "regmixup" else [6])


def test_loss_equals_the_objective_on_the_mixed_batch():
    model = tiny_model(mixer="mixup", label_smoothing=0.1)
    x, y = torch.randn(8, 1, 12, 12), torch.arange(8) % 4
    loss = model.training_step((x, y), 0)
    mix = model.mix(x, y)  # same step, same seed: the same mix
    logits = model(mix.x)
    expected = -(mix.soft_targets(4, 0.1) * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(loss, expected)


def test_mixing_policy_probability_and_off_epoch():
    x, y = torch.randn(8, 1, 12, 12), torch.arange(8) % 4
    never = tiny_model(mixer="mixup", mix_prob=0.0)
    out = never.mix(x, y)
    assert out.x is x and torch.all(out.lam == 1)
    model = tiny_model(mixer="mixup", mix_prob=0.5)
    mixed = 0
    for seed in range(200):
        model.hparams.seed = seed  # the mixing RNG is reseeded from (seed, step) at every call
        mixed += int(not torch.all(model.mix(x, y).lam == 1))
    assert 70 < mixed < 130
    no_mixer = tiny_model(mixer=None)
    assert torch.all(no_mixer.mix(x, y).lam == 1)


def test_mixer_off_epoch(tmp_path):
    model = tiny_model(mixer="cutmix", mix_off_epoch=1)
    fit(model, tmp_path, epochs=2, limit_val_batches=1)
    lams = torch.cat(model.train_lams)  # the last epoch's lambdas
    assert torch.all(lams == 1)


def test_a_mixer_that_needs_the_network_gets_it_from_the_module(tmp_path):
    model = tiny_model(mixer="attentivemix", mixer_kwargs={"top_k": 3})
    assert model.mixer.requires == ("model",)
    calls = []
    model.network.layer1.register_forward_hook(lambda module, inputs, output: calls.append(module.training))
    x, y = torch.randn(6, 1, 14, 14), torch.arange(6) % 4
    model.train()
    model.training_step((x, y), 0)
    assert calls == [False, True]  # the attention pass (eval mode), then the training pass


def test_fit_logs_metrics(tmp_path):
    model = tiny_model(mixer="fmix")
    trainer = fit(model, tmp_path, epochs=2)
    metrics = trainer.callback_metrics
    for key in ("val/top1", "val/top5", "val/nll", "val/ece", "train/loss_epoch", "train/images_per_sec"):
        assert key in metrics, key
    assert 0 <= float(metrics["val/ece"]) <= 1 and float(metrics["train/images_per_sec"]) > 0
    assert float(metrics["val/top5"]) == 1.0  # 4 classes: the top 4 always holds the label


def test_validation_metrics_match_a_direct_computation():
    model = tiny_model(mixer=None)
    x, y = torch.randn(32, 1, 12, 12), torch.arange(32) % 4
    model.evaluate((x, y), "val")
    with torch.no_grad():
        logits = model(x)
    probabilities = logits.softmax(dim=1)
    confidence, prediction = probabilities.max(dim=1)
    torch.testing.assert_close(model.val_top1.compute(), (prediction == y).float().mean())
    torch.testing.assert_close(model.val_nll.compute(), F.cross_entropy(logits, y))
    # expected calibration error with 15 equal-width confidence bins
    ece = torch.zeros(())
    for low in torch.linspace(0, 1, 16)[:-1]:
        in_bin = (confidence > low) & (confidence <= low + 1 / 15)
        if in_bin.any():
            gap = (prediction[in_bin] == y[in_bin]).float().mean() - confidence[in_bin].mean()
            ece += in_bin.float().mean() * gap.abs()
    torch.testing.assert_close(model.val_ece.compute(), ece, atol=1e-5, rtol=0)


def test_warmup_cosine_schedule_formula():
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.2)
    scheduler = WarmupCosineLR(optimizer, warmup_epochs=2, warmup_start_factor=0.1, min_lr=0.01)
    scheduler.set_total_steps(total_steps=50, steps_per_epoch=5)
    rates = []
    for _ in range(50):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    for step, rate in enumerate(rates):
        if step < 10:
            expected = 0.01 + (0.2 - 0.01) * (0.1 + 0.9 * step / 10)
        else:
            expected = 0.01 + (0.2 - 0.01) * 0.5 * (1 + math.cos(math.pi * (step - 10) / 40))
        assert math.isclose(rate, expected, rel_tol=1e-9), (step, rate, expected)


def test_module_rejects_bad_arguments():
    with pytest.raises(ValueError, match="objective must be one of"):
        tiny_model(objective="focal")
    with pytest.raises(ValueError, match="mix_prob"):
        tiny_model(mix_prob=1.5)
    with pytest.raises(ValueError, match="pairing_scope"):
        tiny_model(pairing_scope="world")
    with pytest.raises(ValueError, match="unknown mixer 'cutmx'"):
        tiny_model(mixer="cutmx")
    with pytest.raises(ValueError, match="unknown argument"):
        tiny_model(mixer="mixup", mixer_kwargs={"alhpa": 1.0})


def test_epoch_summary_pairs_every_ranks_values_by_name(monkeypatch):
    # a value logged on some steps only (AutoMix's block loss with block_loss_prob < 1) may be missing on a rank or
    # first seen in another order there: the ranks must still reduce the same names, in the same order
    model = tiny_model()
    model.on_train_epoch_start()
    model.log_train("train/loss", torch.tensor(1.0), 2)
    model.log_train("train/momentum", 0.9, 2)
    other = {"train/loss": (4.0, 2), "train/block_loss": (3.0, 3), "train/momentum": (2.0, 2)}  # rank 1's sums
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)

    def all_gather_object(out, names):
        out[:] = [names, list(other)]

    monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
    queue = [other[name] for name in sorted(other)]  # rank 1 gathers its sums in the agreed (sorted) order

    def all_gather(tensor):
        theirs = torch.tensor(queue.pop(0), dtype=torch.float64) if tensor.shape == (2,) else tensor
        return torch.stack([tensor, theirs])

    monkeypatch.setattr(model, "all_gather", all_gather)
    summary = model.epoch_summary()
    assert summary["train/loss_epoch"] == pytest.approx((1.0 * 2 + 4.0) / 4)
    assert summary["train/momentum_epoch"] == pytest.approx((0.9 * 2 + 2.0) / 4)
    assert summary["train/block_loss_epoch"] == pytest.approx(3.0 / 3)  # logged on rank 1 only
    assert not queue
