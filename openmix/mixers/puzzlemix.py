"""PuzzleMix: a saliency-optimal mask from a multi-label graph cut, then a block transport of both sources.

Kim, Choo and Song, "Puzzle Mix: Exploiting Saliency and Local Statistics for Optimal Mixup", ICML 2020.
https://arxiv.org/abs/2009.06962. Authors' code: github.com/snu-mllab/PuzzleMix (commit e2dbf3a): ``main.py``
(the saliency, lines 356-370; the defaults, lines 85-115), ``mixup.py`` (``mixup_process`` lines 44-118, the
mask and the mix ``mixup_graph`` lines 207-337). OpenMixup's port (Westlake-AI/openmixup,
``openmixup/models/augments/puzzlemix.py``) computes the same steps.

One call, for sample i (its own image ``x1 = x[i]``) and its partner ``x2 = x[index[i]]``:

1. **Grid.** One block grid ``g x g`` per batch, drawn uniformly from ``grids`` (the reference draws
   ``2 ** randint(1, 5)`` = 2, 4, 8 or 16 blocks per side, mixup.py:70); sizes that do not divide both image
   sides are skipped, and when none does, g = 1.
2. **Block saliency.** ``s`` = the ``saliency`` need (the channel norm of the input gradient of the clean loss,
   (B, H, W); the authors take the channel RMS, main.py:370, the same up to a constant that the normalisation
   removes) average-pooled to the grid and divided by its sum per sample (mixup.py:239-241).
3. **Mask.** Each block gets one of ``L = n_labels`` shares ``m_k = k / (L - 1)`` of ``x1`` by minimising, with
   gco's alpha-beta swap (:mod:`openmix.mixers._graph_cut`, where the energy is written out with file:line)::

       E(k) = sum_p [ m_k (s2_p + D1_p) + (1 - m_k) (s1_p + D2_p) + eta / g^2 * pi_k(lam) ]
              + sum_(p,q) W_pq (m_kp - m_kq)^2

   the saliency each source loses, the data smoothness ``D`` (gamma times the image differences across block
   boundaries, on images in pixel scale: ``mean``/``std`` undo the normalisation, mixup.py:244), the label
   smoothness ``W`` (beta / (16 g) plus the pairwise part of the data term) and a prior ``pi_k(lam) = -log
   Binomial(k; L - 1, lam)`` that keeps the expected share near ``lam ~ Beta(alpha, alpha)`` (mixup.py:73).
4. **Transport** (``transport=True``). Each source's blocks are permuted so that its salient blocks land where the
   mask shows it: ``x1`` on the blocks with ``m > 0``, ``x2`` on those with ``m < 1`` (mixup.py:309-331), each the
   plan of :func:`openmix.mixers._transport.transport_plan` with distance weight ``t_eps``, on a grid of
   ``t_size``-pixel blocks when that is finer than the mask's (the mask is repeated onto it, mixup.py:314-321).
5. **Mix.** ``x_mix = m * T1(x1) + (1 - m) * T2(x2)`` with ``m`` the mask upsampled to pixels; ``lam`` (the
   contract) is the mask's mean, which is also the reference's label weight (mixup.py:334-337, 114-116).

Defaults: ``alpha=1``, ``grids=(2, 4, 8, 16)``, ``beta=1.2``, ``gamma=0.5``, ``eta=0.2``, ``neigh_size=4``,
``n_labels=3``, ``transport=True``, ``t_eps=0.8`` are the authors' CIFAR recipe (README.md:70, main.py:94-109,
mixup.py:70) and OpenMixup's (``configs/classification/cifar100/mixups/basic/r18_mixups_CE_none.py:20-21``, alpha
1; ``openmixup/models/classifiers/mixup_classification.py:111-112``). ``t_size=None`` transports on the mask's grid
(the reference's ``-1``, main.py:106-109, which its ImageNet and Tiny-ImageNet recipes use); the CIFAR recipe sets
``t_size=4`` (README.md:70), as this package's CIFAR config does.

Where this differs from the reference (docs/decisions.md, "PuzzleMix"):

- The saliency need is the trainer's: the network in training mode, the loss on the clean batch; the CIFAR recipe
  computes it in evaluation mode (``clean_lam=0``, main.py:357-360), the Tiny-ImageNet one in training mode with the
  clean loss added to the objective (``clean_lam=1``, main.py:361-365). Neither the clean-loss term nor the
  adversarial noise (``adv_p``, off by default, main.py:112) is part of this mixer.
- An explicit ``lam`` of exactly 0 or 1 fixes every block's label (the prior's whole mass is on one label; the
  reference's ``1e-8`` inside the log would still let a salient block override it), so ``lam=1`` leaves the batch
  as it is up to the transport.
- ``neigh_size`` is lowered to the largest size that divides the blocks (the reference's sizes are powers of two).
- The transport plan is repaired to a permutation (the reference may drop or blank a block):
  :func:`openmix.mixers._transport.transport_plan`.

Modes: ``"batch"`` draws one ``lam`` for the batch (as the reference), ``"elem"`` one per sample; the grid is one per
batch in both, and every sample gets its own mask either way (the cut is per sample).

Cost: one graph cut per sample on the CPU (gco, a C++ library called sample by sample), whatever the device; the
pooling, the energy terms, the transport and the mix run on the input's device. ``tools/bench_train.py`` reports the
step cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from openmix.mixers import functional as F_mix
from openmix.mixers._base import PairMixer
from openmix.mixers._graph_cut import neighbour_differences, puzzle_energy_terms, puzzle_labels
from openmix.mixers._registry import register_mixer
from openmix.mixers._transport import apply_transport, transport_plan


def _check_channels(value: Any, name: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise TypeError(f"{name} must be None or a non-empty sequence of per-channel numbers, got {value!r}")
    return tuple(F_mix.check_real(v, name, "hold finite numbers", lambda f: abs(f) < float("inf")) for v in value)


def _largest_divisor(limit: int, *sides: int) -> int:
    """The largest c <= ``limit`` dividing every side (at least 1)."""
    return max(c for c in range(1, max(limit, 1) + 1) if all(side % c == 0 for side in sides))


@register_mixer(
    "puzzlemix",
    paper="Puzzle Mix: Exploiting Saliency and Local Statistics for Optimal Mixup (Kim, Choo and Song, ICML 2020)",
    url="https://arxiv.org/abs/2009.06962",
)
class PuzzleMix(PairMixer):
    """PuzzleMix (module docstring: the steps, the energy and the sources of every default).

    Args:
        alpha: Beta(alpha, alpha) concentration of ``lam``, the prior's expected share of sample i.
        grids: block grids per side to draw from, one per batch (the reference's ``2 ** randint(1, 5)``).
        beta: label smoothness (normalised by ``16 g`` as the reference).
        gamma: data smoothness, the weight of the image differences across block boundaries.
        eta: weight of the prior on the block shares (normalised by ``g^2``).
        neigh_size: side in pixels of the cells the boundary differences are averaged over.
        n_labels: number of block shares ``k / (n_labels - 1)``, at least 2.
        transport: permute each source's blocks onto the positions the mask shows it at.
        t_eps: weight of the distance a block moves in the transport cost (the reference's ``t_eps``).
        t_size: block side in pixels of the transport grid when finer than the mask's, else ``None`` (the mask's).
        mean, std: per-channel normalisation of the input, undone for the data smoothness term (pixel scale, as the
            reference); ``None``: the input is already in pixel scale.
        mode: ``"batch"`` (one ``lam``) or ``"elem"`` (one per sample).
        pairing: ``"random"`` or ``"flip"``.
        inplace: write the result into the input tensor (computed out of place, then copied).

    Call: ``mixer(x, y, generator=None, lam=None, saliency=...)`` with ``saliency`` (B, H, W) from the clean batch.
    Returns a :class:`MixOutput` whose ``mask`` is (B, 1, H, W), the per-pixel share of sample i's (transported)
    image, and ``lam`` its mean. Errors: ``ValueError`` / ``TypeError`` naming the argument.
    """

    hooks = ("inputs",)
    requires = ("saliency",)
    moves_partner = True  # with transport, the partner's blocks are permuted first
    shares_batch_mask = False  # one cut per sample
    solves_on_host = True  # gco's alpha-beta swap, on the CPU

    def __init__(
        self,
        alpha: float = 1.0,
        grids: Sequence[int] = (2, 4, 8, 16),
        beta: float = 1.2,
        gamma: float = 0.5,
        eta: float = 0.2,
        neigh_size: int = 4,
        n_labels: int = 3,
        transport: bool = True,
        t_eps: float = 0.8,
        t_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        mode: str = "batch",
        pairing: str = "random",
        inplace: bool = False,
    ):
        super().__init__(alpha, mode, pairing, inplace)
        if isinstance(grids, (str, bytes)) or not isinstance(grids, Sequence) or not grids:
            raise TypeError(f"grids must be a non-empty sequence of ints >= 1, got {grids!r}")
        if not all(F_mix.is_int(g) and int(g) >= 1 for g in grids):
            raise ValueError(f"grids must hold ints >= 1 (blocks per side), got {grids!r}")
        self.grids = tuple(sorted({int(g) for g in grids}))
        nonneg = "be a finite number >= 0"
        self.beta = F_mix.check_real(beta, "beta", nonneg, lambda v: 0.0 <= v < float("inf"))
        self.gamma = F_mix.check_real(gamma, "gamma", nonneg, lambda v: 0.0 <= v < float("inf"))
        self.eta = F_mix.check_real(eta, "eta", nonneg, lambda v: 0.0 <= v < float("inf"))
        self.t_eps = F_mix.check_real(t_eps, "t_eps", nonneg, lambda v: 0.0 <= v < float("inf"))
        for name, value, low in (("neigh_size", neigh_size, 1), ("n_labels", n_labels, 2)):
            if not F_mix.is_int(value):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
            if int(value) < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        self.neigh_size = int(neigh_size)
        self.n_labels = int(n_labels)
        self.transport = F_mix.check_bool(transport, "transport")
        if t_size is not None and (not F_mix.is_int(t_size) or int(t_size) < 1):
            raise ValueError(f"t_size must be None or an int >= 1 (pixels), got {t_size!r}")
        self.t_size = None if t_size is None else int(t_size)
        self.mean = _check_channels(mean, "mean")
        self.std = _check_channels(std, "std")
        if self.std is not None and any(s == 0 for s in self.std):
            raise ValueError(f"std must not hold zeros, got {std!r}")
        self.moves_own = self.transport

    def extra_repr(self) -> str:
        return (
            super().extra_repr() + f", grids={self.grids}, beta={self.beta}, gamma={self.gamma}, eta={self.eta}, "
            f"neigh_size={self.neigh_size}, n_labels={self.n_labels}, transport={self.transport}, "
            f"t_eps={self.t_eps}, t_size={self.t_size}"
        )

    def draw_grid(self, height: int, width: int, generator: torch.Generator | None = None) -> int:
        """Blocks per side for this batch: uniform over the ``grids`` that divide both sides, else 1."""
        usable = [g for g in self.grids if height % g == 0 and width % g == 0]
        if not usable:
            return 1
        return usable[int(F_mix.sample_int(len(usable), 1, generator)[0])]

    def pixel_scale(self, x: Tensor) -> Tensor:
        """``x`` with the normalisation undone (``x * std + mean``), in float32."""
        images = x.float()
        channels = x.shape[1]
        for name, values in (("std", self.std), ("mean", self.mean)):
            if values is not None and len(values) not in (1, channels):
                raise ValueError(f"{name} has {len(values)} values but x has {channels} channels")
        if self.std is not None:
            images = images * torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        if self.mean is not None:
            images = images + torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        return images

    def block_masks(self, x: Tensor, index: Tensor, lam: Tensor, saliency: Tensor, grid: int) -> tuple[Tensor, Tensor]:
        """The graph cut: ((B, g, g) float32 share of sample i per block, (B, g, g) block saliency summing to 1)."""
        batch, _, height, width = x.shape
        block = (height // grid, width // grid)
        pooled = F.avg_pool2d(saliency.float().unsqueeze(1), block).squeeze(1)  # (B, g, g)
        if not bool(torch.isfinite(pooled).all()) or bool((pooled < 0).any()):
            raise ValueError("saliency must hold finite values >= 0 (the norm of an input gradient)")
        cell = _largest_divisor(self.neigh_size, *block)
        images = self.pixel_scale(x)
        diff_h, diff_v = neighbour_differences(images, images.index_select(0, index), grid, cell)
        unary, label_cost, weight_h, weight_v = puzzle_energy_terms(
            pooled,
            pooled.index_select(0, index),
            lam.to(torch.float64),
            diff_h,
            diff_v,
            n_labels=self.n_labels,
            beta=self.beta,
            gamma=self.gamma,
            eta=self.eta,
        )
        labels = puzzle_labels(unary, label_cost, weight_h, weight_v)
        top = self.n_labels - 1
        lam_here = lam.to(labels.device).view(-1, 1, 1)
        labels = torch.where(lam_here >= 1, top, torch.where(lam_here <= 0, 0, labels))  # the prior's only label
        return labels.float() / top, pooled

    def mix(
        self, x: Tensor, index: Tensor, lam: Tensor | None, generator: torch.Generator | None, **context: Any
    ) -> tuple[Tensor, Tensor, Tensor]:
        batch, _, height, width = x.shape
        saliency = F_mix.check_saliency(context.get("saliency"), x, "puzzlemix")
        lam = self.draw_lam(lam, batch, generator)
        grid = self.draw_grid(height, width, generator)
        blocks, pooled = self.block_masks(x, index, lam, saliency, grid)
        own, partners = x, x.index_select(0, index)
        if self.transport and grid > 1:
            t_grid = (grid, grid)
            if self.t_size is not None and all(side % (self.t_size * grid) == 0 for side in (height, width)):
                t_grid = (height // self.t_size, width // self.t_size)  # finer than the mask's blocks
            t_blocks = F.interpolate(blocks.unsqueeze(1), size=t_grid, mode="nearest").flatten(1)
            t_saliency = pooled
            if t_grid != (grid, grid):
                t_saliency = F.adaptive_avg_pool2d(saliency.float().unsqueeze(1), t_grid).squeeze(1)
            t_saliency = t_saliency.flatten(1)
            t_saliency = t_saliency / t_saliency.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
            own_plan = transport_plan(t_saliency, t_blocks, t_grid, self.t_eps)
            partner_plan = transport_plan(t_saliency.index_select(0, index), 1.0 - t_blocks, t_grid, self.t_eps)
            own = apply_transport(x, own_plan, t_grid)
            partners = apply_transport(partners, partner_plan, t_grid)
        mask = F.interpolate(blocks.unsqueeze(1), size=(height, width), mode="nearest")  # (B, 1, H, W) float32
        mixed = torch.lerp(partners, own, mask.to(x.dtype)).contiguous(memory_format=F_mix.memory_format_of(x))
        if self.inplace:
            mixed = x.copy_(mixed)
        return mixed, mask.mean(dim=(1, 2, 3)), mask
