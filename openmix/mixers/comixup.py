"""Co-Mixup: a batch of mixed outputs built jointly, each one a block mosaic of several inputs, by graph cuts.

Kim, Choo, Jeong and Song, "Co-Mixup: Saliency Guided Joint Mixup with Supermodular Diversity", ICLR 2021 (oral).
https://arxiv.org/abs/2102.03065. Authors' code: github.com/snu-mllab/Co-Mixup (commit 2a76816), CIFAR-100 recipe
``main.py`` and ``README.md``; the solver in ``mixup.py`` / ``match.py``; the ImageNet copy ``comix-imagenet/``.

The method (file:line of the authors' code for each step; the objective and the solver are written out in
:mod:`openmix.mixers._comixup`):

- The batch is cut into consecutive partitions of ``part_size`` inputs (the last one may be smaller); a partition
  of m inputs gives m outputs (mixup.py:29-33, 44-46).
- Each output is an ``h x w`` block grid (``block_num`` blocks a side; mixup.py:20-24); every block shows one input
  at the same place, or an equal blend of two (from the second outer iteration on, match.py:118-175).
- The labels are chosen to maximise the saliency shown (the trainer's ``saliency`` need, averaged per block and
  normalised per input, mixup.py:24, 36-37) minus the label smoothness ``beta`` between neighbouring blocks, minus a
  random prior ``eta`` that favours the inputs with a large Dirichlet(``alpha``) draw (match.py:200-203), minus the
  supermodular diversity ``gamma``: the overlap of input usage between outputs weighted by the compatibility
  ``A = (1 - omega) I + omega D`` (D: distances between the inputs' most salient locations, main.py:301-310), counted
  only past ``thres`` of an image's worth (match.py:224-233).
- Solver: ``n_iter`` outer iterations; each relabels one output at a time with the others fixed, the diversity term
  linearised (modular), by a multi-label graph cut (gco alpha-beta swap, match.py:95-115, 219-249); ``set_resolve``
  separates outputs that use the same inputs (match.py:74-92, 246-249).
- The outputs are the block masks upsampled (nearest) times the inputs, summed (match.py:52-60); the labels are the
  pixel shares of the inputs (match.py:62-69).

Defaults: the authors' CIFAR-100 recipe, README.md:52 (``--m_part 20 --m_block_num 4 --mixup_alpha 2.0 --clean_lam
1.0 --m_beta 0.32 --m_gamma 1.0 --m_thres 0.83 --m_eta 0.05 --m_omega 0.001``), the same as main.py's argparse
defaults and the run logged with the published checkpoint
(``checkpoint/cifar100_preactresnet18_eph300_comixup/log.txt:2``):

- ``block_num=4``: main.py:86-89 (``m_block_num``; -1 draws 2, 4, 8 or 16 per call, mixup.py:20-21).
- ``part_size=20``: main.py:90 (``m_part``).
- ``alpha=2.0``: main.py:103-106 (``mixup_alpha``, the Dirichlet concentration of the prior, match.py:201).
- ``beta=0.32``: main.py:91 (``m_beta``); ``gamma=1.0``: main.py:92 (``m_gamma``); ``eta=0.05``: main.py:102
  (``m_eta``); ``omega=0.001``: main.py:107 (``m_omega``).
- ``thres=0.83``, ``thres_type="hard"``: main.py:93-101 (``m_thres``, ``m_thres_type``).
- ``n_iter=4``: main.py:112 (``m_niter``); ``set_resolve=True``: main.py:108-111.
- ``blends=True``: the code always adds the blended labels (match.py:118-175, called at match.py:241).
- ``threshold_columns=False``: not the code's expression (match.py:225-227), see the argument.
- ``compat_kernel=8``, ``compat_stride=1``: main.py:304 (the ImageNet code pools with stride 8,
  comix-imagenet/main_fast_ddp.py:300).
- ``clean_lam=1.0`` (main.py:113) is not the mixer's: the authors add the clean loss of the saliency pass to the
  training loss (main.py:292-298); here the saliency pass trains nothing (``input_saliency``), so a recipe that
  wants the clean term sets it in the objective.

Call: ``mixer(x, y, generator=None, lam=None, saliency=...)`` with ``saliency`` (B, H, W) from the clean batch.
``lam`` is refused: Co-Mixup chooses every output's shares by optimisation (``takes_lam = False``). There is no
``mode`` or ``pairing``: the outputs of a batch are built jointly and each has its own mask.

Output (the k-source form of :class:`~openmix.mixers._base.MixOutput`): ``indices`` (B, k) the inputs of each
output, largest pixel share first (ties: lower batch index first), ``weights`` (B, k) their pixel shares,
``masks`` (B, k, H, W) their per-pixel weights (0, 1/2 or 1), with k = the largest number of inputs any output of
the call uses, at least 2; rows with fewer inputs are padded with weight 0, a zero mask and ``indices[:, 0]``. The
two-source fields describe the two largest: ``lam = weights[:, 0]``, ``index = indices[:, 1]``, ``mask = masks[:,
:1]``, ``y_a = y``, ``y_b = y[index]``.

Image sizes: any H x W; the grid is ``min(block_num, H) x min(block_num, W)`` and pixel row r belongs to block row
``(r * h) // H`` (blocks of equal size when ``block_num`` divides the side, as the authors' square images; else
their sizes differ by one pixel). The pixel shares (``weights``) are exact for either.

Cost: the graph cuts run on the CPU (gco), one per output and outer iteration, after one transfer of the block
saliency and the salient locations from the input's device; the masks come back in one transfer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from openmix.mixers import functional as F_mix
from openmix.mixers._base import Mixer, MixOutput, check_call, check_choice, check_inplace_target
from openmix.mixers._comixup import (
    THRES_TYPES,
    block_index,
    block_saliency,
    block_shares,
    compatibility,
    prior_cost,
    salient_positions,
    solve_partition,
)
from openmix.mixers._registry import register_mixer

RANDOM_BLOCK_NUMS = (2, 4, 8, 16)  # block_num=-1: 2 ** randint(1, 5) (mixup.py:20-21)


def _count(value: Any, name: str, low: int = 1) -> int:
    if not F_mix.is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if int(value) < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def mix_sources(x: Tensor, indices: Tensor, masks: Tensor) -> Tensor:
    """``sum_j masks[:, j] * x[indices[:, j]]`` in ``x``'s dtype, summed over j in order (B, C, H, W); ``masks``
    (B, k, H, W) holds 0, 1/2 and 1 only, exact in every floating dtype. Differentiable with respect to ``x``."""
    weights = masks.to(x.dtype).unsqueeze(2)  # (B, k, 1, H, W)
    mixed = weights[:, 0] * x.index_select(0, indices[:, 0])
    for column in range(1, indices.shape[1]):
        mixed = mixed + weights[:, column] * x.index_select(0, indices[:, column])
    return mixed


@register_mixer(
    "comixup",
    paper="Co-Mixup: Saliency Guided Joint Mixup with Supermodular Diversity (Kim, Choo, Jeong and Song, ICLR 2021)",
    url="https://arxiv.org/abs/2102.03065",
)
class CoMixup(Mixer):
    """Co-Mixup.

    Args:
        block_num: blocks per side of each output's label grid (``m_block_num``); -1 draws one of 2, 4, 8, 16 per
            call. Cut to the image's sides when larger.
        part_size: inputs per partition (``m_part``); every partition of m inputs gives m outputs.
        alpha: Dirichlet concentration of the prior's draw (``mixup_alpha``), > 0.
        beta: label smoothness between neighbouring blocks (``m_beta``), >= 0.
        gamma: weight of the supermodular diversity term (``m_gamma``), >= 0.
        eta: weight of the prior (``m_eta``), >= 0.
        omega: weight of the compatibility distances in ``A`` (``m_omega``), in [0, 1].
        thres: the diversity term counts another output's use of an input only past ``thres`` of an image's worth
            (``m_thres``, tau), >= 0.
        thres_type: ``"hard"`` (penalise all of it once past the threshold) or ``"soft"`` (only the excess).
        n_iter: outer iterations of the solver (``m_niter``), >= 1.
        set_resolve: separate outputs that use the same set of inputs (the code's post-processing).
        blends: allow blocks that blend two inputs equally (from the second outer iteration on), as the code.
        threshold_columns: apply the hard threshold as the code's expression parses (match.py:225-227: to the
            columns of ``A``, ``([A p > tau] * A) @ p``) instead of to each input's own weighted usage
            ``[A p > tau] A p`` (the default, the form of the code's soft variant). Identical when ``omega = 0``.
        compat_kernel, compat_stride: the average pooling that locates each input's most salient region.
        inplace: write the mixed batch into the input tensor.
    """

    hooks = ("inputs",)
    requires = ("saliency",)
    shares_batch_mask = False  # every output has its own mask
    takes_lam = False
    solves_on_host = True  # the per-output gco cuts and the diversity term, on the CPU

    def __init__(
        self,
        block_num: int = 4,
        part_size: int = 20,
        alpha: float = 2.0,
        beta: float = 0.32,
        gamma: float = 1.0,
        eta: float = 0.05,
        omega: float = 0.001,
        thres: float = 0.83,
        thres_type: str = "hard",
        n_iter: int = 4,
        set_resolve: bool = True,
        blends: bool = True,
        threshold_columns: bool = False,
        compat_kernel: int = 8,
        compat_stride: int = 1,
        inplace: bool = False,
    ):
        super().__init__()
        if not F_mix.is_int(block_num):
            raise TypeError(f"block_num must be an int (-1 for a random one), got {type(block_num).__name__}")
        if int(block_num) != -1 and int(block_num) < 1:
            raise ValueError(f"block_num must be >= 1 or -1 (random), got {block_num!r}")
        self.block_num = int(block_num)
        self.part_size = _count(part_size, "part_size")
        self.alpha = F_mix.check_real(alpha, "alpha", "be a finite number > 0", lambda v: 0 < v < float("inf"))
        nonnegative = ("be a finite number >= 0", lambda v: 0 <= v < float("inf"))
        self.beta = F_mix.check_real(beta, "beta", *nonnegative)
        self.gamma = F_mix.check_real(gamma, "gamma", *nonnegative)
        self.eta = F_mix.check_real(eta, "eta", *nonnegative)
        self.omega = F_mix.check_real(omega, "omega", "lie in [0, 1]", lambda v: 0 <= v <= 1)
        self.thres = F_mix.check_real(thres, "thres", *nonnegative)
        self.thres_type = check_choice(thres_type, THRES_TYPES, "thres_type")
        self.n_iter = _count(n_iter, "n_iter")
        self.set_resolve = F_mix.check_bool(set_resolve, "set_resolve")
        self.blends = F_mix.check_bool(blends, "blends")
        self.threshold_columns = F_mix.check_bool(threshold_columns, "threshold_columns")
        self.compat_kernel = _count(compat_kernel, "compat_kernel")
        self.compat_stride = _count(compat_stride, "compat_stride")
        self.inplace = F_mix.check_bool(inplace, "inplace")

    def extra_repr(self) -> str:
        return (
            f"block_num={self.block_num}, part_size={self.part_size}, alpha={self.alpha}, beta={self.beta}, "
            f"gamma={self.gamma}, eta={self.eta}, omega={self.omega}, thres={self.thres}, "
            f"thres_type={self.thres_type!r}, n_iter={self.n_iter}, set_resolve={self.set_resolve}, "
            f"blends={self.blends}, threshold_columns={self.threshold_columns}, "
            f"compat_kernel={self.compat_kernel}, compat_stride={self.compat_stride}, inplace={self.inplace}"
        )

    def grid_for(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int]:
        """(h, w) blocks for an H x W image: ``block_num`` (or a random one of 2, 4, 8, 16 drawn from ``rng``) a
        side, cut to the image's sides."""
        blocks = self.block_num if self.block_num != -1 else RANDOM_BLOCK_NUMS[int(rng.integers(0, 4))]
        return min(blocks, height), min(blocks, width)

    def forward(
        self,
        x: Tensor,
        y: Tensor,
        generator: torch.Generator | None = None,
        lam: Any = None,
        **needs: Any,
    ) -> MixOutput:
        """Mix a batch.

        Args:
            x: (B, C, H, W) floating point images.
            y: (B,) int64 class ids or (B, K) soft / multi-hot targets.
            generator: a ``torch.Generator`` that makes the call reproducible; the global torch RNG if ``None``.
            lam: must be ``None`` (a valid lam is refused with a ``ValueError``; an invalid one gets the usual lam
                error first).
            saliency: (B, H, W) floating point, on ``x``'s device: the saliency of the clean batch.

        Returns:
            A :class:`MixOutput` in the k-source form (module docstring): ``x`` (B, C, H, W) in ``x``'s dtype and
            memory format (``x`` itself when ``inplace``), ``indices`` (B, k) int64, ``weights`` (B, k) float32,
            ``masks`` (B, k, H, W) float32, on ``x``'s device.

        Raises:
            ValueError / TypeError naming the argument: a bad ``x``, ``y`` or ``generator`` (``check_call``); a
            ``saliency`` that is missing, not a floating point (B, H, W) tensor on ``x``'s device, not finite or
            negative; any ``lam`` but ``None``; ``inplace`` on a leaf ``x`` that requires grad.
        """
        check_call(self, x, y, generator, needs)
        batch_size, _, height, width = x.shape
        if lam is not None:
            F_mix.check_lam(lam, batch_size, "elem")
            raise ValueError(
                "lam: comixup takes no explicit lam; it chooses every output's shares by optimisation (lam=None)"
            )
        saliency = F_mix.check_saliency(needs.get("saliency"), x, "comixup")
        check_inplace_target(self, x)
        rng = F_mix.numpy_rng(generator)
        grid = self.grid_for(height, width, rng)
        device = x.device
        with torch.no_grad():
            blocks = block_saliency(saliency.detach(), grid).flatten(1)
            positions = salient_positions(saliency.detach(), self.compat_kernel, self.compat_stride)
            host = torch.cat([blocks, positions], dim=1).to("cpu", torch.float64).numpy()  # the one transfer
        n_blocks = blocks.shape[1]
        block_masks, indices = self.label(host[:, :n_blocks], host[:, n_blocks:], grid, (height, width), rng)

        indices = torch.from_numpy(indices).to(device, non_blocking=True)
        block_masks = torch.from_numpy(block_masks).to(device, non_blocking=True)
        rows, cols = block_index(height, grid[0], device), block_index(width, grid[1], device)
        block_masks = block_masks.view(batch_size, -1, *grid)
        masks = block_masks.index_select(2, rows).index_select(3, cols)  # nearest upsampling, (B, k, H, W)
        mixed = mix_sources(x, indices, masks).contiguous(memory_format=F_mix.memory_format_of(x))
        if self.inplace:
            mixed = x.copy_(mixed)
        weights = masks.mean(dim=(2, 3))
        index = indices[:, 1]
        return MixOutput(
            mixed,
            index,
            weights[:, 0].contiguous(),
            y,
            y.index_select(0, index),
            masks[:, :1],
            indices=indices,
            weights=weights,
            masks=masks,
        )

    def label(
        self,
        saliency: np.ndarray,
        positions: np.ndarray,
        grid: tuple[int, int],
        size: tuple[int, int],
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Solve every partition on the CPU: (B, k, h w) float32 block masks and (B, k) int64 batch indices of the
        sources, largest pixel share first (module docstring). ``saliency`` (B, h w) block saliency, normalised;
        ``positions`` (B, 2) salient locations; ``size`` (H, W) the image's, for the pixel shares."""
        if not (np.isfinite(saliency).all() and np.isfinite(positions).all()):
            raise ValueError("saliency must hold finite values only")
        if (saliency < 0).any():
            raise ValueError("saliency must be non-negative (a norm of the input gradient)")
        batch_size, n_blocks = saliency.shape
        pixels = np.outer(
            np.bincount(np.arange(size[0]) * grid[0] // size[0], minlength=grid[0]),
            np.bincount(np.arange(size[1]) * grid[1] // size[1], minlength=grid[1]),
        ).ravel()  # pixels per block, row-major
        parts = []
        for start in range(0, batch_size, self.part_size):
            stop = min(start + self.part_size, batch_size)
            count = stop - start
            prior = prior_cost(rng, count, self.alpha, self.eta, n_blocks)  # match.py:200-203, before the init
            compat = compatibility(torch.from_numpy(positions[start:stop]), self.omega).numpy()
            lo, hi = solve_partition(
                -saliency[start:stop] + prior[:, None],
                compat,
                grid,
                beta=self.beta,
                gamma=self.gamma,
                thres=self.thres,
                thres_type=self.thres_type,
                n_iter=self.n_iter,
                set_resolve=self.set_resolve,
                blends=self.blends,
                threshold_columns=self.threshold_columns,
                rng=rng,
            )
            shares = block_shares(lo, hi, count)  # (m, n, m)
            pixel_shares = np.einsum("jki,k->ji", shares.astype(np.float64), pixels)
            order = np.argsort(-pixel_shares, axis=1, kind="stable")  # largest first, ties: lower index
            parts.append((start, shares, order, (pixel_shares > 0).sum(axis=1)))
        k = max(2, max(int(used.max()) for *_, used in parts))
        indices = np.empty((batch_size, k), dtype=np.int64)
        block_masks = np.zeros((batch_size, k, n_blocks), dtype=np.float32)
        for start, shares, order, used in parts:
            count = shares.shape[0]
            top = order[:, : min(k, count)]
            if top.shape[1] < k:
                top = np.concatenate([top, np.repeat(top[:, :1], k - top.shape[1], axis=1)], axis=1)
            valid = np.arange(k)[None, :] < used[:, None]
            top = np.where(valid, top, top[:, :1])  # padding: the largest source, with a zero mask
            indices[start : start + count] = start + top
            gathered = np.take_along_axis(shares, top[:, None, :], axis=2)  # (m, n, k)
            block_masks[start : start + count] = np.where(valid[:, None, :], gathered, 0.0).transpose(0, 2, 1)
        return block_masks, indices
