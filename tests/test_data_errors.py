"""Data that is wrong on disk or in the data module's arguments is an error naming the file (or folder, or
argument) and what is wrong, never a bare ``EOFError`` / ``UnpicklingError`` nor a silently wrong label.

Every fixture is written here in the real format (idx, CIFAR pickle batches, image folders with PIL)."""

from __future__ import annotations

import gzip
import pickle
import re
import struct
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from openmix.data import (
    ArrayImageDataset,
    CIFAR10Data,
    CIFAR100Data,
    DataFileError,
    DataFolderError,
    FashionMNISTData,
    ImageNetData,
    TinyImageNetData,
    load_cifar,
    load_cifar_classes,
    load_fashion_mnist,
    read_idx,
)


def raises_naming(error: type[BaseException], *parts: str):
    """``pytest.raises(error)`` whose message contains every one of ``parts`` (paths included, verbatim)."""
    return pytest.raises(error, match="(?s)" + "".join(f"(?=.*{re.escape(part)})" for part in parts))


# ------------------------------------------------------------------------------------------------- Fashion-MNIST
def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    return bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_fashion(directory: Path, count: int = 6, gz: bool = True, labels: np.ndarray | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    images = np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None], (count, 28, 28)).copy()
    labels = (np.arange(count) % 10).astype(np.uint8) if labels is None else labels
    for prefix in ("train", "t10k"):
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            path = directory / f"{prefix}-{kind}-ubyte{'.gz' if gz else ''}"
            path.write_bytes(gzip.compress(idx_bytes(array)) if gz else idx_bytes(array))


IMAGES_GZ = "train-images-idx3-ubyte.gz"


def test_a_truncated_gzip_idx_file_is_named(tmp_path):
    write_fashion(tmp_path)
    path = tmp_path / IMAGES_GZ
    whole = path.read_bytes()
    for cut in (12, len(whole) // 2, len(whole) - 3):  # inside the header, the stream and the trailer
        path.write_bytes(whole[:cut])
        with raises_naming(DataFileError, str(path), "truncated gzip file"):
            read_idx(path)
        with raises_naming(DataFileError, str(path), "truncated gzip file"):
            FashionMNISTData(root=str(tmp_path)).setup("fit")


def test_a_corrupt_gzip_idx_file_is_named(tmp_path):
    write_fashion(tmp_path)
    path = tmp_path / IMAGES_GZ
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the CRC of the trailer
    path.write_bytes(bytes(data))
    with raises_naming(DataFileError, str(path), "corrupt gzip file", "CRC"):
        load_fashion_mnist(tmp_path, train=True)
    data[2] = 0x07  # an unknown compression method in the header
    path.write_bytes(bytes(data))
    with raises_naming(DataFileError, str(path), "corrupt gzip file"):
        load_fashion_mnist(tmp_path, train=True)


def test_an_idx_file_with_a_wrong_magic_or_length_is_named(tmp_path):
    write_fashion(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x01\x02\x03\x04" + bytes(100))
    with raises_naming(DataFileError, str(path), "not an idx file", "magic number 0x01020304"):
        load_fashion_mnist(tmp_path, train=True)
    full = idx_bytes(np.zeros((6, 28, 28), np.uint8))
    path.write_bytes(full[:-10])
    with raises_naming(DataFileError, str(path), "(6, 28, 28)", "the file is truncated"):
        load_fashion_mnist(tmp_path, train=True)
    path.write_bytes(full + bytes(3))
    with raises_naming(DataFileError, str(path), "extra bytes follow the data"):
        load_fashion_mnist(tmp_path, train=True)


def test_fashion_files_that_do_not_fit_the_dataset_are_named(tmp_path):
    write_fashion(tmp_path, labels=np.array([0, 1, 2, 12, 4, 5], np.uint8))
    with raises_naming(DataFileError, str(tmp_path / "train-labels-idx1-ubyte.gz"), "[0, 10)", "max 12"):
        load_fashion_mnist(tmp_path, train=True)
    write_fashion(tmp_path, labels=np.arange(5, dtype=np.uint8))
    with raises_naming(DataFileError, str(tmp_path / IMAGES_GZ), "6 images", "5 labels"):
        load_fashion_mnist(tmp_path, train=True)
    (tmp_path / IMAGES_GZ).write_bytes(gzip.compress(idx_bytes(np.zeros((6, 32, 32), np.uint8))))
    with raises_naming(DataFileError, str(tmp_path / IMAGES_GZ), "(N, 28, 28)", "(6, 32, 32)"):
        load_fashion_mnist(tmp_path, train=True)


# -------------------------------------------------------------------------------------------------------- CIFAR
def dump(path: Path, entry: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(entry, protocol=2))


def batch_entry(count: int, label_key: bytes = b"labels", num_classes: int = 10) -> dict:
    data = (np.arange(count * 3072) % 256).astype(np.uint8).reshape(count, 3072)
    return {b"batch_label": b"x", label_key: [i % num_classes for i in range(count)], b"data": data}


def write_cifar10(root: Path, per_batch: int = 2) -> Path:
    directory = root / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        dump(directory / name, batch_entry(per_batch))
    dump(directory / "batches.meta", {b"label_names": [f"c{k}".encode() for k in range(10)]})
    return directory


def test_a_truncated_cifar_batch_is_named(tmp_path):
    directory = write_cifar10(tmp_path)
    path = directory / "data_batch_3"
    path.write_bytes(path.read_bytes()[:-100])
    with raises_naming(DataFileError, str(path), "truncated pickle"):
        load_cifar(tmp_path, 10, train=True)
    path.write_bytes(b"")
    with raises_naming(DataFileError, str(path), "empty or truncated pickle"):
        CIFAR10Data(root=str(tmp_path)).setup("fit")


@pytest.mark.parametrize(
    "content",
    [b"this is not a pickle", b"PK\x03\x04 a zip archive, as torch.save writes", bytes(range(256))],
    ids=["text", "zip", "binary"],
)
def test_a_cifar_batch_that_is_not_a_pickle_is_named(tmp_path, content):
    directory = write_cifar10(tmp_path)
    path = directory / "data_batch_2"
    path.write_bytes(content)
    with raises_naming(DataFileError, str(path), "CIFAR"):
        load_cifar(tmp_path, 10, train=True)


def test_a_checkpoint_in_place_of_a_cifar_batch_is_named(tmp_path):
    directory = write_cifar10(tmp_path)
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, directory / "test_batch")
    with raises_naming(DataFileError, str(directory / "test_batch"), "not a readable CIFAR pickle"):
        load_cifar(tmp_path, 10, train=False)


def test_cifar_batches_with_missing_keys_or_wrong_content_are_named(tmp_path):
    directory = write_cifar10(tmp_path)
    path = directory / "data_batch_1"
    entry = batch_entry(2)
    del entry[b"labels"]
    dump(path, entry)
    with raises_naming(DataFileError, str(path), "no 'labels' entry", "'data'"):
        load_cifar(tmp_path, 10, train=True)
    dump(path, [1, 2, 3])
    with raises_naming(DataFileError, str(path), "expected a pickled dict", "list"):
        load_cifar(tmp_path, 10, train=True)
    dump(path, {**batch_entry(2), b"labels": [3, 10]})
    with raises_naming(DataFileError, str(path), "'labels' must lie in [0, 10)", "max 10"):
        load_cifar(tmp_path, 10, train=True)
    dump(path, {**batch_entry(2), b"data": np.zeros((2, 1024), np.uint8)})
    with raises_naming(DataFileError, str(path), "'data' must be uint8 rows of 3072 pixels", "(2, 1024)"):
        load_cifar(tmp_path, 10, train=True)
    dump(path, {**batch_entry(2), b"labels": [0, 1, 2]})
    with raises_naming(DataFileError, str(path), "'labels' must hold one integer per image (2)"):
        load_cifar(tmp_path, 10, train=True)


def test_cifar100_batch_without_fine_labels_is_named(tmp_path):
    directory = tmp_path / "cifar-100-python"
    dump(directory / "train", batch_entry(3, b"coarse_labels", 20))
    dump(directory / "test", batch_entry(3, b"fine_labels", 100))
    with raises_naming(DataFileError, str(directory / "train"), "no 'fine_labels' entry"):
        CIFAR100Data(root=str(tmp_path)).setup("fit")


def test_a_cifar_folder_missing_one_batch_names_that_batch(tmp_path):
    directory = write_cifar10(tmp_path)
    (directory / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError) as error:
        load_cifar(tmp_path, 10, train=True)
    message = str(error.value)
    assert "data_batch_4 missing from " + str(directory) in message, message
    assert "found data_batch_1, data_batch_2, data_batch_3, data_batch_5" in message, message
    assert load_cifar(tmp_path, 10, train=False)[0].shape == (2, 32, 32, 3)  # the test split is complete


def test_a_corrupt_cifar_meta_file_is_named(tmp_path):
    directory = write_cifar10(tmp_path)
    (directory / "batches.meta").write_bytes(b"garbage")
    with raises_naming(DataFileError, str(directory / "batches.meta"), "CIFAR"):
        load_cifar_classes(tmp_path, 10)
    dump(directory / "batches.meta", {b"label_names": [b"a", b"b"]})
    with raises_naming(DataFileError, str(directory / "batches.meta"), "'label_names' must list 10 class names"):
        load_cifar_classes(tmp_path, 10)


# ------------------------------------------------------------------------------------------------ image folders
COLOURS = {"a": (220, 20, 20), "b": (20, 220, 20), "c": (20, 20, 220)}


def write_image(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 36), colour).save(path, "PNG")


def write_imagenet(root: Path, train: tuple[str, ...] = ("a", "b", "c"), val: tuple[str, ...] = ("a", "b", "c")):
    for split, classes in (("train", train), ("val", val)):
        for name in classes:
            for j in range(2):
                write_image(root / split / name / f"{name}_{j}.png", COLOURS[name])


def test_imagenet_val_lacking_a_class_is_an_error_naming_folders_and_class(tmp_path):
    write_imagenet(tmp_path, val=("a", "c"))  # ImageFolder alone would label val "c" as class 1, train's "b"
    data = ImageNetData(root=str(tmp_path), image_size=32, batch_size=2)
    with raises_naming(
        DataFolderError, str(tmp_path / "val"), str(tmp_path / "train"), "missing from val: b", "matched by folder name"
    ):
        data.setup("fit")
    with raises_naming(DataFolderError, "missing from val: b"):
        ImageNetData(root=str(tmp_path), image_size=32).setup("validate")


def test_imagenet_val_with_an_extra_class_is_an_error(tmp_path):
    write_imagenet(tmp_path, train=("a", "c"))
    with raises_naming(DataFolderError, str(tmp_path / "val"), "not in train: b"):
        ImageNetData(root=str(tmp_path), image_size=32).setup("validate")


def test_imagenet_val_without_class_folders_or_without_train_is_named(tmp_path):
    write_imagenet(tmp_path, val=())
    write_image(tmp_path / "val" / "ILSVRC2012_val_00000001.png", COLOURS["a"])  # the official flat layout
    with raises_naming(FileNotFoundError, str(tmp_path / "val"), "holds no class folders"):
        ImageNetData(root=str(tmp_path), image_size=32).setup("validate")
    only_val = tmp_path / "only_val"
    write_imagenet(only_val, train=())
    with raises_naming(DataFolderError, str(only_val / "val"), "3 class folders", "1000", str(only_val / "train")):
        ImageNetData(root=str(only_val), image_size=32).setup("validate")


def test_imagenet_labels_are_matched_by_class_folder_name(tmp_path):
    write_imagenet(tmp_path)
    data = ImageNetData(root=str(tmp_path), image_size=32, batch_size=2, augment=False)
    data.setup("fit")
    val_x, val_y = zip(*[data.val_set[i] for i in range(len(data.val_set))])
    assert list(val_y) == [0, 0, 1, 1, 2, 2] and data.classes == ["a", "b", "c"]
    mean = torch.tensor([0.485, 0.456, 0.406])
    std = torch.tensor([0.229, 0.224, 0.225])
    for x, y in zip(val_x, val_y):  # the colour of each val image is its class's colour in train
        colour = (x.mean(dim=(1, 2)) * std + mean) * 255
        torch.testing.assert_close(colour, torch.tensor(COLOURS[data.classes[y]], dtype=torch.float32), atol=3, rtol=0)


def write_tiny(root: Path) -> Path:
    directory = root / "tiny-imagenet-200"
    directory.mkdir(parents=True)
    (directory / "wnids.txt").write_text("a\nb\nc\n")
    for name in "abc":
        write_image(directory / "train" / name / "images" / f"{name}_0.JPEG", COLOURS[name])
    lines = []
    for j, name in enumerate("cab"):
        write_image(directory / "val" / "images" / f"val_{j}.JPEG", COLOURS[name])
        lines.append(f"val_{j}.JPEG\t{name}\t0\t0\t39\t35")
    (directory / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return directory


def test_tiny_imagenet_class_without_training_images_is_named(tmp_path):
    directory = write_tiny(tmp_path)
    (directory / "train" / "b" / "images" / "b_0.JPEG").unlink()
    with raises_naming(DataFolderError, "1 of the 3 classes", str(directory / "wnids.txt"), ": b;", str(directory)):
        TinyImageNetData(root=str(directory)).setup("fit")


def test_tiny_imagenet_bad_annotation_lines_and_missing_images_are_named(tmp_path):
    directory = write_tiny(tmp_path)
    annotations = directory / "val" / "val_annotations.txt"
    text = annotations.read_text().splitlines()
    annotations.write_text("\n".join([text[0], "val_1.JPEG a 0 0 39 35", text[2]]) + "\n")  # spaces, not tabs
    with raises_naming(DataFileError, f"{annotations}, line 2", "file<TAB>wnid"):
        TinyImageNetData(root=str(directory)).setup("validate")
    annotations.write_text("\n".join(text) + "\n")
    (directory / "val" / "images" / "val_2.JPEG").unlink()
    with raises_naming(FileNotFoundError, str(annotations), "val_2.JPEG", str(directory / "val" / "images")):
        TinyImageNetData(root=str(directory)).setup("validate")


# --------------------------------------------------------------------------------------- data module arguments
@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"val_batch_size": 0}, ValueError, r"val_batch_size must be an int >= 1 or None, got 0"),
        ({"val_batch_size": -4}, ValueError, r"val_batch_size must be an int >= 1 or None, got -4"),
        ({"val_batch_size": 2.5}, TypeError, r"val_batch_size must be an int >= 1 or None, got float"),
        ({"batch_size": 0}, ValueError, r"batch_size must be an int >= 1, got 0"),
        ({"batch_size": "8"}, TypeError, r"batch_size must be an int >= 1, got str"),
        ({"limit_train": 0}, ValueError, r"limit_train must be an int >= 1 or None"),
        ({"limit_val": 1.0}, TypeError, r"limit_val must be an int >= 1 or None"),
        ({"num_workers": -1}, ValueError, r"^num_workers must be an int >= 0, got -1$"),
        ({"seed": -1}, ValueError, r"^seed must be an int in \[0, 2\*\*63 - 1\], got -1$"),
        ({"seed": 2**63}, ValueError, r"^seed must be an int in \[0, 2\*\*63 - 1\]"),
        ({"seed": True}, TypeError, r"^seed must be an int"),
    ],
)
def test_data_module_arguments_are_checked_by_name(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        FashionMNISTData(root="nowhere", **kwargs)


def test_val_batch_size_none_means_batch_size_and_a_number_is_used(tmp_path):
    write_fashion(tmp_path, count=6)
    data = FashionMNISTData(root=str(tmp_path), batch_size=4, val_batch_size=None, num_workers=0)
    data.setup("fit")
    assert data.val_dataloader().batch_size == 4
    data = FashionMNISTData(root=str(tmp_path), batch_size=4, val_batch_size=5, num_workers=0)
    data.setup("fit")
    assert data.val_dataloader().batch_size == 5


def test_array_dataset_checks_its_seed_and_padding_by_name():
    images = np.zeros((2, 8, 8), np.uint8)
    with pytest.raises(ValueError, match=r"^seed must be an int in \[0, 2\*\*63 - 1\], got -3$"):
        ArrayImageDataset(images, [0, 1], (0.5,), (0.5,), seed=-3)
    with pytest.raises(ValueError, match=r"^padding must be an int >= 0, got -1$"):
        ArrayImageDataset(images, [0, 1], (0.5,), (0.5,), padding=-1)


def test_large_seeds_shuffle_and_augment(tmp_path):
    write_fashion(tmp_path, count=20)
    seen = []
    for _ in range(2):
        data = FashionMNISTData(root=str(tmp_path), batch_size=4, seed=2**63 - 1, num_workers=0)
        loader = data.train_dataloader()
        epochs = []
        for epoch in (0, 1, 7):
            loader.sampler.set_epoch(epoch)
            epochs.append(torch.cat([x for x, _ in loader]))
        seen.append(epochs)
    for first, second in zip(*seen):  # reproducible
        assert torch.equal(first, second)
    assert not torch.equal(seen[0][0], seen[0][1])  # a new order and new crops each epoch
    dataset = ArrayImageDataset(np.zeros((3, 8, 8), np.uint8), [0, 1, 2], (0.5,), (0.5,), "crop_flip", seed=2**63 - 1)
    dataset.set_epoch(2**31)


# ------------------------------------------------------------------------------- a training set under one batch
def test_a_training_set_smaller_than_one_batch_with_drop_last_is_an_error(tmp_path):
    write_fashion(tmp_path, count=5)
    data = FashionMNISTData(root=str(tmp_path), batch_size=8, num_workers=0)
    data.setup("fit")  # inspecting the data still works
    with raises_naming(ValueError, "5 samples", "batch_size=8", "drop_last=True", "no training batch would remain"):
        data.train_dataloader()
    limited = FashionMNISTData(root=str(tmp_path), batch_size=4, limit_train=3, num_workers=0)
    with raises_naming(ValueError, "3 samples (limit_train=3)", "batch_size=4"):
        limited.train_dataloader()
    kept = FashionMNISTData(root=str(tmp_path), batch_size=8, drop_last=False, num_workers=0)
    assert [len(y) for _, y in kept.train_dataloader()] == [5]


def test_drop_last_counts_the_samples_of_each_process(tmp_path):
    write_fashion(tmp_path, count=12)
    data = FashionMNISTData(root=str(tmp_path), batch_size=8, num_workers=0)
    data.trainer = SimpleNamespace(world_size=2, global_rank=0)
    with raises_naming(ValueError, "12 samples", "6 per process over 2 processes", "batch_size=8"):
        data.train_dataloader()
    data.trainer = SimpleNamespace(world_size=1, global_rank=0)
    assert len(data.train_dataloader()) == 1


class Linear(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(28 * 28, 10)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.layer(x.flatten(1)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_fit_on_a_training_set_smaller_than_one_batch_fails_instead_of_training_nothing(tmp_path):
    write_fashion(tmp_path, count=5)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    with raises_naming(ValueError, "5 samples", "batch_size=8"):
        trainer.fit(Linear(), FashionMNISTData(root=str(tmp_path), batch_size=8, num_workers=0))
