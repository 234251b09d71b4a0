"""SaliencyMix: a CutMix box centred on the most salient pixel of the source (partner) image.

Uddin et al., "SaliencyMix: A Saliency Guided Data Augmentation Strategy for Better Regularization", ICLR 2021.
https://arxiv.org/abs/2006.01791

The paper uses OpenCV's fine-grained static saliency (Montabone & Soto, 2010): centre-surround differences of the
grey-level image at six scales, on- and off-centre maps summed over scales, each normalised by its maximum, then
added. :func:`fine_grained_saliency` computes the same quantities in torch, vectorised over the batch, with box
sums from an integral image. As in the authors' code, a batch-mode call computes the saliency of one source image
(the partner of sample 0) and pastes one box for the whole batch; elem mode centres a box on each partner's peak.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from openmix.mixers import functional as F_mix
from openmix.mixers._base import PairMixer
from openmix.mixers._registry import register_mixer
from openmix.mixers.functional import host_tensor, host_values, to_device

# Half-widths (in pixels) of the surround windows of OpenCV's StaticSaliencyFineGrained.
SURROUND_SIZES = (12, 24, 48, 28, 56, 112)
BACKENDS = ("torch", "opencv")
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luminance of R, G, B


def _grey(images: Tensor) -> Tensor:
    """(n, 1, H, W) float32 luminance of RGB images (ITU-R BT.601 weights), channel mean otherwise."""
    images = images.float()
    if images.shape[1] == 3:
        weights = to_device(host_tensor(np.array(GREY_WEIGHTS, dtype=np.float32)), images.device).view(1, 3, 1, 1)
        return (images * weights).sum(dim=1, keepdim=True)
    return images.mean(dim=1, keepdim=True)


def _window_bounds(size: int, halves: Tensor) -> tuple[Tensor, Tensor]:
    """(S, size) indices (lo, hi) into a zero-padded cumulative sum, one row per half-width: the window
    [p - half + 1, p + half] clipped to [0, size)."""
    position = torch.arange(size, device=halves.device).view(1, -1)
    halves = halves.view(-1, 1)
    return (position - halves + 1).clamp(0, size), (position + halves + 1).clamp(0, size)


def _surround_means(grey: Tensor, halves: Tensor) -> Tensor:
    """(n, S, H, W) mean of each clipped (2 half) x (2 half) window without its centre pixel, all S scales at once.

    The box sums come from one integral image; rows and columns are gathered separably for every scale together.
    """
    n, height, width = grey.shape
    integral = F.pad(grey.cumsum(1).cumsum(2), (1, 0, 1, 0))  # (n, H+1, W+1)
    row_lo, row_hi = _window_bounds(height, halves)  # (S, H)
    col_lo, col_hi = _window_bounds(width, halves)  # (S, W)
    scales = halves.numel()
    rows = integral.index_select(1, row_hi.flatten()) - integral.index_select(1, row_lo.flatten())  # (n, S*H, W+1)
    rows = rows.view(n, scales, height, width + 1)
    area = (row_hi - row_lo).view(scales, height, 1) * (col_hi - col_lo).view(scales, 1, width)  # (S, H, W)
    shape = (n, scales, height, width)
    box = rows.gather(3, col_hi.view(1, scales, 1, width).expand(shape))
    box -= rows.gather(3, col_lo.view(1, scales, 1, width).expand(shape))  # (n, S, H, W)
    return (box - grey.unsqueeze(1)) / (area - 1).clamp(min=1)


def _binomial_blur(grey: Tensor) -> Tensor:
    """3x3 [1/4, 1/2, 1/4] smoothing of (n, H, W) with a mirrored border (OpenCV's reflect-101)."""
    for dim in (1, 2):
        size = grey.shape[dim]
        if size < 2:
            continue
        padded = torch.cat([grey.narrow(dim, 1, 1), grey, grey.narrow(dim, size - 2, 1)], dim=dim)
        grey = 0.25 * padded.narrow(dim, 0, size) + 0.5 * grey + 0.25 * padded.narrow(dim, 2, size)
    return grey


def fine_grained_saliency(images: Tensor, scale: float = 1.0) -> Tensor:
    """(n, H, W) fine-grained static saliency of (n, C, H, W) images, in [0, 1].

    Steps (OpenCV's StaticSaliencyFineGrained): grey level g smoothed twice by a 3x3 binomial filter; for each
    surround half-width s, the surround mean m_s is the mean of the window [p - s + 1, p + s] (clipped) without the
    pixel itself; on_s = max(g - m_s, 0), off_s = max(m_s - g, 0); On = sum_s on_s, Off = sum_s off_s;
    saliency = On / max(On) + Off / max(Off), normalised to [0, 1].

    Args:
        images: (n, C, H, W) images.
        scale: factor applied to the surround sizes; callers that compute saliency on a downsampled image pass the
            downsampling ratio so the windows cover the same part of the scene.
    """
    grey = _binomial_blur(_binomial_blur(_grey(images)[:, 0]))  # OpenCV blurs twice
    grey = grey - grey.mean(dim=(1, 2), keepdim=True)  # keeps the cumulative sums small (float32 precision)
    halves = np.array([max(1, round(size * scale)) for size in SURROUND_SIZES], dtype=np.int64)
    halves = to_device(host_tensor(halves), grey.device)
    difference = grey.unsqueeze(1) - _surround_means(grey, halves)  # (n, S, H, W): centre minus surround
    on_sum = difference.clamp(min=0).sum(dim=1)  # on-centre: brighter than the surround
    off_sum = on_sum - difference.sum(dim=1)  # off-centre: sum of max(-d, 0) = sum of max(d, 0) - sum of d
    tiny = torch.finfo(on_sum.dtype).tiny
    saliency = on_sum / on_sum.amax(dim=(1, 2), keepdim=True).clamp(min=tiny)
    saliency = saliency + off_sum / off_sum.amax(dim=(1, 2), keepdim=True).clamp(min=tiny)
    return saliency / saliency.amax(dim=(1, 2), keepdim=True).clamp(min=tiny)


def opencv_saliency(images: Tensor) -> Tensor:
    """(n, H, W) saliency from OpenCV's ``StaticSaliencyFineGrained`` (needs opencv-contrib), one image at a time.

    Each image is min-max scaled to uint8 (the detector reads 8-bit images) and, when it has 3 channels, passed
    as BGR (the tensors are RGB). The detector runs on the host, so images on a device are copied to the host (a
    wait for that device, which the ``"torch"`` backend never makes); the maps go back with :func:`to_device`.
    """
    try:
        import cv2
    except ImportError as error:  # optional dependency
        raise ImportError("backend='opencv' needs opencv-contrib-python-headless") from error
    if not hasattr(cv2, "saliency"):
        raise ImportError("backend='opencv' needs the contrib build: pip install opencv-contrib-python-headless")
    detector = cv2.saliency.StaticSaliencyFineGrained_create()
    maps = []
    for image in images.detach().float().cpu():
        low, high = image.min(), image.max()
        scaled = ((image - low) / (high - low).clamp(min=1e-12) * 255).round().to(torch.uint8)
        array = scaled.permute(1, 2, 0).numpy()
        array = array[..., ::-1].copy() if array.shape[2] == 3 else array[..., 0].copy()
        ok, saliency = detector.computeSaliency(array)
        if not ok:
            raise RuntimeError("OpenCV's saliency detector failed")
        maps.append(torch.from_numpy(saliency.astype("float32")))
    return to_device(torch.stack(maps), images.device)


def saliency_peaks(images: Tensor, backend: str = "torch", max_size: int | None = 64) -> Tensor:
    """(n, 2) int64 (row, col) of each image's most salient pixel (the first one in raster order on ties).

    The torch backend computes saliency on the image average-pooled by an integer factor so its longer side is at
    most ``max_size`` (surround sizes scaled alike) and maps the peak back to the centre of its pooled cell.
    """
    if backend == "opencv":
        saliency = opencv_saliency(images)
        factor = 1
    else:
        factor = 1 if max_size is None else max(1, -(-max(images.shape[-2:]) // max_size))  # ceil division
        pooled = F.avg_pool2d(images.float(), factor, ceil_mode=True) if factor > 1 else images
        saliency = fine_grained_saliency(pooled, scale=1.0 / factor)
    height, width = images.shape[-2:]
    flat_peak = saliency.flatten(1).argmax(dim=1)
    row = (flat_peak // saliency.shape[-1]) * factor + factor // 2
    col = (flat_peak % saliency.shape[-1]) * factor + factor // 2
    return torch.stack([row.clamp(max=height - 1), col.clamp(max=width - 1)], dim=1)


def boxes_around(peaks: Tensor, ratio: Tensor, height: int, width: int) -> Tensor:
    """(n, 4) int64 boxes ``[top, bottom, left, right]`` on the device of the (n, 2) ``peaks``: sides ``ratio`` (n,
    host draws) times the image sides, centred on the peaks, clipped to the image.

    The rule of :func:`functional.boxes_from_ratio` with given centres (half sides ``int(H * ratio) // 2``, as the
    reference code), computed where the peaks are: the half sides come from the host draws, the centres never
    leave the device.
    """
    ratio = host_values(ratio.double())
    halves = np.stack([np.floor(height * ratio), np.floor(width * ratio)], axis=1).astype(np.int64) // 2
    halves = to_device(host_tensor(halves), peaks.device)  # (n, 2): half height, half width
    low, high = peaks - halves, peaks + halves
    return torch.stack(
        [
            low[:, 0].clamp(0, height),
            high[:, 0].clamp(0, height),
            low[:, 1].clamp(0, width),
            high[:, 1].clamp(0, width),
        ],
        dim=1,
    )


def box_inside(boxes: Tensor, height: int, width: int) -> Tensor:
    """(n, 1, H, W) bool, true inside box i: comparisons of ``arange`` rows and columns with the (n, 4) ``boxes``,
    on their device."""
    top, bottom, left, right = (side.view(-1, 1, 1, 1) for side in boxes.unbind(1))
    rows = torch.arange(height, device=boxes.device).view(1, 1, -1, 1)
    cols = torch.arange(width, device=boxes.device).view(1, 1, 1, -1)
    return (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)


def box_area_lam(boxes: Tensor, height: int, width: int) -> Tensor:
    """(n,) float64 share of the image outside each box (``functional.box_lam``), on the boxes' device."""
    sides = (boxes[:, 1::2] - boxes[:, 0::2]).clamp(min=0)  # (bottom - top, right - left)
    return 1.0 - (sides[:, 0] * sides[:, 1]).double() / (height * width)


@register_mixer(
    "saliencymix",
    paper="SaliencyMix: A Saliency Guided Data Augmentation Strategy for Better Regularization "
    "(Uddin et al., ICLR 2021)",
    url="https://arxiv.org/abs/2006.01791",
)
class SaliencyMix(PairMixer):
    """SaliencyMix.

    Args:
        alpha: Beta concentration of lambda (the paper's beta = 1).
        backend: ``"torch"`` (vectorised, any device) or ``"opencv"`` (the paper's detector, per image on the CPU).
        max_saliency_size: the torch backend computes saliency on the image average-pooled by the smallest integer
            factor that brings its longer side to at most this (``None``: full resolution). 28-64 px images are
            not pooled; at 224 px the default pools by 4, which keeps the peak within a few pooled cells of the
            full-resolution one at a sixteenth of the cost.
        mode: ``"batch"`` (one box from the partner of sample 0, as the authors' code) or ``"elem"``.
        pairing: ``"random"`` or ``"flip"``.
        inplace: write into the input tensor.

    The peaks are values of the batch, so with the torch backend everything that depends on them stays on the
    batch's device: the boxes, the paste (a ``torch.where`` with the box mask, not a slice at host coordinates) and
    the reported lambda (the box's area share after clipping).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        backend: str = "torch",
        max_saliency_size: int | None = 64,
        mode: str = "batch",
        pairing: str = "random",
        inplace: bool = False,
    ):
        super().__init__(alpha, mode, pairing, inplace)
        if not isinstance(backend, str) or backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if max_saliency_size is not None and (not F_mix.is_int(max_saliency_size) or max_saliency_size < 8):
            raise ValueError(f"max_saliency_size must be an int >= 8 or None, got {max_saliency_size!r}")
        self.backend = backend
        self.max_saliency_size = None if max_saliency_size is None else int(max_saliency_size)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", backend={self.backend!r}"

    def mix(
        self, x: Tensor, index: Tensor, lam: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        batch_size, _, height, width = x.shape
        lam = self.draw_lam(lam, batch_size, generator)
        with torch.no_grad():
            if self.mode == "batch":  # one box from the partner of sample 0, as the authors' code
                peaks = saliency_peaks(x.detach().index_select(0, index[:1]), self.backend, self.max_saliency_size)
            else:  # every image's peak, then each sample's partner's: no copy of the batch
                peaks = saliency_peaks(x.detach(), self.backend, self.max_saliency_size).index_select(0, index)
        ratio = (1.0 - lam[: peaks.shape[0]]).clamp(min=0).sqrt()  # host draws
        boxes = boxes_around(peaks, ratio, height, width)  # (1 or B, 4) on the device
        inside = box_inside(boxes, height, width)
        partners = F_mix.gather_partners(x, index)
        if F_mix.records_grad(x):
            mixed = torch.where(inside, partners, x).contiguous(memory_format=F_mix.memory_format_of(x))
            mixed = x.copy_(mixed) if self.inplace else mixed
        else:
            mixed = torch.where(inside, partners, x, out=x if self.inplace else partners)
        mask = inside.logical_not().to(torch.float32)
        return mixed, box_area_lam(boxes, height, width).expand(batch_size), mask
