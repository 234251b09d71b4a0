"""SUMix: the re-estimated ratio per sample, the uncertainty regulariser against a computation written here, what each
loss trains (torch.autograd.grad), the base mixers it wraps and its place in the training step."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import openmix
from openmix.lightning import MixClassifier
from openmix.losses import SoftTargetCrossEntropy
from openmix.mixers import CutMix, FMix, Mixup, ResizeMix, SUMix
from openmix.mixers.sumix import reestimated_weights

CNN = {"backbone": "resnet10t", "num_classes": 4, "in_chans": 1, "cifar_stem": True,
       "backbone_kwargs": {"channels": [4, 4, 4, 4], "stem_width": 4}}  # fmt: skip
CLASSES = 4


class Probe(nn.Module):
    """A network the tests can follow by hand: a 1x1 convolution (the feature extractor), the pixel mean (the
    pooled embedding) and a linear classifier, 2 x the identity at first (logits = 2 x the channel means)."""

    def __init__(self, classes: int = CLASSES):
        super().__init__()
        self.conv = nn.Conv2d(classes, classes, 1, bias=False)
        self.fc = nn.Linear(classes, classes)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(classes).view(classes, classes, 1, 1))
            self.fc.weight.copy_(2.0 * torch.eye(classes))
            self.fc.bias.zero_()

    def embed(self, x: Tensor) -> Tensor:
        return self.conv(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.embed(x))

    def get_classifier(self) -> nn.Module:
        return self.fc


def class_images(labels: list[int], amplitudes: list[float], size: int = 8) -> Tensor:
    """(B, CLASSES, size, size): image i is ``amplitudes[i]`` on the channel of its class and 0 elsewhere, so a mix's
    channel means (the Probe's embedding) hold each source's class in proportion to its pixels."""
    images = torch.zeros(len(labels), CLASSES, size, size)
    for i, (label, amplitude) in enumerate(zip(labels, amplitudes)):
        images[i, label] = amplitude
    return images


def built(network: nn.Module, **kwargs) -> SUMix:
    torch.manual_seed(0)  # the uncertainty layer's initialisation
    mixer = SUMix(**kwargs)
    mixer.check_network(network)
    return mixer


def direct_sumix(
    network: Probe, layer: nn.Linear | None, clean: Tensor, mix, prior: Tensor, similarity: str = "visible"
) -> tuple[Tensor, Tensor]:
    """lam_hat (B,) and the regulariser, one sample at a time from the formulas (cls_mixup_head.py:453, 487-520 of
    JinXins/SUMix, the regulariser per sample), the scale being the batch size; ``"visible"`` takes the softmax of
    q - p_mix, ``"released"`` the code's p_mix - q."""
    sign = 1.0 if similarity == "released" else -1.0
    batch = clean.shape[0]
    clean_embedding, mixed_embedding = network.embed(clean), network.embed(mix.x)
    clean_logits, mixed_logits = network.fc(clean_embedding), network.fc(mixed_embedding)

    def certainty(embedding: Tensor, logits: Tensor) -> Tensor:
        if layer is None:
            return logits
        values = torch.softmax(layer(embedding), dim=-1)
        return values / torch.sqrt((values**2).sum(dim=-1, keepdim=True))

    u_clean, u_mixed = certainty(clean_embedding, clean_logits), certainty(mixed_embedding, mixed_logits)
    lam_hat, regularizer = [], 0.0
    for i in range(batch):
        j, a, b = int(mix.index[i]), int(mix.y_a[i]), int(mix.y_b[i])
        p_own = torch.softmax(clean_logits[i].detach(), dim=0).clone()
        p_partner = torch.softmax(clean_logits[j].detach(), dim=0).clone()
        p_mix = torch.softmax(mixed_logits[i].detach(), dim=0)
        p_own[b] = 0.0
        p_partner[a] = 0.0
        s_a = torch.softmax(sign * (p_mix - p_own), dim=0)
        s_b = torch.softmax(sign * (p_mix - p_partner), dim=0)
        s_a = s_a / torch.sqrt((s_a**2).sum()) * batch
        s_b = s_b / torch.sqrt((s_b**2).sum()) * batch
        share_a = prior[i, 0] * torch.exp(-s_a[a])
        share_b = prior[i, 1] * torch.exp(-s_b[b])
        lam_hat.append(share_a / (share_a + share_b))
        logits_a = torch.exp(-(u_clean[i] + u_mixed[i] + s_a))
        logits_b = torch.exp(-(u_clean[j] + u_mixed[i] + s_b))
        loss_a = -torch.log_softmax(logits_a, dim=0)[a]
        loss_b = -torch.log_softmax(logits_b, dim=0)[b]
        regularizer = regularizer + prior[i, 0] * loss_a + prior[i, 1] * loss_b
    return torch.stack(lam_hat), regularizer / batch


def one_step(mixer: SUMix, network: Probe, x: Tensor, y: Tensor, **call):
    mix = mixer(x, y, generator=torch.Generator().manual_seed(0), model=network, **call)
    logits = network(mix.x)
    refined = mixer.refine_targets(mix, model=network)
    return mix, logits, refined


# --------------------------------------------------------------------------------------- the ratio, per sample
def test_two_samples_with_one_pixel_share_get_their_own_ratios():
    """One CutMix box for the batch gives every sample the same pixel share, but sample 0 (a strong image pasted
    over by a weak one) and sample 3 (the reverse) show their sources differently: each gets its own lam_hat, the
    formula's; the loss weights each sample's cross entropies with its own lam_hat, not the batch mean (the released
    code's cls_mixup_head.py:516-517)."""
    network = Probe()
    x, y = class_images([0, 1, 2, 3], [4.0, 1.0, 2.0, 1.0]), torch.tensor([0, 1, 2, 3])
    mixer = built(network, mixer=CutMix(alpha=1.0, pairing="flip"))
    mix, logits, refined = one_step(mixer, network, x, y, lam=0.5)
    assert torch.all(mix.lam == mix.lam[0]) and 0 < float(mix.lam[0]) < 1
    lam_hat = refined.label_weights[:, 0]
    assert abs(float(lam_hat[0] - lam_hat[3])) > 0.02, "the same pixel share, different contents: different ratios"
    expected, _ = direct_sumix(network, mixer.uncertainty, x, mix, mix.label_weight_matrix())
    torch.testing.assert_close(lam_hat, expected.detach())
    torch.testing.assert_close(refined.label_weights[:, 1], 1 - lam_hat)
    assert torch.equal(refined.lam, mix.lam) and torch.equal(refined.x, mix.x)  # the pixels stay the base's
    per_sample = lam_hat * F.cross_entropy(logits, mix.y_a, reduction="none") + (1 - lam_hat) * F.cross_entropy(
        logits, mix.y_b, reduction="none"
    )
    used = SoftTargetCrossEntropy()(logits, refined)
    torch.testing.assert_close(used, per_sample.mean())
    collapsed = (F.cross_entropy(logits, mix.y_a) * lam_hat + F.cross_entropy(logits, mix.y_b) * (1 - lam_hat)).mean()
    assert not torch.isclose(used, collapsed), "the batch-mean form of the released code weighs samples differently"


@pytest.mark.parametrize("similarity", ["visible", "released"])
def test_the_share_follows_what_the_mix_shows_and_the_released_sign_inverts_it(similarity):
    """The default gives y_a a larger share as the mixed image shows more of y_a's class (the paper's aim); the
    released similarity (cls_mixup_head.py:494-514, ``similarity="released"``) does the opposite. Both against the
    formula written out above."""
    network = Probe()
    y = torch.tensor([0, 1])
    shares = []
    for strong in (1.0, 4.0):  # sample 0's image ever stronger, same pixels share
        x = class_images([0, 1], [strong, 1.0])
        mixer = built(network, mixer=Mixup(pairing="flip"), similarity=similarity)
        mix, _, refined = one_step(mixer, network, x, y, lam=0.5)
        expected, _ = direct_sumix(network, mixer.uncertainty, x, mix, mix.label_weight_matrix(), similarity)
        torch.testing.assert_close(refined.label_weights[:, 0], expected.detach())
        shares.append(float(refined.label_weights[0, 0]))
    assert shares[1] > shares[0] if similarity == "visible" else shares[1] < shares[0]


def test_the_trainers_recorded_embedding_replaces_a_second_mixed_pass():
    """In a training step the network runs twice (the mixed batch, then the clean one for SUMix), not three times,
    and the recorded embedding gives what a separate mixed pass gives."""
    model = MixClassifier(**CNN, mixer="sumix")
    model.mixer.mixer.alpha = 1.0
    calls = []
    model.network.register_forward_hook(lambda *args: calls.append(1))
    x, y = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.no_grad():
        model.network.eval()  # batch norm on running statistics: passes of the same batch agree
        mix = model.mixer(x, y, generator=torch.Generator().manual_seed(1), model=model.network)
        with openmix.lightning.services.EmbeddingRecorder(model.network) as recorder:
            model.network(mix.x)
        recorded = model.mixer.refine_targets(mix, model=model.network, embedding=recorder.embedding)
        mix = model.mixer(x, y, generator=torch.Generator().manual_seed(1), model=model.network)
        again = model.mixer.refine_targets(mix, model=model.network)
    torch.testing.assert_close(recorded.label_weights, again.label_weights)
    model.network.train()
    calls.clear()
    model.training_step((x, y), 0)
    assert len(calls) == 2


def test_a_large_scale_does_not_underflow():
    """e^{-s} underflows for a large batch (the scale is the batch size); the ratio is computed in log space."""
    prior = torch.tensor([[0.3, 0.7], [1.0, 0.0], [0.0, 0.0]])
    distance_a, distance_b = torch.tensor([900.0, 5.0, 1.0]), torch.tensor([1000.0, 1.0, 1.0])
    weights = reestimated_weights(prior, distance_a, distance_b)
    assert bool(torch.isfinite(weights).all())
    expected = 0.3 * torch.exp(torch.tensor(100.0, dtype=torch.float64))
    expected = float(expected / (expected + 0.7))
    assert weights[0, 0] == pytest.approx(expected) and weights[1].tolist() == [1.0, 0.0]
    assert weights[2].tolist() == [0.0, 0.0]  # no prior weight at all: kept


# ------------------------------------------------------------------------------------------- the regulariser
@pytest.mark.parametrize("head", [True, False], ids=["uncertainty_layer", "logits"])
def test_the_regulariser_is_the_formula_written_out(head):
    network = Probe()
    generator = torch.Generator().manual_seed(3)
    x, y = torch.rand(5, CLASSES, 8, 8, generator=generator), torch.tensor([0, 3, 1, 1, 2])
    mixer = built(network, mixer=FMix(alpha=1.0, mode="elem"), gamma=0.7, uncertainty_head=head)
    mix, _, refined = one_step(mixer, network, x, y)
    loss = mixer.own_loss(refined, model=network)
    lam_hat, regularizer = direct_sumix(network, mixer.uncertainty, x, mix, mix.label_weight_matrix())
    torch.testing.assert_close(refined.label_weights[:, 0], lam_hat.detach())
    torch.testing.assert_close(loss, 0.7 * regularizer)
    parameters = [network.conv.weight, network.fc.weight, *mixer.parameters()]
    mine = torch.autograd.grad(loss, parameters, allow_unused=True)
    written = torch.autograd.grad(0.7 * regularizer, parameters, allow_unused=True)
    for got, expected in zip(mine, written):  # the same gradients: through the clean and the mixed pass
        assert (got is None) == (expected is None)
        if got is not None:
            torch.testing.assert_close(got, expected)


def test_own_loss_without_refine_targets_computes_the_same():
    network = Probe()
    x, y = torch.rand(4, CLASSES, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3])
    mixer = built(network)
    mix, _, refined = one_step(mixer, network, x, y)
    kept = mixer.own_loss(refined, model=network)
    again = mixer(x, y, generator=torch.Generator().manual_seed(0), model=network)
    torch.testing.assert_close(mixer.own_loss(again, model=network), kept)


# ------------------------------------------------------------------------------------------ what each loss trains
def test_each_loss_trains_what_the_paper_trains_with_it():
    """The objective (labels lam_hat, no gradient) trains the network and not the uncertainty layer; the
    regulariser trains the layer and the feature extractor, not the classifier (whose outputs it reads without
    gradient)."""
    network = Probe()
    x, y = torch.rand(6, CLASSES, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 2, 3, 0, 1])
    mixer = built(network, mode="elem")
    _, logits, refined = one_step(mixer, network, x, y)
    assert not refined.label_weights.requires_grad
    objective = SoftTargetCrossEntropy()(logits, refined)
    regularizer = mixer.own_loss(refined, model=network)
    layer = list(mixer.uncertainty.parameters())
    parts = {"layer": layer, "extractor": [network.conv.weight], "classifier": [network.fc.weight, network.fc.bias]}

    def reached(loss: Tensor) -> set[str]:
        names = [name for name, ps in parts.items() for _ in ps]
        flat = [p for ps in parts.values() for p in ps]
        grads = torch.autograd.grad(loss, flat, allow_unused=True, retain_graph=True)
        return {name for name, g in zip(names, grads) if g is not None and bool(g.abs().sum() > 0)}

    assert reached(objective) == {"extractor", "classifier"}
    assert reached(regularizer) == {"layer", "extractor"}


def test_without_the_layer_the_regulariser_trains_the_classifier():
    network = Probe()
    x, y = torch.rand(4, CLASSES, 8, 8, generator=torch.Generator().manual_seed(4)), torch.tensor([0, 1, 2, 3])
    mixer = built(network, uncertainty_head=False)
    assert list(mixer.parameters()) == []
    _, _, refined = one_step(mixer, network, x, y)
    grads = torch.autograd.grad(mixer.own_loss(refined, model=network), [network.fc.weight, network.conv.weight])
    assert all(bool(g.abs().sum() > 0) for g in grads)


# ----------------------------------------------------------------------------------------------- the base mixer
def test_the_base_mixer_is_given_like_a_config_gives_it():
    assert SUMix().mixer.alpha == 0.2 and isinstance(SUMix().mixer, CutMix)  # the authors' CIFAR-100 base
    by_name = SUMix("fmix", alpha=0.3, mode="elem", pairing="flip")
    assert isinstance(by_name.mixer, FMix) and (by_name.mixer.alpha, by_name.mixer.mode) == (0.3, "elem")
    assert by_name.mixer.pairing == "flip" and by_name.requires == ("embedding", "model")
    assert SUMix({"name": "cutmix", "alpha": 1.0}, alpha=0.3).mixer.alpha == 1.0  # the mapping's own wins
    typed = SUMix({"class_path": "openmix.mixers.ResizeMix", "init_args": {"alpha": 1.0}})
    assert isinstance(typed.mixer, ResizeMix) and typed.mixer.alpha == 1.0 and typed.moves_partner
    own = CutMix(alpha=2.0, mode="elem")
    assert SUMix(own).mixer is own and SUMix(own).shares_batch_mask == own.shares_batch_mask
    assert SUMix("snapmix").requires == ("cam", "embedding", "model")
    x, y = torch.rand(6, 3, 12, 12, generator=torch.Generator().manual_seed(0)), torch.arange(6)
    alone = own(x, y, generator=torch.Generator().manual_seed(5))
    wrapped = SUMix(own)(x, y, generator=torch.Generator().manual_seed(5))
    for field in ("x", "index", "lam", "mask"):  # the pixels are the base mixer's
        assert torch.equal(getattr(alone, field), getattr(wrapped, field))


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("transmix", ValueError, "acts on the images only"),
        ("manifoldmix", ValueError, "acts on the images only"),
        ("comixup", ValueError, "two-source"),
        ("randomchoice", ValueError, "two-source"),
        (3, TypeError, "mixer must be"),
        ({"alpha": 1.0}, ValueError, "needs a 'name' or 'class_path'"),
        ({"class_path": "torch.nn.Linear"}, TypeError, "not an openmix Mixer"),
        ({"class_path": "openmix.mixers.NoSuchMix"}, ValueError, "names no class"),
        ("cutmx", ValueError, "did you mean 'cutmix'"),
    ],
)
def test_what_cannot_be_wrapped_is_refused(spec, error, message):
    with pytest.raises(error, match=message):
        SUMix(spec)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"gamma": -0.1}, ValueError, "gamma"),
        ({"gamma": "1"}, TypeError, "gamma"),
        ({"distance_scale": 0.0}, ValueError, "distance_scale"),
        ({"uncertainty_head": 1}, TypeError, "uncertainty_head"),
        ({"num_features": 0}, ValueError, "num_features"),
        ({"alpha": 0}, ValueError, "alpha"),
        ({"mode": "each"}, ValueError, "mode"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, name):
    with pytest.raises(error, match=name):
        SUMix(**kwargs)


# ---------------------------------------------------------------------------------------- the network and calls
def test_the_network_must_have_a_linear_classifier_and_matching_sizes():
    with pytest.raises(ValueError, match="get_classifier\\(\\) is an nn.Linear"):
        SUMix().check_network(nn.Sequential(nn.Flatten(), nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="num_features=7.*maps 4 features to 4 classes"):
        SUMix(num_features=7, num_classes=4).check_network(Probe())
    given = SUMix(num_features=4, num_classes=4)
    layer = given.uncertainty
    given.check_network(Probe())
    assert given.uncertainty is layer


def test_refining_needs_the_last_call_the_network_and_the_layer():
    network = Probe()
    x, y = torch.rand(4, CLASSES, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(4)
    mixer = built(network)
    with pytest.raises(ValueError, match="output of its last call"):
        mixer.refine_targets(openmix.MixOutput.identity(x, y), model=network)
    mix = mixer(x, y, model=network)
    with pytest.raises(ValueError, match="pass model="):
        mixer.refine_targets(mix)
    with pytest.raises(ValueError, match="unexpected arguments \\['attention'\\]"):
        mixer.refine_targets(mix, model=network, attention=None)
    unbuilt = SUMix()
    with pytest.raises(ValueError, match="uncertainty layer is not built"):
        unbuilt.refine_targets(unbuilt(x, y, model=network), model=network)


def test_soft_targets_enter_through_their_arg_max_and_the_state_is_not_copied():
    network = Probe()
    generator = torch.Generator().manual_seed(6)
    x = torch.rand(4, CLASSES, 8, 8, generator=generator)
    soft = torch.softmax(3 * torch.randn(4, CLASSES, generator=generator), dim=1)
    mixer = built(network, mode="elem")
    _, _, from_soft = one_step(mixer, network, x, soft)
    clone = copy.deepcopy(mixer)  # the step's tensors (with their graphs) stay behind
    assert clone._last is None and clone._cached is None
    mixer_ids = built(network, mode="elem")
    _, _, from_ids = one_step(mixer_ids, network, x, soft.argmax(dim=1))
    torch.testing.assert_close(from_soft.label_weights, from_ids.label_weights)
    assert from_soft.soft_targets(CLASSES).shape == (4, CLASSES)


# ------------------------------------------------------------------------------------------ in the training step
def test_the_training_step_uses_the_refined_labels_and_adds_the_regulariser():
    model = MixClassifier(**CNN, mixer=SUMix(mode="elem", gamma=0.5))
    assert model.mixer.uncertainty.in_features == model.network.get_classifier().in_features
    assert any(p is model.mixer.uncertainty.weight for p in model.parameters())  # trained with the network
    seen: dict = {}
    refine, own, objective = model.mixer.refine_targets, model.mixer.own_loss, model.objective.forward

    def spy_refine(mix, **needs):
        seen["needs"], seen["refined"] = set(needs), refine(mix, **needs)
        return seen["refined"]

    def spy_own(mix, **needs):
        seen["own"] = own(mix, **needs)
        return seen["own"]

    def spy_objective(logits, mix, *rest):
        seen["used"], seen["objective"] = mix, objective(logits, mix, *rest)
        return seen["objective"]

    model.mixer.refine_targets, model.mixer.own_loss, model.objective.forward = spy_refine, spy_own, spy_objective
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 1, 16, 16, generator=generator), torch.randint(0, 4, (6,), generator=generator)
    loss = model.training_step((x, y), 0)
    assert seen["needs"] == {"model", "embedding"} and seen["used"] is seen["refined"]
    torch.testing.assert_close(loss, seen["objective"] + seen["own"])
    loss.backward()
    assert model.mixer.uncertainty.weight.grad is not None
    fresh = MixClassifier(**CNN, mixer=SUMix(mode="elem"))
    fresh.load_state_dict(model.state_dict())  # a checkpoint's keys: the layer exists from construction
    torch.testing.assert_close(fresh.mixer.uncertainty.weight, model.mixer.uncertainty.weight)
