"""The mixing protocol v2: typed components, the hook points of the training step and the services behind each need.

Each need is checked against a direct computation written here (autograd for saliency, the classifier's weights for
class activation maps, timm's own non-fused attention for the class-token attention), and each hook point with a
stand-in mixer that records what the trainer handed it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import openmix
from openmix.lightning import MixClassifier
from openmix.lightning.services import (
    AttentionRecorder,
    StepServices,
    class_activation_maps,
    feature_stages,
    input_saliency,
)
from openmix.losses import DecoupledMixupLoss, MixedBinaryCrossEntropy, RegMixupLoss, SoftTargetCrossEntropy
from openmix.mixers import NEEDS, CutMix, Mixup, RandomChoiceMixer

CNN = {"backbone": "resnet10t", "num_classes": 4, "in_chans": 1, "cifar_stem": True,
       "backbone_kwargs": {"channels": [4, 4, 4, 4], "stem_width": 4}}  # fmt: skip
VIT = {"backbone": "vit_tiny_patch16_224", "num_classes": 4, "in_chans": 1,
       "backbone_kwargs": {"img_size": 16, "patch_size": 4, "depth": 2, "embed_dim": 16, "num_heads": 2}}  # fmt: skip


def batch(size: int = 6, seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 1, 16, 16, generator=generator), torch.randint(0, 4, (size,), generator=generator)


class Recorder(openmix.PairMixer):
    """A stand-in mixer: mixup that records the needs it was handed (class attributes set per test)."""

    calls: list

    def mix(self, x, index, lam, generator, **needs):
        self.calls.append(("inputs", needs))
        lam = self.draw_lam(lam, x.shape[0], generator)
        weight = lam.to(x).view(-1, 1, 1, 1)
        return weight * x + (1 - weight) * x[index], lam, None

    def refine_targets(self, mix, **needs):
        self.calls.append(("targets", needs))
        return mix.with_label_weights(torch.full_like(mix.lam, 0.25))


def recorder(hooks: tuple[str, ...], requires: tuple[str, ...]) -> Recorder:
    cls = type("StandIn", (Recorder,), {"hooks": hooks, "requires": requires})
    mixer = cls()
    mixer.calls = []
    return mixer


# ----------------------------------------------------------------------------------------------- typed components
def test_the_mixer_and_the_objective_are_typed_components():
    model = MixClassifier(**CNN, mixer=CutMix(alpha=0.5, mode="elem"), objective=RegMixupLoss(eta=2.0))
    assert isinstance(model.mixer, CutMix) and model.mixer.alpha == 0.5 and model.mixer.mode == "elem"
    assert isinstance(model.objective, RegMixupLoss) and model.objective.eta == 2.0
    by_name = MixClassifier(**CNN, mixer="cutmix", mixer_kwargs={"alpha": 0.5}, objective="regmixup")
    assert type(by_name.mixer) is CutMix and by_name.mixer.alpha == 0.5  # the short form stays an alias
    with pytest.raises(ValueError, match="mixer_kwargs \\['alpha'\\] given with a built CutMix"):
        MixClassifier(**CNN, mixer=CutMix(), mixer_kwargs={"alpha": 0.5})
    with pytest.raises(TypeError, match="mixer must be an openmix Mixer"):
        MixClassifier(**CNN, mixer=nn.Identity())
    with pytest.raises(ValueError, match="objective_kwargs"):
        MixClassifier(**CNN, objective=RegMixupLoss(), objective_kwargs={"eta": 1.0})


def test_randomchoice_takes_mixer_objects_and_passes_on_label_refinement():
    attention_child = recorder(("inputs", "targets"), ("attention",))
    mixer = RandomChoiceMixer([Mixup(alpha=0.8), attention_child], probs=[0.0, 1.0])
    assert mixer.hooks == ("inputs", "targets") and mixer.requires == ("attention",)
    x, y = batch()
    out = mixer(x, y, generator=torch.Generator().manual_seed(0))
    refined = mixer.refine_targets(out, attention=torch.ones(6, 4, 4))
    torch.testing.assert_close(refined.target_lam, torch.full((6,), 0.25))
    with pytest.raises(ValueError, match="hooks 'features' or 'loss'"):
        RandomChoiceMixer([Mixup(), recorder(("features",), ())])


def test_a_misspelt_mixer_argument_is_rejected_when_the_config_is_parsed(tmp_path):
    from openmix.lightning.cli import resolve_config

    config = tmp_path / "mixer.yaml"
    config.write_text("model:\n  init_args:\n    mixer:\n      class_path: openmix.mixers.CutMix\n"
                      "      init_args:\n        alpah: 0.5\n")  # fmt: skip
    with pytest.raises(ValueError, match="alpah"):
        resolve_config(["--config", "configs/model/resnet_tiny_fmnist.yaml", "--config", str(config)])
    config.write_text(config.read_text().replace("alpah", "alpha"))
    resolved = resolve_config(["--config", "configs/model/resnet_tiny_fmnist.yaml", "--config", str(config)])
    mixer = resolved["model"]["init_args"]["mixer"]
    assert mixer["class_path"] == "openmix.mixers.CutMix" and mixer["init_args"]["alpha"] == 0.5


# ------------------------------------------------------------------------------------------------ the needs
def test_saliency_is_the_channel_norm_of_the_input_gradient_of_the_clean_loss():
    network = openmix.lightning.build_backbone("resnet10t", 4, 3, backbone_kwargs=None, channels=[4, 4, 4, 4])
    x, y = torch.randn(3, 3, 16, 16), torch.tensor([0, 3, 1])
    leaf = x.clone().requires_grad_(True)
    loss = F.cross_entropy(network(leaf), y)
    (gradient,) = torch.autograd.grad(loss, leaf)
    expected = torch.sqrt((gradient**2).sum(dim=1))
    torch.testing.assert_close(input_saliency(network, x, y), expected)
    assert all(p.grad is None for p in network.parameters()), "the saliency pass trains nothing"


def test_class_activation_maps_are_the_classifier_weights_over_the_last_feature_map():
    network = openmix.lightning.build_backbone("resnet10t", 5, 1, channels=[4, 4, 4, 8]).eval()
    x, y = torch.randn(2, 1, 32, 32), torch.tensor([4, 1])
    features = network.forward_features(x)
    head = network.get_classifier()
    for i in range(2):
        expected = (head.weight[y[i]][:, None, None] * features[i]).sum(dim=0) + head.bias[y[i]]
        torch.testing.assert_close(class_activation_maps(network, x, y)[i], expected)
    pooled = class_activation_maps(network, x, y).mean(dim=(1, 2))  # CAM's mean is the logit (global average pool)
    torch.testing.assert_close(pooled, network(x).gather(1, y[:, None])[:, 0])


def test_class_token_attention_is_timms_own_attention_row():
    network = openmix.lightning.build_backbone(VIT["backbone"], 4, 1, **VIT["backbone_kwargs"]).eval()
    attn = network.blocks[-1].attn
    attn.fused_attn = False  # timm then materialises the softmax and passes it through attn_drop
    seen = []
    handle = attn.attn_drop.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    x = torch.randn(3, 1, 16, 16)
    with AttentionRecorder(network) as recorded:
        network(x)
    handle.remove()
    expected = seen[0][:, :, 0, network.num_prefix_tokens :].mean(dim=1).reshape(3, 4, 4)
    torch.testing.assert_close(recorded.attention, expected)


def test_feature_stages_follow_timm_feature_info():
    cnn = openmix.lightning.build_backbone("resnet10t", 4, 1)
    assert feature_stages(cnn) == ["layer1", "layer2", "layer3", "layer4"]  # the stem (reduction 2) is not a stage
    vit = openmix.lightning.build_backbone(VIT["backbone"], 4, 1, **VIT["backbone_kwargs"])
    assert feature_stages(vit) == ["blocks.0", "blocks.1"]


def test_every_need_has_one_provider_computed_at_most_once():
    network = openmix.lightning.build_backbone("resnet10t", 4, 1, channels=[4, 4, 4, 4])
    calls = []
    network.register_forward_hook(lambda module, inputs, output: calls.append(1))
    x, y = batch()
    recorded = {"attention": torch.zeros(6, 2, 2), "embedding": torch.zeros(6, 4)}
    services = StepServices(network, x, y, momentum_model=network, **recorded)
    for need in NEEDS:
        services.get(need)
    forwards = len(calls)
    assert forwards == 2  # saliency and the stage features; CAMs go through forward_features only
    services.provide(NEEDS)
    assert len(calls) == forwards, "a need asked for twice is computed once"
    with pytest.raises(ValueError, match="unknown need"):
        services.get("gradients")


# ------------------------------------------------------------------------------------------- the hook points
def test_hook_inputs_gets_its_needs_from_the_clean_batch_before_mixing():
    mixer = recorder(("inputs",), ("saliency", "cam", "model"))
    model = MixClassifier(**CNN, mixer=mixer)
    x, y = batch()
    model.training_step((x, y), 0)
    ((hook, needs),) = mixer.calls
    assert hook == "inputs" and set(needs) == {"saliency", "cam", "model"} and needs["model"] is model.network
    torch.testing.assert_close(needs["saliency"], input_saliency(model.network, x, y))
    torch.testing.assert_close(needs["cam"], class_activation_maps(model.network, x, y))


def test_hook_targets_gets_the_attention_of_the_mixed_batch_and_sets_the_label_weights():
    mixer = recorder(("inputs", "targets"), ("attention",))
    model = MixClassifier(**VIT, mixer=mixer, objective="regmixup")  # clean batch alongside: its half is left out
    x, y = batch()
    captured = {}
    original = model.refine_targets

    def spy(mix, services):
        captured["mix"] = refined = original(mix, services)
        return refined

    model.refine_targets = spy
    model.training_step((x, y), 0)
    assert [hook for hook, _ in mixer.calls] == ["inputs", "targets"]
    attention = mixer.calls[1][1]["attention"]
    assert attention.shape == (6, 4, 4) and bool((attention > 0).all()) and bool((attention.sum((1, 2)) < 1).all())
    torch.testing.assert_close(captured["mix"].target_lam, torch.full((6,), 0.25))  # what the loss used


def test_hook_features_mixes_the_hidden_state_at_the_drawn_stage():
    class AtStage(Recorder):
        hooks = ("features",)
        input_ranks = (2, 3, 4)

        def draw_stage(self, num_stages, generator=None):
            return 2

        def max_stage(self):
            return 2

    mixer = AtStage(mode="elem")
    mixer.calls = []
    model = MixClassifier(**CNN, mixer=mixer)
    x, y = batch()
    seen = {}
    model.network.layer2.register_forward_hook(lambda m, i, output: seen.setdefault("hidden", output))
    model.network.layer3.register_forward_pre_hook(lambda m, inputs: seen.setdefault("next", inputs[0]))
    model.reseed_mixing(0)
    _, _, mix = model.forward_mixed(x, y, model.step_services(x, y))
    hidden, lam = seen["hidden"], mix.lam.view(-1, 1, 1, 1)
    torch.testing.assert_close(seen["next"], lam * hidden + (1 - lam) * hidden[mix.index])
    assert mix.x.shape == hidden.shape


def test_a_backbone_that_cannot_give_a_need_is_refused_at_construction():
    with pytest.raises(ValueError, match="needs 'attention'.*class-token attention needs a ViT"):
        MixClassifier(**CNN, mixer=recorder(("inputs", "targets"), ("attention",)))
    with pytest.raises(ValueError, match="needs 'cam'.*linear classifier after global average pooling|needs 'cam'"):
        MixClassifier(**VIT, mixer=recorder(("inputs",), ("cam",)))
    with pytest.raises(ValueError, match="needs a momentum network"):
        MixClassifier(**CNN, mixer=recorder(("inputs",), ("momentum_model",)))

    class Deep(Recorder):
        hooks = ("features",)

        def max_stage(self):
            return 9

    with pytest.raises(ValueError, match="up to stage 9.*exposes 4 feature stages"):
        MixClassifier(**CNN, mixer=Deep())


def test_hook_loss_adds_the_mixers_own_loss_and_trains_its_parameters():
    class Learned(Recorder):
        hooks = ("inputs", "loss")

        def __init__(self):
            super().__init__()
            self.calls = []
            self.temperature = nn.Parameter(torch.tensor(2.0))

        def own_loss(self, mix, **needs):
            return self.temperature**2

    model = MixClassifier(**CNN, mixer=Learned())
    x, y = batch()
    loss = model.training_step((x, y), 0)
    plain = model.objective(model(x), openmix.MixOutput.identity(x, y))
    assert float(loss) > 4.0 > 0 and bool(torch.isfinite(plain))
    loss.backward()
    torch.testing.assert_close(model.mixer.temperature.grad, torch.tensor(4.0))
    optimizer = model.configure_optimizers  # the mixer's parameters are among the module's
    assert any(p is model.mixer.temperature for p in model.parameters()) and callable(optimizer)


# ------------------------------------------------------------------------------------------ k-source MixOutput
def k_source_output() -> tuple[openmix.MixOutput, Tensor]:
    y = torch.tensor([0, 1, 2, 3])
    indices = torch.tensor([[0, 1, 2], [1, 2, 3], [2, 3, 0], [3, 0, 1]])
    weights = torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.4, 0.0], [0.2, 0.7, 0.1], [1.0, 0.0, 0.0]])
    lam = weights[:, 0]
    x = torch.zeros(4, 1, 2, 2)
    out = openmix.MixOutput(x, indices[:, 1], lam, y, y[indices[:, 1]], None, indices=indices, weights=weights)
    return out, weights


def test_k_source_soft_targets_and_every_objective_accept_both_forms():
    out, weights = k_source_output()
    expected = torch.zeros(4, 5)
    for i in range(4):
        for j in range(3):
            expected[i, int(out.y_a[out.indices[i, j]])] += weights[i, j]
    torch.testing.assert_close(out.soft_targets(5), expected)
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    direct = -(expected * logits.log_softmax(dim=-1)).sum(dim=1).mean()
    torch.testing.assert_close(SoftTargetCrossEntropy()(logits, out), direct)
    bce = F.binary_cross_entropy_with_logits(logits, expected, reduction="none").mean(dim=1).mean()
    torch.testing.assert_close(MixedBinaryCrossEntropy()(logits, out), bce)
    torch.testing.assert_close(RegMixupLoss(eta=1.0)(logits, out, logits), direct + F.cross_entropy(logits, out.y_a))
    assert bool(torch.isfinite(DecoupledMixupLoss()(logits, out)))
    accuracy = MixClassifier.mixed_accuracy(logits, out)
    hits = torch.stack([(logits.argmax(1) == out.y_a[out.indices[:, j]]).float() for j in range(3)], dim=1)
    torch.testing.assert_close(accuracy, (weights * hits).sum(dim=1).mean())


def test_label_weights_that_do_not_sum_to_one_weight_each_label_as_given():
    x, y = batch(4)
    out = CutMix()(x, y, generator=torch.Generator().manual_seed(0)).with_label_weights(
        torch.tensor([[0.7, 0.6], [0.1, 0.2], [1.0, 0.0], [0.3, 0.3]])
    )
    targets = out.soft_targets(4)
    expected = 0.0 + torch.tensor([[0.7], [0.1], [1.0], [0.3]]) * F.one_hot(y, 4)
    expected = expected + torch.tensor([[0.6], [0.2], [0.0], [0.3]]) * F.one_hot(y[out.index], 4)
    torch.testing.assert_close(targets, expected)
    lam_before = out.lam.clone()
    assert torch.equal(out.lam, lam_before)  # the pixel share is untouched


# ------------------------------------------------------------------------------------- every method in the trainer
def backbone_for(entry: openmix.MixerEntry) -> dict:
    """A backbone that can give what the mixer needs: a ViT for class-token attention, else a small CNN."""
    return VIT if "attention" in entry.requires else CNN


# learned mixers that MixClassifier trains itself (trained_by None: AdaMixUp) too; AutoMix has its own pipeline
TRAINED_BY_MIXCLASSIFIER = [n for n in openmix.list_mixers() if openmix.get_mixer_entry(n).cls.trained_by is None]


@pytest.mark.parametrize("name", TRAINED_BY_MIXCLASSIFIER)
def test_every_method_trains_through_the_hook_points(name):
    """One training step of every registered method with its paper defaults: a finite loss, gradients in the
    network, and the label weights the loss used summing to what the method declares (pixel shares sum to 1)."""
    entry = openmix.get_mixer_entry(name)
    model = MixClassifier(
        **backbone_for(entry), mixer=name, mixer_kwargs={"mode": "elem"} if "mode" in entry.defaults else None
    )
    x, y = batch(6, seed=3)
    used = {}
    original = model.objective.forward
    model.objective.forward = lambda logits, mix, *rest: used.setdefault("mix", mix) and original(logits, mix, *rest)
    for step in range(3):  # several draws: stages, branches, boxes
        used.clear()
        loss = model.training_step((x, y), step)
        assert bool(torch.isfinite(loss))
        loss.backward()
        mix = used["mix"]
        assert mix.lam.shape == (6,) and bool(((mix.lam >= 0) & (mix.lam <= 1)).all())
        if mix.label_weights is None:
            torch.testing.assert_close(mix.label_weight_matrix().sum(dim=1), torch.ones(6))
    assert all(p.grad is not None for p in model.network.parameters() if p.requires_grad)


FEATURE_MIXERS = [n for n in openmix.list_mixers() if "features" in openmix.get_mixer_entry(n).hooks]


@pytest.mark.parametrize("backbone", [CNN, VIT], ids=["cnn", "vit"])
@pytest.mark.parametrize("name", FEATURE_MIXERS)
def test_hidden_state_mixers_work_on_timm_cnns_and_vits(name, backbone):
    """At every stage a mixer may draw, on a CNN (stages from feature_info) and a ViT (blocks, (B, N, D) tokens)."""
    model = MixClassifier(**backbone, mixer=name, mixer_kwargs={"layers": (0, 1, 2)})  # the ViT has 2 blocks
    x, y = batch(5, seed=1)
    stages = set()
    for step in range(12):
        model.reseed_mixing(step)
        stage = model.mixer.draw_stage(len(model.feature_stages), model.mixing_generator)
        stages.add(stage)
        model.mixer.draw_stage = lambda num_stages, generator=None, stage=stage: stage  # replay the draw
        model.reseed_mixing(step)
        logits, _, mix = model.forward_mixed(x, y, model.step_services(x, y))
        del model.mixer.draw_stage
        assert logits.shape == (5, 4) and bool(torch.isfinite(logits).all())
        assert mix.x.dim() == (4 if stage == 0 or backbone is CNN else 3)
    assert stages == {0, 1, 2}


def test_a_checkpoint_brings_back_the_typed_mixer_and_objective(tmp_path):
    """Built in Python, the components are pickled into the checkpoint's hyperparameters (LightningCLI saves their
    class_path form instead, which load_from_checkpoint rebuilds: covered by the CLI tests' evaluation runs)."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    x, y = batch(8)
    model = MixClassifier(**CNN, mixer=openmix.mixers.GridMix(alpha=0.3, mode="elem"), objective=RegMixupLoss(eta=2.0))
    trainer = L.Trainer(max_steps=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    back = MixClassifier.load_from_checkpoint(tmp_path / "model.ckpt", weights_only=False)
    assert (type(back.mixer).__name__, back.mixer.alpha, back.mixer.mode) == ("GridMix", 0.3, "elem")
    assert isinstance(back.objective, RegMixupLoss) and back.objective.eta == 2.0


def test_randomchoice_computes_only_the_chosen_childs_needs_and_keeps_a_fixed_state_dict():
    needy = recorder(("inputs",), ("saliency",))
    model = MixClassifier(**CNN, mixer=RandomChoiceMixer([openmix.mixers.GridMix(), needy], probs=[1.0, 0.0]))
    keys = set(model.state_dict())
    calls = []
    model.network.register_forward_hook(lambda module, inputs, output: calls.append(1))
    x, y = batch()
    model.training_step((x, y), 0)
    assert len(calls) == 1 and needy.calls == []  # the training forward only: no saliency pass for GridMix
    assert set(model.state_dict()) == keys  # the chosen child is not registered twice
    model.mixer.probs = [0.0, 1.0]
    model.training_step((x, y), 1)
    assert len(calls) == 3 and set(needy.calls[0][1]) == {"saliency"}


def test_what_a_backbone_cannot_do_is_refused_when_the_model_is_built():
    with pytest.raises(ValueError, match="mixes hidden states, which are mixed out of place"):
        MixClassifier(**CNN, mixer=openmix.mixers.ManifoldMix(layers=(1, 2), inplace=True))
    convnext = {**CNN, "backbone": "convnext_atto", "backbone_kwargs": {}, "cifar_stem": False}
    with pytest.raises(ValueError, match="normalises the pooled features first"):
        MixClassifier(**convnext, mixer="snapmix")
    avg_vit = {**VIT, "backbone_kwargs": {**VIT["backbone_kwargs"], "global_pool": "avg", "class_token": False}}
    with pytest.raises(ValueError, match="works on tokens"):
        MixClassifier(**avg_vit, mixer="snapmix")
    small_patches = {**VIT, "backbone_kwargs": {**VIT["backbone_kwargs"], "patch_size": 2}}
    assert MixClassifier(**small_patches, mixer="manifoldmix").feature_stages == ["blocks.0", "blocks.1"]
