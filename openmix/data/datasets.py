"""The torch datasets behind the data modules, and their augmentation.

Fashion-MNIST and CIFAR are held in memory: :class:`ArrayImageDataset` draws one crop offset and one flip bit per
sample from a NumPy generator seeded by ``(seed, epoch)``, and :class:`EpochSampler` shuffles with ``seed + epoch``,
so a resumed run sees exactly the same batches. Tiny-ImageNet (:class:`TinyImageNetFolder`) and ImageNet are image
folders decoded with PIL and transformed with ``torchvision.transforms.v2`` (:func:`folder_transform`; their random
crops use torch's per-worker RNG, seeded by Lightning's ``seed_everything(workers=True)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler
from torchvision.transforms import v2

from openmix.data.readers import (
    DataFileError,
    DataFolderError,
    _check_int,
    _tiny_imagenet_root,
    check_seed,
    read_wnids,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# How the random crop fills the border it pads, with torchvision's ``RandomCrop(padding_mode=...)`` names: zeros
# (black before normalisation), the edge pixel repeated, a mirror without the edge pixel (``dcb|abcd|cba``) or with it
# (``cba|abcd|dcb``).
PADDING_MODES = ("constant", "edge", "reflect", "symmetric")
# Resampling of the image-folder datasets' resized crops (OpenMixup's ``interpolation=3`` is PIL's bicubic).
INTERPOLATIONS = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}


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
