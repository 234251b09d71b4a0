"""FMix: mix with a binary mask cut from low-frequency Fourier noise.

Harris et al., "FMix: Enhancing Mixed Sample Data Augmentation", 2020. https://arxiv.org/abs/2002.12047

A complex Gaussian spectrum is scaled by 1 / f^decay_power (f the frequency magnitude, floored at 1 / max(H, W)),
inverted with an FFT into a smooth grey-scale image, and the top-lambda fraction of its pixels (exactly
round(lam * H * W) of them) becomes the region of sample i itself. Masks are generated in torch on the input's
device; ``max_soft`` gives the mask a linear ramp of that width (in fraction of pixels) around the threshold.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from openmix.mixers import functional as F_mix
from openmix.mixers._base import PairMixer
from openmix.mixers._registry import register_mixer


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

    Only the half spectrum is drawn; ``irfft2`` mirrors it but keeps just the real part of its self-conjugate
    columns (zero frequency across the width and, for an even width, the Nyquist column), which alone would halve
    the power of purely vertical variation. Scaling those columns by sqrt(2) makes the field distributed as (sqrt(2)
    times) the real part of the inverse FFT of a full complex Gaussian spectrum: isotropic, at half the cost.

    Frequencies whose amplitude scale is below ``tolerance`` times the largest one are left at zero: with the
    default decay power 3 that drops nothing on images up to 43 px and, at 224 px, only coefficients that carry
    under 1e-6 of the noise variance, while it saves drawing and transforming most of the spectrum.
    """
    freq_y = torch.fft.fftfreq(height, device=device)
    freq_x = torch.fft.rfftfreq(width, device=device)
    floor = 1.0 / max(height, width)
    cutoff = floor * tolerance ** (-1.0 / decay_power)  # scale(f) = max(f, floor)^-decay >= tolerance * floor^-decay
    rows = torch.nonzero(freq_y.abs() <= cutoff).squeeze(1)
    cols = torch.nonzero(freq_x <= cutoff).squeeze(1)
    magnitude = torch.sqrt(freq_x[cols].view(1, -1) ** 2 + freq_y[rows].view(-1, 1) ** 2)
    scale = magnitude.clamp(min=floor).pow(-decay_power)  # (rows, cols)
    # columns irfft2 reads as their own conjugates (0, and W / 2 for an even W): only their real part survives
    self_conjugate = (cols == 0) | (cols * 2 == width)
    scale = scale * torch.where(self_conjugate, 2.0**0.5, 1.0).view(1, -1)
    noise_device = generator.device if generator is not None else torch.device(device)
    real_imag = torch.randn(num, *scale.shape, 2, generator=generator, device=noise_device).to(device)
    spectrum = torch.zeros(num, height, freq_x.numel(), dtype=torch.complex64, device=device)
    spectrum[:, rows.view(-1, 1), cols.view(1, -1)] = torch.view_as_complex(real_imag) * scale
    return torch.fft.irfft2(spectrum, s=(height, width))


def _padded_kth_threshold(values: Tensor, keep: Tensor) -> Tensor:
    """(n, 1) value of rank ``keep[i]`` (1 = largest) in each row, exact, by one shared-k selection.

    The keep[i]-th largest is the (N - keep[i] + 1)-th smallest. Padding row i with (keep[i] - 1) copies of -inf
    and +inf for the rest makes it the N-th smallest of every padded row, so one ``kthvalue`` call serves all rows.
    """
    size = values.shape[1]
    column = torch.arange(size - 1, device=values.device).view(1, -1)
    pad = torch.where(column < (keep - 1).view(-1, 1), float("-inf"), float("inf")).to(values.dtype)
    return torch.cat([values, pad], dim=1).kthvalue(size, dim=1).values.view(-1, 1)


def _bracketed_threshold(values: Tensor, keep: Tensor, guide: Tensor, margin: float = 0.01) -> Tensor | None:
    """The same threshold as :func:`_padded_kth_threshold`, found faster with a coarse ``guide`` of each row.

    The guide (a subsample of the row) gives a value ``upper`` expected just above the threshold (``margin`` of
    its length above the expected rank). Pixels above ``upper`` are kept for sure; the threshold is the r-th
    largest of the rest, r = keep - (number above), found by one ``topk`` over all rows with the pixels above
    ``upper`` masked out. Returns ``None`` when ``upper`` misses (r < 1) or lies too far above (r > 2 margin N);
    the caller then falls back to the exact padded selection.
    """
    size, guide_size = values.shape[1], guide.shape[1]
    ordered = guide.sort(dim=1, descending=True).values
    expected = keep.double() * guide_size / size  # the threshold's rank in the guide
    spread = int(margin * guide_size) + 2
    upper = ordered.gather(1, (expected.floor().long() - spread).clamp(0, guide_size - 1).view(-1, 1))
    above = values > upper
    # counts as float32 sums: exact below 2^24 per row, and several times faster than count_nonzero on CPU
    rank = keep - above.float().sum(dim=1).long()  # 1-based rank of the threshold among the pixels <= upper
    if not bool(((rank >= 1) & (rank <= 2 * margin * size + 1)).all()):
        return None
    below = values.masked_fill(above, float("-inf"))
    return below.topk(int(rank.max()), dim=1).values.gather(1, (rank - 1).view(-1, 1))


def top_fraction_mask(values: Tensor, keep: Tensor, max_soft: float = 0.0, guide: Tensor | None = None) -> Tensor:
    """Per row of ``values`` (n, N): 1 on the ``keep[i]`` largest entries, 0 elsewhere, float32 (n, N).

    With ``max_soft`` > 0 a linear ramp from 1 to 0 spans the ``2 * soft`` entries around the threshold
    (soft = N * min(max_soft, lam, 1 - lam)); the ramp's mean is 1/2, so each row still sums to ``keep[i]``.
    ``guide`` (n, m), a subsample of each row, only speeds up the binary case; the result is the same.
    """
    num_rows, size = values.shape
    keep = keep.to(values.device).long().clamp(0, size)
    if max_soft <= 0:
        full, empty = keep == size, keep == 0
        trivial = full | empty
        keep_inner = torch.where(trivial, torch.ones_like(keep), keep)  # placeholder rank for all-or-nothing rows
        threshold = None if guide is None else _bracketed_threshold(values, keep_inner, guide)
        if threshold is None:
            threshold = _padded_kth_threshold(values, keep_inner)
        threshold = torch.where(full.view(-1, 1), float("-inf"), threshold)
        threshold = torch.where(empty.view(-1, 1), float("inf"), threshold)
        return (values >= threshold).float()
    order = values.argsort(dim=1, descending=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(size, device=values.device).expand(num_rows, -1))
    share = keep.double() / size
    soft = (size * torch.minimum(share, 1 - share).clamp(max=max_soft)).long().view(-1, 1)  # ramp half-width
    low = keep.view(-1, 1) - soft
    ramp = 1.0 - (rank - low).double() / (2 * soft - 1).clamp(min=1)  # linspace(1, 0, 2 * soft) over the band
    mask = torch.where(rank < low, 1.0, torch.where(rank >= low + 2 * soft, 0.0, ramp))
    return mask.float()


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
        draws = torch.from_numpy(F_mix.numpy_rng(generator).beta(self.alpha + 1, self.alpha, size=num))
        return draws.expand(batch_size)

    def mix(
        self, x: Tensor, index: Tensor, lam: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        batch_size, _, height, width = x.shape
        num_masks = 1 if self.mode == "batch" else batch_size
        lam = self.draw_lam(lam, batch_size, generator)[:num_masks]
        noise = low_frequency_noise(num_masks, height, width, self.decay_power, generator, x.device)
        keep = torch.round(lam * height * width)
        # large masks: a 4x-subsampled copy of the noise guides the exact threshold search (same result, faster)
        guide = noise[:, ::4, ::4].reshape(num_masks, -1) if height * width >= 64 * 64 else None
        mask = top_fraction_mask(noise.view(num_masks, -1), keep, self.max_soft, guide)
        mask = mask.view(num_masks, 1, height, width)
        mixed = F_mix.blend(x, index, mask, self.inplace)
        share = mask.sum(dim=(1, 2, 3)).double() / (height * width)  # float32 counts are exact below 2^24 pixels
        return mixed, share.expand(batch_size), mask
