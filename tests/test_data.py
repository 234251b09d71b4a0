"""Data readers and modules, checked on tiny datasets written here in each dataset's real on-disk format."""

from __future__ import annotations

import gzip
import pickle
import struct
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from openmix.data import (
    ArrayImageDataset,
    CIFAR10Data,
    CIFAR100Data,
    EpochSampler,
    FashionMNISTData,
    ImageNetData,
    TinyImageNetData,
    TinyImageNetFolder,
    load_cifar,
    load_cifar_classes,
    load_fashion_mnist,
    read_idx,
)

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
TINY_WNIDS = ["n03000000", "n01000000", "n02000000"]  # deliberately unsorted: classes are the sorted ids
TINY_COLOURS = {"n01000000": (200, 30, 30), "n02000000": (30, 200, 30), "n03000000": (30, 30, 200)}
TINY_VAL_WNIDS = ["n02000000", "n03000000", "n01000000", "n02000000"]


# ------------------------------------------------------------------------------------- writers of the real formats
def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08) -> None:
    """An idx file: 0x0000 | type | ndim, big-endian uint32 sizes, then the data; gzipped when the name ends in .gz."""
    payload = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") if path.suffix == ".gz" else open(path, "wb") as file:
        file.write(payload)


def fashion_arrays(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Image i filled with value i, label i % 10."""
    images = np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None], (count, 28, 28)).copy()
    return images, (np.arange(count) % 10).astype(np.uint8)


def write_fashion_mnist(directory: Path, gz: bool = True, train_count: int = 50, test_count: int = 20) -> None:
    suffix = ".gz" if gz else ""
    for prefix, count in (("train", train_count), ("t10k", test_count)):
        images, labels = fashion_arrays(count)
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)


def cifar_rows(start: int, count: int) -> np.ndarray:
    """(count, 3072) rows whose value at flat position p of image i is (i + p) % 256: every position distinct."""
    return ((np.arange(start, start + count)[:, None] + np.arange(3072)[None, :]) % 256).astype(np.uint8)


def expected_cifar_image(i: int) -> np.ndarray:
    """(32, 32, 3) image i of :func:`cifar_rows`: row layout is channel-major planes, each row-major."""
    channel, y, x = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    return ((i + channel * 1024 + y * 32 + x) % 256).astype(np.uint8).transpose(1, 2, 0)


def dump(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        pickle.dump(entry, file, protocol=2)


def write_cifar10(root: Path, per_batch: int = 4, test_count: int = 6) -> Path:
    directory = root / "cifar-10-batches-py"
    for batch in range(5):
        start = batch * per_batch
        labels = [(start + j) % 10 for j in range(per_batch)]
        entry = {b"batch_label": b"training batch", b"labels": labels, b"data": cifar_rows(start, per_batch)}
        dump(directory / f"data_batch_{batch + 1}", {**entry, b"filenames": [b"x.png"] * per_batch})
    test_labels = [i % 10 for i in range(test_count)]
    dump(
        directory / "test_batch",
        {b"batch_label": b"testing batch", b"labels": test_labels, b"data": cifar_rows(0, test_count)},
    )
    names = [f"class{k}".encode() for k in range(10)]
    dump(directory / "batches.meta", {b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    return directory


def write_cifar100(root: Path, train_count: int = 30, test_count: int = 10) -> None:
    directory = root / "cifar-100-python"
    for name, count in (("train", train_count), ("test", test_count)):
        fine = [(7 * i) % 100 for i in range(count)]
        coarse = [i % 20 for i in range(count)]
        entry = {b"fine_labels": fine, b"coarse_labels": coarse, b"data": cifar_rows(0, count), b"batch_label": b"x"}
        dump(directory / name, {**entry, b"filenames": [b"x.png"] * count})
    fine_names = [f"fine{k}".encode() for k in range(100)]
    dump(directory / "meta", {b"fine_label_names": fine_names, b"coarse_label_names": [b"c"] * 20})


def write_jpeg(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG", quality=95)


def write_tiny_imagenet(root: Path, per_class: int = 3) -> Path:
    directory = root / "tiny-imagenet-200"
    directory.mkdir(parents=True)
    (directory / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    for wnid in TINY_WNIDS:
        for j in range(per_class):
            write_jpeg(directory / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", TINY_COLOURS[wnid])
        (directory / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines = []
    for j, wnid in enumerate(TINY_VAL_WNIDS):
        write_jpeg(directory / "val" / "images" / f"val_{j}.JPEG", TINY_COLOURS[wnid])
        lines.append(f"val_{j}.JPEG\t{wnid}\t0\t0\t63\t63")
    (directory / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return directory


def write_imagenet(root: Path) -> None:
    for split, count in (("train", 3), ("val", 2)):
        for k, wnid in enumerate(["n01440764", "n01443537"]):
            for j in range(count):
                write_jpeg(root / split / wnid / f"{wnid}_{j}.JPEG", (100 * k, 50, 50), size=(90, 70))


# ------------------------------------------------------------------------------------------------------ idx reader
@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_gives_exact_pixels_and_labels(tmp_path: Path, gz: bool) -> None:
    write_fashion_mnist(tmp_path, gz=gz)
    images = read_idx(tmp_path / f"train-images-idx3-ubyte{'.gz' if gz else ''}")
    labels = read_idx(tmp_path / f"train-labels-idx1-ubyte{'.gz' if gz else ''}")
    assert images.dtype == np.uint8 and images.shape == (50, 28, 28)
    assert labels.dtype == np.uint8 and labels.shape == (50,)
    assert all((images[i] == i).all() for i in range(50))
    np.testing.assert_array_equal(labels, np.arange(50) % 10)


def test_read_idx_big_endian_types(tmp_path: Path) -> None:
    values = np.array([[1, -2], [300000, 7]], dtype=">i4")
    write_idx(tmp_path / "ints.idx", values, type_code=0x0C)
    np.testing.assert_array_equal(read_idx(tmp_path / "ints.idx"), values.astype(np.int32))


def test_read_idx_rejects_bad_magic_and_bad_size(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(ValueError, match="magic number"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"abc")
    with pytest.raises(ValueError, match="5"):
        read_idx(tmp_path / "short")


def test_load_fashion_mnist_reads_debian_and_torchvision_layouts(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path / "debian", gz=True)
    write_fashion_mnist(tmp_path / "tv" / "FashionMNIST" / "raw", gz=False)
    for root in (tmp_path / "debian", tmp_path / "tv"):
        train_images, train_labels = load_fashion_mnist(root, train=True)
        test_images, test_labels = load_fashion_mnist(root, train=False)
        assert train_images.shape == (50, 28, 28) and test_images.shape == (20, 28, 28)
        assert train_labels.dtype == np.int64
        assert (test_images[13] == 13).all() and test_labels[13] == 3


def test_missing_fashion_mnist_names_the_package_and_the_option(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as error:
        load_fashion_mnist(tmp_path, train=True)
    assert "train-images-idx3-ubyte" in str(error.value) and "download: true" in str(error.value)


# ---------------------------------------------------------------------------------------------------- CIFAR reader
def test_load_cifar10_layout_labels_and_names(tmp_path: Path) -> None:
    batches = write_cifar10(tmp_path)
    for root in (tmp_path, batches):  # the parent folder or the batches folder itself
        images, labels = load_cifar(root, 10, train=True)
        assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
        np.testing.assert_array_equal(labels, np.arange(20) % 10)  # batches 1..5 in order
        for i in (0, 5, 19):
            np.testing.assert_array_equal(images[i], expected_cifar_image(i))
    test_images, test_labels = load_cifar(tmp_path, 10, train=False)
    assert test_images.shape == (6, 32, 32, 3) and test_labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert load_cifar_classes(tmp_path, 10) == [f"class{k}" for k in range(10)]


def test_load_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    images, labels = load_cifar(tmp_path, 100, train=True)
    assert images.shape == (30, 32, 32, 3)
    np.testing.assert_array_equal(labels, (7 * np.arange(30)) % 100)
    np.testing.assert_array_equal(images[29], expected_cifar_image(29))
    assert load_cifar_classes(tmp_path, 100)[:2] == ["fine0", "fine1"]
    with pytest.raises(FileNotFoundError, match="download: true"):
        load_cifar(tmp_path / "empty", 100, train=False)
    with pytest.raises(ValueError, match="num_classes"):
        load_cifar(tmp_path, 20, train=True)


# ---------------------------------------------------------------------------------- in-memory dataset, augmentation
def random_images(count: int = 12, size: int = 8, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(count, size, size, channels), dtype=np.uint8)


def test_normalisation_formula_and_types() -> None:
    images, mean, std = random_images(), (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    dataset = ArrayImageDataset(images, np.arange(12) % 5, mean, std, augment="none")
    x, y = dataset[7]
    expected = (images[7].transpose(2, 0, 1) / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    assert x.dtype == torch.float32 and x.shape == (3, 8, 8)
    assert y.dtype == torch.int64 and int(y) == 2
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_greyscale_images_get_one_channel() -> None:
    dataset = ArrayImageDataset(np.full((2, 5, 7), 51, np.uint8), [0, 1], (0.2,), (0.5,))
    x, _ = dataset[1]
    assert x.shape == (1, 5, 7) and torch.allclose(x, torch.zeros(1, 5, 7), atol=1e-6)  # (51/255 - 0.2) / 0.5 = 0


def test_crop_flip_equals_shifted_copy_of_zero_padded_image() -> None:
    images, mean, std, padding = random_images(count=64), (0.5, 0.4, 0.3), (0.25, 0.2, 0.3), 4
    dataset = ArrayImageDataset(images, np.zeros(64), mean, std, augment="crop_flip", padding=padding, seed=3)
    dataset.set_epoch(2)
    offsets, flips = dataset.crop_offsets.numpy(), dataset.flips.numpy()
    assert offsets.min() == 0 and offsets.max() == 2 * padding  # the whole range [0, 2 * padding] is used
    assert 10 < flips.sum() < 54
    for i in range(64):
        padded = np.pad(images[i], ((padding, padding), (padding, padding), (0, 0)))  # zeros: black before normalising
        dy, dx = offsets[i]
        crop = padded[dy : dy + 8, dx : dx + 8]
        crop = crop[:, ::-1] if flips[i] else crop
        expected = (crop.transpose(2, 0, 1) / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
        np.testing.assert_allclose(dataset[i][0].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_augmentation_tables_depend_only_on_seed_and_epoch() -> None:
    images = random_images(count=40)

    def make(seed: int) -> ArrayImageDataset:
        return ArrayImageDataset(images, np.zeros(40), (0.5,) * 3, (0.5,) * 3, augment="crop_flip", seed=seed)

    first, second, other_seed = make(7), make(7), make(8)
    first.set_epoch(3)
    second.set_epoch(1)
    second.set_epoch(3)  # a resumed run jumps straight to epoch 3
    other_seed.set_epoch(3)
    assert torch.equal(first.crop_offsets, second.crop_offsets) and torch.equal(first.flips, second.flips)
    assert all(torch.equal(first[i][0], second[i][0]) for i in range(40))
    assert not torch.equal(first.crop_offsets, other_seed.crop_offsets)
    generator = np.random.default_rng([7, 3])  # the documented recipe
    np.testing.assert_array_equal(first.crop_offsets.numpy(), generator.integers(0, 9, size=(40, 2)))
    before = first.crop_offsets.clone()
    first.set_epoch(4)
    assert not torch.equal(before, first.crop_offsets)
    assert sum(not torch.equal(first[i][0], second[i][0]) for i in range(40)) > 30


def test_persistent_workers_see_the_new_epoch() -> None:
    images = random_images(count=16)
    dataset = ArrayImageDataset(images, np.arange(16), (0.5,) * 3, (0.5,) * 3, augment="crop_flip", seed=1)
    sampler = EpochSampler(dataset, shuffle=True, seed=1)
    workers = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=2, persistent_workers=True)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        with_workers = torch.cat([x for x, _ in workers])
        in_process = torch.cat([x for x, _ in DataLoader(dataset, batch_size=4, sampler=sampler)])
        assert torch.equal(with_workers, in_process), f"epoch {epoch}"


def test_dataset_rejects_bad_arguments() -> None:
    images = random_images(count=2)
    with pytest.raises(ValueError, match="augment"):
        ArrayImageDataset(images, [0, 1], (0.5,) * 3, (0.5,) * 3, augment="mixup")
    with pytest.raises(ValueError, match="mean and std"):
        ArrayImageDataset(images, [0, 1], (0.5,), (0.5,))
    with pytest.raises(ValueError, match="labels"):
        ArrayImageDataset(images, [0, 1, 2], (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="uint8"):
        ArrayImageDataset(images.astype(np.float32), [0, 1], (0.5,) * 3, (0.5,) * 3)


# --------------------------------------------------------------------------------------------------------- sampler
class EpochRecorder(Dataset):
    def __init__(self, length: int) -> None:
        self.length, self.epochs = length, []

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        return index

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def test_epoch_sampler_shuffles_per_epoch_and_reaches_the_dataset() -> None:
    dataset = EpochRecorder(20)
    sampler, twin = EpochSampler(dataset, seed=5), EpochSampler(EpochRecorder(20), seed=5)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        twin.set_epoch(epoch)
        orders.append(list(sampler))
        assert orders[-1] == list(twin) and sorted(orders[-1]) == list(range(20))
    assert orders[0] != orders[1] != orders[2] and orders[0] != list(range(20))
    assert dataset.epochs == [0, 1, 2]
    sampler.set_epoch(1)
    assert list(sampler) == orders[1]  # resuming at epoch 1 replays its order


@pytest.mark.parametrize("drop_last", [False, True])
def test_epoch_sampler_splits_two_replicas_without_overlap(drop_last: bool) -> None:
    dataset = EpochRecorder(20)
    shards = [EpochSampler(dataset, num_replicas=2, rank=rank, seed=0, drop_last=drop_last) for rank in (0, 1)]
    for shard in shards:
        shard.set_epoch(4)
    first, second = list(shards[0]), list(shards[1])
    assert len(first) == len(second) == 10
    assert not set(first) & set(second) and sorted(first + second) == list(range(20))


# ---------------------------------------------------------------------------------------------------- data modules
def all_batches(loader: DataLoader, epoch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    if epoch is not None:
        loader.sampler.set_epoch(epoch)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize(
    ("module_class", "writer", "shape", "num_classes", "val_count"),
    [
        (FashionMNISTData, lambda root: write_fashion_mnist(root), (1, 28, 28), 10, 20),
        (CIFAR10Data, lambda root: write_cifar10(root), (3, 32, 32), 10, 6),
        (CIFAR100Data, lambda root: write_cifar100(root), (3, 32, 32), 100, 10),
    ],
)
def test_in_memory_modules_shapes_and_order(tmp_path, module_class, writer, shape, num_classes, val_count) -> None:
    writer(tmp_path)
    data = module_class(root=str(tmp_path), batch_size=8, val_batch_size=4, limit_train=18)
    assert (data.in_chans, data.image_size, data.num_classes) == (shape[0], shape[1], num_classes)
    data.setup("fit")
    x, y = all_batches(data.train_dataloader(), epoch=0)
    assert x.shape == (16, *shape) and x.dtype == torch.float32 and y.dtype == torch.int64  # 18 -> 2 full batches
    val_x, val_y = all_batches(data.val_dataloader())
    assert val_x.shape == (val_count, *shape)
    _, val_labels = module_class.load_arrays(data, train=False)
    assert val_y.tolist() == val_labels.tolist()  # sequential
    assert torch.equal(all_batches(data.test_dataloader())[1], val_y)
    assert len(data.classes) == num_classes


def test_fashion_module_values_and_resumable_batches(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    plain = FashionMNISTData(root=str(tmp_path), augment=False, batch_size=10, val_batch_size=20)
    plain.setup("validate")
    val_x, val_y = all_batches(plain.val_dataloader())
    expected = (torch.arange(20.0) / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(val_x[:, 0, 5, 5], expected)
    assert val_y.tolist() == [i % 10 for i in range(20)]

    runs = [FashionMNISTData(root=str(tmp_path), batch_size=10, seed=4) for _ in range(2)]
    for run in runs:
        run.setup("fit")
    epoch1 = [all_batches(run.train_dataloader(), epoch=1) for run in runs]
    assert torch.equal(epoch1[0][0], epoch1[1][0]) and torch.equal(epoch1[0][1], epoch1[1][1])
    epoch2_x, epoch2_y = all_batches(runs[0].train_dataloader(), epoch=2)
    assert not torch.equal(epoch2_y, epoch1[0][1])  # another order
    assert not torch.equal(epoch2_x[epoch2_y.argsort()], epoch1[0][0][epoch1[0][1].argsort()])  # other crops


def test_train_loader_shards_by_trainer_rank(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    data = FashionMNISTData(root=str(tmp_path), batch_size=4, num_workers=0)
    data.trainer = SimpleNamespace(world_size=2, global_rank=1)
    loader = data.train_dataloader()
    assert isinstance(loader.sampler, EpochSampler)
    assert (loader.sampler.num_replicas, loader.sampler.rank, loader.sampler.seed) == (2, 1, 0)
    assert len(loader.sampler) == 25 and len(loader) == 6


def test_modules_do_not_touch_the_disk_until_setup(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")
    modules = [FashionMNISTData(missing), CIFAR10Data(missing), TinyImageNetData(missing), ImageNetData(missing)]
    assert [module.num_classes for module in modules] == [10, 10, 200, 1000]
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        modules[0].setup("fit")
    with pytest.raises(ValueError, match="batch_size"):
        FashionMNISTData(batch_size=0)


class BatchRecorder(L.LightningModule):
    """Records every training batch it sees, with its epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(28 * 28, 10)
        self.seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.seen.append((self.current_epoch, x.clone(), y.clone()))
        return F.cross_entropy(self.layer(x.flatten(1)), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(root: Path, max_epochs: int, ckpt_in: Path | None = None, ckpt_out: Path | None = None) -> BatchRecorder:
    model, data = BatchRecorder(), FashionMNISTData(root=str(root), batch_size=10, seed=2)
    options = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    trainer = L.Trainer(max_epochs=max_epochs, limit_val_batches=0, enable_model_summary=False, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, data, ckpt_path=ckpt_in)
    if ckpt_out is not None:
        trainer.save_checkpoint(ckpt_out)
    return model


def test_resumed_lightning_run_sees_the_same_batches(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path / "data")
    full = fit(tmp_path / "data", max_epochs=2)
    fit(tmp_path / "data", max_epochs=1, ckpt_out=tmp_path / "epoch1.ckpt")
    resumed = fit(tmp_path / "data", max_epochs=2, ckpt_in=tmp_path / "epoch1.ckpt")
    expected = [(x, y) for epoch, x, y in full.seen if epoch == 1]
    assert len(expected) == 5 and [epoch for epoch, _, _ in resumed.seen] == [1] * 5
    for (x, y), (_, resumed_x, resumed_y) in zip(expected, resumed.seen):
        assert torch.equal(x, resumed_x) and torch.equal(y, resumed_y)
    by_epoch = [{}, {}]  # sample id -> its augmented image; image i is filled with i, so its centre pixel names it
    for epoch, x, _ in full.seen:
        by_epoch[epoch].update({round(float(image[0, 14, 14]) * 0.3530 * 255 + 0.2860 * 255): image for image in x})
    assert sorted(by_epoch[0]) == sorted(by_epoch[1]) == list(range(50))
    assert sum(not torch.equal(by_epoch[0][i], by_epoch[1][i]) for i in range(50)) > 35  # new crops each epoch
    first_order = torch.cat([y for epoch, _, y in full.seen if epoch == 0])
    assert not torch.equal(first_order, torch.cat([y for _, y in expected]))  # new order each epoch


# ------------------------------------------------------------------------------------------ image-folder datasets
def test_tiny_imagenet_classes_and_val_labels_from_annotations(tmp_path: Path) -> None:
    write_tiny_imagenet(tmp_path)
    train = TinyImageNetFolder(tmp_path, "train")  # the parent of tiny-imagenet-200 works too
    assert train.classes == sorted(TINY_WNIDS) and len(train) == 9
    assert train.targets == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    val = TinyImageNetFolder(tmp_path / "tiny-imagenet-200", "val")
    assert val.targets == [sorted(TINY_WNIDS).index(wnid) for wnid in TINY_VAL_WNIDS]
    for (image, target), wnid in zip(val, TINY_VAL_WNIDS):
        assert image.mode == "RGB" and image.size == (64, 64)
        np.testing.assert_allclose(np.asarray(image).mean(axis=(0, 1)), TINY_COLOURS[wnid], atol=3)
        assert val.classes[target] == wnid


@pytest.mark.parametrize("image_size", [64, 32])
def test_tiny_imagenet_module(tmp_path: Path, image_size: int) -> None:
    write_tiny_imagenet(tmp_path)
    data = TinyImageNetData(root=str(tmp_path / "tiny-imagenet-200"), image_size=image_size, batch_size=4)
    assert data.num_classes == 3 and data.image_size == image_size and data.in_chans == 3
    data.setup("fit")
    x, y = all_batches(data.train_dataloader(), epoch=0)
    assert x.shape == (8, 3, image_size, image_size) and x.dtype == torch.float32 and y.dtype == torch.int64
    val_x, val_y = all_batches(data.val_dataloader())
    assert val_x.shape == (4, 3, image_size, image_size)
    assert val_y.tolist() == [1, 2, 0, 1]
    green = (torch.tensor([30, 200, 30]) / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]
    )
    torch.testing.assert_close(val_x[0].mean(dim=(1, 2)), green, atol=0.06, rtol=0)


def test_imagenet_module(tmp_path: Path) -> None:
    write_imagenet(tmp_path)
    data = ImageNetData(root=str(tmp_path), image_size=32, batch_size=2, val_batch_size=3, limit_val=3)
    assert data.num_classes == 2
    data.setup("fit")
    assert data.classes == ["n01440764", "n01443537"]
    x, y = all_batches(data.train_dataloader(), epoch=0)
    assert x.shape == (6, 3, 32, 32) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]
    val_x, val_y = all_batches(data.val_dataloader())
    assert val_x.shape == (3, 3, 32, 32) and val_y.tolist() == [0, 0, 1]  # the first 3, in folder order


# ---------------------------------------------------------------------------------------- the real Fashion-MNIST
@pytest.mark.skipif(not REAL_FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist() -> None:
    train_images, train_labels = load_fashion_mnist(REAL_FASHION_MNIST, train=True)
    test_images, test_labels = load_fashion_mnist(REAL_FASHION_MNIST, train=False)
    assert train_images.shape == (60000, 28, 28) and test_images.shape == (10000, 28, 28)
    assert sorted(set(train_labels.tolist())) == list(range(10)) and np.bincount(test_labels).tolist() == [1000] * 10
    data = FashionMNISTData(limit_train=100, limit_val=10)
    data.setup("fit")
    assert int(train_labels[0]) == 9 and data.classes[9] == "Ankle boot"


# ------------------------------------------------------------------------------------------------ the package layout
def test_the_old_module_path_names_the_same_classes() -> None:
    """Saved run configs of earlier versions name ``openmix.lightning.data.<Class>`` as their class_path."""
    import openmix.data
    import openmix.lightning.data

    assert openmix.lightning.data.FashionMNISTData is openmix.data.FashionMNISTData
    assert openmix.lightning.data.DataFileError is openmix.data.DataFileError


def test_the_readers_load_without_lightning() -> None:
    code = "import openmix.data.readers, sys; assert 'lightning' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_run_saved_with_the_old_module_path_compares_equal() -> None:
    """``openmix bench`` and ``fit --ckpt_path last`` compare a run folder's saved config with the new one."""
    from openmix.bench.runner import current_class_paths

    saved = {"data": {"class_path": "openmix.lightning.data.CIFAR10Data", "init_args": {"root": "x"}}, "seed": 1}
    assert current_class_paths(saved) == {
        "data": {"class_path": "openmix.data.CIFAR10Data", "init_args": {"root": "x"}},
        "seed": 1,
    }


# ------------------------------------------------------------------------------------ class-balanced training subset
def test_balanced_subset_against_a_direct_draw() -> None:
    from openmix.data.modules import balanced_subset

    labels = np.random.default_rng(3).integers(0, 4, size=200)
    keep = balanced_subset(labels, 7, seed=11)
    rng = np.random.default_rng(11)  # the documented draw: classes in increasing order, one generator
    expected = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:7] for c in range(4)]))
    np.testing.assert_array_equal(keep, expected)
    assert keep.dtype == np.int64 and np.bincount(labels[keep]).tolist() == [7, 7, 7, 7]
    assert not np.array_equal(balanced_subset(labels, 7, seed=12), keep)
    with pytest.raises(ValueError, match=r"class \d has \d+ samples, fewer than per_class=100"):
        balanced_subset(labels, 100)


def test_train_per_class_is_one_fixed_subset_whatever_the_run_seed(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, train_count=50)  # image i has value i and label i % 10: 5 per class
    seen = []
    for seed in (0, 1):
        data = FashionMNISTData(root=str(tmp_path), augment=False, batch_size=6, seed=seed, train_per_class=3)
        data.setup("fit")
        x, y = all_batches(data.train_dataloader())
        values = torch.round((x[:, 0, 0, 0] * 0.3530 + 0.2860) * 255).long()
        assert torch.equal(y, values % 10)  # each image keeps its own label
        assert np.bincount(y.numpy(), minlength=10).tolist() == [3] * 10
        seen.append(sorted(values.tolist()))
    assert seen[0] == seen[1]  # the run seed shuffles, the subset stays
    other = FashionMNISTData(root=str(tmp_path), augment=False, batch_size=6, train_per_class=3, subset_seed=5)
    other.setup("fit")
    assert (
        sorted(
            torch.round((all_batches(other.train_dataloader())[0][:, 0, 0, 0] * 0.3530 + 0.2860) * 255).long().tolist()
        )
        != seen[0]
    )
    data.setup("validate")
    assert len(data.val_set) == 20  # the held-out split is never subset
    with pytest.raises(ValueError, match="train_per_class"):
        FashionMNISTData(root=str(tmp_path), train_per_class=0)
    with pytest.raises(TypeError, match="subset_seed"):
        FashionMNISTData(root=str(tmp_path), subset_seed=1.5)
    too_many = FashionMNISTData(root=str(tmp_path), train_per_class=6)
    with pytest.raises(ValueError, match="fewer than per_class=6"):
        too_many.setup("fit")


def test_train_per_class_refuses_a_class_that_limit_train_left_out(tmp_path: Path) -> None:
    from openmix.data.modules import balanced_subset

    with pytest.raises(ValueError, match="class 3 has 0 samples"):
        balanced_subset(np.array([0, 1, 2, 0, 1, 2]), 1, num_classes=4)
    write_fashion_mnist(tmp_path, train_count=50)
    data = FashionMNISTData(root=str(tmp_path), train_per_class=1, limit_train=5)  # labels 0-4 only
    with pytest.raises(ValueError, match="class 5 has 0 samples, fewer than per_class=1"):
        data.setup("fit")
