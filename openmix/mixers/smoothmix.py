"""SmoothMix: blend with a soft-edged Gaussian mask instead of pasting a hard-edged box.

Lee, Zaheer, Astrid and Lee, "SmoothMix: a Simple Yet Effective Data Augmentation to Train Robust Classifiers",
CVPR Workshops 2020. https://openaccess.thecvf.com/content_CVPRW_2020/papers/w45/Lee_SmoothMix_A_Simple_Yet_Effective_Data_Augmentation_to_Train_Robust_CVPRW_2020_paper.pdf

The paper mixes x~ = G * x_a + (1 - G) * x_b and labels the mix lam * y_a + (1 - lam) * y_b with
lam = sum(G) / (H * W), where G is a smooth mask that falls off from a random centre: circular (a Gaussian of the
distance to the centre) or square (the same profile over the largest of the two axis distances, so its level sets
are squares). Here, for pixel (r, c), centre (r0, c0) and spread s (a fraction of the image side):

    d_y = (r - r0) / H,   d_x = (c - c0) / W
    circle: G = exp(-(d_y^2 + d_x^2) / (2 s^2))        square: G = exp(-max(d_y^2, d_x^2) / (2 s^2))

The centre is a uniform pixel, so G peaks at exactly 1; s ~ U(sigma) = U(0.25, 0.5). On a square image this is
OpenMixup's kernel, sigma = (U[0, 1) / 4 + 0.25) * h pixels (Westlake-AI/openmixup, commit 37e1372,
``openmixup/models/augments/smoothmix.py`` line 71, the Gaussian of lines 34-50 with the shift of lines 69-70);
on a non-square one the mask stretches with the image (an ellipse, a rectangle).

Defaults and their sources:

- ``shape="circle"``: the Gaussian of OpenMixup's ``gaussian_kernel`` (lines 34-50), one of the paper's two masks.
- ``sigma=(0.25, 0.5)``: ``(torch.rand(1) / 4 + 0.25) * h``, line 71.
- ``alpha=1.0``: ``smoothmix(..., alpha=1.0)``, line 10. Neither the paper nor OpenMixup uses it: OpenMixup draws
  lam ~ Beta(alpha, alpha) (lines 52-53) and never reads it again; here it is read only with ``use_alpha=True``.
  OpenMixup's CIFAR tables list 0.2 (``configs/classification/cifar100/README.md`` line 47) and 0.5
  (``cifar10/README.md`` line 47), to no effect.

Paper versus OpenMixup's code:

- Which image the bump belongs to: in the paper G weights x_a, the sample whose label gets lam = mean(G); here
  ``m = G`` is sample i's own weight (default). OpenMixup gives the bump to the partner, ``img * (1 - kernel) +
  img_ * kernel`` (line 73), and ``invert=True`` reproduces that layout (``m = 1 - G``). OpenMixup then labels y_a
  with ``lam = sum(kernel) / (h * w)`` (line 74), the partner's share: its labels are swapped relative to its
  pixels. Here lam is always the mean of sample i's own weight ``m`` (the mixer contract), in both layouts.
- OpenMixup builds an h x h kernel (line 48), so it needs square images; its centre lies half a pixel off the
  pixel grid, at (k - 0.5) for k uniform in [0, h) (lines 40-47); here the centre is a pixel centre.
- OpenMixup has no square mask; ``shape="square"`` is openmix's reading of the paper's square mask (the circular
  profile over the larger axis distance), not checked against the paper's text.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from openmix.mixers import functional as F_mix
from openmix.mixers._base import PairMixer, check_choice
from openmix.mixers._registry import register_mixer

SHAPES = ("circle", "square")
_BISECTION_STEPS = 30  # on log(s): the bracket shrinks 2^30-fold (see solve_spread)
_LARGEST_SPREAD = 1e3  # s at which G >= 1 - 1e-6 on every pixel: the upper end of an explicit lam
_LOG2_E = math.log2(math.e)


def _check_spread(value: Any) -> tuple[float, float]:
    """``sigma``: a number or a (min, max) pair with 0 < min <= max < inf, as floats."""
    if F_mix.is_real(value):
        low = high = float(value)
    else:
        low, high = F_mix.check_pair(value, "sigma")
    if not (0.0 < low <= high and math.isfinite(high)):
        raise ValueError(f"sigma must be a finite number > 0 or a (min, max) pair with 0 < min <= max, got {value!r}")
    return low, high


def squared_offsets(center: Tensor, size: int, device: torch.device | str) -> Tensor:
    """(n, size) float64 ((k - center[i]) / size)^2 for the pixels k of one axis."""
    position = torch.arange(size, device=device, dtype=torch.float64).view(1, -1)
    return ((position - center.to(device, torch.float64, non_blocking=True).view(-1, 1)) / size) ** 2


def smooth_mask(dy2: Tensor, dx2: Tensor, spread: Tensor, shape: str = "circle") -> Tensor:
    """(n, 1, H, W) float32 mask G in [0, 1] from the squared offsets ``dy2`` (n, H), ``dx2`` (n, W) and ``spread``
    (n,) s: ``exp(-(dy2 + dx2) / (2 s^2))`` (circle) or ``exp(-max(dy2, dx2) / (2 s^2))`` (square).

    Both are separable: the product (circle) or the minimum (square) of two one-dimensional profiles. (Written
    with ``exp2``, ATen's own kernel, which on CPU builds with MKL avoids the threaded MKL call behind ``exp``.)
    """
    scale = _LOG2_E / (2.0 * spread.to(dy2.device, torch.float64).view(-1, 1) ** 2)
    rows = torch.exp2(-dy2 * scale).float()
    cols = torch.exp2(-dx2 * scale).float()
    if shape == "circle":
        mask = rows.unsqueeze(2) * cols.unsqueeze(1)
    else:
        mask = torch.minimum(rows.unsqueeze(2), cols.unsqueeze(1))
    return mask.unsqueeze(1)


def _square_weights(dy2: Tensor, dx2: Tensor) -> tuple[Tensor, Tensor]:
    """How many pixels take their ``max(dy2, dx2)`` from each row (ties to the row) and from each column.

    Row r owns the pixels (r, c) with dx2[c] <= dy2[r]; column c owns those with dy2[r] < dx2[c]. Together they
    count every pixel once, so the mean of the square mask is (sum_r w_r g(dy2_r) + sum_c v_c g(dx2_c)) / (H W)
    for any profile g: O(H + W) per evaluation instead of O(H W).
    """
    rows_sorted = dy2.sort(dim=1).values.contiguous()
    cols_sorted = dx2.sort(dim=1).values.contiguous()
    row_weight = torch.searchsorted(cols_sorted, dy2.contiguous(), right=True)  # #{c: dx2[c] <= dy2[r]}
    col_weight = torch.searchsorted(rows_sorted, dx2.contiguous(), right=False)  # #{r: dy2[r] < dx2[c]}
    return row_weight.double(), col_weight.double()


def solve_spread(target: Tensor, dy2: Tensor, dx2: Tensor, shape: str, smallest: float) -> Tensor:
    """(n,) float64 spread s at which the mean of :func:`smooth_mask` equals ``target`` (n,), by bisection on
    log(s) within [smallest, 1e3]: a fixed number of steps on the device, no host synchronisation.

    The mean grows strictly with s (every pixel does), from about 1 / (H W) (only the centre) to about 1; targets
    outside that range end at the nearer bound. The mean changes by at most about 2 per e-fold of s, so the
    final bracket (the start's 16 e-folds / 2^30 at 224 px) pins it to a few 1e-8; the float32 profiles leave
    about 2e-7 (measured up to 224 px). Each step is a handful of small kernels over (n, H + W), one profile per
    axis, never the (H, W) mask; the bracket (n values) stays in float64.
    """
    height, width = dy2.shape[1], dx2.shape[1]
    # G = 2^(exponent / s^2): the exponent of G times s^2, in base 2, rows then columns
    exponent = ((-0.5 * _LOG2_E) * torch.cat([dy2, dx2], dim=1)).float()
    if shape == "square":  # mean(G) = sum over the profiles, each value weighted by the pixels whose max it is
        weight = (torch.cat(_square_weights(dy2, dx2), dim=1) / (height * width)).float()
    target = target.to(dy2.device, torch.float64, non_blocking=True)
    low = torch.full_like(target, math.log2(smallest))  # log2(s)
    step = math.log2(_LARGEST_SPREAD) - math.log2(smallest)
    for _ in range(_BISECTION_STEPS):
        step *= 0.5
        middle = low + step
        profiles = torch.exp2(exponent * torch.exp2(-2.0 * middle).float().unsqueeze(1))
        if shape == "circle":  # mean(G) = mean of the row profile * mean of the column profile
            mean = profiles[:, :height].sum(dim=1) * profiles[:, height:].sum(dim=1) / (height * width)
        else:
            mean = (profiles * weight).sum(dim=1)
        low = torch.where(mean > target, low, middle)
    return torch.exp2(low + step)


@register_mixer(
    "smoothmix",
    paper="SmoothMix: a Simple Yet Effective Data Augmentation to Train Robust Classifiers (Lee et al., CVPR "
    "Workshops 2020)",
    url="https://openaccess.thecvf.com/content_CVPRW_2020/papers/w45/"
    "Lee_SmoothMix_A_Simple_Yet_Effective_Data_Augmentation_to_Train_Robust_CVPRW_2020_paper.pdf",
)
class SmoothMix(PairMixer):
    """SmoothMix: a soft Gaussian-like mask blends sample i with its partner.

    With ``x`` (B, C, H, W) of any floating dtype, the mask ``m_i`` is a float32 (1 or B, 1, H, W) map in [0, 1]
    and

        x~_i = m_i * x_i + (1 - m_i) * x_index[i],   lam_i = mean(m_i)  (float32, (B,))

    where ``m = G`` (or ``1 - G`` with ``invert``) and G is the circular or square smooth mask of the module
    docstring: centre a uniform pixel, spread s ~ U(sigma) as a fraction of the image side. lam is not drawn: it is
    what the mask gives: lam = sum(G) / (H W) in the paper (OpenMixup ``smoothmix.py`` line 74).

    An explicit ``lam`` (or, with ``use_alpha``, lam ~ Beta(alpha, alpha)) keeps the random centre and solves for s
    so that mean(m) = lam, to about 2e-7; lam = 1 gives m = 1 and lam = 0 gives m = 0 exactly. A mask cannot
    be narrower than its centre pixel, so with ``invert=False`` a lam in (0, 1 / (H W)) gives 1 / (H W) (and with
    ``invert=True`` a lam in (1 - 1 / (H W), 1) gives 1 - 1 / (H W)); ``out.lam`` reports what was applied.

    Args:
        alpha: Beta(alpha, alpha) concentration; only read with ``use_alpha``.
        shape: ``"circle"`` (Gaussian of the distance to the centre) or ``"square"`` (of the larger axis distance).
        sigma: spread s of the mask as a fraction of the image side (H for rows, W for columns): a (min, max) range
            it is drawn from uniformly, or a number.
        use_alpha: draw lam ~ Beta(alpha, alpha) and fit s to it instead of drawing s (not in the paper; OpenMixup
            draws such a lam but does not use it).
        invert: give the bump to the partner, ``m = 1 - G``, as OpenMixup's code does (its line 73).
        mode: ``"batch"`` (one mask for the batch) or ``"elem"`` (one per sample, for the whole batch at once).
        pairing: ``"random"`` or ``"flip"``.
        inplace: write into the input tensor.
    """

    reads_pixels = False  # its draws depend on the sizes and the generator alone

    def __init__(
        self,
        alpha: float = 1.0,
        shape: str = "circle",
        sigma: float | tuple[float, float] = (0.25, 0.5),
        use_alpha: bool = False,
        invert: bool = False,
        mode: str = "batch",
        pairing: str = "random",
        inplace: bool = False,
    ):
        super().__init__(alpha, mode, pairing, inplace)
        self.shape = check_choice(shape, SHAPES, "shape")
        self.sigma = _check_spread(sigma)
        self.use_alpha = F_mix.check_bool(use_alpha, "use_alpha")
        self.invert = F_mix.check_bool(invert, "invert")

    def extra_repr(self) -> str:
        return super().extra_repr() + (
            f", shape={self.shape!r}, sigma={self.sigma}, use_alpha={self.use_alpha}, invert={self.invert}"
        )

    def masks(
        self,
        lam: Tensor | None,
        num: int,
        height: int,
        width: int,
        generator: torch.Generator | None,
        device: torch.device | str,
    ) -> Tensor:
        """(num, 1, H, W) float32 masks ``m``: drawn (``lam`` None) or fitted to the (num,) float64 ``lam``."""
        center_y = F_mix.sample_int(height, num, generator)
        center_x = F_mix.sample_int(width, num, generator)
        dy2 = squared_offsets(center_y, height, device)
        dx2 = squared_offsets(center_x, width, device)
        if lam is None:
            low, high = self.sigma
            if high > low:
                spread = F_mix.sample_uniform(low, high, num, generator)
            else:  # one fixed spread: nothing to draw
                spread = torch.full((num,), low, dtype=torch.float64)
            mask = smooth_mask(dy2, dx2, spread.to(device, non_blocking=True), self.shape)
            return 1.0 - mask if self.invert else mask
        target = lam.double()
        target = (1.0 - target if self.invert else target).to(device, non_blocking=True)
        # narrower than a twentieth of a pixel the mask is its centre pixel alone (neighbours below exp(-200))
        spread = solve_spread(target, dy2, dx2, self.shape, smallest=0.05 / max(height, width))
        mask = smooth_mask(dy2, dx2, spread, self.shape)
        extreme = target.view(-1, 1, 1, 1)
        mask = torch.where(extreme >= 1, 1.0, torch.where(extreme <= 0, 0.0, mask))
        return 1.0 - mask if self.invert else mask

    def mix(
        self, x: Tensor, index: Tensor, lam: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        batch_size, _, height, width = x.shape
        num_masks = 1 if self.mode == "batch" else batch_size
        if lam is None and self.use_alpha:
            lam = self.draw_lam(None, batch_size, generator)
        mask = self.masks(None if lam is None else lam[:num_masks], num_masks, height, width, generator, x.device)
        mixed = F_mix.blend(x, index, mask, self.inplace)
        share = mask.sum(dim=(1, 2, 3), dtype=torch.float64) / (height * width)
        return mixed, share.expand(batch_size), mask
