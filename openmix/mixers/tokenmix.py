"""TokenMix: mix two images at the level of ViT tokens (a block-wise random set of patch cells).

Liu, Liu, Zhou, Li and Liu, "TokenMix: Rethinking Image Mixing for Data Augmentation in Vision Transformers",
ECCV 2022. https://arxiv.org/abs/2207.08409. Authors' code: github.com/Sense-X/TokenMix (commit 0e17d5d),
``tokenmix.py`` (its ``Mixup`` class) and ``main.py``.

Inputs (hook ``inputs``), as the authors' ``Mixup._mix_batch`` (tokenmix.py:305-327): with probability
``switch_prob`` the batch is TokenMix'ed, otherwise Mixup'ed with lambda ~ Beta(mixup_alpha, mixup_alpha)
(tokenmix.py:287-303, the timm switch with TokenMix in place of CutMix). TokenMix:

- the token grid is the ViT's patch grid, ``H // patch_size`` x ``W // patch_size`` cells (14 x 14 for 224 px and
  16 px patches, tokenmix.py:167-168). When a side is not a multiple of ``patch_size`` pixel row r belongs to cell
  row ``floor(r * gh / H)`` (the AttentiveMix cell rule), so cells then differ by a pixel;
- the number of partner tokens to paste is ``n = min(N, floor((1 - ratio) * N) + minimum_tokens)``, N = gh * gw,
  with ``ratio = 0.5`` (tokenmix.py:265, 311; ``mask_ratio = 1 - lam``, tokenmix.py:172-174);
- ``mask_type="block"``: BEiT's block-wise masking (tokenmix.py:166-209): repeatedly draw a block with area
  U(1, n - masked) tokens and aspect ratio log-uniform in [min_aspect, 1 / min_aspect] (0.3, tokenmix.py:169-170),
  sides rounded, smaller than the grid, uniform position; accept it when it adds between 1 and n - masked new
  tokens; stop when n tokens are masked or after 10 failed attempts in a row. ``mask_type="random"``: n tokens
  uniformly at random (tokenmix.py:212-229);
- the cells are upsampled to pixels (nearest, tokenmix.py:319) and pasted from the partner (tokenmix.py:321-322).
  ``MixOutput.lam`` is the share of sample i's own pixels (1 - masked / N when the cells are equal).

Targets (hook ``targets``): ``refine_targets(mix, attention=A)``, A (B, gh, gw) the class token's attention over the
patch tokens in the last block (averaged over heads) of the mixed batch, gives ``label_weights = (w, 1 - w)`` with
``w = sum_p A[p] * M[p] / sum_p A[p]`` over sample i's own tokens (as TransMix; see ``openmix.mixers.transmix``).
This is the task owner's choice for openmix. The paper and the authors' code score the target with a pre-trained
*teacher's* activation maps instead (tokenmix.py:333-354: ReLabel-style NFNet-F6 label maps, normalised per image,
``y1 = sum over i's kept tokens of its own map``, ``y2 = sum over the pasted tokens of the partner's map``, rows not
summing to 1, label smoothing folded in); no teacher is implemented here. OpenMixup's (commit 37e1372) ``tokenmix``
(``openmixup/models/augments/tokenmix.py`` lines 139-147) also replaces the teacher by the network's attention, read
on the clean images before mixing. A batch mixed by the Mixup branch keeps its Mixup label.

Defaults:

- ``ratio=0.5``: ``self.lam_constant = 0.5`` (tokenmix.py:265, used at line 311). ``ratio=None`` draws it from
  Beta(alpha, alpha) instead, as OpenMixup does (``openmixup/models/augments/tokenmix.py`` lines 106-107, alpha 1.0
  at line 11); a (min, max) pair draws it uniformly in that range.
- ``minimum_tokens=14``: tokenmix.py:248 (OpenMixup: line 14, and ``mix_args`` of
  ``openmixup/models/classifiers/mixup_classification.py`` line 121).
- ``mask_type="block"``: main.py:131 (``--mask-type`` default) and tokenmix.py:248.
- ``min_aspect=0.3``: tokenmix.py:169.
- ``mixup_alpha=0.8``: main.py:134 and exp/deit_small/run.sh (``--mixup 0.8``).
- ``switch_prob=0.5``: main.py:142 (``--mixup-switch-prob`` default; the run script does not set it).
- ``alpha=1.0``: the CutMix alpha the authors pass (main.py:136, run.sh ``--cutmix 1.0``), only used when
  ``ratio=None``.
- ``patch_size=None``: the ViT's patch size, which a trainer hands over at construction (``check_network``); called
  on its own, the image is cut into the authors' 14 x 14 grid (tokenmix.py:167-168: 224 px in 16 px patches), a
  patch side of ``max(1, round(min(H, W) / 14))``.

Modes: the authors' code is batch mode only (one mask for the batch). ``mode="elem"`` draws the switch, the count
and the mask per sample; the block masking runs for all samples at once (a loop over attempts, not over samples,
on the CPU like the other small draws), and a sample given Mixup has a constant mask row equal to its lambda (its
attention share is then that lambda, so it keeps its Mixup label). An explicit ``lam`` pastes
``round((1 - lam) * N)`` tokens (no ``minimum_tokens``) in the TokenMix branch, or is the Mixup lambda.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from openmix.mixers import functional as F_mix
from openmix.mixers._base import MixOutput, PairMixer
from openmix.mixers._registry import register_mixer
from openmix.mixers.transmix import (
    attention_share,
    blend_branches,
    check_attention,
    check_switch,
    draw_switch,
    mixup_lam,
)

MASK_TYPES = ("block", "random")
MAX_FAILURES = 10  # failed attempts in a row before the block masking gives up (tokenmix.py:183, 203-204)


def token_grid(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """(gh, gw): the patch grid of an H x W image, at least one cell per side."""
    return max(1, height // patch_size), max(1, width // patch_size)


def cell_index(length: int, cells: int, device: torch.device | str = "cpu") -> Tensor:
    """(length,) cell of every pixel along one side: pixel r lies in cell ``floor(r * cells / length)``."""
    return (torch.arange(length, device=device) * cells) // length


def block_token_masks(
    counts: Tensor, grid: tuple[int, int], generator: torch.Generator | None = None, min_aspect: float = 0.3
) -> Tensor:
    """(n, gh, gw) bool CPU masks, True on the tokens taken from the partner: BEiT's block-wise masking.

    Row k aims at ``counts[k]`` tokens. Each round draws, for every unfinished row at once, a block with area
    U(1, remaining) tokens and aspect ratio log-uniform in [min_aspect, 1 / min_aspect], sides rounded (half to
    even, as Python's ``round``), strictly smaller than the grid, position uniform; it is accepted when it adds
    between 1 and ``remaining`` new tokens. A row stops at its count or after 10 failed rounds in a row, so a mask
    may hold fewer tokens than asked (as the authors' ``generate_mask``). The draws come from the torch RNG; the
    arithmetic runs in NumPy (small single-threaded arrays, a loop over rounds, never over rows)."""
    height, width = grid
    num = counts.shape[0]
    target = counts.long().clamp(0, height * width).numpy()
    mask = np.zeros((num, height, width), dtype=bool)
    masked = np.zeros(num, dtype=np.int64)
    failures = np.zeros(num, dtype=np.int64)
    active = target > 0
    rows = np.arange(height)[None, :]
    cols = np.arange(width)[None, :]
    log_low, log_high = math.log(min_aspect), math.log(1.0 / min_aspect)
    while active.any():
        draws = F_mix.sample_uniform(0.0, 1.0, 4 * num, generator).numpy().reshape(num, 4)
        remaining = target - masked
        area = 1.0 + draws[:, 0] * np.maximum(remaining - 1.0, 0.0)
        aspect = np.exp(log_low + draws[:, 1] * (log_high - log_low))
        block_h = np.round(np.sqrt(area * aspect)).astype(np.int64)
        block_w = np.round(np.sqrt(area / aspect)).astype(np.int64)
        fits = (block_h < height) & (block_w < width)
        top = np.floor(draws[:, 2] * np.maximum(height - block_h + 1, 1)).astype(np.int64)
        left = np.floor(draws[:, 3] * np.maximum(width - block_w + 1, 1)).astype(np.int64)
        in_rows = (rows >= top[:, None]) & (rows < (top + block_h)[:, None])
        in_cols = (cols >= left[:, None]) & (cols < (left + block_w)[:, None])
        block = in_rows[:, :, None] & in_cols[:, None, :]
        new = (block & ~mask).sum(axis=(1, 2))
        accept = active & fits & (new > 0) & (new <= remaining)
        mask |= block & accept[:, None, None]
        masked += np.where(accept, new, 0)
        failures = np.where(accept, 0, failures + 1)
        active &= (masked < target) & (failures < MAX_FAILURES)
    return torch.from_numpy(mask)


def random_token_masks(counts: Tensor, grid: tuple[int, int], generator: torch.Generator | None = None) -> Tensor:
    """(n, gh, gw) bool CPU masks with exactly ``counts[k]`` tokens chosen uniformly at random in row k (the ranks of
    uniform scores, like the authors' ``np.random.permutation``)."""
    num = counts.shape[0]
    tokens = grid[0] * grid[1]
    scores = F_mix.sample_uniform(0.0, 1.0, num * tokens, generator).numpy().reshape(num, tokens)
    ranks = scores.argsort(axis=1).argsort(axis=1)
    return torch.from_numpy(ranks < counts.long().numpy()[:, None]).view(num, *grid)


def pixel_share(tokens: Tensor, height: int, width: int) -> Tensor:
    """(n,) float64 CPU share of the pixels outside the masked cells (the lambda of sample i), exact for unequal
    cells: every cell weighs its number of pixels."""
    grid_h, grid_w = tokens.shape[1:]
    cell_rows = np.bincount(cell_index(height, grid_h).numpy(), minlength=grid_h)
    cell_cols = np.bincount(cell_index(width, grid_w).numpy(), minlength=grid_w)
    taken = (tokens.numpy() * np.outer(cell_rows, cell_cols)).sum(axis=(1, 2))
    return torch.from_numpy(1.0 - taken / (height * width))


@register_mixer(
    "tokenmix",
    paper="TokenMix: Rethinking Image Mixing for Data Augmentation in Vision Transformers (Liu et al., ECCV 2022)",
    url="https://arxiv.org/abs/2207.08409",
)
class TokenMix(PairMixer):
    """TokenMix.

    Args:
        alpha: Beta(alpha, alpha) concentration of the ratio when ``ratio=None``.
        ratio: the lambda the token count is computed from, ``n = min(N, floor((1 - ratio) * N) + minimum_tokens)``:
            a number (fixed, the authors' 0.5), a (min, max) pair (uniform in that range) or ``None`` (Beta).
        minimum_tokens: tokens added to the count (one row of the 14 x 14 grid in the authors' code).
        mask_type: ``"block"`` (block-wise, BEiT) or ``"random"`` (independent tokens).
        patch_size: side of a token cell in pixels: the ViT's patch size. ``None`` takes it from the ViT a trainer
            trains (an explicit one that differs is refused), or cuts a lone call's images into a 14 x 14 grid.
        min_aspect: smallest aspect ratio of a block (the largest is its inverse).
        mixup_alpha: Beta concentration of the Mixup branch; 0 turns the branch off.
        switch_prob: probability of the TokenMix branch (per batch, or per sample in elem mode).
        mode: ``"batch"`` (one mask for the batch) or ``"elem"`` (one per sample).
        pairing: ``"random"`` or ``"flip"`` (the authors flip the batch).
        inplace: write into the input tensor.
    """

    hooks = ("inputs", "targets")
    requires = ("attention",)

    def __init__(
        self,
        alpha: float = 1.0,
        ratio: float | tuple[float, float] | None = 0.5,
        minimum_tokens: int = 14,
        mask_type: str = "block",
        patch_size: int | None = None,
        min_aspect: float = 0.3,
        mixup_alpha: float = 0.8,
        switch_prob: float = 0.5,
        mode: str = "batch",
        pairing: str = "random",
        inplace: bool = False,
    ):
        super().__init__(alpha, mode, pairing, inplace)
        if ratio is not None and not F_mix.is_real(ratio):
            low, high = F_mix.check_pair(ratio, "ratio")
            if not 0.0 <= low <= high <= 1.0:
                raise ValueError(
                    f"ratio must be a number in [0, 1], a (min, max) pair in [0, 1] or None, got {ratio!r}"
                )
            ratio = (low, high)
        elif ratio is not None:
            ratio = F_mix.check_real(ratio, "ratio", "lie in [0, 1]", lambda r: 0.0 <= r <= 1.0)
        self.ratio = ratio
        if not F_mix.is_int(minimum_tokens) or minimum_tokens < 0:
            raise ValueError(f"minimum_tokens must be an int >= 0, got {minimum_tokens!r}")
        self.minimum_tokens = int(minimum_tokens)
        if not isinstance(mask_type, str) or mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
        self.mask_type = mask_type
        if patch_size is not None and (not F_mix.is_int(patch_size) or patch_size < 1):
            raise ValueError(f"patch_size must be a positive int or None, got {patch_size!r}")
        self.patch_size = None if patch_size is None else int(patch_size)
        self.min_aspect = F_mix.check_real(min_aspect, "min_aspect", "lie in (0, 1]", lambda a: 0.0 < a <= 1.0)
        self.mixup_alpha, self.switch_prob = check_switch(mixup_alpha, switch_prob)

    def extra_repr(self) -> str:
        return super().extra_repr() + (
            f", ratio={self.ratio}, minimum_tokens={self.minimum_tokens}, mask_type={self.mask_type!r}, "
            f"patch_size={self.patch_size}, mixup_alpha={self.mixup_alpha}, switch_prob={self.switch_prob}"
        )

    def token_counts(self, lam: Tensor | None, num: int, tokens: int, generator: torch.Generator | None) -> Tensor:
        """(num,) int64 CPU numbers of partner tokens to paste."""
        if lam is not None:
            return torch.round((1.0 - lam[:num]) * tokens).long()
        if self.ratio is None:
            ratio = F_mix.sample_beta(self.alpha, num, generator)
        elif isinstance(self.ratio, tuple):
            ratio = F_mix.sample_uniform(*self.ratio, num, generator)
        else:
            ratio = torch.full((num,), self.ratio, dtype=torch.float64)
        counts = torch.floor((1.0 - ratio) * tokens).long() + self.minimum_tokens
        return counts.clamp(max=tokens)

    def token_masks(self, counts: Tensor, grid: tuple[int, int], generator: torch.Generator | None) -> Tensor:
        """(n, gh, gw) bool CPU masks, True on the partner's tokens."""
        if self.mask_type == "block":
            return block_token_masks(counts, grid, generator, self.min_aspect)
        return random_token_masks(counts, grid, generator)

    def check_network(self, network: nn.Module) -> None:
        """A ViT whose patches are not ``patch_size`` pixels would see token masks that cut its patches: refused."""
        patch = getattr(getattr(network, "patch_embed", None), "patch_size", None)
        if patch is None:
            return
        sides = tuple(int(side) for side in (patch if isinstance(patch, (tuple, list)) else (patch, patch)))
        if self.patch_size is None and sides[0] == sides[1]:
            self.patch_size = sides[0]  # the ViT's own
        if sides != (self.patch_size, self.patch_size):
            raise ValueError(
                f"TokenMix(patch_size={self.patch_size}) masks {self.patch_size} px tokens, but the backbone's "
                f"patches are {sides[0]} x {sides[1]} px: build it with patch_size={sides[0]}"
            )

    def mix(
        self, x: Tensor, index: Tensor, lam: Tensor | None, generator: torch.Generator | None, **context: Any
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        batch_size, _, height, width = x.shape
        patch_size = self.patch_size or max(1, round(min(height, width) / 14))  # None: the authors' 14 x 14 grid
        if height < 2 * patch_size and width < 2 * patch_size:
            raise ValueError(
                f"TokenMix(patch_size={patch_size}) on {height} x {width} images has a 1 x 1 token grid, where "
                "no block of tokens fits: set patch_size to the ViT's patch size"
            )
        num = 1 if self.mode == "batch" else batch_size
        use_tokens = draw_switch(self.switch_prob, self.mixup_alpha, num, generator)
        blend_lam = mixup_lam(lam, self.mixup_alpha, num, generator)
        if self.mode == "batch" and not bool(use_tokens[0]):
            weight = float(blend_lam[0])
            return F_mix.blend(x, index, weight, self.inplace), blend_lam.expand(batch_size), None
        grid = token_grid(height, width, patch_size)
        tokens = self.token_masks(self.token_counts(lam, num, grid[0] * grid[1], generator), grid, generator)
        token_lam = pixel_share(tokens, height, width)
        device = x.device
        cells = tokens.to(device, non_blocking=True)
        region = (~cells[:, cell_index(height, grid[0], device)][:, :, cell_index(width, grid[1], device)]).float()
        region = region.unsqueeze(1)  # (n, 1, H, W): 1 where sample i keeps its own pixel
        if self.mode == "batch":
            return F_mix.blend(x, index, region, self.inplace), token_lam.expand(batch_size), region
        return blend_branches(x, index, region, token_lam, blend_lam, use_tokens, self.inplace)

    def refine_targets(self, mix: MixOutput, attention: Tensor | None = None, **needs: Any) -> MixOutput:
        """Hook ``targets``: label weights ``(w, 1 - w)``, w the share of the class token's attention on sample i's
        own tokens (the task owner's replacement for the paper's teacher maps). A batch mixed by the Mixup branch
        (no mask) keeps its label."""
        if needs:
            raise ValueError(f"TokenMix.refine_targets got unexpected arguments {sorted(needs)}; it takes attention")
        attention = check_attention(attention, mix, "tokenmix")
        if mix.mask is None:
            return mix
        return mix.with_label_weights(attention_share(mix.mask, attention, mix.lam))
