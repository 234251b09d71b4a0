"""The on-disk formats of the datasets, read without torch or Lightning: MNIST-style idx files, the CIFAR python
pickle batches, Tiny-ImageNet's ``wnids.txt`` and image-folder class folders; the errors that name a bad file or
folder, and the checks of seeds and integer options shared by the datasets and the data modules. The
out-of-distribution sets of the evaluation (:func:`read_ood_images`): scikit-learn's bundled 8x8 digits, SVHN's
``.mat`` files (SciPy), folders of image files (PIL) and idx files.

Sources: Fashion-MNIST https://github.com/zalandoresearch/fashion-mnist (Debian: ``dataset-fashion-mnist``),
CIFAR https://www.cs.toronto.edu/~kriz/cifar.html, Tiny-ImageNet http://cs231n.stanford.edu/tiny-imagenet-200.zip.
"""

from __future__ import annotations

import gzip
import numbers
import os
import pickle
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

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


# ------------------------------------------------------------------------------------------------ image folders
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


def class_folders(directory: Path) -> list[str]:
    """Sorted names of the sub-folders of ``directory``: the classes ``ImageFolder`` finds there, in its order."""
    return sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())


# ------------------------------------------------------------------------------------ out-of-distribution image sets
# The image files a folder of out-of-distribution images may hold (torchvision's ``IMG_EXTENSIONS``, lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DIGITS_SOURCE = "digits"  # the name of scikit-learn's bundled digits as an OOD source
DIGITS_LEVELS = 16  # the 8x8 digits hold ink counts 0..16 (4x4 blocks of a 32x32 bitmap)


def sklearn_digits_path() -> Path:
    """The 8x8 digits file that scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``), found without
    importing scikit-learn.

    Raises:
        ModuleNotFoundError: scikit-learn is not installed (``pip install openmix[eval]``).
        FileNotFoundError: scikit-learn is installed without the file.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the 'digits' OOD set is scikit-learn's bundled digits file, and scikit-learn is not installed: "
            "pip install 'openmix[eval]' (or scikit-learn), or give a folder of images, an idx file or an SVHN .mat"
        )
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"scikit-learn is installed without its digits file {path}")
    return path


def read_digits_csv(path: str | Path) -> np.ndarray:
    """Read the 8x8 digits in scikit-learn's on-disk format (``digits.csv.gz``, gzipped or raw).

    The file is the test set of the UCI "Optical Recognition of Handwritten Digits" data (1797 images): one row per
    image, 64 comma-separated pixel values in [0, 16] (row-major), then the class (0-9). ``sklearn.datasets
    .load_digits`` reads the same file.

    Args:
        path: the file.

    Returns:
        uint8 images (N, 8, 8), the values scaled from [0, 16] to [0, 255] and rounded.

    Raises:
        DataFileError: (a ``ValueError``) naming the file: not comma-separated numbers, rows without 65 values, or
            pixel values outside [0, 16].
    """
    path = Path(path)
    text = _read_bytes(path).decode("ascii", errors="replace")
    try:
        table = np.loadtxt(text.splitlines(), delimiter=",", ndmin=2)
    except ValueError as error:
        raise DataFileError(f"{path}: not a digits file (comma-separated numbers, 65 per row): {error}") from None
    if table.shape[1] != 8 * 8 + 1:
        raise DataFileError(
            f"{path}: rows of a digits file hold 65 values (64 pixels, the class), got {table.shape[1]}"
        )
    pixels = table[:, :-1]
    if table.size and (pixels.min() < 0 or pixels.max() > DIGITS_LEVELS):
        raise DataFileError(f"{path}: digit pixels lie in [0, 16], got {pixels.min()} to {pixels.max()}")
    return np.rint(pixels * (255 / DIGITS_LEVELS)).astype(np.uint8).reshape(-1, 8, 8)


def read_svhn_mat(path: str | Path) -> np.ndarray:
    """Read an SVHN split in its cropped-digits format (``test_32x32.mat``, a MATLAB file whose ``X`` holds the
    images as (32, 32, 3, N) uint8), with ``scipy.io.loadmat`` as torchvision's ``SVHN`` does.

    Source: http://ufldl.stanford.edu/housenumbers/ (format 2).

    Returns:
        uint8 images (N, 32, 32, 3).

    Raises:
        DataFileError: (a ``ValueError``) naming the file: not a MATLAB file, no ``X``, or ``X`` not uint8
            (H, W, 3, N).
    """
    from scipy.io import loadmat  # scipy is a dependency; imported here, as only this format needs it

    path = Path(path)
    try:
        content = loadmat(path, variable_names=["X"])
    except Exception as error:  # scipy raises ValueError, TypeError, MatReadError ... on foreign bytes
        raise DataFileError(f"{path}: not a readable MATLAB file ({type(error).__name__}: {error})") from None
    images = content.get("X")
    if images is None:
        raise DataFileError(f"{path}: no 'X' array (an SVHN .mat file holds the images as X, (32, 32, 3, N))")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[2] != 3:
        raise DataFileError(f"{path}: 'X' must be uint8 (H, W, 3, N), got {images.dtype} {images.shape}")
    return np.ascontiguousarray(images.transpose(3, 0, 1, 2))


def image_files(folder: str | Path) -> list[Path]:
    """The image files under ``folder``, at any depth, sorted by path (extensions :data:`IMAGE_EXTENSIONS`, any
    case).

    Raises:
        FileNotFoundError: the folder does not exist or holds no image file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder of images: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder} holds no image file ({', '.join(IMAGE_EXTENSIONS)}, at any depth)")
    return files


def read_image(path: str | Path) -> np.ndarray:
    """One image file decoded with PIL: uint8 (H, W) when it is greyscale, else (H, W, 3) RGB.

    Raises:
        DataFileError: (a ``ValueError``) naming the file when PIL cannot decode it.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            grey = image.mode in ("1", "L", "LA", "I", "I;16", "F")
            return np.asarray(image.convert("L" if grey else "RGB"))
    except (UnidentifiedImageError, OSError) as error:
        if isinstance(error, (FileNotFoundError, PermissionError)):
            raise
        raise DataFileError(f"{path}: not a readable image ({error})") from None


def read_ood_images(source: str | Path, limit: int | None = None) -> np.ndarray | list[np.ndarray]:
    """The images of an out-of-distribution set, in their own size and channels (no labels are read).

    Args:
        source: ``"digits"`` (scikit-learn's bundled 8x8 digits, :func:`read_digits_csv`), a folder of image files
            (:func:`image_files`, any depth), an SVHN ``.mat`` file (:func:`read_svhn_mat`) or an MNIST-style idx
            images file, raw or ``.gz`` (:func:`read_idx`: MNIST, Fashion-MNIST, KMNIST ...).
        limit: keep only the first ``limit`` images (``None``: all).

    Returns:
        uint8 images (N, H, W) or (N, H, W, 3) for the array formats; a list of uint8 (H, W) or (H, W, 3) arrays, one
        per file, for a folder (the files may differ in size).

    Raises:
        FileNotFoundError: the source does not exist (or scikit-learn's file is missing).
        ModuleNotFoundError: ``"digits"`` without scikit-learn.
        DataFileError: a file in the wrong format, named.
    """
    limit = _check_int(limit, "limit", 1, allow_none=True)
    if str(source) == DIGITS_SOURCE:
        return read_digits_csv(sklearn_digits_path())[:limit]
    path = Path(source)
    if path.is_dir():
        return [read_image(file) for file in image_files(path)[:limit]]
    if not path.is_file():
        raise FileNotFoundError(
            f"OOD set {source!r} not found: give 'digits', a folder of images, an SVHN .mat file or an idx images file"
        )
    if path.suffix.lower() == ".mat":
        return read_svhn_mat(path)[:limit]
    images = read_idx(path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataFileError(f"{path}: expected uint8 idx images (N, H, W), got {images.dtype} {images.shape}")
    return images[:limit]
