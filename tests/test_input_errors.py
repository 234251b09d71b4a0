"""Wrong input names the argument (or the file and the key), and inputs that are right work: mixer and loss
arguments of the wrong type, NumPy scalars, mixing an ``x`` that requires grad, grid files, the run's length and
the seed of :class:`MixClassifier`."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import build_mixer, partner_pixels, takes_option
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import openmix
from openmix import losses
from openmix.bench.grid import load_grid
from openmix.lightning import MixClassifier

X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.arange(4)
PIXEL_MIXERS = [name for name in openmix.list_mixers() if name != "randomchoice"]


# ----------------------------------------------------------------------------------- mixer arguments of wrong type
WRONG_TYPES = [
    # (mixer, kwargs, exception, pattern): the message names the argument
    ("cutmix", {"minmax": 0.5}, TypeError, r"minmax must be a \(min, max\) pair of numbers, got float"),
    ("cutmix", {"minmax": ("a", "b")}, TypeError, r"minmax must be a \(min, max\) pair of numbers, got \(str, str\)"),
    ("cutmix", {"minmax": "ab"}, TypeError, "minmax must be a"),
    ("cutmix", {"minmax": (0.1, 0.5, 0.9)}, ValueError, "minmax must be a .* got 3 values"),
    ("resizemix", {"scope": 0.5}, TypeError, r"scope must be a \(min, max\) pair of numbers, got float"),
    ("resizemix", {"scope": ("a", "b")}, TypeError, r"scope must be a \(min, max\) pair of numbers, got \(str, str\)"),
    ("resizemix", {"scope": None}, TypeError, "scope must be a"),
    ("resizemix", {"use_alpha": "yes"}, TypeError, "use_alpha must be a bool"),
    ("fmix", {"decay_power": "3"}, TypeError, "decay_power must be a number"),
    ("fmix", {"decay_power": float("inf")}, ValueError, "decay_power must be a finite number > 0"),
    ("fmix", {"max_soft": "0.1"}, TypeError, "max_soft must be a number"),
    ("fmix", {"reformulate": "no"}, TypeError, "reformulate must be a bool"),
    ("attentivemix", {"extractor_size": True}, ValueError, "extractor_size must be a positive int"),
    ("attentivemix", {"pretrained": "yes"}, TypeError, "pretrained must be a bool"),
    ("automix", {"feature_stage": "-2"}, TypeError, "feature_stage must be an int"),
    ("automix", {"in_channels": "8"}, ValueError, "in_channels must be a positive int"),
    ("automix", {"in_channels": 0}, ValueError, "in_channels must be a positive int"),
    ("automix", {"lam_embedding": "yes"}, TypeError, "lam_embedding must be a bool"),
    ("automix", {"binary_weight": float("inf")}, ValueError, "binary_weight must be a finite number"),
    ("randomchoice", {"mixers": 3}, TypeError, "mixers must be a non-empty sequence"),
    ("randomchoice", {"probs": 0.5}, TypeError, "probs must be a sequence of numbers"),
    ("randomchoice", {"probs": ("a", "b")}, TypeError, "probs must hold numbers"),
    ("randomchoice", {"no_mix_prob": "x"}, ValueError, "no_mix_prob must be a number in"),
    ("mixup", {"alpha": np.bool_(True)}, TypeError, "alpha must be a number"),
    ("mixup", {"mode": np.array(["batch"])}, ValueError, "mode must be one of"),
]


@pytest.mark.parametrize(
    "name, kwargs, error, pattern", WRONG_TYPES, ids=[f"{c[0]}-{next(iter(c[1]))}-{c[1]}" for c in WRONG_TYPES]
)
def test_mixer_arguments_of_the_wrong_type_are_named(name, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        build_mixer(name, **kwargs)


def _constructor_arguments(cls: type) -> list[str]:
    return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]


EVERY_MIXER_ARGUMENT = [
    (name, argument)
    for name in openmix.list_mixers()
    for argument in _constructor_arguments(openmix.get_mixer_entry(name).cls)
]


@pytest.mark.parametrize("name, argument", EVERY_MIXER_ARGUMENT, ids=[f"{n}-{a}" for n, a in EVERY_MIXER_ARGUMENT])
@pytest.mark.parametrize("value", ["x", object(), {"a": 1}], ids=["str", "object", "dict"])
def test_every_mixer_argument_of_a_wrong_type_is_an_error_naming_it(name, argument, value):
    if argument == "extractor" and isinstance(value, str):
        pytest.skip("a string extractor is a timm model name")
    with pytest.raises((TypeError, ValueError), match=rf"\b{argument}\b"):
        build_mixer(name, **{argument: value})


OBJECTIVE_ARGUMENTS = [
    (objective, argument)
    for objective in (
        losses.SoftTargetCrossEntropy,
        losses.MixedBinaryCrossEntropy,
        losses.DecoupledMixupLoss,
        losses.RegMixupLoss,
    )
    for argument in _constructor_arguments(objective)
]


@pytest.mark.parametrize(
    "objective, argument", OBJECTIVE_ARGUMENTS, ids=[f"{o.__name__}-{a}" for o, a in OBJECTIVE_ARGUMENTS]
)
@pytest.mark.parametrize("value", ["x", object(), {"a": 1}], ids=["str", "object", "dict"])
def test_every_objective_argument_of_a_wrong_type_is_an_error_naming_it(objective, argument, value):
    with pytest.raises((TypeError, ValueError), match=rf"\b{argument}\b"):
        objective(**{argument: value})


@pytest.mark.parametrize("name", PIXEL_MIXERS)
@pytest.mark.parametrize("alpha", [np.float32(0.5), np.float16(0.5), np.float64(0.5)], ids=str)
def test_numpy_scalars_work_like_python_numbers_for_alpha(name, alpha):
    if not takes_option(name, "alpha"):
        pytest.skip(f"{name} has no alpha argument (AdaMixUp draws lam from its learned policy region)")
    mixer = build_mixer(name, alpha=alpha)
    assert mixer.alpha == 0.5 and type(mixer.alpha) is float
    reference = build_mixer(name, alpha=0.5)
    out = mixer(X, Y, generator=torch.Generator().manual_seed(3))
    expected = reference(X, Y, generator=torch.Generator().manual_seed(3))
    if openmix.get_mixer_entry(name).learned:  # weights drawn when built (Mix Blocks): compare the draws only
        torch.testing.assert_close(out.target_lam, expected.target_lam)
        return
    torch.testing.assert_close(out.x, expected.x)
    torch.testing.assert_close(out.lam, expected.lam)


@pytest.mark.parametrize("lam", [np.float32(0.3), np.float16(0.25), np.int64(1), np.float64(0.3)], ids=repr)
def test_numpy_scalar_lam_is_accepted(lam):
    out = openmix.create_mixer("mixup")(X, Y, lam=lam)
    torch.testing.assert_close(out.lam, torch.full((4,), float(lam)))
    with pytest.raises(TypeError, match="lam must be a number"):
        openmix.create_mixer("mixup")(X, Y, lam=np.bool_(True))


def test_numpy_scalars_are_accepted_by_every_numeric_mixer_argument():
    assert openmix.create_mixer("cutmix", minmax=(np.float32(0.2), np.float32(0.6))).minmax == pytest.approx((0.2, 0.6))
    assert openmix.create_mixer("cutmix", minmax=np.array([0.2, 0.6])).minmax == (0.2, 0.6)
    assert openmix.create_mixer("resizemix", scope=(np.float32(0.5), 0.75)).scope == (0.5, 0.75)
    fmix = openmix.create_mixer("fmix", decay_power=np.float32(3), max_soft=np.float32(0.25), reformulate=np.bool_(1))
    assert (fmix.decay_power, fmix.max_soft, fmix.reformulate) == (3.0, 0.25, True)
    assert openmix.create_mixer("saliencymix", max_saliency_size=np.int64(32)).max_saliency_size == 32
    attentive = build_mixer("attentivemix", grid=np.int64(4), top_k=np.int32(3), extractor_size=np.int64(16))
    assert (attentive.grid, attentive.top_k, attentive.extractor_size) == (4, 3, 16)
    automix = openmix.create_mixer(
        "automix", alpha=np.float32(2), reduction=np.int64(2), mask_margin=np.float32(0.1), lam_margin=np.float32(0)
    )
    assert automix.reduction == 2 and automix.lam_margin == 0.0
    choice = openmix.create_mixer("randomchoice", probs=(np.float32(1), np.int64(3)), no_mix_prob=np.float32(0.5))
    assert choice.probs == [0.25, 0.75] and choice.no_mix_prob == 0.5
    assert openmix.create_mixer("randomchoice", probs=np.array([1.0, 1.0])).probs == [0.5, 0.5]


def test_a_network_given_at_call_time_must_be_a_module():
    with pytest.raises(TypeError, match="model must be an nn.Module .* got function"):
        openmix.create_mixer("attentivemix", extractor=None)(X, Y, model=lambda images: images)
    with pytest.raises(TypeError, match="model must be an nn.Module .* got function"):
        openmix.create_mixer("automix")(X, Y, lam=0.5, model=lambda images: images)
    with pytest.raises(ValueError, match=r"features must be a \(4, C, h, w\) tensor .* got str"):
        openmix.create_mixer("automix")(X, Y, lam=0.5, features="features")
    with pytest.raises(ValueError, match=r"features must be a \(4, C, h, w\) tensor .* got \(3, 8, 2, 2\)"):
        openmix.create_mixer("automix")(X, Y, lam=0.5, features=torch.zeros(3, 8, 2, 2))


# ------------------------------------------------------------------------------------- loss arguments of wrong type
def _mix() -> openmix.MixOutput:
    return openmix.create_mixer("mixup")(X, Y, generator=torch.Generator().manual_seed(0))


LOSS_ERRORS = [
    ("bce threshold str", lambda: losses.MixedBinaryCrossEntropy(target_threshold="x"), TypeError, "target_threshold"),
    (
        "bce threshold bool",
        lambda: losses.MixedBinaryCrossEntropy(target_threshold=False),
        TypeError,
        "target_threshold",
    ),
    (
        "bce functional threshold",
        lambda: losses.binary_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 3), target_threshold="x"),
        TypeError,
        "target_threshold",
    ),
    (
        "bce functional threshold range",
        lambda: losses.binary_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 3), target_threshold=1.5),
        ValueError,
        "target_threshold",
    ),
    (
        "dm lam_weighted",
        lambda: losses.DecoupledMixupLoss(lam_weighted="yes"),
        TypeError,
        "lam_weighted must be a bool",
    ),
    ("ce logits array", lambda: losses.SoftTargetCrossEntropy()(np.zeros((4, 5)), _mix()), TypeError, "logits must be"),
    ("ce logits 1-d", lambda: losses.SoftTargetCrossEntropy()(torch.zeros(5), _mix()), ValueError, r"logits must have"),
    ("ce mix", lambda: losses.SoftTargetCrossEntropy()(torch.zeros(4, 5), "mix"), TypeError, "mix must be the mixer's"),
    ("bce mix", lambda: losses.MixedBinaryCrossEntropy()(torch.zeros(4, 5), None), TypeError, "mix must be"),
    ("dm mix", lambda: losses.DecoupledMixupLoss()(torch.zeros(4, 5), (1, 2)), TypeError, "mix must be"),
    (
        "regmixup clean logits",
        lambda: losses.RegMixupLoss()(torch.zeros(4, 5), _mix(), None),
        TypeError,
        "clean_logits must be a torch.Tensor",
    ),
    ("soft ce list", lambda: losses.soft_target_cross_entropy([[0.0]], torch.zeros(1, 1)), TypeError, "logits must be"),
    ("soft ce targets", lambda: losses.soft_target_cross_entropy(torch.zeros(1, 1), 1.0), TypeError, "targets must be"),
    ("one hot y list", lambda: losses.one_hot_targets([0, 1], 3), TypeError, "y must be a torch.Tensor"),
    ("mix targets lam", lambda: losses.mix_targets(Y, Y, 0.5, 4), TypeError, "lam must be a torch.Tensor"),
    (
        "dm y_a list",
        lambda: losses.decoupled_regularizer(torch.zeros(2, 3), [0, 1], torch.tensor([1, 0]), torch.ones(2)),
        TypeError,
        "y_a must be a torch.Tensor",
    ),
    (
        "dm lam number",
        lambda: losses.decoupled_regularizer(torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([1, 0]), 0.5),
        TypeError,
        "lam must be a torch.Tensor",
    ),
]


@pytest.mark.parametrize("case, call, error, pattern", LOSS_ERRORS, ids=[c[0] for c in LOSS_ERRORS])
def test_loss_arguments_of_the_wrong_type_are_named(case, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_losses_take_numpy_scalars_like_python_numbers():
    mix = _mix()
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    pairs = [
        (losses.SoftTargetCrossEntropy(smoothing=np.float32(0.125)), losses.SoftTargetCrossEntropy(smoothing=0.125)),
        (
            losses.MixedBinaryCrossEntropy(smoothing=np.float64(0.1), target_threshold=np.float32(0.25)),
            losses.MixedBinaryCrossEntropy(smoothing=0.1, target_threshold=0.25),
        ),
        (
            losses.DecoupledMixupLoss(eta=np.float32(0.5), lam_eps=np.float32(0.125), lam_weighted=np.bool_(True)),
            losses.DecoupledMixupLoss(eta=0.5, lam_eps=0.125),
        ),
    ]
    for numpy_loss, python_loss in pairs:
        torch.testing.assert_close(numpy_loss(logits, mix), python_loss(logits, mix))
    torch.testing.assert_close(losses.one_hot_targets(Y, np.int64(5)), losses.one_hot_targets(Y, 5))
    regmixup = losses.RegMixupLoss(eta=np.float32(0.5))
    torch.testing.assert_close(regmixup(logits, mix, logits), losses.RegMixupLoss(eta=0.5)(logits, mix, logits))


# ------------------------------------------------------------------------------ mixing an x that requires grad
def _expected_output(mixer: nn.Module, x: torch.Tensor, out: openmix.MixOutput) -> torch.Tensor:
    """``m * x + (1 - m) * partner(x)`` built from the output's mask (or lam) with plain autograd ops."""
    weight = out.mask if out.mask is not None else out.lam.view(-1, 1, 1, 1)
    weight = weight.detach().to(x.dtype)  # the mask depends on a network or on saliency, not on x's gradient
    return weight * x + (1 - weight) * partner_pixels(mixer, x, out)


def _check_gradient(mixer, values, out, weights, gradient) -> None:
    """The gradient of ``sum(out.x * weights)`` with respect to x equals that of the plain-autograd reference; for
    mixers that move the partner's content (their own tests check the moved part), it is finite and reaches x."""
    if partner_pixels(mixer, values, out) is None:
        assert bool(torch.isfinite(gradient).all()) and bool(gradient.abs().sum() > 0)
        return
    reference_x = values.clone().requires_grad_(True)
    expected = _expected_output(mixer, reference_x, out)
    torch.testing.assert_close(out.x.detach(), expected.detach(), rtol=1e-5, atol=1e-5)
    (expected_gradient,) = torch.autograd.grad((expected * weights).sum(), reference_x)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-5, atol=1e-5)


def _chosen(mixer: nn.Module, out: openmix.MixOutput) -> nn.Module:
    """The mixer that made ``out``: a RandomChoiceMixer's children here differ only in whether they resize."""
    return mixer.mixers[0] if hasattr(mixer, "mixers") else mixer


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("name", openmix.list_mixers())
def test_mixing_an_x_that_requires_grad_carries_gradients_to_it(name, mode):
    values = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    mixer = build_mixer(name, mode=mode)
    no_grad = mixer(values, Y, generator=torch.Generator().manual_seed(7))  # builds AutoMix's block first
    x = values.clone().requires_grad_(True)
    out = mixer(x, Y, generator=torch.Generator().manual_seed(7))
    assert out.x.requires_grad
    torch.testing.assert_close(out.x.detach(), no_grad.x)  # the same mix as without gradients
    weights = torch.randn(out.x.shape, generator=torch.Generator().manual_seed(9))
    (gradient,) = torch.autograd.grad((out.x * weights).sum(), x)
    _check_gradient(_chosen(mixer, out), values, out, weights, gradient)


@pytest.mark.parametrize("name", ["mixup", "cutmix", "fmix", "resizemix"])
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_a_channels_last_x_that_requires_grad_keeps_its_memory_format(name, mode):
    x = torch.randn(4, 3, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out = openmix.create_mixer(name, mode=mode)(x, Y, generator=torch.Generator().manual_seed(0))
    assert out.x.is_contiguous(memory_format=torch.channels_last)
    (gradient,) = torch.autograd.grad(out.x.sum(), x)
    assert gradient.shape == x.shape and bool(torch.isfinite(gradient).all())


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("name", openmix.list_mixers())
def test_inplace_mixing_of_a_leaf_that_requires_grad_is_refused(name, mode):
    mixer = build_mixer(name, mode=mode, inplace=True)
    leaf = torch.randn(4, 3, 8, 8, requires_grad=True)
    pattern = "inplace=True, but x is a leaf tensor that requires grad"
    with pytest.raises(ValueError, match=pattern):
        mixer(leaf, Y, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=pattern):  # a view of such a leaf too
        mixer(leaf[:, :, :, :], Y, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # nothing is recorded: the write is allowed
        assert mixer(leaf, Y, generator=torch.Generator().manual_seed(0)).x is leaf


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("name", openmix.list_mixers())
def test_inplace_mixing_of_a_non_leaf_writes_into_it_and_carries_gradients(name, mode):
    values = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    leaf = values.clone().requires_grad_(True)
    x = leaf * 1.0  # a non-leaf, e.g. the output of an earlier layer
    mixer = build_mixer(name, mode=mode, inplace=True)
    out = mixer(x, Y, generator=torch.Generator().manual_seed(7))
    assert out.x is x  # written in place, as asked
    weights = torch.randn(out.x.shape, generator=torch.Generator().manual_seed(9))
    (gradient,) = torch.autograd.grad((out.x * weights).sum(), leaf)
    _check_gradient(_chosen(mixer, out), values, out, weights, gradient)


# ----------------------------------------------------------------------------------------------------- grid files
def write_grid_text(tmp_path: Path, text: str) -> Path:
    (tmp_path / "base.yaml").write_text("trainer:\n  max_epochs: 1\n")
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


GRID_ERRORS = [
    # (grid file text, pattern after the file's path): the message names the file and the key
    ("base: base.yaml\naxes: {seed: [0]}\n", r": base must be a list of config files .* got a str 'base.yaml'"),
    ("base: [base.yaml]\naxes: [seed, mixer]\n", r": axes must be a mapping .* got a list"),
    ("base: [base.yaml]\naxes: {seed: 3}\n", r": axes\.seed must be a non-empty list of values or a mapping"),
    ("base: [base.yaml]\naxes: {mixer: mixup}\n", r": axes\.mixer must be a non-empty list .* got a str 'mixup'"),
    ("base: [base.yaml]\naxes: {mixer: {}}\n", r": axes\.mixer: a mapping axis needs at least one"),
    ("base: [base.yaml]\naxes: {mixer: {a: 1}}\n", r": axes\.mixer\.a: a mapping axis needs label -> "),
    ("base: [base.yaml]\naxes: {mixer: {a: {config: 3}}}\n", r": axes\.mixer\.a\.config must be a config file"),
    ("base: [base.yaml]\naxes: {seed: [0, 1, 0]}\n", r": axes\.seed: the value\(s\) \['0'\] appear more than once"),
    ("base: [base.yaml]\naxes: {seed: [0]}\nbases: []\n", r": unknown grid keys \['bases'\]; a grid file has the keys"),
    ("base: [base.yaml]\nargs: [trainer.max_epochs]\n", r": args must be a mapping .* got a list"),
    ("base: [base.yaml]\naxes: {seed: [0]}\nbaseline: [seed]\n", r": baseline must be a mapping .* got a list"),
    ("base: [base.yaml]\nwandb: maybe\n", r": wandb must be true or false, got a str 'maybe'"),
    ("- base.yaml\n", r": a grid file must be a mapping with the keys"),
    ("base: [base.yaml\naxes: {seed: [0]}\n", r", line \d+, column \d+: invalid YAML: "),
    ("base: [base.yaml]\naxes:\n  seed: [0]\n mixer: [mixup]\n", r", line 4, column 2: invalid YAML: "),
    ("name: [a]\nbase: [base.yaml]\n", r": name must be a non-empty string"),
]


@pytest.mark.parametrize("text, pattern", GRID_ERRORS, ids=[f"grid{i}" for i in range(len(GRID_ERRORS))])
def test_grid_files_of_the_wrong_shape_name_the_file_and_the_key(tmp_path, text, pattern):
    path = write_grid_text(tmp_path, text)
    with pytest.raises(ValueError) as error:
        load_grid(path)
    message = str(error.value)
    assert message.startswith(str(path)), message
    assert re.search(pattern, message[len(str(path)) :]), message


def test_a_well_formed_grid_still_loads(tmp_path):
    text = "name: g\nbase: [base.yaml]\nargs: {trainer.max_epochs: 1}\n"
    text += (
        "axes:\n  mixer: {none: {model.init_args.mixer: null}}\n  seed: [0, 1]\nbaseline: {mixer: none}\nwandb: null\n"
    )
    grid = load_grid(write_grid_text(tmp_path, text))
    assert [run.name for run in grid.runs()] == ["mixer=none,seed=0", "mixer=none,seed=1"]
    assert grid.wandb is False and grid.baseline == {"mixer": "none"}
    empty = load_grid(write_grid_text(tmp_path, "base: null\n"))  # an empty base is no config file
    assert empty.configs == () and empty.runs()[0].name == "run"


# ------------------------------------------------------------------------------- the run's length and the seed
TINY = {
    "backbone": "resnet10t",
    "backbone_kwargs": {"channels": (8, 8, 8, 8), "stem_width": 8},
    "cifar_stem": True,
    "num_classes": 4,
    "in_chans": 1,
}


def _loader(batches: int = 4, batch_size: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batches * batch_size, 1, 12, 12, generator=generator)
    return DataLoader(TensorDataset(x, torch.arange(batches * batch_size) % 4), batch_size=batch_size)


def _trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    options = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    return L.Trainer(accelerator="cpu", default_root_dir=tmp_path, enable_model_summary=False, **options, **kwargs)


def test_an_unbounded_run_with_a_schedule_that_needs_its_length_is_refused(tmp_path):
    trainer = _trainer(tmp_path, max_epochs=-1, max_steps=-1)
    with pytest.raises(ValueError, match=r"WarmupCosineLR needs the run's length.*max_epochs=-1.*max_steps=-1"):
        trainer.fit(MixClassifier(**TINY), _loader())


@pytest.mark.parametrize("max_epochs, max_steps", [(-1, 6), (100, 6), (2, -1)])
def test_the_schedule_gets_the_run_length_and_the_steps_of_one_epoch(tmp_path, max_epochs, max_steps):
    trainer = _trainer(tmp_path, max_epochs=max_epochs, max_steps=max_steps, limit_val_batches=0)
    trainer.fit(MixClassifier(**TINY), _loader(batches=4))
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.steps_per_epoch == 4  # batches per epoch, whatever bounds the run
    assert scheduler.total_steps == trainer.global_step == (6 if max_steps > 0 else 8)


@pytest.mark.parametrize("seed, error", [(-1, ValueError), (2**63, ValueError), (1.5, TypeError), (True, TypeError)])
def test_mix_classifier_refuses_a_bad_seed_at_construction(seed, error):
    with pytest.raises(error, match=r"seed must be an int in \[0, 2\*\*63 - 1\]"):
        MixClassifier(**TINY, seed=seed)


@pytest.mark.parametrize("seed", [2**63 - 1, np.int64(2**63 - 1), 2**32])
def test_large_seeds_reseed_the_mixing_rng(seed):
    model = MixClassifier(**TINY, seed=seed)
    states = []
    for batch_idx in (0, 1, 0):
        model.reseed_mixing(batch_idx)
        states.append(torch.rand(4, generator=model.mixing_generator))
    assert torch.equal(states[0], states[2]) and not torch.equal(states[0], states[1])


def test_a_large_seed_trains(tmp_path):
    trainer = _trainer(tmp_path, max_epochs=1, max_steps=2, limit_val_batches=0)
    trainer.fit(MixClassifier(**TINY, seed=2**63 - 1), _loader())
    assert trainer.global_step == 2
