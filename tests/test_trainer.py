"""Every trainer honours every option it accepts, or refuses it when built; fresh draws for every training batch;
AutoMix labels its mixes with the sampled lambda."""

from __future__ import annotations

import itertools

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import openmix
from openmix.lightning import AutoMixClassifier, MixClassifier
from openmix.lightning.module import OBJECTIVES
from openmix.mixers import MixOutput

TINY = {"backbone": "resnet10t", "backbone_kwargs": {"channels": (8, 8, 16, 16), "stem_width": 8}, "cifar_stem": True}
MIXER_FAMILIES = {  # one of each kind: pixel interpolation, cut-and-paste, needs the network, a composition
    "mixup": {"mixer": "mixup"},
    "cutmix": {"mixer": "cutmix"},
    "attentivemix": {"mixer": "attentivemix", "mixer_kwargs": {"grid": 4, "top_k": 3}},
    "randomchoice": {"mixer": "randomchoice"},
    "automix": {"mixer": "automix"},
}


def batch(n: int = 8, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, size, size, generator=generator), torch.arange(n) % 4


def build(model_class: type, family: str, objective: str, inplace: bool, **extra) -> MixClassifier:
    torch.manual_seed(0)
    spec = dict(MIXER_FAMILIES[family])
    kwargs = {**TINY, "num_classes": 4, "in_chans": 1, "objective": objective, **extra}
    mixer_kwargs = {**spec.get("mixer_kwargs", {}), "inplace": inplace}
    if spec["mixer"] == "randomchoice":  # the children carry `inplace`
        mixer_kwargs = {"mixers": ["mixup", "cutmix"], "inplace": inplace}
    if model_class is AutoMixClassifier:
        return AutoMixClassifier(mixer_kwargs=mixer_kwargs, **kwargs)
    return MixClassifier(mixer=spec["mixer"], mixer_kwargs=mixer_kwargs, **kwargs)


def expected_refusal(model_class: type, family: str, objective: str, inplace: bool) -> str | None:
    """The conflict a combination must be refused for at construction (a regex of the message), else None."""
    if model_class is MixClassifier and family == "automix":
        return "AutoMixClassifier"  # a learned mixer needs the pipeline that trains it
    if model_class is AutoMixClassifier and family != "automix":
        return None  # not built: the AutoMix classifier always trains the automix block
    if model_class is AutoMixClassifier and objective == "regmixup":
        return "regmixup"
    if model_class is AutoMixClassifier and inplace:
        return "inplace"
    return None


class InputRecorder:
    """Records every batch the online network sees."""

    def __init__(self, network: nn.Module):
        self.inputs: list[torch.Tensor] = []
        network.register_forward_pre_hook(lambda module, args: self.inputs.append(args[0].detach().clone()))


COMBINATIONS = list(
    itertools.product([MixClassifier, AutoMixClassifier], MIXER_FAMILIES, sorted(OBJECTIVES), [False, True])
)


@pytest.mark.parametrize(
    "model_class, family, objective, inplace",
    [c for c in COMBINATIONS if not (c[0] is AutoMixClassifier and c[1] != "automix")],
    ids=lambda v: v.__name__ if isinstance(v, type) else str(v),
)
def test_every_trainer_objective_mixer_and_inplace(model_class, family, objective, inplace):
    refusal = expected_refusal(model_class, family, objective, inplace)
    if refusal is not None:
        with pytest.raises(ValueError, match=refusal):
            build(model_class, family, objective, inplace)
        return
    model = build(model_class, family, objective, inplace)
    model.train()
    x, y = batch()
    clean = x.clone()
    recorder = InputRecorder(model.network)
    loss = model.training_step((x, y), 0)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.network.parameters())
    if model.needs_clean_batch:  # whoever reads the clean batch sees the clean batch, in-place mixer or not
        assert torch.equal(x, clean), "the clean batch was overwritten"
        # the clean batch reaches the network unchanged, alone or ahead of the mixed one in a joint pass
        assert any(torch.equal(inputs[: len(x)], clean) for inputs in recorder.inputs)


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.parametrize("model_class", [MixClassifier, AutoMixClassifier], ids=lambda c: c.__name__)
def test_every_objective_trains_on_soft_labels(model_class, objective):
    """Soft (B, K) labels reach every objective of every trainer without an error at the first step."""
    if expected_refusal(model_class, "automix" if model_class is AutoMixClassifier else "cutmix", objective, False):
        return
    family = "automix" if model_class is AutoMixClassifier else "cutmix"
    model = build(model_class, family, objective, False)
    x, y = batch()
    soft = 0.9 * nn.functional.one_hot(y, 4).float() + 0.025
    loss = model.training_step((x, soft), 0)
    assert torch.isfinite(loss)
    loss.backward()


def test_automix_honours_mix_prob():
    """mix_prob=0: no batch is mixed; the step is the objective on the clean batch and the Mix Block gets nothing."""
    model = build(AutoMixClassifier, "automix", "ce", False, mix_prob=0.0)
    model.train()
    x, y = batch()
    recorder = InputRecorder(model.network)
    for batch_idx in range(3):
        recorder.inputs.clear()
        loss = model.training_step((x, y), batch_idx)
        assert len(recorder.inputs) == 1 and torch.equal(recorder.inputs[0], x)
        torch.testing.assert_close(loss, nn.functional.cross_entropy(model(x), y))
        loss.backward()
    assert all(p.grad is None for p in model.mixer.parameters())


def test_automix_clean_loss_is_the_objective():
    """The clean loss follows the objective: with `bce` it is the BCE against one-hot targets, not softmax CE."""
    model = build(AutoMixClassifier, "automix", "bce", False)
    x, y = batch()
    logits = torch.randn(8, 4)
    expected = nn.functional.binary_cross_entropy_with_logits(logits, nn.functional.one_hot(y, 4).float())
    torch.testing.assert_close(model.clean_loss(logits, y), expected)


def draws_of(model: MixClassifier, x: torch.Tensor, y: torch.Tensor, batch_idx: int) -> tuple:
    out = model.mix(x, y, batch_idx)
    return out.index.tolist(), out.lam.tolist()


def test_every_training_batch_gets_its_own_draws_under_gradient_accumulation():
    """Two batches of one accumulation window (same optimizer step) are mixed with different partners and lambdas;
    a second run (a resume restores epoch and batch index) draws them identically."""

    class Recording(MixClassifier):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.draws: list[tuple] = []

        def forward_mixed(self, x, y, services, with_clean=False):
            logits, clean_logits, out = super().forward_mixed(x, y, services, with_clean)
            self.draws.append((self.global_step, out.index.tolist(), out.lam.tolist()))
            return logits, clean_logits, out

    def run() -> list[tuple]:
        torch.manual_seed(0)
        model = Recording(**TINY, num_classes=4, in_chans=1, mixer="mixup", mixer_kwargs={"mode": "elem"})
        x, y = batch(32, 12)
        trainer = L.Trainer(
            max_epochs=1, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        )  # fmt: skip
        trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8))
        return model.draws

    draws = run()
    assert [step for step, _, _ in draws] == [0, 0, 1, 1]  # two batches per optimizer step
    for first, second in (draws[0:2], draws[2:4]):
        assert first[1:] != second[1:], "both batches of an accumulation window got the same draws"
    assert len({tuple(lam) for _, _, lam in draws}) == 4
    assert run() == draws


def test_mix_skip_decision_is_drawn_per_batch():
    model = build(MixClassifier, "mixup", "ce", False, mix_prob=0.5)
    decisions = [model.should_mix(batch_idx) for batch_idx in range(64)]
    assert 16 < sum(decisions) < 48  # about half, and not one decision repeated for every batch
    assert decisions == [model.should_mix(batch_idx) for batch_idx in range(64)]


class ToyClassifier(nn.Module):
    """Frozen linear read-out of the mean brightness: image A (bright) is class 0, image B (dark) class 1."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        brightness = images.mean(dim=(1, 2, 3))
        return torch.stack([4 * brightness, -4 * brightness], dim=1)


@pytest.mark.parametrize("use_classifier", [False, True], ids=["mixer", "AutoMixClassifier"])
def test_automix_block_loss_follows_the_sampled_lambda(use_classifier):
    """Two images, a frozen toy classifier. Labelled with the sampled lambda, the block's mixed loss pulls the
    partner's share up for lambda = 0.2 and down for lambda = 0.8: the gradient on the value path changes sign.
    Labelled with the mask's mean (the earlier behaviour), it would not depend on lambda at all."""
    x = torch.stack([torch.ones(1, 8, 8), -torch.ones(1, 8, 8)])  # A and B
    y = torch.tensor([0, 1])
    classifier = ToyClassifier()
    signs = []
    for lam in (0.2, 0.8):
        torch.manual_seed(0)
        if use_classifier:
            model = AutoMixClassifier(
                **TINY, num_classes=2, in_chans=1, mixer_kwargs={"mode": "elem", "lam_margin": 0.0, "pairing": "flip"}
            )
            model.ema_network = classifier  # the block's loss goes through the (frozen) momentum network
            features = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(0))
            model.mixer.build(4)
            loss, _, out = model.block_losses(x, y, features=features, lam=lam)
            value = model.mixer.value
        else:
            mixer = openmix.create_mixer("automix", extractor=nn.Conv2d(1, 4, 3, padding=1), mode="elem",
                                         lam_margin=0.0, pairing="flip")  # fmt: skip
            out = mixer(x, y, lam=lam)
            loss = openmix.losses.SoftTargetCrossEntropy()(classifier(out.x), out)
            value = mixer.value
        torch.testing.assert_close(out.target_lam, torch.full((2,), lam))  # labels: the sampled lambda
        torch.testing.assert_close(out.lam, out.mask.mean(dim=(1, 2, 3)))  # contract lam: the mask's mean
        (gradient,) = torch.autograd.grad(loss, value.bias)
        signs.append(torch.sign(gradient).item())
    assert signs[0] == -signs[1] != 0


def test_soft_targets_use_the_label_weight():
    x, y = batch(4)
    out = MixOutput(x, torch.tensor([1, 0, 3, 2]), torch.full((4,), 0.5), y, y[[1, 0, 3, 2]], None)
    out = out.with_label_weights(torch.full((4,), 0.2))
    targets = out.soft_targets(4)
    expected = 0.2 * nn.functional.one_hot(y, 4) + 0.8 * nn.functional.one_hot(y[[1, 0, 3, 2]], 4)
    torch.testing.assert_close(targets, expected.float())


def test_images_per_second_counts_training_only(tmp_path):
    """Validation runs inside Lightning's training epoch; its time is not training throughput."""
    import time

    from lightning.pytorch.callbacks import Callback

    class SlowValidation(MixClassifier):
        def validation_step(self, batch, batch_idx):
            time.sleep(1.0)
            return super().validation_step(batch, batch_idx)

    class EpochClock(Callback):  # the epoch's length and the validation inside it, measured from outside
        def on_train_epoch_start(self, trainer, module):
            self.start, self.validation = time.perf_counter(), 0.0

        def on_validation_epoch_start(self, trainer, module):
            self.validation_start = time.perf_counter()

        def on_validation_epoch_end(self, trainer, module):
            self.validation += time.perf_counter() - self.validation_start

        def on_train_epoch_end(self, trainer, module):
            self.total = time.perf_counter() - self.start

    torch.manual_seed(0)
    model = SlowValidation(**TINY, num_classes=4, in_chans=1, mixer="mixup")
    x, y = batch(32, 12)
    clock = EpochClock()
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[clock],
    )  # fmt: skip
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    trainer.fit(model, loader, DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8))
    logged = float(trainer.callback_metrics["train/images_per_sec"])
    assert clock.validation > 2.0  # two validation batches of 1 s inside the epoch
    training = clock.total - clock.validation
    assert logged * training == pytest.approx(32, rel=0.05)  # 32 images over the training time alone
    assert logged * clock.total > 32 * 1.05  # not over the whole epoch
