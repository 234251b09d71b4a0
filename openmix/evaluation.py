"""Evaluation beyond top-1: corruption robustness, out-of-distribution (OOD) detection and calibration.

- **Corruptions**: accuracy on the test images under a fixed, seeded suite of corruptions at five severities, in the
  spirit of CIFAR-10-C / ImageNet-C (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
  Corruptions and Perturbations", ICLR 2019, https://arxiv.org/abs/1903.12261). The severity parameters are those
  of the authors' code, https://github.com/hendrycks/robustness: ``ImageNet-C/create_c/make_cifar_c.py`` (table
  ``"cifar"``) and ``ImageNet-C/imagenet_c/imagenet_c/corruptions.py`` (table ``"imagenet"``); the transforms are
  torchvision's (``transforms.v2.functional``), see :func:`corrupt` for how they differ from the original ones.
- **OOD detection**: AUROC and the false-positive rate at 95 % true-positive rate between the test split (positive)
  and an OOD set, for two scores: the maximum softmax probability (Hendrycks & Gimpel, ICLR 2017,
  https://arxiv.org/abs/1610.02136) and the negative energy ``logsumexp(logits)`` (Liu et al., NeurIPS 2020,
  https://arxiv.org/abs/2010.03759), as RegMixup (Pinto et al., NeurIPS 2022, https://arxiv.org/abs/2206.14502)
  reports them. Metrics from torchmetrics.
- **Calibration**: the per-bin confidence, accuracy and count of a reliability diagram (Guo et al., ICML 2017,
  https://arxiv.org/abs/1706.04599), with the bins of the module's ECE (torchmetrics' ``MulticlassCalibrationError``).

:class:`Evaluation` is the configuration (a typed argument of :class:`~openmix.lightning.MixClassifier`), and
:class:`Evaluator` holds the metrics and computes them; nothing here imports Lightning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import CatMetric, Metric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.functional.classification import binary_auroc, binary_roc
from torchvision.transforms import v2

from openmix.data.readers import DIGITS_SOURCE, _check_int, check_seed, read_ood_images

RELIABILITY_BINS = 15  # equal-width confidence bins of the ECE and of the reliability diagram
TRUE_POSITIVE_RATE = 0.95  # FPR95: the OOD false-positive rate where 95 % of the test images are kept
PIXEL_LEVELS = 255  # corrupted images are quantised to 8 bits, as CIFAR-10-C's saved uint8 images

# Every corruption of the suite, in a fixed order (its position seeds its random draws).
CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "contrast", "jpeg")
# Severity 1..5 -> parameter: noise standard deviation (pixel values in [0, 1]), blur sigma (pixels), contrast factor,
# JPEG quality. "cifar": make_cifar_c.py (32 px images); "imagenet": imagenet_c/corruptions.py (224 px images).
SEVERITY_TABLES: dict[str, dict[str, tuple[float, ...]]] = {
    "cifar": {
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
        "jpeg": (80, 65, 58, 50, 40),
    },
    "imagenet": {
        "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
        "gaussian_blur": (1, 2, 3, 4, 6),
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
        "jpeg": (25, 18, 15, 10, 7),
    },
}
SEVERITIES = (1, 2, 3, 4, 5)
JPEG_AVAILABLE = hasattr(v2.functional, "jpeg")  # torchvision >= 0.20
DEFAULT_CORRUPTIONS = tuple(name for name in CORRUPTIONS if name != "jpeg" or JPEG_AVAILABLE)
BLUR_TRUNCATE = 4.0  # the kernel reaches 4 sigma, as skimage.filters.gaussian (which the original code used)


# ----------------------------------------------------------------------------------------------------- corruptions
def quantise(pixels: Tensor) -> Tensor:
    """``pixels`` clipped to [0, 1] and rounded to the nearest of 256 levels (an 8-bit image), same dtype."""
    return (pixels.clamp(0, 1) * PIXEL_LEVELS).round() / PIXEL_LEVELS


def corrupt(
    pixels: Tensor, corruption: str, severity: int, generator: torch.Generator | None = None, table: str = "cifar"
) -> Tensor:
    """One corruption of the suite at one severity, on a batch of images.

    Args:
        pixels: float images (B, C, H, W) with values in [0, 1] (not normalised); C is 1 or 3.
        corruption: one of :data:`CORRUPTIONS`.
        severity: 1 to 5; the parameter is ``SEVERITY_TABLES[table][corruption][severity - 1]``.
        generator: the RNG of the Gaussian noise (on the images' device); the other corruptions draw nothing.
        table: ``"cifar"`` or ``"imagenet"`` (see :data:`SEVERITY_TABLES`).

    Returns:
        The corrupted images, same shape, dtype and device, quantised to 8 bits (:func:`quantise`).

    The transforms (torchvision ``transforms.v2.functional`` except the noise) against Hendrycks & Dietterich's:

    - ``gaussian_noise``: ``x + sigma * N(0, 1)``, clipped; drawn from ``generator`` (torchvision's ``gaussian_noise``
      draws from the global RNG). Same formula.
    - ``gaussian_blur``: ``gaussian_blur`` with a kernel reaching 4 sigma (skimage's ``truncate=4``), reflected
      borders (skimage: nearest).
    - ``contrast``: ``adjust_contrast``, which blends towards the image's mean grey level; the original blends each
      channel towards its own mean (the same on greyscale images).
    - ``jpeg``: ``jpeg`` (libjpeg through ``torchvision.io``) at the quality of the table; the original saved
      with PIL.

    Raises:
        ValueError: an unknown corruption, severity or table, or images that are not (B, 1 or 3, H, W) floats.
    """
    parameter = _severity_parameter(corruption, severity, table)
    if pixels.dim() != 4 or pixels.shape[1] not in (1, 3) or not pixels.is_floating_point():
        raise ValueError(f"pixels must be float (B, 1 or 3, H, W) images, got {pixels.dtype} {tuple(pixels.shape)}")
    if corruption == "gaussian_noise":
        noise = torch.randn(pixels.shape, generator=generator, device=pixels.device, dtype=pixels.dtype)
        corrupted = pixels + parameter * noise
    elif corruption == "gaussian_blur":
        # radius int(4 sigma + 0.5) as skimage, at most the image side - 1 (reflection needs a smaller padding)
        radius = min(int(BLUR_TRUNCATE * parameter + 0.5), min(pixels.shape[-2:]) - 1)
        corrupted = v2.functional.gaussian_blur(pixels, [2 * radius + 1] * 2, [float(parameter)] * 2)
    elif corruption == "contrast":
        corrupted = v2.functional.adjust_contrast(pixels, float(parameter))
    else:  # jpeg: libjpeg works on uint8 images on the host
        as_bytes = (quantise(pixels) * PIXEL_LEVELS).to(torch.uint8).cpu()
        decoded = v2.functional.jpeg(as_bytes, int(parameter))
        corrupted = decoded.to(pixels.device, pixels.dtype) / PIXEL_LEVELS
    return quantise(corrupted)


def _severity_parameter(corruption: str, severity: int, table: str) -> float:
    if table not in SEVERITY_TABLES:
        raise ValueError(f"table must be one of {sorted(SEVERITY_TABLES)}, got {table!r}")
    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {corruption!r}")
    if corruption == "jpeg" and not JPEG_AVAILABLE:
        raise ValueError("corruption 'jpeg' needs torchvision >= 0.20 (transforms.v2.functional.jpeg)")
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    return SEVERITY_TABLES[table][corruption][severity - 1]


class CorruptionSuite:
    """A fixed, seeded set of (corruption, severity) cases.

    Each call draws from a generator seeded by ``(seed, rank, batch index, corruption, severity)``
    (``numpy.random.SeedSequence``), so a given seed, batch order and device give the same corrupted images,
    whichever cases run and in whatever order; no global RNG is used.

    Args:
        corruptions: names from :data:`CORRUPTIONS`, without repeats.
        severities: severities from 1 to 5, without repeats.
        table: severity parameters, ``"cifar"`` (32 px datasets) or ``"imagenet"`` (see :data:`SEVERITY_TABLES`).
        seed: an int in [0, 2**63 - 1].

    Raises:
        ValueError / TypeError: naming the argument.
    """

    def __init__(
        self,
        corruptions: Sequence[str] = DEFAULT_CORRUPTIONS,
        severities: Sequence[int] = SEVERITIES,
        table: str = "cifar",
        seed: int = 0,
    ) -> None:
        self.corruptions = _unique(corruptions, "corruptions")
        self.severities = _unique(severities, "severities")
        for corruption in self.corruptions:
            for severity in self.severities:
                _severity_parameter(corruption, severity, table)
        self.table, self.seed = table, check_seed(seed)

    @property
    def cases(self) -> list[tuple[str, int]]:
        """Every (corruption, severity) pair, corruption-major."""
        return [(corruption, severity) for corruption in self.corruptions for severity in self.severities]

    def generator(
        self, corruption: str, severity: int, batch_index: int, rank: int, device: torch.device
    ) -> torch.Generator:
        """The RNG of one case on one batch, on ``device``."""
        entropy = [self.seed, rank, batch_index, CORRUPTIONS.index(corruption), severity]
        state = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])
        return torch.Generator(device=device).manual_seed(state)

    def __call__(self, pixels: Tensor, corruption: str, severity: int, batch_index: int, rank: int = 0) -> Tensor:
        """:func:`corrupt` ``pixels`` (B, C, H, W in [0, 1]) with this case's generator for this batch."""
        generator = self.generator(corruption, severity, batch_index, rank, pixels.device)
        return corrupt(pixels, corruption, severity, generator, self.table)


def _unique(values: Sequence, name: str) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a list, got {type(values).__name__} {values!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must not repeat a value, got {list(values)}")
    return tuple(values)


# --------------------------------------------------------------------------------------------------- OOD detection
def msp_score(logits: Tensor) -> Tensor:
    """Maximum softmax probability per row of ``logits`` (B, K): (B,) in [0, 1], higher = more in-distribution."""
    return logits.float().softmax(dim=-1).amax(dim=-1)


def energy_score(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Negative free energy ``T * logsumexp(logits / T)`` per row of ``logits`` (B, K): (B,), higher = more
    in-distribution (Liu et al. 2020, Eq. 1 with the sign flipped so that both scores point the same way)."""
    return temperature * torch.logsumexp(logits.float() / temperature, dim=-1)


def ood_detection(in_scores: Tensor, out_scores: Tensor) -> tuple[Tensor, Tensor]:
    """AUROC and FPR at 95 % TPR of a score separating in-distribution (positive) from OOD samples.

    Args:
        in_scores: (N_in,) scores of the test images (higher = more in-distribution).
        out_scores: (N_out,) scores of the OOD images.

    Returns:
        ``(auroc, fpr95)``, float64 scalars in [0, 1]: the area under the ROC curve (ties count one half) and the
        fraction of OOD samples scored at or above the highest threshold that keeps at least 95 % of the test
        images (torchmetrics' exact ``binary_roc``, the same points as ``sklearn.metrics.roc_curve``).

    Raises:
        ValueError: either set is empty or holds a NaN.
    """
    for name, scores in (("in_scores", in_scores), ("out_scores", out_scores)):
        if scores.numel() == 0 or torch.isnan(scores).any():
            raise ValueError(f"{name} must be a non-empty tensor without NaN, got {scores.numel()} values")
    scores = torch.cat([in_scores.flatten(), out_scores.flatten()]).double()
    # torchmetrics squashes scores outside [0, 1] with a sigmoid, which saturates (and ties) large energies: an
    # affine map into [0, 1] in float64 keeps the order, and with it every point of the ROC curve
    span = (scores.max() - scores.min()).clamp(min=torch.finfo(torch.float64).tiny)
    scores = (scores - scores.min()) / span
    target = torch.cat([torch.ones_like(in_scores.flatten()), torch.zeros_like(out_scores.flatten())]).long()
    auroc = binary_auroc(scores, target, thresholds=None)
    false_positive, true_positive, _ = binary_roc(scores, target, thresholds=None)
    wanted = torch.tensor([TRUE_POSITIVE_RATE], dtype=true_positive.dtype, device=true_positive.device)
    first = torch.searchsorted(true_positive.contiguous(), wanted)  # the first point with TPR >= 95 % (TPR rises)
    return auroc.double(), false_positive[first[0]].double()


# ----------------------------------------------------------------------------------------------------- calibration
class ReliabilityBins(Metric):
    """The reliability diagram of the top-1 prediction: per confidence bin, the mean confidence, the accuracy and
    the number of samples (sums, so it reduces over processes and holds O(bins) memory).

    Bin ``j`` of ``n_bins`` holds the confidences ``c`` with ``j / n <= c < (j + 1) / n`` (boundaries from
    ``torch.linspace(0, 1, n + 1)`` in float32, as torchmetrics' ``MulticlassCalibrationError``); ``c == 1`` falls in
    the last bin (torchmetrics gives it a bin of its own, so :func:`calibration_error` of these bins equals its ECE
    unless a confidence is exactly 1).

    Args:
        n_bins: number of equal-width bins (default :data:`RELIABILITY_BINS`, the module's ECE bins).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, n_bins: int = RELIABILITY_BINS, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_bins = _check_int(n_bins, "n_bins", 1)
        for name in ("count", "confidence_sum", "correct_sum"):
            self.add_state(name, default=torch.zeros(self.n_bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probabilities: Tensor, target: Tensor) -> None:
        """Add a batch: ``probabilities`` (B, K) rows of class probabilities, ``target`` (B,) int64 class ids."""
        if probabilities.dim() != 2 or target.shape != probabilities.shape[:1]:
            raise ValueError(
                f"probabilities must be (B, K) and target (B,), got {tuple(probabilities.shape)} and "
                f"{tuple(target.shape)}"
            )
        confidence, prediction = probabilities.float().max(dim=-1)
        inner = torch.linspace(0, 1, self.n_bins + 1, device=confidence.device)[1:-1]
        index = torch.bucketize(confidence, inner, right=True)  # (B,) in [0, n_bins)
        self.count.index_add_(0, index, torch.ones_like(confidence, dtype=torch.float64))
        self.confidence_sum.index_add_(0, index, confidence.double())
        self.correct_sum.index_add_(0, index, (prediction == target).double())

    def compute(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(confidence, accuracy, count)``, each (n_bins,) float64: mean confidence and accuracy per bin (0 in an
        empty bin) and the number of samples in it."""
        filled = self.count.clamp(min=1)
        return self.confidence_sum / filled, self.correct_sum / filled, self.count.clone()


def calibration_error(confidence: Tensor, accuracy: Tensor, count: Tensor) -> Tensor:
    """Expected calibration error of reliability bins, ``sum_j count_j / N * |accuracy_j - confidence_j|`` (Guo et
    al. 2017, Eq. 3); all three (n_bins,). A float in [0, 1]; 0 without samples."""
    total = count.sum().clamp(min=1)
    return (count / total * (accuracy - confidence).abs()).sum()


# -------------------------------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class Evaluation:
    """What ``openmix test`` and ``validate`` measure beyond top-1, top-5, NLL and ECE (a typed component of
    :class:`~openmix.lightning.MixClassifier`: ``--model.init_args.evaluation.ood PATH``, ``evaluation: null`` for
    none of it).

    Args:
        corruptions: corruption names (:data:`CORRUPTIONS`; ``jpeg`` where torchvision has it); ``[]``: none.
        severities: severities of each corruption, from 1 to 5.
        severity_table: the corruption parameters, ``cifar`` (CIFAR-10-C's, for 28-32 px images) or ``imagenet``
            (ImageNet-C's, for 224 px images); see :data:`SEVERITY_TABLES`.
        seed: seed of the corruptions' noise, an int in [0, 2**63 - 1].
        corruption_every: run the corruption suite on every k-th test batch of each process (batch indices 0, k,
            2k, ...), the same images for every model; 1: every batch. The suite costs one forward pass of the
            batch per corruption and severity, so k > 1 divides that cost by about k at the price of precision
            (the standard error of an accuracy p measured on n images is sqrt(p (1 - p) / n)). The clean metrics,
            calibration and OOD scores always use every batch.
        ood: the OOD set: ``digits`` (scikit-learn's bundled 8x8 digits; skipped with a warning when scikit-learn
            is not installed), a folder of images, an SVHN ``.mat`` file or an idx images file (see
            :func:`~openmix.data.readers.read_ood_images`), or ``null`` for no OOD detection. Its images are resized
            to the test images' size, converted to their channels and normalised as the inputs.
        ood_limit: use the first N OOD images (``null``: all).
        ood_batch_size: batch size of the OOD forward passes.
        mean: per-channel mean of the inputs' normalisation (``pixel / 255``); ``null``: the data module's.
        std: per-channel standard deviation of the normalisation; given with ``mean``.
        during_fit: evaluate in ``fit``'s validation epochs too (every one; it multiplies their cost by about
            1 + corruptions x severities). Off: only ``test`` and ``validate`` evaluate.

    Raises:
        ValueError / TypeError: a bad value, naming the field.
    """

    corruptions: tuple[str, ...] = DEFAULT_CORRUPTIONS
    severities: tuple[int, ...] = SEVERITIES
    severity_table: Literal["cifar", "imagenet"] = "cifar"
    seed: int = 0
    corruption_every: int = 1
    ood: str | None = DIGITS_SOURCE
    ood_limit: int | None = None
    ood_batch_size: int = 256
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    during_fit: bool = False

    def __post_init__(self) -> None:
        suite = self.corruption_suite()  # checks corruptions, severities, severity_table and seed
        object.__setattr__(self, "corruptions", suite.corruptions)
        object.__setattr__(self, "severities", suite.severities)
        if self.ood is not None and (not isinstance(self.ood, str) or not self.ood):
            raise TypeError(f"ood must be 'digits', a path or None, got {type(self.ood).__name__} {self.ood!r}")
        _check_int(self.corruption_every, "corruption_every", 1)
        _check_int(self.ood_limit, "ood_limit", 1, allow_none=True)
        _check_int(self.ood_batch_size, "ood_batch_size", 1)
        if (self.mean is None) != (self.std is None):
            raise ValueError(f"mean and std are given together or not at all, got mean={self.mean}, std={self.std}")
        if self.mean is not None:
            mean, std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
            if len(mean) != len(std) or not mean or min(std) <= 0:
                raise ValueError(f"mean and std need one value per channel (std > 0), got mean={mean}, std={std}")
            object.__setattr__(self, "mean", mean)
            object.__setattr__(self, "std", std)
        if not isinstance(self.during_fit, bool):
            raise TypeError(f"during_fit must be a bool, got {type(self.during_fit).__name__}")

    def corruption_suite(self) -> CorruptionSuite:
        """The :class:`CorruptionSuite` of these options."""
        return CorruptionSuite(self.corruptions, self.severities, self.severity_table, self.seed)


def data_normalisation(datamodule: object) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel (mean, std) with which a data module normalises its images: ``MEAN`` / ``STD`` of the
    in-memory modules, ImageNet's for the image-folder ones.

    Raises:
        ValueError: another kind of data (or none): set ``evaluation.mean`` and ``evaluation.std``.
    """
    mean, std = getattr(datamodule, "MEAN", ()), getattr(datamodule, "STD", ())
    if mean and std:
        return tuple(mean), tuple(std)
    if datamodule is not None:
        from openmix.data import IMAGENET_MEAN, IMAGENET_STD, FolderClassificationData

        if isinstance(datamodule, FolderClassificationData):
            return IMAGENET_MEAN, IMAGENET_STD
    source = "a run without a data module" if datamodule is None else type(datamodule).__name__
    raise ValueError(
        f"evaluation needs the normalisation of the inputs, which {source} does not say: set evaluation.mean and "
        "evaluation.std (per channel, of pixel / 255)"
    )


# ------------------------------------------------------------------------------------------------------ OOD images
def fit_images(images: np.ndarray | Sequence[np.ndarray], shape: Sequence[int]) -> Tensor:
    """OOD images resized and converted to the test images' shape.

    Args:
        images: uint8 (N, H, W) or (N, H, W, 3) images, or a list of (H, W) / (H, W, 3) ones (any sizes).
        shape: the test images' (C, H, W), C 1 or 3.

    Returns:
        uint8 (N, C, H, W): greyscale repeated into 3 channels (as PIL's ``convert("RGB")`` of the folder datasets),
        RGB turned grey (``rgb_to_grayscale``) for 1 channel, resized with antialiased bilinear interpolation.
    """
    channels, height, width = (int(v) for v in shape)
    if channels not in (1, 3):
        raise ValueError(f"OOD images can be made into 1 or 3 channels, not the test images' {channels}")
    arrays = [images] if isinstance(images, np.ndarray) else [image[None] for image in images]
    fitted = []
    for array in arrays:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        tensor = tensor.unsqueeze(1) if tensor.dim() == 3 else tensor.permute(0, 3, 1, 2)  # (N, C0, h, w)
        if tensor.shape[1] == 1 and channels == 3:
            tensor = tensor.expand(-1, 3, -1, -1)
        elif tensor.shape[1] == 3 and channels == 1:
            tensor = v2.functional.rgb_to_grayscale(tensor)
        fitted.append(v2.functional.resize(tensor, [height, width], antialias=True))
    return torch.cat(fitted)


# ------------------------------------------------------------------------------------------------------- evaluator
def is_detail(name: str) -> bool:
    """Whether an :class:`Evaluator` value is a detail (a per-severity accuracy, a reliability bin) rather than a
    headline value (the corruption means, the OOD metrics)."""
    return name.startswith("reliability/") or name.count("/") > 1


class Evaluator(nn.Module):
    """The metrics of an :class:`Evaluation` over one evaluation epoch.

    Per batch, :meth:`update` takes the clean logits and runs the network on every corrupted copy of the batch; at
    the epoch's end, :meth:`compute` scores the OOD set (each process a share of it) and returns every value,
    reduced over processes. The metrics keep no state in checkpoints.

    Args:
        config: what to evaluate.
        num_classes: number of classes.
    """

    def __init__(self, config: Evaluation, num_classes: int) -> None:
        super().__init__()
        self.config = config
        self.suite = config.corruption_suite()
        self.corruption_top1 = nn.ModuleDict(
            {f"{c}_{s}": MulticlassAccuracy(num_classes, top_k=1, average="micro") for c, s in self.suite.cases}
        )
        self.reliability = ReliabilityBins(RELIABILITY_BINS)
        self.in_scores = nn.ModuleDict({"msp": CatMetric(), "energy": CatMetric()})
        self.out_scores = nn.ModuleDict({"msp": CatMetric(), "energy": CatMetric()})
        self.mean: tuple[float, ...] = ()
        self.std: tuple[float, ...] = ()
        self.image_shape: tuple[int, ...] | None = None
        self.ood_raw: np.ndarray | list[np.ndarray] | None = None  # the OOD set as read, once
        self.ood_images: Tensor | None = None  # uint8 (N, C, H, W) on the host, fitted to image_shape

    @property
    def scores_ood(self) -> bool:
        """Whether the OOD set is scored (configured, and readable: see :meth:`begin`)."""
        return self.ood_raw is not None

    def begin(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Start an epoch with the inputs' normalisation; reads the OOD set the first time (``digits`` without
        scikit-learn: a warning, and no OOD metrics)."""
        self.mean, self.std = tuple(self.config.mean or mean), tuple(self.config.std or std)
        if self.config.ood is None or self.ood_raw is not None:
            return
        try:
            self.ood_raw = read_ood_images(self.config.ood, self.config.ood_limit)
        except ModuleNotFoundError as error:
            warnings.warn(f"evaluation.ood: {error}; no OOD metrics this time", stacklevel=2)

    def normalisation(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, std) as (1, C, 1, 1) tensors on ``like``'s device, float32."""
        if len(self.mean) != like.shape[1]:
            raise ValueError(f"evaluation: {len(self.mean)} normalisation values for {like.shape[1]}-channel images")
        mean = torch.tensor(self.mean, dtype=torch.float32, device=like.device).view(1, -1, 1, 1)
        return mean, torch.tensor(self.std, dtype=torch.float32, device=like.device).view(1, -1, 1, 1)

    def update(
        self, forward: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, logits: Tensor, batch_index: int, rank: int
    ) -> None:
        """Add a test batch: ``x`` (B, C, H, W) normalised images, ``y`` (B,) int64 labels, ``logits`` (B, K) of
        ``x``; ``forward`` gives the logits of other images; ``batch_index`` and ``rank`` seed the corruptions."""
        self.image_shape = tuple(x.shape[1:])
        self.reliability.update(logits.float().softmax(dim=-1), y)
        if self.scores_ood:
            self.in_scores["msp"].update(msp_score(logits))
            self.in_scores["energy"].update(energy_score(logits))
        if not self.suite.cases or batch_index % self.config.corruption_every:
            return
        mean, std = self.normalisation(x)
        pixels = quantise(x.float() * std + mean)  # (B, C, H, W) in [0, 1]: the 8-bit images the data came from
        for corruption, severity in self.suite.cases:
            corrupted = self.suite(pixels, corruption, severity, batch_index, rank)
            corrupted_logits = forward(((corrupted - mean) / std).to(x.dtype))
            self.corruption_top1[f"{corruption}_{severity}"].update(corrupted_logits.float(), y)

    def compute(
        self, forward: Callable[[Tensor], Tensor], device: torch.device, rank: int = 0, world_size: int = 1
    ) -> dict[str, float]:
        """Every value of the epoch (fractions in [0, 1]; counts), by name: ``corruption_mean``,
        ``corruption/<name>`` (mean over severities), ``corruption/<name>/<severity>``, ``ood_auroc_msp``,
        ``ood_fpr95_msp``, ``ood_auroc_energy``, ``ood_fpr95_energy``,
        ``reliability/{confidence,accuracy,count}_<bin>`` (bins numbered 00, 01, ...).
        Runs ``forward`` on this process's share of the OOD set; every process must call it."""
        results: dict[str, float] = {}
        if self.image_shape is None:  # no batch was seen
            return results
        if self.suite.cases:
            accuracy = {key: float(metric.compute()) for key, metric in self.corruption_top1.items()}
            for corruption in self.suite.corruptions:
                values = [accuracy[f"{corruption}_{severity}"] for severity in self.suite.severities]
                results.update({f"corruption/{corruption}/{s}": v for s, v in zip(self.suite.severities, values)})
                results[f"corruption/{corruption}"] = float(np.mean(values))
            results["corruption_mean"] = float(np.mean(list(accuracy.values())))
        for name, values in zip(("confidence", "accuracy", "count"), self.reliability.compute()):
            results.update({f"reliability/{name}_{j:02d}": float(v) for j, v in enumerate(values.tolist())})
        if self.scores_ood:
            self.score_ood(forward, device, rank, world_size)
            for score in ("msp", "energy"):
                auroc, fpr95 = ood_detection(self.in_scores[score].compute(), self.out_scores[score].compute())
                results[f"ood_auroc_{score}"], results[f"ood_fpr95_{score}"] = float(auroc), float(fpr95)
        return results

    def score_ood(self, forward: Callable[[Tensor], Tensor], device: torch.device, rank: int, world_size: int) -> None:
        """Both scores of this process's share of the OOD set (every ``world_size``-th batch from ``rank``)."""
        if self.ood_images is None or tuple(self.ood_images.shape[1:]) != self.image_shape:
            self.ood_images = fit_images(self.ood_raw, self.image_shape)
        batch_size = self.config.ood_batch_size
        for start in range(rank * batch_size, len(self.ood_images), world_size * batch_size):
            batch = self.ood_images[start : start + batch_size].to(device).float() / PIXEL_LEVELS
            mean, std = self.normalisation(batch)
            logits = forward((batch - mean) / std)
            self.out_scores["msp"].update(msp_score(logits))
            self.out_scores["energy"].update(energy_score(logits))

    def reset(self) -> None:
        """Clear the epoch's metrics (the OOD set read stays)."""
        for metric in self.modules():
            if isinstance(metric, Metric):
                metric.reset()
        self.image_shape = None
