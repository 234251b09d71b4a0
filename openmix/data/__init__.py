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

The package has three modules, and imports them on first use of a name (PEP 562), so that ``openmix.data.readers``
loads without torch or Lightning:

- :mod:`openmix.data.readers`: the on-disk formats (idx, CIFAR pickles, ``wnids.txt``, class folders), the
  errors :class:`DataFileError` / :class:`DataFolderError` and :func:`check_seed`; NumPy only;
- :mod:`openmix.data.datasets`: the torch datasets, the sampler and the transforms;
- :mod:`openmix.data.modules`: the LightningDataModules (imports Lightning).
"""

from __future__ import annotations

import importlib
from typing import Any

_READERS = (
    "CIFAR_LAYOUTS",
    "FASHION_MNIST_CLASSES",
    "IDX_DTYPES",
    "MAX_SEED",
    "DataFileError",
    "DataFolderError",
    "check_seed",
    "cifar_directory",
    "class_folders",
    "fashion_mnist_files",
    "load_cifar",
    "load_cifar_classes",
    "load_fashion_mnist",
    "read_idx",
    "read_wnids",
)
_DATASETS = (
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "PADDING_MODES",
    "ArrayImageDataset",
    "EpochSampler",
    "TinyImageNetFolder",
    "check_padding_mode",
    "folder_transform",
    "padded_source_index",
)
_MODULES = (
    "ClassificationData",
    "InMemoryClassificationData",
    "FashionMNISTData",
    "CIFARData",
    "CIFAR10Data",
    "CIFAR100Data",
    "FolderClassificationData",
    "TinyImageNetData",
    "ImageNetData",
)
_PUBLIC = {
    **dict.fromkeys(_READERS, "openmix.data.readers"),
    **dict.fromkeys(_DATASETS, "openmix.data.datasets"),
    **dict.fromkeys(_MODULES, "openmix.data.modules"),
}

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'openmix.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
