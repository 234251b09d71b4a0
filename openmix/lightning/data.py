"""LightningDataModules for Fashion-MNIST, CIFAR-10/100, Tiny-ImageNet and ImageNet, and the readers behind them.

Fashion-MNIST and CIFAR are read from their original files (idx, python pickle batches) into memory and augmented
there: :class:`ArrayImageDataset` draws one crop offset and one flip bit per sample from a NumPy generator seeded by
``(seed, epoch)``, and :class:`EpochSampler` shuffles with ``seed + epoch``, so a resumed run sees exactly the same
batches. Tiny-ImageNet and ImageNet are image folders decoded with PIL and transformed with
``torchvision.transforms.v2`` (their random crops use torch's per-worker RNG, seeded by Lightning's
``seed_everything(workers=True)``).

Every option of a data module is a typed ``__init__`` argument, so LightningCLI configures it from YAML. Nothing
touches the disk in ``__init__``: downloads (off by default) happen in ``prepare_data``, reading in ``setup``.

Sources: Fashion-MNIST https://github.com/zalandoresearch/fashion-mnist (Debian: ``dataset-fashion-mnist``),
CIFAR https://www.cs.toronto.edu/~kriz/cifar.html, Tiny-ImageNet http://cs231n.stanford.edu/tiny-imagenet-200.zip,
ImageNet https://image-net.org (ILSVRC-2012, train/ and val/ sorted into one folder per class).
"""

from __future__ import annotations

import abc
import gzip
import numbers
import os
import pickle
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision import datasets
from torchvision.transforms import v2

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# idx header: two zero bytes, a type code, the number of dimensions; then one big-endian uint32 size per dimension.
IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# CIFAR python version: (folder in the archive, train batches, test batches, label key, meta file, class-name key).
CIFAR_LAYOUTS = {
    10: (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
        "batches.meta",
        "label_names",
    ),
    100: ("cifar-100-python", ("train",), ("test",), "fine_labels", "meta", "fine_label_names"),
}
# How the random crop fills the border it pads, with torchvision's ``RandomCrop(padding_mode=...)`` names: zeros
# (black before normalisation), the edge pixel repeated, a mirror without the edge pixel (``dcb|abcd|cba``) or with it
# (``cba|abcd|dcb``).
PADDING_MODES = ("constant", "edge", "reflect", "symmetric")
# Resampling of the image-folder datasets' resized crops (OpenMixup's ``interpolation=3`` is PIL's bicubic).
INTERPOLATIONS = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}


# Seeds: any int in [0, MAX_SEED]. NumPy's SeedSequence takes any non-negative int, but torch's ``manual_seed`` takes
# at most 2**64 - 1, and the samplers seed with ``seed + epoch``.
MAX_SEED = 2**63 - 1


class DataFileError(ValueError):
    """A data file that exists but cannot be used: truncated, corrupt, in another format, or holding values that do
    not fit the dataset. The message starts with the file's path and says what is wrong with it."""


class DataFolderError(ValueError):
    """An image-folder dataset whose folders do not fit together (e.g. train and val with different class folders).
    The message names the folders and the classes."""


def check_seed(seed: Any, name: str = "seed") -> int:
    """``seed`` as an int in [0, 2**63 - 1]; a ``TypeError`` / ``ValueError`` naming ``name`` otherwise."""
    if not isinstance(seed, numbers.Integral) or isinstance(seed, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int in [0, 2**63 - 1], got {type(seed).__name__} {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be an int in [0, 2**63 - 1], got {seed}")
    return int(seed)


def _check_int(value: Any, name: str, low: int, allow_none: bool = False) -> int | None:
    """``value`` as an int >= ``low`` (or ``None`` when allowed); a ``TypeError`` / ``ValueError`` naming ``name``."""
    if value is None and allow_none:
        return None
    wanted = f"an int >= {low}" + (" or None" if allow_none else "")
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be {wanted}, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name} must be {wanted}, got {value}")
    return int(value)


# ----------------------------------------------------------------------------------------------------------- readers
def _read_bytes(path: Path) -> bytes:
    """The content of ``path``, gunzipped when it starts with the gzip magic bytes (whatever its name).

    Raises:
        DataFileError: a truncated or corrupt gzip stream (instead of ``EOFError`` / ``BadGzipFile`` / ``zlib.error``).
    """
    with open(path, "rb") as file:
        is_gzip = file.read(2) == b"\x1f\x8b"
        if not is_gzip:
            file.seek(0)
            return file.read()
    try:
        with gzip.open(path, "rb") as file:
            return file.read()
    except EOFError as error:
        raise DataFileError(
            f"{path}: truncated gzip file ({error}); the download or copy was cut short: delete it and fetch it again"
        ) from None
    except (gzip.BadGzipFile, zlib.error, OSError) as error:
        if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        raise DataFileError(
            f"{path}: corrupt gzip file ({type(error).__name__}: {error}); delete it and fetch it again"
        ) from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an MNIST-style idx file, gzipped or raw (told apart by the gzip magic bytes, not by the name).

    Args:
        path: the file, e.g. ``train-images-idx3-ubyte.gz`` or ``t10k-labels-idx1-ubyte``.

    Returns:
        A writable array with the header's shape in native byte order: uint8 images (N, H, W) or labels (N,).

    Raises:
        DataFileError: (a ``ValueError``) naming the file: a truncated or corrupt gzip stream, a magic number that
            is not an idx one, or a data size that does not match the header.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise DataFileError(
            f"{path}: not an idx file (magic number 0x{data[:4].hex()}; expected 0x0000TTNN with type TT in "
            "08, 09, 0B-0E and NN dimensions, e.g. 0x00000803 for images, 0x00000801 for labels)"
        )
    dtype, ndim = IDX_DTYPES[data[2]], data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DataFileError(f"{path}: idx header truncated ({len(data)} bytes, {ndim} dimensions announced)")
    shape = tuple(int(size) for size in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        problem = "the file is truncated" if len(data) - offset < expected else "extra bytes follow the data"
        raise DataFileError(
            f"{path}: header says shape {shape} ({expected} bytes) but {len(data) - offset} bytes follow ({problem})"
        )
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def fashion_mnist_files(root: str | Path, train: bool) -> tuple[Path, Path]:
    """Paths of the (images, labels) idx files of one Fashion-MNIST split, raw or ``.gz``.

    Looks in ``root`` itself (the Debian layout) and in ``root/FashionMNIST/raw`` (torchvision's download layout).

    Raises:
        FileNotFoundError: naming the files, the Debian package and the ``download: true`` option.
    """
    prefix = "train" if train else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    root = Path(root)
    for directory in (root, root / "FashionMNIST" / "raw"):
        found = [next((directory / n for n in (s, s + ".gz") if (directory / n).is_file()), None) for s in stems]
        if found[0] is not None and found[1] is not None:
            return found[0], found[1]
    raise FileNotFoundError(
        f"Fashion-MNIST files {stems[0]}[.gz] and {stems[1]}[.gz] not found in {root} nor in "
        f"{root / 'FashionMNIST' / 'raw'}. Install the Debian package dataset-fashion-mnist (it puts them in "
        "/usr/share/datasets/fashion-mnist), or set `download: true` on the data module to fetch them with torchvision."
    )


def load_fashion_mnist(root: str | Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Read one Fashion-MNIST split (train: 60000 images, test: 10000) from its original idx files.

    Args:
        root: a folder holding ``<prefix>-images-idx3-ubyte[.gz]`` and ``<prefix>-labels-idx1-ubyte[.gz]``
            (prefix ``train`` or ``t10k``), directly or under ``FashionMNIST/raw``.
        train: the training split, else the test split.

    Returns:
        uint8 images (N, 28, 28) and int64 labels (N,); class names are :data:`FASHION_MNIST_CLASSES`.
    """
    images_path, labels_path = fashion_mnist_files(root, train)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28):
        raise DataFileError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataFileError(f"{labels_path}: expected integer labels of shape (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DataFileError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
        raise DataFileError(
            f"{labels_path}: labels must lie in [0, {len(FASHION_MNIST_CLASSES)}), got min {labels.min()}, "
            f"max {labels.max()}"
        )
    return images, labels.astype(np.int64)


def cifar_directory(root: str | Path, num_classes: int, train: bool) -> Path:
    """The folder holding the CIFAR pickle batches of a split: ``root/cifar-10-batches-py`` (or
    ``cifar-100-python``), or ``root`` itself when the batches are directly there."""
    if num_classes not in CIFAR_LAYOUTS:
        raise ValueError(f"num_classes must be 10 or 100 for CIFAR, got {num_classes}")
    folder, train_names, test_names = CIFAR_LAYOUTS[num_classes][:3]
    names = train_names if train else test_names
    root = Path(root)
    candidates = (root / folder, root)
    for directory in candidates:
        if all((directory / name).is_file() for name in names):
            return directory
    for directory in candidates:  # a folder with some of the batches: name the ones it lacks
        missing = [name for name in names if not (directory / name).is_file()]
        if len(missing) < len(names):
            found = [name for name in names if name not in missing]
            raise FileNotFoundError(
                f"CIFAR-{num_classes} batch file(s) {', '.join(missing)} missing from {directory} (found "
                f"{', '.join(found)}); copy or extract the whole archive again, or set `download: true` on the data "
                "module to fetch it with torchvision."
            )
    raise FileNotFoundError(
        f"CIFAR-{num_classes} batches {', '.join(names)} not found in {root / folder} nor in {root}; "
        "set `download: true` on the data module to fetch them with torchvision."
    )


def _unpickle(path: Path, keys: Sequence[str] = ()) -> dict[str, Any]:
    """A CIFAR pickle as a dict with str keys; a ``DataFileError`` naming the file when it is truncated, not a
    pickle, not a dict, or lacks one of ``keys``.

    The official batches are Python 2 pickles with bytes keys; only read files you trust (pickle runs code)."""
    with open(path, "rb") as file:
        try:
            entry = pickle.load(file, encoding="bytes")
        except EOFError:
            raise DataFileError(
                f"{path}: empty or truncated pickle; extract or download the CIFAR archive again"
            ) from None
        except Exception as error:  # a corrupt pickle raises nearly anything (UnpicklingError, KeyError, ValueError...)
            detail = " ".join(str(error).split())  # one line
            kind = "truncated pickle" if "truncated" in detail else "not a readable CIFAR pickle"
            raise DataFileError(
                f"{path}: {kind} ({type(error).__name__}: {detail}); extract or download the CIFAR archive again"
            ) from None
    if not isinstance(entry, dict):
        raise DataFileError(f"{path}: expected a pickled dict (a CIFAR batch), got a {type(entry).__name__}")
    entry = {key.decode() if isinstance(key, bytes) else key: value for key, value in entry.items()}
    missing = [key for key in keys if key not in entry]
    if missing:
        raise DataFileError(
            f"{path}: no {', '.join(map(repr, missing))} entry in this CIFAR pickle (keys: {sorted(map(str, entry))})"
        )
    return entry


def _read_cifar_batch(path: Path, label_key: str, num_classes: int = 100) -> tuple[np.ndarray, np.ndarray]:
    entry = _unpickle(path, ("data", label_key))
    try:
        data = np.asarray(entry["data"])
        labels = np.asarray(entry[label_key])
    except (TypeError, ValueError) as error:
        raise DataFileError(f"{path}: 'data' and {label_key!r} must be arrays ({error})") from None
    if not np.issubdtype(data.dtype, np.integer) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataFileError(
            f"{path}: 'data' must be uint8 rows of 3072 pixels (N, 3072), got {data.dtype} {data.shape}"
        )
    if data.dtype != np.uint8 and data.size and (data.min() < 0 or data.max() > 255):
        raise DataFileError(f"{path}: 'data' must hold pixel values in [0, 255], got {data.min()} to {data.max()}")
    data = data.astype(np.uint8, copy=False)
    if labels.shape != (len(data),) or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
        raise DataFileError(
            f"{path}: {label_key!r} must hold one integer per image ({len(data)}), got {labels.dtype} {labels.shape}"
        )
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataFileError(
            f"{path}: {label_key!r} must lie in [0, {num_classes}), got min {labels.min()}, max {labels.max()}"
        )
    # Each row is channel-major: 1024 red, 1024 green, 1024 blue values, each plane row-major. -> (N, 32, 32, 3)
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels


def load_cifar(root: str | Path, num_classes: int, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Read a CIFAR split from the standard python pickle batches (not torchvision's md5-checked classes).

    Args:
        root: a folder holding ``cifar-10-batches-py`` / ``cifar-100-python``, or the batches directly.
        num_classes: 10 (``data_batch_1..5`` / ``test_batch``, key ``labels``) or 100 (``train`` / ``test``,
            key ``fine_labels``).
        train: the training split (50000 images), else the test split (10000).

    Returns:
        uint8 images (N, 32, 32, 3) and int64 labels (N,).
    """
    directory = cifar_directory(root, num_classes, train)
    _, train_names, test_names, label_key = CIFAR_LAYOUTS[num_classes][:4]
    names = train_names if train else test_names
    batches = [_read_cifar_batch(directory / name, label_key, num_classes) for name in names]
    return np.concatenate([images for images, _ in batches]), np.concatenate([labels for _, labels in batches])


def load_cifar_classes(root: str | Path, num_classes: int) -> list[str] | None:
    """Class names from ``batches.meta`` (CIFAR-10) or ``meta`` (CIFAR-100, fine labels); None if it is absent."""
    meta_name, names_key = CIFAR_LAYOUTS[num_classes][4:]
    directory = cifar_directory(root, num_classes, train=False)
    if not (directory / meta_name).is_file():
        return None
    names = _unpickle(directory / meta_name, (names_key,))[names_key]
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) or len(names) != num_classes:
        count = len(names) if isinstance(names, Sequence) else type(names).__name__
        raise DataFileError(f"{directory / meta_name}: {names_key!r} must list {num_classes} class names, got {count}")
    return [name.decode() if isinstance(name, bytes) else str(name) for name in names]


# ------------------------------------------------------------------------------------------------ in-memory dataset
class ArrayImageDataset(Dataset):
    """uint8 images held in memory, normalised per channel, with a per-(seed, epoch) crop/flip table.

    ``set_epoch(epoch)`` draws, with ``np.random.default_rng([seed, epoch])``, one crop offset ``(dy, dx)`` in
    ``[0, 2 * padding]`` and one horizontal-flip bit per sample; ``__getitem__`` pads the raw image by ``padding``
    (filled as ``padding_mode`` says), crops back to (H, W) at that offset and flips: the CIFAR recipe
    ``RandomCrop(32, padding=4, padding_mode=...)`` + ``RandomHorizontalFlip``. Constant padding is black before
    normalisation, as with torchvision on PIL images. The tables live in shared memory and are updated in place, so
    persistent DataLoader workers see the new epoch too. No global RNG is used.

    Args:
        images: uint8 (N, H, W) or (N, H, W, C).
        labels: (N,) class indices.
        mean: per-channel mean of ``pixel / 255`` (length C).
        std: per-channel standard deviation of ``pixel / 255`` (length C).
        augment: ``"none"`` or ``"crop_flip"``.
        padding: padding of the random crop, in pixels.
        padding_mode: how the padded border is filled, as torchvision's ``RandomCrop``: ``"constant"`` (zeros),
            ``"edge"``, ``"reflect"`` (mirror without repeating the edge pixel; needs ``padding`` < H and W) or
            ``"symmetric"`` (mirror repeating it; needs ``padding`` <= H and W).
        seed: seeds the augmentation tables together with the epoch.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        augment: Literal["none", "crop_flip"] = "none",
        padding: int = 4,
        padding_mode: Literal["constant", "edge", "reflect", "symmetric"] = "constant",
        seed: int = 0,
    ) -> None:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"images must be uint8 (N, H, W) or (N, H, W, C), got {images.dtype} {images.shape}")
        if images.ndim == 3:
            images = images[..., None]
        self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # (N, C, H, W) uint8
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must have shape ({len(self.images)},), got {tuple(self.labels.shape)}")
        channels = self.images.shape[1]
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ValueError(f"mean and std need {channels} values each (std > 0), got mean={mean}, std={std}")
        if augment not in ("none", "crop_flip"):
            raise ValueError(f"augment must be 'none' or 'crop_flip', got {augment!r}")
        padding = _check_int(padding, "padding", 0)
        seed = check_seed(seed)
        check_padding_mode(padding_mode)
        side = min(self.images.shape[2:])
        if (padding_mode == "reflect" and padding >= side) or (padding_mode == "symmetric" and padding > side):
            raise ValueError(
                f"padding_mode={padding_mode!r} mirrors the image, so padding={padding} must be "
                f"{'<' if padding_mode == 'reflect' else '<='} the image side {side}"
            )
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment, self.padding, self.padding_mode, self.seed = augment, padding, padding_mode, seed
        # Shared memory: DataLoader workers (forked or spawned) read the same tables the main process rewrites.
        self.crop_offsets = torch.zeros(len(self.images), 2, dtype=torch.int64).share_memory_()  # (N, 2): dy, dx
        self.flips = torch.zeros(len(self.images), dtype=torch.bool).share_memory_()  # (N,)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.set_epoch(0)

    @property
    def epoch(self) -> int:
        """The epoch whose augmentation tables are in use."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Draw the crop offsets and flip bits of ``epoch`` (a function of ``(seed, epoch)`` only)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch.fill_(epoch)
        if self.augment == "none":
            return
        generator = np.random.default_rng([self.seed, epoch])
        offsets = generator.integers(0, 2 * self.padding + 1, size=(len(self), 2))
        flips = generator.integers(0, 2, size=len(self)).astype(bool)
        self.crop_offsets.copy_(torch.from_numpy(offsets))
        self.flips.copy_(torch.from_numpy(flips))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.images[index]  # (C, H, W) uint8
        if self.augment == "crop_flip":
            image = self._crop_flip(image, int(index))
        return (image.float() / 255 - self.mean) / self.std, self.labels[index]

    def _crop_flip(self, image: Tensor, index: int) -> Tensor:
        channels, height, width = image.shape
        pad = self.padding
        dy, dx = self.crop_offsets[index].tolist()
        if self.padding_mode == "constant":
            padded = image.new_zeros(channels, height + 2 * pad, width + 2 * pad)
            padded[:, pad : pad + height, pad : pad + width] = image
            image = padded[:, dy : dy + height, dx : dx + width]
        else:  # the crop's rows / columns in padded coordinates, read back from the image they mirror or repeat
            rows = padded_source_index(torch.arange(height) + (dy - pad), height, self.padding_mode)
            cols = padded_source_index(torch.arange(width) + (dx - pad), width, self.padding_mode)
            image = image.index_select(1, rows).index_select(2, cols)
        return image.flip(-1) if self.flips[index] else image


def check_padding_mode(padding_mode: Any) -> str:
    """``padding_mode`` itself if it is one of :data:`PADDING_MODES`, else a ``ValueError`` naming the argument."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    return padding_mode


def padded_source_index(position: Tensor, size: int, padding_mode: str) -> Tensor:
    """Where a pixel of a padded axis comes from: for positions in ``[-pad, size + pad)`` of an axis of ``size``
    pixels padded by ``pad`` on both sides, the index in ``[0, size)`` of the pixel ``padding_mode`` copies there
    (``"edge"``, ``"reflect"`` or ``"symmetric"``; constant padding has no source pixel)."""
    if padding_mode == "edge":
        return position.clamp(0, size - 1)
    if padding_mode == "reflect":  # dcb|abcd|cba: -1 -> 1, size -> size - 2
        below, above = -position, 2 * (size - 1) - position
    elif padding_mode == "symmetric":  # cba|abcd|dcb: -1 -> 0, size -> size - 1
        below, above = -position - 1, 2 * size - 1 - position
    else:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES[1:]} here, got {padding_mode!r}")
    return torch.where(position < 0, below, torch.where(position >= size, above, position))


class EpochSampler(DistributedSampler):
    """A ``DistributedSampler`` whose ``set_epoch`` also reaches the dataset's per-epoch augmentation tables.

    Shuffles with ``seed + epoch`` exactly as ``DistributedSampler`` does; ``num_replicas`` and ``rank`` default to
    one process (1 / 0) instead of asking ``torch.distributed``. Lightning calls ``set_epoch`` on the sampler every
    epoch and keeps samplers that are already ``DistributedSampler`` under DDP, so this one survives unchanged.

    Args:
        dataset: the dataset; its ``set_epoch(epoch)`` is called too when it has one.
        num_replicas: number of processes (the trainer's world size).
        rank: this process's global rank.
        shuffle: shuffle the indices every epoch.
        seed: shuffling seed, the same on every rank.
        drop_last: drop the tail that does not divide evenly among ranks (else pad by repeating indices).
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Set the shuffling epoch and, if the dataset has ``set_epoch``, its augmentation epoch."""
        super().set_epoch(epoch)
        dataset_set_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(dataset_set_epoch):
            dataset_set_epoch(epoch)


# ---------------------------------------------------------------------------------------------- image-folder data
def _tiny_imagenet_root(root: str | Path) -> Path:
    root = Path(root)
    for directory in (root / "tiny-imagenet-200", root):
        if (directory / "wnids.txt").is_file():
            return directory
    raise FileNotFoundError(
        f"Tiny-ImageNet not found: no wnids.txt in {root / 'tiny-imagenet-200'} nor in {root} "
        "(unzip http://cs231n.stanford.edu/tiny-imagenet-200.zip there)"
    )


def read_wnids(root: str | Path) -> list[str]:
    """The sorted WordNet ids of ``wnids.txt`` under a Tiny-ImageNet root: class ``i`` is ``read_wnids(root)[i]``."""
    text = (_tiny_imagenet_root(root) / "wnids.txt").read_text()
    return sorted({line.strip() for line in text.splitlines() if line.strip()})


class TinyImageNetFolder(Dataset):
    """Tiny-ImageNet-200 in its zip layout: ``(transform(RGB PIL image), class index)`` pairs.

    The labelled splits are ``train`` (``train/<wnid>/images/*.JPEG``) and ``val`` (``val/images/*.JPEG``, labels
    from ``val/val_annotations.txt``: ``file<TAB>wnid<TAB>x<TAB>y<TAB>w<TAB>h``). The test split has no labels, so
    the val split doubles as the test set.

    Args:
        root: the ``tiny-imagenet-200`` folder, or a folder containing it.
        split: ``"train"`` or ``"val"``.
        transform: applied to the RGB PIL image.
    """

    def __init__(
        self, root: str | Path, split: Literal["train", "val"] = "train", transform: Callable | None = None
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val' (the test split has no labels), got {split!r}")
        self.root = _tiny_imagenet_root(root)
        self.classes = read_wnids(self.root)
        self.class_to_idx = {wnid: index for index, wnid in enumerate(self.classes)}
        self.samples = self._train_samples() if split == "train" else self._val_samples()
        if not self.samples:
            raise FileNotFoundError(f"no {split} images found under {self.root / split}")
        self.targets = [target for _, target in self.samples]
        self.transform = transform

    def _train_samples(self) -> list[tuple[Path, int]]:
        """Every class of ``wnids.txt`` must have its images: a missing or empty class folder is an error naming
        it (it would otherwise leave that class without training images, silently)."""
        per_class = [sorted((self.root / "train" / wnid / "images").glob("*.JPEG")) for wnid in self.classes]
        empty = [wnid for wnid, paths in zip(self.classes, per_class) if not paths]
        if empty and len(empty) < len(self.classes):  # all empty: the caller reports a missing split
            shown = ", ".join(str(self.root / "train" / wnid / "images") for wnid in empty[:3])
            more = f" and {len(empty) - 3} more" if len(empty) > 3 else ""
            raise DataFolderError(
                f"{len(empty)} of the {len(self.classes)} classes of {self.root / 'wnids.txt'} have no training "
                f"images (*.JPEG): {', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}; looked in {shown}{more}"
            )
        return [(path, index) for index, paths in enumerate(per_class) for path in paths]

    def _val_samples(self) -> list[tuple[Path, int]]:
        annotations = self.root / "val" / "val_annotations.txt"
        if not annotations.is_file():
            raise FileNotFoundError(f"Tiny-ImageNet val labels not found: {annotations}")
        samples = []
        for number, line in enumerate(annotations.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or not fields[0] or not fields[1]:
                raise DataFileError(
                    f"{annotations}, line {number}: expected 'file<TAB>wnid<TAB>x<TAB>y<TAB>w<TAB>h', got {line!r}"
                )
            file_name, wnid = fields[:2]
            if wnid not in self.class_to_idx:
                raise DataFileError(
                    f"{annotations}, line {number}: {file_name} has class {wnid!r}, which is not in wnids.txt"
                )
            samples.append((self.root / "val" / "images" / file_name, self.class_to_idx[wnid]))
        missing = [path for path, _ in samples if not path.is_file()]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise FileNotFoundError(
                f"{annotations} lists {len(missing)} image(s) missing from {self.root / 'val' / 'images'}: "
                f"{', '.join(path.name for path in missing[:3])}{more}"
            )
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        with Image.open(path) as image:
            rgb = image.convert("RGB")  # a few Tiny-ImageNet images are greyscale
        return (self.transform(rgb) if self.transform is not None else rgb), target


def _normalised_tensor(mean: Sequence[float], std: Sequence[float]) -> list[Callable]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std), v2.ToPureTensor()]


def folder_transform(
    image_size: int,
    train: bool,
    resize_to: int | None = None,
    center_crop: bool = True,
    interpolation: Literal["bilinear", "bicubic"] = "bilinear",
) -> v2.Compose:
    """The PIL -> normalised float32 (3, S, S) pipeline of the image-folder datasets (ImageNet statistics).

    Args:
        image_size: output side S.
        train: ``RandomResizedCrop(S)`` + horizontal flip; else the evaluation resize below.
        resize_to: evaluation only: resize the short side to this first (None: no resize).
        center_crop: evaluation only: centre-crop to S after the resize.
        interpolation: resampling of the random resized crop and of the evaluation resize.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {tuple(INTERPOLATIONS)}, got {interpolation!r}")
    mode = INTERPOLATIONS[interpolation]
    if train:
        geometry = [v2.RandomResizedCrop(image_size, interpolation=mode, antialias=True), v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize(resize_to, interpolation=mode, antialias=True)] if resize_to is not None else []
        geometry += [v2.CenterCrop(image_size)] if center_crop else []
    return v2.Compose(geometry + _normalised_tensor(IMAGENET_MEAN, IMAGENET_STD))


# ---------------------------------------------------------------------------------------------------- data modules
class ClassificationData(L.LightningDataModule, abc.ABC):
    """Base of the image-classification data modules: loaders, distributed sampling, subsets for quick runs.

    Subclasses implement :meth:`build_dataset`. Training shuffles with an :class:`EpochSampler` (seeded, one shard
    per rank); validation and test loaders are sequential and both read the held-out labelled split (the official
    test split of Fashion-MNIST / CIFAR, the val split of Tiny-ImageNet / ImageNet, whose test labels are not public).

    Args:
        batch_size: training batch size per process.
        num_workers: DataLoader worker processes (persistent when > 0).
        pin_memory: pin host memory for faster copies to the GPU.
        augment: use the dataset's training augmentation (crop + flip); False trains on evaluation-style images.
        seed: seed of the shuffling and of the in-memory augmentation tables, an int in [0, 2**63 - 1].
        val_batch_size: batch size of the validation / test loaders (None: ``batch_size``; 0 is an error).
        limit_train: use only the first N training samples (None: all); for quick runs and tests.
        limit_val: use only the first N validation / test samples (None: all).
        drop_last: drop the last incomplete training batch (and the tail that does not divide among ranks); a
            training set that this leaves without a single batch is a ``ValueError`` (see
            :meth:`check_training_batches`).
    """

    NUM_CLASSES = 0
    IN_CHANS = 3
    IMAGE_SIZE = 0

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
        augment: bool = True,
        seed: int = 0,
        val_batch_size: int | None = None,
        limit_train: int | None = None,
        limit_val: int | None = None,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        batch_size = _check_int(batch_size, "batch_size", 1)
        val_batch_size = _check_int(val_batch_size, "val_batch_size", 1, allow_none=True)  # None: batch_size
        limit_train = _check_int(limit_train, "limit_train", 1, allow_none=True)
        limit_val = _check_int(limit_val, "limit_val", 1, allow_none=True)
        num_workers = _check_int(num_workers, "num_workers", 0)
        seed = check_seed(seed)
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.augment, self.seed, self.val_batch_size = augment, seed, val_batch_size
        self.limit_train, self.limit_val, self.drop_last = limit_train, limit_val, drop_last
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.classes: list[str] | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.NUM_CLASSES

    @property
    def in_chans(self) -> int:
        """Channels of the input images."""
        return self.IN_CHANS

    @property
    def image_size(self) -> int:
        """Side of the (square) input images."""
        return self.IMAGE_SIZE

    @abc.abstractmethod
    def build_dataset(self, train: bool, limit: int | None) -> Dataset:
        """The training (``train=True``) or held-out split, restricted to its first ``limit`` samples."""

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets (reads the disk): training set for ``fit``, the held-out set for every stage."""
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self.build_dataset(train=True, limit=self.limit_train)
        if self.val_set is None:
            self.val_set = self.build_dataset(train=False, limit=self.limit_val)

    def check_training_batches(self) -> None:
        """Refuse a training set that ``drop_last`` would leave without a single batch on a process.

        Lightning would otherwise skip the whole fit ("No training batches") and exit 0. Dropping the incomplete
        batch is kept (it is the asked-for behaviour, and it keeps batch-norm statistics and per-step batch sizes
        steady); the error names the sizes and the ways out. :meth:`train_dataloader` calls it, which Lightning does
        before the first step, so ``setup`` alone (to inspect a small subset) still works."""
        if self.train_set is None or not self.drop_last:
            return
        world_size = self.trainer.world_size if self.trainer is not None else 1
        samples = len(self.train_set)
        per_process = samples // world_size  # what EpochSampler(drop_last=True) gives each rank
        if per_process >= self.batch_size:
            return
        limit = f" (limit_train={self.limit_train})" if self.limit_train is not None else ""
        share = f", {per_process} per process over {world_size} processes" if world_size > 1 else ""
        raise ValueError(
            f"the training set has {samples} samples{limit}{share}, fewer than batch_size={self.batch_size}, and "
            "drop_last=True drops the incomplete batch, so no training batch would remain: lower batch_size, use "
            "more samples (limit_train), or set drop_last=False"
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; one shard per rank when a (distributed) trainer is attached."""
        if self.train_set is None:
            self.setup("fit")
        self.check_training_batches()
        world_size, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        sampler = EpochSampler(self.train_set, world_size, rank, shuffle=True, seed=self.seed, drop_last=self.drop_last)
        return self._loader(self.train_set, self.batch_size, sampler, self.drop_last)

    def val_dataloader(self) -> DataLoader:
        """Sequential batches of the held-out labelled split."""
        if self.val_set is None:
            self.setup("validate")
        batch_size = self.batch_size if self.val_batch_size is None else self.val_batch_size
        return self._loader(self.val_set, batch_size, None, False)

    def test_dataloader(self) -> DataLoader:
        """The validation loader: the held-out labelled split doubles as the test set."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """The held-out split again, for ``openmix predict`` (class probabilities per image)."""
        return self.val_dataloader()

    def _loader(self, dataset: Dataset, batch_size: int, sampler: EpochSampler | None, drop_last: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=drop_last,
            persistent_workers=self.num_workers > 0,
        )


class InMemoryClassificationData(ClassificationData):
    """Base of the small datasets read whole into an :class:`ArrayImageDataset` (Fashion-MNIST, CIFAR).

    Subclasses set ``MEAN``, ``STD``, ``PADDING`` and ``PADDING_MODE`` (of the random crop) and implement
    :meth:`load_arrays`.

    Args:
        root: the dataset folder.
        download: fetch missing files with torchvision in ``prepare_data``.
        padding_mode: how the random crop fills its padded border (see :data:`PADDING_MODES`); ``None``: the
            dataset's recipe, ``PADDING_MODE`` (``"reflect"`` for CIFAR-100, ``"constant"`` for CIFAR-10 and
            Fashion-MNIST).
        **kwargs: the loader options of :class:`ClassificationData` (batch_size, num_workers, ...).
    """

    MEAN: tuple[float, ...] = ()
    STD: tuple[float, ...] = ()
    PADDING = 4
    PADDING_MODE = "constant"
    TORCHVISION_CLASS: type[datasets.VisionDataset] | None = None  # fetches the files when ``download``

    def __init__(
        self,
        root: str,
        download: bool = False,
        padding_mode: Literal["constant", "edge", "reflect", "symmetric"] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root, self.download = root, download
        self.padding_mode = check_padding_mode(self.PADDING_MODE if padding_mode is None else padding_mode)

    @abc.abstractmethod
    def locate_split(self, train: bool) -> Any:
        """Find the files of a split on disk; ``FileNotFoundError`` when they are missing."""

    def prepare_data(self) -> None:
        """With ``download``, fetch the missing splits with torchvision (once per node)."""
        if not self.download:
            return
        for train in (True, False):
            try:
                self.locate_split(train)
            except FileNotFoundError:
                self.TORCHVISION_CLASS(self.root, train=train, download=True)

    @abc.abstractmethod
    def load_arrays(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (N, H, W[, C]) and int64 labels (N,) of the training or test split."""

    def build_dataset(self, train: bool, limit: int | None) -> ArrayImageDataset:
        """The split as an :class:`ArrayImageDataset`; crop + flip on the training split when ``augment``."""
        images, labels = self.load_arrays(train)
        augment = "crop_flip" if train and self.augment else "none"
        return ArrayImageDataset(
            images[:limit],
            labels[:limit],
            self.MEAN,
            self.STD,
            augment=augment,
            padding=self.PADDING,
            padding_mode=self.padding_mode,
            seed=self.seed,
        )


class FashionMNISTData(InMemoryClassificationData):
    """Fashion-MNIST (10 classes, 1 x 28 x 28) from its original idx files; the default dataset of CI.

    Training augmentation: random crop with 2 px padding (zeros unless ``padding_mode`` says otherwise) +
    horizontal flip. The official test split serves as both the validation and the test set.

    Args:
        root: folder with the idx files (raw or .gz), directly (Debian package ``dataset-fashion-mnist``) or under
            ``FashionMNIST/raw`` (torchvision's layout).
        download: fetch the files with torchvision into ``root/FashionMNIST/raw`` if they are missing.
        padding_mode: fill of the crop's padded border, one of :data:`PADDING_MODES`; ``None``: ``"constant"``.
        **kwargs: the loader options of :class:`ClassificationData` (batch_size, num_workers, ...).
    """

    NUM_CLASSES, IN_CHANS, IMAGE_SIZE = 10, 1, 28
    MEAN, STD, PADDING = (0.2860,), (0.3530,), 2

    TORCHVISION_CLASS = datasets.FashionMNIST

    def __init__(
        self,
        root: str = "/usr/share/datasets/fashion-mnist",
        download: bool = False,
        padding_mode: Literal["constant", "edge", "reflect", "symmetric"] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, download, padding_mode, **kwargs)
        self.save_hyperparameters()

    def locate_split(self, train: bool) -> tuple[Path, Path]:
        return fashion_mnist_files(self.root, train)

    def load_arrays(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        """Read the split with :func:`load_fashion_mnist`."""
        self.classes = list(FASHION_MNIST_CLASSES)
        return load_fashion_mnist(self.root, train)


class CIFARData(InMemoryClassificationData):
    """Base of CIFAR-10/100 (3 x 32 x 32) read from the python pickle batches.

    Training augmentation: random crop with 4 px padding + horizontal flip, as OpenMixup's CIFAR data configs
    (``configs/classification/_base_/datasets/cifar{10,100}/sz32_bs100.py``): CIFAR-100 pads by reflection
    (``RandomCrop(size=32, padding=4, padding_mode="reflect")``), CIFAR-10 with zeros (``RandomCrop(size=32,
    padding=4)``). The official test split serves as both the validation and the test set.

    Args:
        root: folder holding ``cifar-10-batches-py`` / ``cifar-100-python`` (or the batches directly).
        download: fetch and extract the archive with torchvision's CIFAR class if the batches are missing.
        padding_mode: fill of the crop's padded border, one of :data:`PADDING_MODES`; ``None``: the recipe's
            (``PADDING_MODE``: ``"reflect"`` for CIFAR-100, ``"constant"`` for CIFAR-10).
        **kwargs: the loader options of :class:`ClassificationData` (batch_size, num_workers, ...).
    """

    IN_CHANS, IMAGE_SIZE, PADDING = 3, 32, 4
    TORCHVISION_CLASS: type[datasets.VisionDataset] = datasets.CIFAR10

    def __init__(
        self,
        root: str = "data/cifar",
        download: bool = False,
        padding_mode: Literal["constant", "edge", "reflect", "symmetric"] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, download, padding_mode, **kwargs)
        self.save_hyperparameters()

    def locate_split(self, train: bool) -> Path:
        return cifar_directory(self.root, self.NUM_CLASSES, train)

    def load_arrays(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        """Read the split with :func:`load_cifar`; class names from the meta file."""
        self.classes = load_cifar_classes(self.root, self.NUM_CLASSES)
        return load_cifar(self.root, self.NUM_CLASSES, train)


class CIFAR10Data(CIFARData):
    """CIFAR-10: 10 classes, 50000 training and 10000 test images. Arguments: see :class:`CIFARData`."""

    NUM_CLASSES = 10
    MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    PADDING_MODE = "constant"  # OpenMixup configs/classification/_base_/datasets/cifar10/sz32_bs100.py, line 7
    TORCHVISION_CLASS = datasets.CIFAR10


class CIFAR100Data(CIFARData):
    """CIFAR-100 (fine labels): 100 classes, 50000 training and 10000 test images. Arguments: see :class:`CIFARData`."""

    NUM_CLASSES = 100
    MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    PADDING_MODE = "reflect"  # OpenMixup configs/classification/_base_/datasets/cifar100/sz32_bs100.py, line 7
    TORCHVISION_CLASS = datasets.CIFAR100


def class_folders(directory: Path) -> list[str]:
    """Sorted names of the sub-folders of ``directory``: the classes ``ImageFolder`` finds there, in its order."""
    return sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())


def _few(names: Sequence[str], count: int = 10) -> str:
    """Up to ``count`` names, then how many more."""
    shown = ", ".join(names[:count])
    return shown + (f" and {len(names) - count} more" if len(names) > count else "")


def _first(dataset: Dataset, limit: int | None) -> Dataset:
    """The first ``limit`` samples (folder datasets are sorted by class, so a small limit covers few classes)."""
    return dataset if limit is None or limit >= len(dataset) else Subset(dataset, range(limit))


class FolderClassificationData(ClassificationData):
    """Base of the image-folder datasets (Tiny-ImageNet, ImageNet): a root folder and the network's input side.

    Args:
        root: the dataset folder.
        image_size: side of the network's input.
        interpolation: resampling of the random resized crop and of the evaluation resize, ``"bicubic"`` (the
            default: OpenMixup's ``RandomResizedCrop(..., interpolation=3)`` and ``Resize(256, interpolation=3)``
            in ``configs/classification/_base_/datasets/{tiny_imagenet/sz64_bs100,imagenet/basic_sz224_4xbs64}.py``)
            or ``"bilinear"`` (torchvision's default).
        **kwargs: the loader options of :class:`ClassificationData` (batch_size, num_workers, ...).
    """

    def __init__(
        self, root: str, image_size: int, interpolation: Literal["bilinear", "bicubic"] = "bicubic", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {tuple(INTERPOLATIONS)}, got {interpolation!r}")
        self.root, self._image_size, self.interpolation = root, image_size, interpolation

    @property
    def image_size(self) -> int:
        """Side of the network's input."""
        return self._image_size


class TinyImageNetData(FolderClassificationData):
    """Tiny-ImageNet-200 (200 classes, 3 x 64 x 64 JPEGs) from its zip layout, see :class:`TinyImageNetFolder`.

    Training: ``RandomResizedCrop(image_size)`` (bicubic) + horizontal flip; evaluation: resized to ``image_size``
    when it is not the native 64. ImageNet normalisation. The val split serves as both the validation and the test
    set (the test split has no labels).

    Args:
        root: the ``tiny-imagenet-200`` folder, or a folder containing it.
        image_size: side of the network's input.
        interpolation: resampling of the crops and resizes (see :class:`FolderClassificationData`).
        **kwargs: the loader options of :class:`ClassificationData` (batch_size, num_workers, ...).
    """

    NUM_CLASSES, NATIVE_SIZE = 200, 64

    def __init__(
        self,
        root: str = "data/tiny-imagenet-200",
        image_size: int = 64,
        interpolation: Literal["bilinear", "bicubic"] = "bicubic",
        **kwargs: Any,
    ) -> None:
        super().__init__(root, image_size, interpolation, **kwargs)
        self.save_hyperparameters()

    @property
    def num_classes(self) -> int:
        """200, or the number of ids in ``wnids.txt`` when the dataset is on disk (a subset, for quick runs)."""
        try:
            return len(read_wnids(self.root))
        except FileNotFoundError:
            return self.NUM_CLASSES

    def build_dataset(self, train: bool, limit: int | None) -> Dataset:
        """The train or val split with its transform."""
        if train and self.augment:
            transform = folder_transform(self.image_size, train=True, interpolation=self.interpolation)
        else:
            resize = self.image_size if self.image_size != self.NATIVE_SIZE else None
            transform = folder_transform(
                self.image_size, False, resize, center_crop=resize is not None, interpolation=self.interpolation
            )
        dataset = TinyImageNetFolder(self.root, "train" if train else "val", transform)
        self.classes = dataset.classes
        return _first(dataset, limit)


class ImageNetData(FolderClassificationData):
    """ImageNet (ILSVRC-2012) as two ``ImageFolder`` trees, ``root/train/<wnid>/*`` and ``root/val/<wnid>/*``.

    Training: ``RandomResizedCrop(image_size)`` (bicubic) + horizontal flip; evaluation: resize the short side to
    ``int(image_size / 0.875)`` then centre-crop ``image_size`` (256 -> 224). ImageNet normalisation. The val split
    serves as both the validation and the test set.

    Args:
        root: folder holding ``train/`` and ``val/``, one sub-folder per class in each.
        image_size: side of the network's input.
        interpolation: resampling of the crops and resizes (see :class:`FolderClassificationData`).
        **kwargs: the loader options of :class:`ClassificationData` (batch_size, num_workers, ...).
    """

    NUM_CLASSES, CROP_RATIO = 1000, 0.875

    def __init__(
        self,
        root: str = "data/imagenet",
        image_size: int = 224,
        interpolation: Literal["bilinear", "bicubic"] = "bicubic",
        **kwargs: Any,
    ) -> None:
        super().__init__(root, image_size, interpolation, **kwargs)
        self.save_hyperparameters()

    @property
    def num_classes(self) -> int:
        """1000, or the number of class folders in ``root/train`` when it exists (a subset, for quick runs)."""
        train_dir = Path(self.root) / "train"
        if not train_dir.is_dir():
            return self.NUM_CLASSES
        return len(class_folders(train_dir))

    def split_classes(self, train: bool) -> list[str]:
        """The class folders of a split, checked against the training split's: labels are matched by name.

        ``ImageFolder`` numbers the class folders of each split in sorted order, so a val folder that lacks a class
        would shift every later label by one (val ``c`` labelled as train's ``b``). The val split must therefore
        hold exactly the training split's class folders; without ``root/train`` it must hold all ``NUM_CLASSES``.

        Raises:
            FileNotFoundError: the split's folder is missing or holds no class folders.
            DataFolderError: (a ``ValueError``) the splits' class folders differ; the message names both folders
                and the classes that are missing from, or only in, the val split.
        """
        directory = Path(self.root) / ("train" if train else "val")
        if not directory.is_dir():
            raise FileNotFoundError(f"ImageNet folder {directory} not found (expected {directory}/<wnid>/<image>)")
        classes = class_folders(directory)
        if not classes:
            raise FileNotFoundError(
                f"ImageNet folder {directory} holds no class folders (expected {directory}/<wnid>/<image>; the "
                "official val images come in one folder and must be sorted into one folder per class first)"
            )
        if train:
            return classes
        train_dir = Path(self.root) / "train"
        if not train_dir.is_dir():
            if len(classes) != self.NUM_CLASSES:
                raise DataFolderError(
                    f"{directory} holds {len(classes)} class folders, not ImageNet's {self.NUM_CLASSES}, and there is "
                    f"no {train_dir} to match their labels by name: add the training folder or every class folder"
                )
            return classes
        train_classes = class_folders(train_dir)
        if classes != train_classes:
            missing = sorted(set(train_classes) - set(classes))
            extra = sorted(set(classes) - set(train_classes))
            parts = [f"missing from val: {_few(missing)}"] if missing else []
            parts += [f"not in train: {_few(extra)}"] if extra else []
            raise DataFolderError(
                f"the class folders of {directory} ({len(classes)}) and {train_dir} ({len(train_classes)}) differ "
                f"({'; '.join(parts)}): labels are matched by folder name, so both splits need the same classes"
            )
        return classes

    def build_dataset(self, train: bool, limit: int | None) -> Dataset:
        """``ImageFolder`` over ``root/train`` or ``root/val`` with its transform (class folders checked by
        :meth:`split_classes`)."""
        directory = Path(self.root) / ("train" if train else "val")
        self.split_classes(train)  # the same classes, in the same (sorted) order, as ImageFolder finds
        if train and self.augment:
            transform = folder_transform(self.image_size, train=True, interpolation=self.interpolation)
        else:
            resize = int(self.image_size / self.CROP_RATIO)
            transform = folder_transform(self.image_size, False, resize, interpolation=self.interpolation)
        dataset = datasets.ImageFolder(str(directory), transform=transform)
        self.classes = dataset.classes
        return _first(dataset, limit)
