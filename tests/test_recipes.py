"""The committed recipes against their published sources.

Each test reads what a config or a data module really produces (an optimizer, a learning-rate schedule, a crop, a
stream of lambdas, a loss) and compares it with the value the source states; docs/decisions.md ("Recipes") lists
the sources, file and line.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import model_config_for
from PIL import Image
from torchvision.transforms import v2

import openmix
from openmix import losses
from openmix.cli import run_lightning

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from count_syncs import count_sync_ops  # noqa: E402

from openmix.data import (
    PADDING_MODES,
    ArrayImageDataset,
    CIFAR10Data,
    CIFAR100Data,
    FashionMNISTData,
    ImageNetData,
    TinyImageNetData,
    folder_transform,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def build(tmp_path: Path, *configs: str, extra: tuple[str, ...] = ()):
    """Parse and instantiate stacked config files (relative to configs/) as ``openmix fit`` would, on the CPU."""
    args = [arg for name in configs for arg in ("--config", str(CONFIGS / name))]
    args += [f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false", "--trainer.accelerator=cpu"]
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when pytest's own arguments are on sys.argv
    try:
        return run_lightning([*args, *extra], run=False)
    finally:
        sys.argv = argv


# ------------------------------------------------------------------------------------- 1. CIFAR weight decay 1e-4
@pytest.mark.parametrize("data", ["cifar10.yaml", "cifar100.yaml"])
def test_cifar_resnet18_recipe_has_openmixup_weight_decay(tmp_path, data):
    """OpenMixup configs/classification/cifar{10,100}/mixups/basic/r18_mixups_CE_none.py: SGD lr 0.1, momentum 0.9,
    weight_decay 0.0001 (line 46 / 39)."""
    model = build(tmp_path, f"data/{data}", "model/cifar_resnet18.yaml", "mixers/cifar/mixup.yaml").model
    optimizer = model.optimizer_factory(model.parameters())
    for group in optimizer.param_groups:
        assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.9, 1e-4)


@pytest.mark.parametrize("mixer", sorted(path.name for path in (CONFIGS / "mixers" / "cifar").glob("*.yaml")))
def test_no_cifar_mixer_config_changes_the_weight_decay(tmp_path, mixer):
    model_config = model_config_for(CONFIGS / "mixers" / "cifar" / mixer)
    model = build(tmp_path, "data/cifar100.yaml", model_config, f"mixers/cifar/{mixer}").model
    expected = build(tmp_path, "data/cifar100.yaml", model_config).model  # the model config's own decay
    decays = {group["weight_decay"] for group in model.optimizer_factory(model.parameters()).param_groups}
    assert decays == {group["weight_decay"] for group in expected.optimizer_factory(expected.parameters()).param_groups}
    assert decays <= {1e-4, 0.05}  # OpenMixup's ResNet-18 and DeiT-Tiny recipes


# ------------------------------------------------------------------------------- 2. CIFAR crops: reflect padding
def known_image(height: int = 8, width: int = 8) -> np.ndarray:
    """uint8 (H, W, 3) that is never 0 (channel c of (r, x) holds 1 + (3 * (r * W + x) + c) % 255): zero padding
    shows; up to 85 pixels all values differ."""
    values = 3 * np.arange(height * width).reshape(height, width, 1) + np.arange(3).reshape(1, 1, 3)
    return (1 + values % 255).astype(np.uint8)


def crop_at(dataset: ArrayImageDataset, index: int, dy: int, dx: int) -> np.ndarray:
    """The raw uint8 (H, W, C) crop of sample ``index`` at offset (dy, dx), unflipped, read back from __getitem__."""
    dataset.crop_offsets[index] = torch.tensor([dy, dx])
    dataset.flips[index] = False
    x, _ = dataset[index]
    raw = (x * dataset.std + dataset.mean) * 255
    return raw.round().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_every_crop_offset_equals_numpy_padding(padding_mode):
    image, padding = known_image(6, 5), 3
    dataset = ArrayImageDataset(
        image[None], [0], (0.5,) * 3, (0.25,) * 3, augment="crop_flip", padding=padding, padding_mode=padding_mode
    )
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)), mode=padding_mode)
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            np.testing.assert_array_equal(crop_at(dataset, 0, dy, dx), padded[dy : dy + 6, dx : dx + 5])


def test_cifar100_crop_near_the_border_holds_reflected_pixels_not_zeros(tmp_path):
    """OpenMixup configs/classification/_base_/datasets/cifar100/sz32_bs100.py, line 7:
    RandomCrop(size=32, padding=4, padding_mode="reflect")."""
    images = np.stack([known_image(32, 32)] * 2)
    data = CIFAR100Data(root=str(tmp_path / "unused"), batch_size=2)
    data.load_arrays = lambda train: (images, np.array([0, 1]))  # no files: the arrays the module would read
    data.setup("fit")
    crop = crop_at(data.train_set, 0, 0, 0)  # the top-left corner: 4 padded rows and columns, then the image
    assert crop.min() > 0  # no zero padding anywhere
    # padded row/column -k shows image row/column k (reflection without repeating the edge)
    for k in range(1, 5):
        np.testing.assert_array_equal(crop[4 - k, 4:], images[0][k, : 32 - 4])
        np.testing.assert_array_equal(crop[4:, 4 - k], images[0][: 32 - 4, k])
    np.testing.assert_array_equal(crop[0, 0], images[0][4, 4])
    np.testing.assert_array_equal(crop[4:, 4:], images[0][:28, :28])


def test_cifar10_and_fashion_mnist_keep_zero_padding(tmp_path):
    """OpenMixup configs/classification/_base_/datasets/cifar10/sz32_bs100.py, line 7: RandomCrop(size=32,
    padding=4), zeros; Fashion-MNIST has no published recipe and keeps zeros."""
    images = np.stack([known_image(32, 32)] * 2)
    data = CIFAR10Data(root=str(tmp_path / "unused"), batch_size=2)
    data.load_arrays = lambda train: (images, np.array([0, 1]))
    data.setup("fit")
    crop = crop_at(data.train_set, 0, 0, 0)
    assert (crop[:4] == 0).all() and (crop[:, :4] == 0).all()
    assert CIFAR100Data().padding_mode == "reflect"
    assert CIFAR10Data().padding_mode == "constant" and FashionMNISTData().padding_mode == "constant"
    assert CIFAR10Data(padding_mode="reflect").padding_mode == "reflect"


@pytest.mark.parametrize(("data", "mode"), [("cifar10.yaml", "constant"), ("cifar100.yaml", "reflect")])
def test_cifar_data_configs_set_the_published_padding(tmp_path, data, mode):
    assert build(tmp_path, f"data/{data}").datamodule.padding_mode == mode


def test_padding_mode_is_validated_with_the_argument_named():
    images = known_image()[None]
    with pytest.raises(ValueError, match="padding_mode"):
        ArrayImageDataset(images, [0], (0.5,) * 3, (0.5,) * 3, augment="crop_flip", padding_mode="zeros")
    with pytest.raises(ValueError, match="padding_mode"):
        CIFAR100Data(padding_mode="mirror")
    with pytest.raises(ValueError, match="padding_mode='reflect'.*padding=8"):  # a mirror needs padding < side
        ArrayImageDataset(images, [0], (0.5,) * 3, (0.5,) * 3, augment="crop_flip", padding=8, padding_mode="reflect")
    ArrayImageDataset(images, [0], (0.5,) * 3, (0.5,) * 3, augment="crop_flip", padding=8, padding_mode="symmetric")


# ------------------------------------------------------------------- folder datasets: bicubic resampling (OpenMixup)
def test_image_folder_crops_are_bicubic_as_openmixup(tmp_path):
    """OpenMixup configs/classification/_base_/datasets/imagenet/basic_sz224_4xbs64.py, lines 12 and 16, and
    tiny_imagenet/sz64_bs100.py, line 12: RandomResizedCrop / Resize with interpolation=3 (bicubic)."""
    for split in ("train", "val"):
        path = tmp_path / split / "n0001" / "a.jpg"
        path.parent.mkdir(parents=True)
        Image.new("RGB", (40, 30), (10, 20, 30)).save(path)
    data = ImageNetData(root=str(tmp_path), image_size=16, batch_size=1)
    data.setup("fit")
    train_crop = data.train_set.transform.transforms[0]
    val_resize = data.val_set.transform.transforms[0]
    assert isinstance(train_crop, v2.RandomResizedCrop) and isinstance(val_resize, v2.Resize)
    assert train_crop.interpolation == val_resize.interpolation == v2.InterpolationMode.BICUBIC
    assert TinyImageNetData().interpolation == "bicubic"
    assert folder_transform(16, True, interpolation="bilinear").transforms[0].interpolation.value == "bilinear"
    with pytest.raises(ValueError, match="interpolation"):
        ImageNetData(interpolation="lanczos")


@pytest.mark.parametrize("data", ["imagenet.yaml", "tiny_imagenet.yaml"])
def test_folder_data_configs_set_bicubic(tmp_path, data):
    assert build(tmp_path, f"data/{data}").datamodule.interpolation == "bicubic"


# --------------------------------------------------------------------------- 3. AutoMix on CIFAR: lr floor 0.05
def learning_rates(model, steps: int = 100) -> list[float]:
    """The rate of every step of a ``steps``-step run under the model's optimizer and scheduler."""
    optimizer = model.optimizer_factory(model.parameters())
    scheduler = model.scheduler_factory(optimizer)
    scheduler.set_total_steps(steps, 10)
    rates = []
    for _ in range(steps + 1):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_automix_on_cifar_anneals_to_a_floor_of_0_05(tmp_path):
    """OpenMixup configs/classification/cifar100/automix/basic/r18_l2_a2_near_L1_01_mlr5e_2.py, line 65:
    CosineAnnealing min_lr=0.05; line 28 lam_concat=False."""
    model = build(tmp_path, "data/cifar100.yaml", "model/cifar_resnet18.yaml", "mixers/cifar/automix.yaml").model
    rates = learning_rates(model)
    assert rates[0] == pytest.approx(0.1) and rates[-1] == pytest.approx(0.05)
    assert min(rates) == pytest.approx(0.05) and all(a >= b - 1e-12 for a, b in zip(rates, rates[1:]))
    assert rates[50] == pytest.approx(0.075)  # half way down the cosine from 0.1 to 0.05
    assert model.mixer.lam_embedding is False


def test_plain_cifar_recipe_still_anneals_to_zero(tmp_path):
    """OpenMixup r18_mixups_CE_none.py, line 50: CosineAnnealing min_lr=0."""
    model = build(tmp_path, "data/cifar100.yaml", "model/cifar_resnet18.yaml", "mixers/cifar/cutmix.yaml").model
    rates = learning_rates(model)
    assert rates[0] == pytest.approx(0.1) and rates[-1] == pytest.approx(0.0, abs=1e-12)


def test_imagenet_automix_follows_its_momentum_and_lambda_embedding(tmp_path):
    """OpenMixup .../imagenet/automix/basic/r50/.../r50_l2_a2_near_lam_cat_mb_mlr1e_3_m0_bb_mlr0_ep100.py:
    end_momentum=0.99999 (line 58), lam_concat=True (line 28)."""
    model = build(
        tmp_path,
        "mixers/imagenet/automix.yaml",
        extra=("--model.init_args.backbone=resnet10t", "--model.init_args.backbone_kwargs={channels: [8, 8, 8, 8]}"),
    ).model
    assert model.hparams.momentum_end == 0.99999 and model.mixer.lam_embedding is True


# ------------------------------------------------------------------------------ 4. RegMixup: alpha 20 / alpha 10
@pytest.mark.parametrize(
    ("data", "overlay", "alpha"), [("cifar10", "regmixup_cifar10", 20.0), ("cifar100", "regmixup_cifar100", 10.0)]
)
def test_regmixup_configs_draw_lambda_from_the_papers_beta(tmp_path, data, overlay, alpha):
    """Pinto et al., NeurIPS 2022; the authors' commands.sh, lines 8-11: --mixup_alpha 20 (CIFAR-10), 10
    (CIFAR-100)."""
    built = build(tmp_path, f"data/{data}.yaml", "model/cifar_resnet18.yaml", f"mixers/cifar/{overlay}.yaml")
    model = built.model
    assert isinstance(model.objective, losses.RegMixupLoss) and model.objective.eta == 1.0
    assert model.hparams.num_classes == (10 if data == "cifar10" else 100)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 4, 4), torch.tensor([0, 1])
    lams = torch.stack([model.mixer(x, y, generator=generator).lam[0] for _ in range(400)]).double()
    expected_std = math.sqrt(1.0 / (4 * (2 * alpha + 1)))  # Beta(alpha, alpha)
    assert lams.mean().item() == pytest.approx(0.5, abs=0.02)
    assert lams.std().item() == pytest.approx(expected_std, rel=0.15)  # alpha 1 would give 0.29


# --------------------------------------------------------------------- 5. AttentiveMix with a pretrained extractor
def uncommented(path: Path) -> dict:
    """The YAML of ``path`` with its commented ``extractor`` / ``pretrained`` / ``extractor_size`` lines restored."""
    pattern = re.compile(r"^(\s*)# ((?:extractor|pretrained|extractor_size): .*)$")
    return yaml.safe_load("\n".join(pattern.sub(r"\1\2", line) for line in path.read_text().splitlines()))


@pytest.mark.parametrize("dataset", ["cifar", "tiny_imagenet", "imagenet"])
def test_attentivemix_configs_show_openmixups_pretrained_extractor(dataset):
    """OpenMixup's AttentiveMix+ configs rank cells with a frozen torchvision ResNet-18 (pretrained_k, backbone_k)
    on 224 px inputs (mixup_classification.py, lines 217-219)."""
    path = CONFIGS / "mixers" / dataset / "attentivemix.yaml"
    assert yaml.safe_load(path.read_text())["model"]["init_args"]["mixer_kwargs"].get("extractor") is None
    kwargs = uncommented(path)["model"]["init_args"]["mixer_kwargs"]
    assert kwargs["extractor"] == "resnet18.tv_in1k" and kwargs["pretrained"] is True
    assert kwargs["extractor_size"] == 224 and kwargs["top_k"] is None and kwargs["alpha"] == 2.0
    import timm

    assert timm.list_pretrained(kwargs["extractor"]) == [kwargs["extractor"]]  # timm has these weights
    mixer = openmix.create_mixer("attentivemix", **{**kwargs, "pretrained": False})  # same network, no download
    assert mixer.requires == () and mixer.extractor is not None
    out = mixer(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0))
    assert out.mask.shape == (2, 1, 32, 32)


def test_attentivemix_default_ranks_with_the_training_network_and_downloads_nothing():
    mixer = openmix.create_mixer("attentivemix")
    assert mixer.extractor is None and mixer.requires == ("model",)


# ------------------------------------------------------------------- 6. Decoupled Mixup: skip lam near 0 or 1
def direct_decoupled(logits: list[list[float]], y_a: list[int], y_b: list[int], lam: list[float], eps: float):
    """The DM term of each sample, by hand; 0 for a == b and for min(lam, 1 - lam) <= eps (the reference's skip)."""
    terms = []
    for row, a, b, share in zip(logits, y_a, y_b, lam):
        if a == b or min(share, 1.0 - share) <= eps:
            terms.append(0.0)
            continue
        without_b = sum(math.exp(z) for c, z in enumerate(row) if c != b)
        without_a = sum(math.exp(z) for c, z in enumerate(row) if c != a)
        terms.append(
            -share * math.log(math.exp(row[a]) / without_b) - (1 - share) * math.log(math.exp(row[b]) / without_a)
        )
    return terms


def hand_mix(y_a: list[int], y_b: list[int], lam: list[float]) -> openmix.MixOutput:
    batch = len(y_a)
    return openmix.MixOutput(
        torch.zeros(batch, 1, 2, 2),
        torch.arange(batch),
        torch.tensor(lam, dtype=torch.float32),
        torch.tensor(y_a),
        torch.tensor(y_b),
        None,
    )


DM_Y_A, DM_Y_B = [0, 1, 2, 3, 4, 0, 2], [1, 2, 3, 4, 0, 3, 2]
DM_LAM = [0.0, 0.0005, 0.3, 0.9995, 1.0, 0.002, 0.5]  # skipped: 0, 1, 3, 4 (lam) and 6 (same class)


def test_decoupled_objective_skips_samples_within_1e_3_of_0_or_1():
    """OpenMixup openmixup/models/losses/cross_entropy_loss.py, lines 130-146: a class counts as mixed only when its
    share exceeds 1e-3; samples with fewer mixed classes get no decoupled term."""
    logits = torch.randn(7, 5, generator=torch.Generator().manual_seed(3)) * 2
    lam32 = torch.tensor(DM_LAM, dtype=torch.float32).double().tolist()
    per_sample = direct_decoupled(logits.double().tolist(), DM_Y_A, DM_Y_B, lam32, 1e-3)
    assert [i for i, term in enumerate(per_sample) if term == 0.0] == [0, 1, 3, 4, 6]
    mix = hand_mix(DM_Y_A, DM_Y_B, DM_LAM)
    objective = losses.DecoupledMixupLoss()
    assert objective.lam_eps == 1e-3
    mixed_ce = losses.soft_target_cross_entropy(logits, mix.soft_targets(5))
    expected = mixed_ce.double() + 0.1 * sum(per_sample) / 7  # the mean runs over the whole batch
    torch.testing.assert_close(objective(logits, mix).double(), expected, rtol=1e-5, atol=1e-6)
    terms = losses.decoupled_regularizer(logits, mix.y_a, mix.y_b, mix.lam, reduction="none", lam_eps=1e-3)
    torch.testing.assert_close(terms.double(), torch.tensor(per_sample, dtype=torch.float64), rtol=1e-5, atol=1e-6)


def test_decoupled_lam_eps_none_keeps_every_distinct_pair_and_bad_values_are_refused():
    logits = torch.randn(7, 5, generator=torch.Generator().manual_seed(4))
    mix = hand_mix(DM_Y_A, DM_Y_B, DM_LAM)
    lam32 = mix.lam.double().tolist()
    kept = direct_decoupled(logits.double().tolist(), DM_Y_A, DM_Y_B, lam32, -1.0)
    terms = losses.decoupled_regularizer(logits, mix.y_a, mix.y_b, mix.lam, reduction="none")
    torch.testing.assert_close(terms.double(), torch.tensor(kept, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="lam_eps"):
        losses.DecoupledMixupLoss(lam_eps=0.5)
    with pytest.raises(ValueError, match="lam_eps"):
        losses.decoupled_regularizer(logits, mix.y_a, mix.y_b, mix.lam, lam_eps=-0.1)


def test_decoupled_skip_needs_no_host_synchronisation():
    logits = torch.randn(7, 5, generator=torch.Generator().manual_seed(5), requires_grad=True)
    mix = hand_mix(DM_Y_A, DM_Y_B, DM_LAM)
    # the project's counter of the ops that would wait for a CUDA device (tools/count_syncs.py) sees a boolean index
    assert count_sync_ops(lambda: torch.rand(3)[torch.rand(3) > 0.5]) == {"nonzero": 1}

    def step() -> None:
        losses.decoupled_regularizer(logits, mix.y_a, mix.y_b, mix.target_lam, lam_eps=1e-3).backward()

    assert count_sync_ops(step) == {}
    assert torch.isfinite(logits.grad).all()
    # the skipped samples pass no gradient at all through the decoupled term
    assert torch.equal(logits.grad[[0, 1, 3, 4, 6]], torch.zeros(5, 5))
    assert (logits.grad[[2, 5]].abs().sum(dim=1) > 0).all()


# ------------------------------------------------------------------------ 7. every number of a config is cited
SOURCE_MARKERS = (
    "Westlake-AI/openmixup",
    "snu-mllab/PuzzleMix",
    "snu-mllab/Co-Mixup",
    "arXiv",
    "FrancescoPinto/RegMixup",
    "Shaoli-Huang/SnapMix",
    "Beckschen/TransMix",
    "Sense-X/TokenMix",
    "vikasverma1077/manifold_mixup",
    "shashankvkt/AlignMixup_CVPR22",
    "JinXins/SUMix",
    "openmix's own choice",
    "no published",
    "No published",
    "SITE5039/AdaMixUp",
    "JinXins/Adversarial-AutoMixup",
)
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE]-?\d+)?")


def numeric_leaves(node) -> list[float]:
    if isinstance(node, bool) or node is None or isinstance(node, str):
        return []
    if isinstance(node, (int, float)):
        return [float(node)]
    if isinstance(node, dict):
        return [value for child in node.values() for value in numeric_leaves(child)]
    if isinstance(node, list):
        return [value for child in node for value in numeric_leaves(child)]
    return []


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_cites_a_source_for_every_number_it_sets(path):
    text = path.read_text()
    comments = "\n".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
    assert any(marker in comments for marker in SOURCE_MARKERS), f"{path.name}: no source named in its comments"
    cited = {float(token) for token in NUMBER.findall(comments)}
    missing = [
        value for value in numeric_leaves(yaml.safe_load(text)) if not any(math.isclose(value, c) for c in cited)
    ]
    assert not missing, f"{path.name}: numbers set without a cited source in the comments: {missing}"
