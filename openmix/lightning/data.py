"""Compatibility module: the data modules, datasets and readers moved to :mod:`openmix.data` (readers in
:mod:`openmix.data.readers`, datasets in :mod:`openmix.data.datasets`, LightningDataModules in
:mod:`openmix.data.modules`).

Every name this module defined is re-exported here, unchanged (the same objects), so that code importing from it
and the saved run configs of earlier versions, whose ``class_path`` reads ``openmix.lightning.data.FashionMNISTData``
and the like, keep working. New code should import from :mod:`openmix.data`.
"""

from __future__ import annotations

from openmix.data.datasets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    PADDING_MODES,
    ArrayImageDataset,
    EpochSampler,
    TinyImageNetFolder,
    _normalised_tensor,
    check_padding_mode,
    folder_transform,
    padded_source_index,
)
from openmix.data.modules import (
    CIFAR10Data,
    CIFAR100Data,
    CIFARData,
    ClassificationData,
    FashionMNISTData,
    FolderClassificationData,
    ImageNetData,
    InMemoryClassificationData,
    TinyImageNetData,
    _few,
    _first,
)
from openmix.data.readers import (
    CIFAR_LAYOUTS,
    FASHION_MNIST_CLASSES,
    IDX_DTYPES,
    MAX_SEED,
    DataFileError,
    DataFolderError,
    _check_int,
    _read_bytes,
    _read_cifar_batch,
    _tiny_imagenet_root,
    _unpickle,
    check_seed,
    cifar_directory,
    class_folders,
    fashion_mnist_files,
    load_cifar,
    load_cifar_classes,
    load_fashion_mnist,
    read_idx,
    read_wnids,
)

__all__ = [
    "CIFAR_LAYOUTS",
    "FASHION_MNIST_CLASSES",
    "IDX_DTYPES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "MAX_SEED",
    "PADDING_MODES",
    "ArrayImageDataset",
    "CIFAR10Data",
    "CIFAR100Data",
    "CIFARData",
    "ClassificationData",
    "DataFileError",
    "DataFolderError",
    "EpochSampler",
    "FashionMNISTData",
    "FolderClassificationData",
    "ImageNetData",
    "InMemoryClassificationData",
    "TinyImageNetData",
    "TinyImageNetFolder",
    "_check_int",
    "_few",
    "_first",
    "_normalised_tensor",
    "_read_bytes",
    "_read_cifar_batch",
    "_tiny_imagenet_root",
    "_unpickle",
    "check_padding_mode",
    "check_seed",
    "cifar_directory",
    "class_folders",
    "fashion_mnist_files",
    "folder_transform",
    "load_cifar",
    "load_cifar_classes",
    "load_fashion_mnist",
    "padded_source_index",
    "read_idx",
    "read_wnids",
]
