"""FMix: mix with a binary mask cut from low-frequency Fourier noise.

Harris et al., "FMix: Enhancing Mixed Sample Data Augmentation", 2020. https://arxiv.org/abs/2002.12047

A complex Gaussian spectrum is scaled by 1 / f^decay_power (f the frequency magnitude, floored at 1 / max(H, W)),
inverted with an FFT into a smooth grey-scale image, and the top-lambda fraction of its pixels (exactly
round(lam * H * W) of them) becomes the region of sample i itself. Masks are made on the input's device;
``max_soft`` gives the mask a linear ramp of that width (in fraction of pixels) around the threshold.

No host synchronisation (:mod:`openmix.mixers.functional`): the drawn block of the spectrum and each mask's pixel
count are host values, fixed by the image size and lambda; the spectrum is drawn on the generator's device and
reaches the batch's device through ``to_device``; on a device the threshold is selected there (one ``kthvalue``
call for all masks), and nothing is read back. On the CPU the noise is host memory already: NumPy's introselect
(``np.partition``) finds the same threshold several times faster than torch, and the blend reads each partner
where it lies instead of gathering copies first. Either way a mask holds the ``keep = round(lam * H * W)``
largest noise values, ties at the threshold taken in raster order, so a binary mask keeps exactly ``keep`` pixels
(an earlier version kept every tied value: a pixel or two more on rare draws). The draws and their order (lambda,
then the spectrum coefficients) are unchanged, so a seed gives the same lambdas and, ties aside, the same masks.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from openmix.mixers import functional as F_mix
from openmix.mixers._base import PairMixer
from openmix.mixers._registry import register_mixer


@functools.lru_cache(maxsize=32)
def _spectrum_block(height: int, width: int, decay_power: float, tolerance: float) -> tuple[int, int, Tensor]:
    """The drawn block of the half spectrum, computed once per image size, on the host: (top, bottom, scale).

    The kept rows (|f_y| <= cutoff) are the first ``top`` and the last ``bottom`` rows of the FFT grid (the
    frequency magnitude grows towards its middle), the kept columns the first ``scale.shape[1]`` of the rfft grid.
    ``scale`` (top + bottom, columns) is the float32 amplitude of each drawn coefficient; callers must not modify it.
    """
    freq_y = torch.fft.fftfreq(height, dtype=torch.float32)
    freq_x = torch.fft.rfftfreq(width, dtype=torch.float32)
    floor = 1.0 / max(height, width)
    cutoff = floor * tolerance ** (-1.0 / decay_power)  # scale(f) = max(f, floor)^-decay >= tolerance * floor^-decay
    kept_rows = F_mix.host_values(freq_y.abs() <= cutoff)
    top = height if kept_rows.all() else int(np.argmin(kept_rows))  # row 0 (f = 0) is always kept
    bottom = int(kept_rows.sum()) - top
    num_cols = int(F_mix.host_values(freq_x <= cutoff).sum())
    rows = torch.cat([freq_y[:top], freq_y[height - bottom :]])
    magnitude = torch.sqrt(freq_x[:num_cols].view(1, -1) ** 2 + rows.view(-1, 1) ** 2)
    scale = magnitude.clamp(min=floor).pow(-decay_power)  # (rows, cols)
    # columns irfft reads as their own conjugates (0, and W / 2 for an even W): only their real part survives
    cols = torch.arange(num_cols)
    self_conjugate = (cols == 0) | (cols * 2 == width)
    return top, bottom, scale * torch.where(self_conjugate, 2.0**0.5, 1.0).view(1, -1)


def low_frequency_noise(
    num: int,
    height: int,
    width: int,
    decay_power: float = 3.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    tolerance: float = 1e-4,
) -> Tensor:
    """(num, H, W) float32 grey-scale images whose spectrum decays as 1 / f^decay_power (Harris et al., Sec. 3).

    Only the half spectrum is drawn; ``irfft`` mirrors it but keeps just the real part of its self-conjugate
    columns (zero frequency across the width and, for an even width, the Nyquist column), which alone would halve
    the power of purely vertical variation. Scaling those columns by sqrt(2) makes the field distributed as (sqrt(2)
    times) the real part of the inverse FFT of a full complex Gaussian spectrum: isotropic, at half the cost.

    Frequencies whose amplitude scale is below ``tolerance`` times the largest one are left at zero: with the
    default decay power 3 that drops nothing on images up to 43 px and, at 224 px, only coefficients that carry
    under 1e-6 of the noise variance, while it saves drawing and transforming most of the spectrum. The inverse
    transform is the 2-D one taken axis by axis: an inverse FFT down the few drawn columns only, then an inverse
    real FFT along the width (the same values as ``irfft2`` of the zero-filled half spectrum, several times faster).
    """
    top, bottom, scale = _spectrum_block(height, width, float(decay_power), float(tolerance))
    device = torch.device(device)
    noise_device = generator.device if generator is not None else device
    real_imag = torch.randn(num, *scale.shape, 2, generator=generator, device=noise_device)
    coefficients = torch.view_as_complex(F_mix.to_device(real_imag, device)) * F_mix.to_device(scale, device)
    num_cols = scale.shape[1]
    columns = torch.zeros(num, height, num_cols, dtype=torch.complex64, device=device)
    columns[:, :top] = coefficients[:, :top]
    columns[:, height - bottom :] = coefficients[:, top:]
    half = torch.zeros(num, height, width // 2 + 1, dtype=torch.complex64, device=device)
    torch.fft.ifft(columns, dim=1, out=half[:, :, :num_cols])  # zero-filled here: irfft's own padding is slower
    return torch.fft.irfft(half, n=width, dim=2)


def _host_threshold(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """(n,) the keep[i]-th largest value of each row of a host array (-inf for keep N, +inf for keep 0).

    NumPy's introselect (``np.partition``) finds it in O(N), several times faster than ``torch.kthvalue`` on the
    CPU. (Bracketing it first with a subsample of the row, as an earlier version did, saves nothing here: the
    per-row passes that find the bracket cost as much as the selection.)
    """
    size = values.shape[1]
    threshold = np.where(keep > 0, -np.inf, np.inf).astype(values.dtype)
    for row in np.flatnonzero((keep > 0) & (keep < size)):
        position = size - keep[row]
        threshold[row] = np.partition(values[row], position)[position]
    return threshold


def _device_threshold(values: Tensor, keep: np.ndarray) -> Tensor:
    """(n, 1) the keep[i]-th largest value of each row, exact, by one ``kthvalue`` call on the values' device.

    The keep[i]-th largest is the rank[i]-th smallest, rank = N - keep + 1. Padding row i with (R - rank[i]) copies
    of -inf and (rank[i] - r) of +inf, R and r the largest and smallest rank (host values), makes it the R-th
    smallest of every padded row; nothing is read back from the device.
    """
    size = values.shape[1]
    inner = (keep > 0) & (keep < size)
    fixed = np.where(inner, np.nan, np.where(keep > 0, -np.inf, np.inf))  # keep N: all pixels, keep 0: none
    if not inner.any():
        return F_mix.to_device(F_mix.host_tensor(fixed), values.device, values.dtype).view(-1, 1)
    rank = size - keep + 1
    rank = np.where(inner, rank, rank[inner].max())  # a placeholder rank for the all-or-nothing rows
    shared, spread = int(rank.max()), int(rank.max() - rank.min())
    padded = values
    if spread > 0:
        below = F_mix.to_device(F_mix.host_tensor(shared - rank), values.device).view(-1, 1)
        column = torch.arange(spread, device=values.device).view(1, -1)
        pad = torch.where(column < below, float("-inf"), float("inf")).to(values.dtype)
        padded = torch.cat([values, pad], dim=1)
    selected = padded.kthvalue(shared, dim=1).values.view(-1, 1)
    fixed = F_mix.to_device(F_mix.host_tensor(fixed), values.device, values.dtype).view(-1, 1)
    return torch.where(torch.isnan(fixed), selected, fixed)


def _host_top_mask(values: Tensor, keep: np.ndarray) -> Tensor:
    """:func:`top_fraction_mask`'s binary mask for values on the CPU (host memory: reading it waits for nothing)."""
    array = F_mix.host_values(values)
    threshold = _host_threshold(array, keep)
    mask = torch.empty(values.shape, dtype=torch.float32)
    torch.ge(values, F_mix.host_tensor(threshold).view(-1, 1), out=mask)  # 0 / 1 written as float32 directly
    counts = F_mix.host_values(mask.sum(dim=1))  # float32 sums of 0 / 1: exact below 2^24 per row
    mask_array = F_mix.host_values(mask)  # shares the mask's memory
    for row in np.flatnonzero(counts != keep):  # ties at the threshold (rare): keep the first ones
        ties = np.flatnonzero(array[row] == threshold[row])
        mask_array[row, ties[ties.size - int(counts[row] - keep[row]) :]] = 0.0
    return mask


def _device_top_mask(values: Tensor, keep: np.ndarray) -> Tensor:
    """:func:`top_fraction_mask`'s binary mask computed with torch ops only, none of which syncs a device."""
    threshold = _device_threshold(values, keep)
    above = values > threshold
    ties = values == threshold
    room = F_mix.to_device(F_mix.host_tensor(keep), values.device).view(-1, 1) - above.sum(dim=1, keepdim=True)
    return (above | (ties & (ties.cumsum(dim=1) <= room))).float()  # ties at the threshold: the first ones


def top_fraction_mask(values: Tensor, keep: Tensor | np.ndarray, max_soft: float = 0.0) -> Tensor:
    """Per row of ``values`` (n, N): 1 on the ``keep[i]`` largest entries, 0 elsewhere, float32 (n, N).

    ``keep`` (n,) are host values (a CPU tensor or an array of pixel counts, clipped to [0, N]). Values tied at the
    threshold are taken in raster order up to ``keep[i]``, so a binary row sums to exactly ``keep[i]``. With
    ``max_soft`` > 0 a linear ramp from 1 to 0 spans the ``2 * soft`` entries around the threshold (soft = N *
    min(max_soft, lam, 1 - lam)); the ramp's mean is 1/2, so each row still sums to ``keep[i]``. Values on a
    device are never read back: the selection runs there.
    """
    num_rows, size = values.shape
    keep_values = F_mix.host_values(keep) if isinstance(keep, Tensor) else np.asarray(keep)
    keep_values = np.clip(keep_values.astype(np.int64).reshape(-1), 0, size)
    if max_soft <= 0:
        if values.device.type == "cpu":
            return _host_top_mask(values, keep_values)
        return _device_top_mask(values, keep_values)
    keep = F_mix.to_device(F_mix.host_tensor(keep_values), values.device)
    order = values.argsort(dim=1, descending=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(size, device=values.device).expand(num_rows, -1))
    share = keep.double() / size
    soft = (size * torch.minimum(share, 1 - share).clamp(max=max_soft)).long().view(-1, 1)  # ramp half-width
    low = keep.view(-1, 1) - soft
    ramp = 1.0 - (rank - low).double() / (2 * soft - 1).clamp(min=1)  # linspace(1, 0, 2 * soft) over the band
    mask = torch.where(rank < low, 1.0, torch.where(rank >= low + 2 * soft, 0.0, ramp))
    return mask.float()


_ROW_BLEND_SIZE = 32 * 1024  # values per sample from which the per-sample CPU blend beats gather + lerp


def _blend(x: Tensor, index: Tensor, mask: Tensor, inplace: bool) -> Tensor:
    """:func:`F_mix.blend` of ``x`` with ``x[index]`` under ``mask`` (1 or B masks), the same values.

    On the CPU, out of place and without autograd, each output sample is one ``lerp`` of its own pixels and its
    partner's, both read where they lie: the partners are never gathered into a copy first, which saves a third of
    the memory traffic. ``index`` is then host memory, read without waiting for anything. Small samples (where
    the per-sample calls would cost more than the copy) and every other case take :func:`F_mix.blend`.
    """
    if inplace or x.device.type != "cpu" or x[0].numel() < _ROW_BLEND_SIZE or F_mix.records_grad(x, mask):
        return F_mix.blend(x, index, mask, inplace)
    weight = F_mix.to_device(mask, x.device, x.dtype)
    out = torch.empty_like(x)
    for row, partner in enumerate(F_mix.host_values(index).tolist()):
        torch.lerp(x[partner], x[row], weight[row if weight.shape[0] > 1 else 0], out=out[row])
    return out


@register_mixer(
    "fmix",
    paper="FMix: Enhancing Mixed Sample Data Augmentation (Harris et al., 2020)",
    url="https://arxiv.org/abs/2002.12047",
)
class FMix(PairMixer):
    """FMix.

    Args:
        alpha: Beta concentration of lambda.
        decay_power: exponent of the 1 / f spectrum decay; larger is smoother (paper default 3).
        max_soft: half-width of the soft edge as a fraction of the pixels (0 = binary mask).
        reformulate: draw lambda from Beta(alpha + 1, alpha) (the paper's reformulation).
        mode: ``"batch"`` (one mask) or ``"elem"`` (one per sample).
        pairing: ``"random"`` or ``"flip"``.
        inplace: write into the input tensor.
    """

    reads_pixels = False  # its draws depend on the sizes and the generator alone

    def __init__(
        self,
        alpha: float = 1.0,
        decay_power: float = 3.0,
        max_soft: float = 0.0,
        reformulate: bool = False,
        mode: str = "batch",
        pairing: str = "random",
        inplace: bool = False,
    ):
        super().__init__(alpha, mode, pairing, inplace)
        finite_positive = "be a finite number > 0"
        self.decay_power = F_mix.check_real(decay_power, "decay_power", finite_positive, lambda v: 0 < v < math.inf)
        self.max_soft = F_mix.check_real(max_soft, "max_soft", "lie in [0, 0.5]", lambda v: 0.0 <= v <= 0.5)
        self.reformulate = F_mix.check_bool(reformulate, "reformulate")

    def extra_repr(self) -> str:
        return super().extra_repr() + f", decay_power={self.decay_power}, max_soft={self.max_soft}"

    def draw_lam(self, lam_in: Tensor | None, batch_size: int, generator: torch.Generator | None) -> Tensor:
        if lam_in is not None or not self.reformulate:
            return super().draw_lam(lam_in, batch_size, generator)
        num = 1 if self.mode == "batch" else batch_size
        draws = F_mix.host_tensor(F_mix.numpy_rng(generator).beta(self.alpha + 1, self.alpha, size=num))
        return draws.expand(batch_size)

    def mix(
        self, x: Tensor, index: Tensor, lam: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        batch_size, _, height, width = x.shape
        size = height * width
        num_masks = 1 if self.mode == "batch" else batch_size
        lam = self.draw_lam(lam, batch_size, generator)[:num_masks]
        keep = np.round(F_mix.host_values(lam) * height * width).astype(np.int64)  # host values: no device read
        noise = low_frequency_noise(num_masks, height, width, self.decay_power, generator, x.device)
        mask = top_fraction_mask(noise.view(num_masks, -1), keep, self.max_soft)
        mask = mask.view(num_masks, 1, height, width)
        mixed = _blend(x, index, mask, self.inplace)
        if self.max_soft > 0:
            share = mask.sum(dim=(1, 2, 3)).double() / size  # float32 sums are exact below 2^24 pixels
        else:
            share = F_mix.host_tensor(keep / size)  # a binary mask keeps exactly keep[i] pixels
        return mixed, share.expand(batch_size), mask
