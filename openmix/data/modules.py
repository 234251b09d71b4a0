"""LightningDataModules for Fashion-MNIST, CIFAR-10/100, Tiny-ImageNet and ImageNet.

Every option of a data module is a typed ``__init__`` argument, so LightningCLI configures it from YAML. Nothing
touches the disk in ``__init__``: downloads (off by default) happen in ``prepare_data``, reading in ``setup``.

Sources: Fashion-MNIST https://github.com/zalandoresearch/fashion-mnist (Debian: ``dataset-fashion-mnist``),
CIFAR https://www.cs.toronto.edu/~kriz/cifar.html, Tiny-ImageNet http://cs231n.stanford.edu/tiny-imagenet-200.zip,
ImageNet https://image-net.org (ILSVRC-2012, train/ and val/ sorted into one folder per class).
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets

from openmix.collate import MixCollate, check_collate_mixer
from openmix.data.datasets import (
    INTERPOLATIONS,
    ArrayImageDataset,
    EpochSampler,
    TinyImageNetFolder,
    check_padding_mode,
    folder_transform,
)
from openmix.data.readers import (
    FASHION_MNIST_CLASSES,
    DataFolderError,
    _check_int,
    check_seed,
    cifar_directory,
    class_folders,
    fashion_mnist_files,
    load_cifar,
    load_cifar_classes,
    load_fashion_mnist,
    read_wnids,
)
from openmix.mixers import Mixer


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
        collate_mixer: mix every training batch while it is collated, in the loader's worker processes, with this
            mixer (a registered name such as ``cutmix``, or ``{class_path: openmix.mixers.CutMix, init_args: ...}``;
            one that needs nothing from the network, see :class:`~openmix.collate.MixCollate`); ``None``: no
            collate-time mixing. The training batches are then ``(images, (B, num_classes) float32 soft targets)``:
            train with ``MixClassifier(mixer=None)`` and an objective that needs only the mixed batch and its
            targets (``ce``, ``bce``; its ``label_smoothing`` still applies; RegMixup's clean batch and the decoupled
            term's label pair are not in such a batch, and the logged lambdas are 1). The images are mixed as the
            datasets give them, normalised float32 (the mix commutes with the per-channel normalisation, so the
            numbers are those of mixing in the model); validation and test batches are never mixed. Each batch
            draws from a generator seeded by ``seed`` (with the rank, the loader's worker seed and a batch counter:
            see :class:`~openmix.collate.MixCollate`).
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
        collate_mixer: Mixer | str | None = None,
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
        # checked now (a mixer that needs the network is refused when the config is parsed); built into a collate
        # function by the first training loader, once the number of classes is known
        self.collate_mixer = None if collate_mixer is None else check_collate_mixer(collate_mixer, name="collate_mixer")
        self._train_collate: MixCollate | None = None
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
        if getattr(self, "train_per_class", None) is not None:
            limit = f" (train_per_class={self.train_per_class}){limit}"
        share = f", {per_process} per process over {world_size} processes" if world_size > 1 else ""
        raise ValueError(
            f"the training set has {samples} samples{limit}{share}, fewer than batch_size={self.batch_size}, and "
            "drop_last=True drops the incomplete batch, so no training batch would remain: lower batch_size, use "
            "more samples (limit_train, train_per_class), or set drop_last=False"
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; one shard per rank when a (distributed) trainer is attached."""
        if self.train_set is None:
            self.setup("fit")
        self.check_training_batches()
        world_size, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        sampler = EpochSampler(self.train_set, world_size, rank, shuffle=True, seed=self.seed, drop_last=self.drop_last)
        return self._loader(self.train_set, self.batch_size, sampler, self.drop_last, self.train_collate(rank))

    def train_collate(self, rank: int = 0) -> MixCollate | None:
        """The collate function of the training loader: a :class:`~openmix.collate.MixCollate` of ``collate_mixer``
        (made once, so that its batch counter runs on when the loaders are rebuilt), or ``None`` (the default
        collate)."""
        if self.collate_mixer is None:
            return None
        model = self.trainer.lightning_module if self.trainer is not None else None
        if getattr(model, "mixer", None) is not None:
            warnings.warn(
                f"the data module mixes the training batches (collate_mixer {type(self.collate_mixer).__name__}) and "
                f"the model mixes them again (mixer {type(model.mixer).__name__}): set the model's mixer to null",
                stacklevel=2,
            )
        if self._train_collate is None:
            # ranks draw differently (a 32-bit seed of (seed, rank)); rank 0 keeps the seed itself
            seed = self.seed if rank == 0 else int(np.random.SeedSequence([self.seed, rank]).generate_state(1)[0])
            self._train_collate = MixCollate(self.collate_mixer, self.num_classes, seed=seed)
        return self._train_collate

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

    def _loader(
        self,
        dataset: Dataset,
        batch_size: int,
        sampler: EpochSampler | None,
        drop_last: bool,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_fn,
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
        train_per_class: train on a fixed class-balanced subset, this many samples of every class (``None``: the
            whole training split; ``limit_train`` applies first). The subset is drawn by ``subset_seed`` alone, so
            runs with different ``seed`` train on the same images (a low-data regime, see
            :func:`balanced_subset`); a class with fewer samples is a ``ValueError``.
        subset_seed: seed of the subset's draw, an int in [0, 2**63 - 1].
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
        train_per_class: int | None = None,
        subset_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.train_per_class = _check_int(train_per_class, "train_per_class", 1, allow_none=True)
        self.subset_seed = check_seed(subset_seed, "subset_seed")
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
        images, labels = images[:limit], labels[:limit]
        if train and self.train_per_class is not None:
            keep = balanced_subset(labels, self.train_per_class, self.subset_seed, self.NUM_CLASSES or None)
            images, labels = images[keep], labels[keep]
        augment = "crop_flip" if train and self.augment else "none"
        return ArrayImageDataset(
            images,
            labels,
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
        **kwargs: ``train_per_class`` / ``subset_seed`` (a class-balanced training subset, see
            :class:`InMemoryClassificationData`) and the loader options of :class:`ClassificationData` (batch_size,
            num_workers, ...).
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
        **kwargs: ``train_per_class`` / ``subset_seed`` (a class-balanced training subset, see
            :class:`InMemoryClassificationData`) and the loader options of :class:`ClassificationData` (batch_size,
            num_workers, ...).
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


def balanced_subset(labels: np.ndarray, per_class: int, seed: int = 0, num_classes: int | None = None) -> np.ndarray:
    """Indices of a class-balanced subset: ``per_class`` samples of every class (0 to ``num_classes`` - 1, or every
    class present in ``labels`` when ``num_classes`` is ``None``).

    Each class's indices are permuted by one NumPy generator seeded with ``seed`` (classes in increasing order) and
    the first ``per_class`` are kept; the result is sorted, so the subset keeps the split's order.

    Args:
        labels: (N,) integer class ids.
        per_class: samples to keep of each class, >= 1.
        seed: seed of the draw.
        num_classes: the number of classes; a class of ``range(num_classes)`` absent from ``labels`` is an error.

    Returns:
        (C * per_class,) int64 indices into ``labels``, increasing.

    Raises:
        ValueError: a class has fewer than ``per_class`` samples (named with its count).
    """
    labels = np.asarray(labels)
    per_class = _check_int(per_class, "per_class", 1)
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(labels) if num_classes is None else range(num_classes):
        members = np.flatnonzero(labels == label)
        if members.size < per_class:
            raise ValueError(
                f"class {int(label)} has {members.size} samples, fewer than per_class={per_class} (train_per_class)"
            )
        keep.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(keep)).astype(np.int64)


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
