"""Collate-time mixing (openmix.collate.MixCollate): pixels and labels agree, the mix is the mixer's own,
reproducible in worker processes, refused for mixers that need the network, wired into the data modules, and
benchmarked against timm (smoke test)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from test_data import write_cifar10
from torch.utils.data import DataLoader, Dataset

import openmix
from openmix.collate import MixCollate, check_collate_mixer
from openmix.data import CIFAR10Data
from openmix.lightning import MixClassifier

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 4
TINY = {"backbone": "resnet10t", "backbone_kwargs": {"channels": (8, 8, 8, 8), "stem_width": 8}, "cifar_stem": True}


def is_eligible(name: str) -> bool:
    """What a collate can run, read from the registry: acts on the inputs only, needs nothing, not learned."""
    entry = openmix.get_mixer_entry(name)
    return entry.hooks == ("inputs",) and not entry.requires and not entry.learned


ELIGIBLE = [name for name in openmix.list_mixers() if is_eligible(name)]
REFUSED = [name for name in openmix.list_mixers() if not is_eligible(name)]
BLIND = [name for name in ELIGIBLE if not openmix.create_mixer(name).reads_pixels]  # what each class declares


def uint8_batch(count: int = 8, height: int = 16, width: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, height, width), dtype=torch.uint8, generator=generator)
    return images, torch.arange(count) % NUM_CLASSES


def as_samples(images: torch.Tensor, labels: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    return [(image, int(label)) for image, label in zip(images, labels)]


def collate_and_replay(collate: MixCollate, images: torch.Tensor, labels: torch.Tensor):
    """A collate call with its record, and the MixOutput (mask included) of the same mix replayed from the seed."""
    mixed, targets, record = collate(as_samples(images, labels))
    replayed, replayed_targets, mix = collate.mix_batch(images, labels, torch.Generator().manual_seed(record.seed))
    assert torch.equal(replayed, mixed) and torch.equal(replayed_targets, targets)
    return mixed, targets, record, mix


def expected_targets(labels: torch.Tensor, index: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    own, partner = F.one_hot(labels, NUM_CLASSES).float(), F.one_hot(labels[index], NUM_CLASSES).float()
    return lam[:, None] * own + (1 - lam[:, None]) * partner


# ------------------------------------------------------------------------------------ pixel / label consistency
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_cutmix_pastes_the_partners_uint8_pixels_and_reports_their_share(mode):
    images, labels = uint8_batch()
    collate = MixCollate("cutmix", NUM_CLASSES, seed=1, return_record=True, mixer_kwargs={"mode": mode})
    for _ in range(4):  # several batches: several boxes
        mixed, targets, record, mix = collate_and_replay(collate, images, labels)
        assert mixed.dtype == torch.uint8 and mixed.shape == images.shape
        keep = mix.mask.bool().expand_as(images)  # True outside the box
        assert torch.equal(mixed[keep], images[keep])
        assert torch.equal(mixed[~keep], images[record.index][~keep])  # the partner's pixels exactly
        share = mix.mask.float().mean(dim=(1, 2, 3)).expand(len(images))
        torch.testing.assert_close(record.lam, share, rtol=0, atol=1e-7)
        assert torch.equal(record.labels, labels)
        torch.testing.assert_close(targets, expected_targets(labels, record.index, record.lam), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_mixup_is_the_rounded_float32_blend_exactly(mode):
    images, labels = uint8_batch(7, 15, 21)  # odd batch, non-square images
    collate = MixCollate("mixup", NUM_CLASSES, seed=2, return_record=True, mixer_kwargs={"mode": mode})
    for _ in range(3):
        mixed, targets, record = collate(as_samples(images, labels))
        lam = record.lam.view(-1, 1, 1, 1)
        blend = images.float() * lam + images[record.index].float() * (1 - lam)
        assert torch.equal(mixed, torch.round(blend).to(torch.uint8))
        torch.testing.assert_close(targets, expected_targets(labels, record.index, record.lam), rtol=0, atol=1e-6)
        assert (record.lam.unique().numel() == 1) == (mode == "batch")


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("name", BLIND)
def test_applying_the_mask_gives_the_mixers_own_mix(name, mode):
    """The claim behind ``reads_pixels = False``: the mix drawn on the stand-in is the one the mixer draws on the real
    pixels (same partners, lambdas and masks), and applying it gives the mixer's own pixels (exact for binary
    masks, within 1 for a rounded blend)."""
    images, labels = uint8_batch(7, 15, 21, seed=3)
    collate = MixCollate(name, NUM_CLASSES, return_record=True, mixer_kwargs={"mode": mode})
    assert collate.applies_mask
    for seed in range(4):
        mixed, _, mix = collate.mix_batch(images, labels, torch.Generator().manual_seed(seed))
        own = openmix.create_mixer(name, mode=mode)(
            images.float(), labels, generator=torch.Generator().manual_seed(seed)
        )
        assert torch.equal(mix.index, own.index) and torch.equal(mix.lam, own.lam)
        assert (mix.mask is None) == (own.mask is None)
        if own.mask is not None:
            assert torch.equal(mix.mask, own.mask)
        binary = own.mask is not None and bool(((own.mask == 0) | (own.mask == 1)).all())
        difference = (mixed.float() - own.x.round()).abs().max()
        assert difference == 0 if binary else difference <= 1


@pytest.mark.parametrize(
    "options, gather_bytes",
    [({"mode": "elem", "minmax": (0.2, 0.8)}, None), ({"pairing": "flip", "alpha": 0.4}, None), ({}, 0)],
)
def test_cutmix_draws_made_by_the_collate_are_the_mixers_own(options, gather_bytes, monkeypatch):
    """The collate makes a CutMix's draws itself instead of calling it: the mixer's own mix (partners, lambdas, mask,
    pixels), with the generator left as the mixer's call leaves it; ``gather_bytes=0``: batch-mode boxes pasted
    sample by sample, as for large images."""
    if gather_bytes is not None:
        monkeypatch.setattr("openmix.collate.GATHER_BYTES", gather_bytes)
    images, labels = uint8_batch(7, 15, 21, seed=4)
    collate = MixCollate("cutmix", NUM_CLASSES, mixer_kwargs=options)
    for seed in range(3):
        generator, own_generator = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        mixed, _, mix = collate.mix_batch(images, labels, generator)
        own = openmix.create_mixer("cutmix", **options)(images.float(), labels, generator=own_generator)
        assert torch.equal(mix.index, own.index) and torch.equal(mix.lam, own.lam) and torch.equal(mix.mask, own.mask)
        assert torch.equal(mixed, own.x.to(torch.uint8))
        assert torch.equal(generator.get_state(), own_generator.get_state())


@pytest.mark.parametrize("name", ELIGIBLE)
def test_every_eligible_mixer_collates_with_the_contract(name):
    """Every registered mixer that needs nothing from the network: uint8 in, uint8 out, lam in [0, 1], targets that
    sum to 1 and weigh the two labels by lam; a mask-described mix keeps pixel/label consistency."""
    images, labels = uint8_batch(6, 16, 16, seed=4)
    collate = MixCollate(name, NUM_CLASSES, seed=5, return_record=True)
    mixed, targets, record, mix = collate_and_replay(collate, images, labels)
    assert mixed.dtype == torch.uint8 and mixed.shape == images.shape
    assert targets.dtype == torch.float32 and targets.shape == (6, NUM_CLASSES)
    assert bool(((record.lam >= 0) & (record.lam <= 1)).all())
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(6))
    torch.testing.assert_close(targets, expected_targets(labels, record.index, record.lam), rtol=0, atol=1e-6)
    if mix.mask is not None and not collate.mixer.moves_partner:  # the mask describes the pixels
        expected = mix.mask * images.float() + (1 - mix.mask) * images[record.index].float()
        assert (mixed.float() - expected).abs().max() <= 0.5 + 1e-3


def test_normalised_output_is_the_data_modules_formula_after_mixing():
    images, labels = uint8_batch()
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    plain = MixCollate("cutmix", NUM_CLASSES, seed=6)
    normalised = MixCollate("cutmix", NUM_CLASSES, seed=6, mean=mean, std=std)
    mixed, _ = plain(as_samples(images, labels))
    floats, _ = normalised(as_samples(images, labels))
    statistics = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
    assert floats.dtype == torch.float32
    assert torch.equal(floats, (mixed.float() / 255 - statistics[0]) / statistics[1])  # ArrayImageDataset's numbers
    mixup = MixCollate("mixup", NUM_CLASSES, seed=6, mean=mean, std=std, return_record=True)
    floats, _, record = mixup(as_samples(images, labels))
    lam = record.lam.view(-1, 1, 1, 1)
    blend = images.float() * lam + images[record.index].float() * (1 - lam)  # unrounded before normalising
    torch.testing.assert_close(floats, (blend / 255 - statistics[0]) / statistics[1])


def test_float_images_are_mixed_as_they_are():
    """Normalised float images (what the data modules' datasets give): the mixer's own mix, in their dtype."""
    images, labels = uint8_batch()
    floats = (images.float() / 255 - 0.5) / 0.25
    for name in ("cutmix", "mixup", "saliencymix"):
        collate = MixCollate(name, NUM_CLASSES, seed=7, return_record=True)
        mixed, _, record = collate([(image, int(label)) for image, label in zip(floats, labels)])
        own = openmix.create_mixer(name)(floats, labels, generator=torch.Generator().manual_seed(record.seed))
        assert mixed.dtype == torch.float32 and torch.equal(record.index, own.index)
        torch.testing.assert_close(mixed, own.x)
    assert torch.equal(floats, (images.float() / 255 - 0.5) / 0.25)  # the input is not modified


def test_numpy_images_in_either_layout_and_soft_labels():
    images, labels = uint8_batch(4)
    collate = MixCollate("cutmix", NUM_CLASSES, seed=8)
    reference, _ = MixCollate("cutmix", NUM_CLASSES, seed=8)(as_samples(images, labels))
    chw = [(image.numpy(), np.int64(label)) for image, label in zip(images, labels)]
    hwc = [(np.ascontiguousarray(image.numpy().transpose(1, 2, 0)), int(label)) for image, label in zip(images, labels)]
    assert torch.equal(collate(chw)[0], reference)
    collate.calls = 0  # the same batch seed again
    assert torch.equal(collate(hwc)[0], reference)
    soft = F.one_hot(labels, NUM_CLASSES).float()
    collate.calls = 0
    _, soft_targets = collate([(image, target) for image, target in zip(images, soft)])
    collate.calls = 0
    _, targets = collate(as_samples(images, labels))
    torch.testing.assert_close(soft_targets, targets)
    with pytest.raises(ValueError, match="numpy_layout"):
        collate([(np.zeros((3, 8, 3), np.uint8), 0)])


# ------------------------------------------------------------------------------------------- reproducibility
class ImageSet(Dataset):
    def __init__(self, count: int = 32) -> None:
        self.images, self.labels = uint8_batch(count, 12, 12, seed=9)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def epoch_of(num_workers: int, loader_seed: int, seed: int | None = 11) -> list[tuple]:
    collate = MixCollate("mixup", NUM_CLASSES, seed=seed, return_record=True, mixer_kwargs={"mode": "elem"})
    loader = DataLoader(
        ImageSet(),
        batch_size=8,
        shuffle=True,
        num_workers=num_workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(loader_seed),
    )
    return [(images, targets, record.index, record.lam) for images, targets, record in loader]


def same_batches(first: list[tuple], second: list[tuple]) -> bool:
    return len(first) == len(second) and all(
        all(torch.equal(a, b) for a, b in zip(one, other)) for one, other in zip(first, second)
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_same_seeds_give_the_same_mixed_batches(num_workers):
    first = epoch_of(num_workers, loader_seed=3)
    assert same_batches(first, epoch_of(num_workers, loader_seed=3))
    draws = {(tuple(index.tolist()), tuple(lam.tolist())) for _, _, index, lam in first}
    assert len(draws) == len(first) == 4  # every batch its own partners and lambdas
    if num_workers:  # the workers' seeds come from the loader's generator
        assert not same_batches(first, epoch_of(num_workers, loader_seed=4))


def test_without_a_seed_torchs_seed_decides():
    torch.manual_seed(21)
    first = epoch_of(0, loader_seed=3, seed=None)
    torch.manual_seed(21)
    assert same_batches(first, epoch_of(0, loader_seed=3, seed=None))
    torch.manual_seed(22)
    assert not same_batches(first, epoch_of(0, loader_seed=3, seed=None))


def test_a_collate_object_draws_anew_for_every_batch_and_epoch():
    images, labels = uint8_batch()
    collate = MixCollate("cutmix", NUM_CLASSES, seed=12, return_record=True, mixer_kwargs={"mode": "elem"})
    records = [collate(as_samples(images, labels))[2] for _ in range(3)]
    assert len({record.seed for record in records}) == 3
    assert len({tuple(record.lam.tolist()) for record in records}) == 3


# ---------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name", REFUSED)
def test_mixers_that_need_the_network_are_refused(name):
    entry = openmix.get_mixer_entry(name)
    reason = "learned" if entry.learned else "requires" if entry.requires else "hooks"
    with pytest.raises(ValueError, match=rf"mixer {entry.cls.__name__} .*{reason}"):
        MixCollate(name, NUM_CLASSES)


def test_bad_arguments_and_batches_are_errors_naming_them():
    with pytest.raises(TypeError, match="mixer must be"):
        MixCollate(torch.nn.Identity(), NUM_CLASSES)
    with pytest.raises(ValueError, match="unknown mixer 'cutmx'.*cutmix"):
        MixCollate("cutmx", NUM_CLASSES)
    with pytest.raises(ValueError, match="'name' key"):
        check_collate_mixer({"alpha": 1.0})
    assert isinstance(check_collate_mixer({"name": "cutmix", "alpha": 0.5}), openmix.mixers.CutMix)
    with pytest.raises(TypeError, match="num_classes"):
        MixCollate("cutmix", 4.0)
    with pytest.raises(ValueError, match="num_classes"):
        MixCollate("cutmix", 0)
    with pytest.raises(ValueError, match="smoothing"):
        MixCollate("cutmix", NUM_CLASSES, smoothing=1.0)
    with pytest.raises(ValueError, match="seed"):
        MixCollate("cutmix", NUM_CLASSES, seed=-1)
    with pytest.raises(ValueError, match="mean and std"):
        MixCollate("cutmix", NUM_CLASSES, mean=(0.5,))
    collate = MixCollate("cutmix", NUM_CLASSES)
    images, labels = uint8_batch(4)
    with pytest.raises(ValueError, match="empty"):
        collate([])
    with pytest.raises(TypeError, match=r"batch\[0\] must be an \(image, label\) pair"):
        collate([images[0]])
    with pytest.raises(ValueError, match=r"batch\[1\].*same shape"):
        collate([(images[0], 0), (images[1, :, :8], 1)])
    with pytest.raises(TypeError, match=r"batch\[0\]\[0\] must be uint8 or floating point"):
        collate([(images[0].int(), 0)])
    with pytest.raises(ValueError, match=r"class ids outside \[0, 4\)"):
        collate([(images[0], 4)])
    normalising = MixCollate("cutmix", NUM_CLASSES, mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(ValueError, match="mean and std normalise uint8 images"):
        normalising([(image.float(), 0) for image in images])


# ------------------------------------------------------------------------------------ the data modules, training
def cifar_data(tmp_path: Path, **kwargs) -> CIFAR10Data:
    write_cifar10(tmp_path, per_batch=4)  # 20 training images
    return CIFAR10Data(root=str(tmp_path), batch_size=4, augment=False, seed=0, **kwargs)


def test_data_module_mixes_training_batches_only(tmp_path):
    data = cifar_data(tmp_path, collate_mixer="cutmix")
    data.setup("fit")
    images, targets = next(iter(data.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert targets.shape == (4, 10) and targets.dtype == torch.float32
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(4))
    images, labels = next(iter(data.val_dataloader()))
    assert labels.shape == (4,) and labels.dtype == torch.int64
    assert cifar_data(tmp_path).train_collate() is None  # no collate_mixer: the default collate
    with pytest.raises(ValueError, match="collate_mixer AttentiveMix requires"):
        cifar_data(tmp_path, collate_mixer="attentivemix")
    with pytest.raises(ValueError, match="collate_mixer: unknown mixer 'cutmx'"):
        cifar_data(tmp_path, collate_mixer="cutmx")
    with pytest.raises(TypeError, match="collate_mixer must be"):
        cifar_data(tmp_path, collate_mixer=3)
    data.trainer = SimpleNamespace(lightning_module=SimpleNamespace(mixer=openmix.create_mixer("mixup")))
    with pytest.warns(UserWarning, match="mixes them again"):
        data.train_collate()


def test_yaml_collate_mixer_trains_a_mixclassifier_without_a_mixer(tmp_path):
    """``data.init_args.collate_mixer: cutmix`` from a config, and MixClassifier(mixer=None) trains on the (B, K)
    soft targets of the mixed batches."""
    from openmix.cli import run_lightning

    write_cifar10(tmp_path, per_batch=4)
    config = {
        "data": {
            "class_path": "openmix.data.CIFAR10Data",
            "init_args": {"root": str(tmp_path), "batch_size": 4, "collate_mixer": "cutmix", "augment": False},
        },
        "model": {"class_path": "openmix.lightning.MixClassifier", "init_args": {**TINY, "mixer": None}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(config))))
    args = [
        "--config",
        str(tmp_path / "config.yaml"),
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
    ]
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when pytest's own arguments are on sys.argv
    try:
        built = run_lightning(args, run=False)
    finally:
        sys.argv = argv
    data, model = built.datamodule, built.model
    assert isinstance(data.collate_mixer, openmix.mixers.CutMix) and model.mixer is None

    class Recording(MixClassifier):
        def training_step(self, batch, batch_idx):
            self.seen = batch[1]
            return super().training_step(batch, batch_idx)

    torch.manual_seed(0)
    model = Recording(**TINY, num_classes=10, mixer=None)
    trainer = L.Trainer(
        max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's notes about workers and small data
        trainer.fit(model, data)
    assert trainer.global_step == 3
    assert model.seen.shape == (4, 10) and bool((model.seen.max(dim=1).values < 1).any())  # mixed soft targets
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


# ------------------------------------------------------------------------------------------------- benchmark
def test_collate_benchmark_quick_smoke(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import bench_collate
    finally:
        sys.path.remove(str(ROOT / "tools"))
    out = tmp_path / "collate.md"
    bench_collate.main(["--quick", "--out", str(out)])
    table = out.read_text()
    payload = json.loads(out.with_suffix(".json").read_text())
    rows = [row for result in payload["results"] for row in result["rows"]]
    assert "timm FastCollateMixup" in table and "| cutmix | batch |" in table
    assert {row["mixer"] for row in rows} >= {"mixup", "cutmix"} and all(row["openmix_ms"] > 0 for row in rows)
    assert {(row["mixer"], row["mode"]) for row in rows if row["ratio_timm"] is not None} == {
        (method, mode) for method in ("mixup", "cutmix") for mode in ("batch", "elem")
    }


def test_the_pixel_blind_mixers_are_the_ones_whose_draws_ignore_the_pixels():
    assert set(BLIND) == {"mixup", "cutmix", "fmix", "gridmix", "smoothmix", "randomchoice"}
    assert openmix.create_mixer("saliencymix").reads_pixels and openmix.create_mixer("resizemix").reads_pixels


def test_a_cutmix_subclass_that_reads_the_pixels_is_called():
    # pastes_boxes lets the collate draw the boxes itself only for a mixer whose draws ignore the pixels: a subclass
    # that reads them (and mixes otherwise) must be called, its own mix kept
    class FlippedCutMix(openmix.mixers.CutMix):
        reads_pixels = True

        def mix(self, x, index, lam, generator):
            mixed, lam, mask = super().mix(x, index, lam, generator)
            return mixed.flip(3), lam, mask

    images, labels = uint8_batch(4, 8, 8, seed=3)
    mixed, _, _ = MixCollate(FlippedCutMix(), NUM_CLASSES).mix_batch(images, labels, torch.Generator().manual_seed(0))
    own = FlippedCutMix()(images.float(), labels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mixed, own.x.to(torch.uint8))
