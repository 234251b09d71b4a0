"""Co-Mixup's batch labelling: which input each block of each mixed output shows (private helpers of the mixer).

Kim, Choo, Jeong and Song, "Co-Mixup: Saliency Guided Joint Mixup with Supermodular Diversity", ICLR 2021
(arXiv:2102.03065). Authors' code: github.com/snu-mllab/Co-Mixup at commit 2a7681601ee972892435ae080494a4f0907e595a
(CIFAR / Tiny-ImageNet: ``main.py``, ``mixup.py``, ``match.py``, ``utils.py``; ImageNet:
``comix-imagenet/lib/utils.py``, ``comix-imagenet/main_fast_ddp.py``). The code is the operational definition here
and every formula below cites it by file and line; the paper's notation is mapped onto it where it helps.

The problem (one partition of m inputs, m' = m outputs, an h x w block grid of n = h w blocks)
------------------------------------------------------------------------------------------------
Each block k of output j shows one input, or an equal blend of two (the "mixed labels", below): ``z[j, k]`` in R^m
is that block's share of each input (entries 0, 1/2 or 1, summing to 1), ``c_j = sum_k z[j, k]`` the number of
blocks of each input in output j. The batch minimises (match.py:21-32, with the compatibility ``A`` and the label
cost ``V`` of the graph cut, see "Differences" below)::

    F(z) = sum_j sum_k <u_k, z[j, k]>  +  beta' sum_j sum_{(k, k') 4-neighbours} V(z[j, k], z[j, k'])
           + gamma' sum_{j != j'} c_j^T A c_j'

- ``u[i, k] = -s[i, k] - eta' log(alpha_i + 1e-8)``: ``s[i]`` input i's saliency averaged over each block and
  divided by its sum over the blocks (mixup.py:24, 36-37), so showing input i at block k of an output gains its
  saliency there (the block stays in place: no transport); ``alpha ~ Dirichlet(mixup_alpha 1_m)``, one draw per
  partition, is the prior that favours some inputs over others in this batch (match.py:200-203).
- ``V``: 0 between equal labels, 1/4 between an input and a blend containing it, 1 otherwise (match.py:100-109).
- ``A = (1 - omega) I + omega D m / sum(D)``, ``D[i, i']`` the L1 distance between the most salient locations of
  inputs i and i' (main.py:301-310, utils.py:131-147, mixup.py:39-41): the compatibility-weighted overlap of input
  usage between outputs, the supermodular diversity term.
- The code's normalisation (match.py:192-196): ``beta' = beta / n``, ``gamma' = gamma / n``, ``eta' = eta / n``,
  ``tau' = thres n``.

The solver: modular approximation, one output at a time (match.py:178-256)
-------------------------------------------------------------------------
Random initial labels (match.py:16-18, 206-214). Each outer iteration visits the outputs in order; for output j the
others are fixed and the diversity term becomes modular in ``z[j]``: the other outputs' usage ``p = sum_{j' != j}
c_j'`` gives each input the cost per block (match.py:222-233)::

    hard: 2 gamma' [A p > tau'] (A p)        soft: 2 gamma' [A p > tau'] (A p - tau')

(``tau'`` the threshold: an input is penalised only once the other outputs use more than ``thres`` of an image's
worth of it). Output j is then relabelled by a multi-label graph cut (gco alpha-beta swap from label 0, as the
authors) of the per-output energy (:func:`output_energy`)::

    E_j(l) = sum_k U[k, l_k] + beta' sum_{(k, k')} V[l_k, l_k']

over the labels ``l`` = the m inputs, plus, from the second outer iteration on (match.py:118-175), the blends of the
inputs output j currently uses: one blend when it uses two, the three pairs of its three most used inputs when it
uses three or more (ties: the lower input index first). A blend's unary is the mean of its two inputs' unaries minus
``5e-4`` (match.py:127, 151). After the outer iteration ``n_iter - 2``, ``set_resolve`` finds pairs of outputs that
use the same set of inputs and adds ``gamma'`` per block to the first of those inputs in one and the second in the
other, for the remaining iterations (match.py:74-92, 235-249). The loop stops early once ``F`` changes by less
than 1e-6 of itself over an outer iteration (match.py:251-254).

What is guaranteed: without the threshold (``thres = 0``) the diversity term is exactly quadratic and its
restriction to one output is exactly the modular term above, so a step that minimises ``E_j`` exactly cannot
increase ``F``. Alpha-beta swap is exact when an output has two labels (one s-t min cut); with more it returns a
swap-local minimum of ``E_j`` (gco starts from label 0, not from the output's current labels), so ``F`` may rise on
a step. With the threshold, the modular term is the code's heuristic linearisation and ``F`` is only monitored.

Differences from the code (kept small; each noted where it is made)
-------------------------------------------------------------------
- ``F`` uses ``A`` and the graph cut's ``V`` (the code's ``obj_fn`` uses ``A = I`` and half the squared difference
  of the blended shares, match.py:28-30; they differ only on blends). ``F`` only decides the early stop.
- The hard threshold is ``[A p > tau'] (A p)`` per input, the form of the code's own soft variant (match.py:229-231);
  the code's hard expression (match.py:225-227) parses as ``([A p > tau'] * A) @ p``, which thresholds the columns
  of ``A`` instead (``threshold_columns=True`` restores it). The two agree for ``A = I``; with ``omega = 0.001``
  every input below the threshold still pays about ``omega`` times the others' usage, which changes individual
  labels but not the statistics of the outputs.
- A zero distance matrix (every input's most salient location the same, or a single input) gives ``A = (1 - omega)
  I`` where the code divides 0 by 0; a saliency map that sums to 0 stays 0 (the code divides by zero).
- Any image size: the grid has ``min(block_num, H)`` x ``min(block_num, W)`` blocks; pixel row ``r`` belongs to
  block row ``(r * h) // H`` (the nearest-neighbour upsampling of the code's masks, match.py:57-59, which only
  builds square images whose side ``block_num`` divides), and block saliency is the mean over those pixels.

Integer costs: gco takes int32 terms and aborts above 1e7 (``_graph_cut`` docstring). Per output, each block's
unaries are shifted by their minimum (no change to the minimiser) and every term is multiplied by ``2**22 / T``,
T the largest single term, then rounded; ``V`` is stored exactly in quarters (0, 1, 4), so the labels minimise
``E_j`` to within ``(n + 4 * edges) T / 2**23`` (the authors pass floats, which gco-wrapper truncates at 1e-5).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from openmix._checks import is_int, is_real
from openmix.mixers._graph_cut import TERM_LIMIT, _cut, _grid_edges, _int

PRIOR_EPS = 1e-8  # inside the log of the prior (match.py:203)
BLEND_BONUS = 5e-4  # a blend's unary is its inputs' mean minus this (match.py:127, 151)
QUARTERS = 4  # V is stored in quarters: 0 equal, 1 an input and a blend containing it (0.25), 4 otherwise (1.0)
THRES_TYPES = ("hard", "soft")  # main.py:97-101
STOP_TOLERANCE = 1e-6  # relative change of F that ends the outer loop (match.py:252)


# --------------------------------------------------------------------------------------------------- checks
def _real(value: Any, name: str, low: float = 0.0, high: float = math.inf, low_open: bool = False) -> float:
    if not is_real(value):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not (low < value if low_open else low <= value) or not value <= high or not math.isfinite(value):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be finite and in {bracket}{low}, {high}], got {value}")
    return value


def _array(value: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """``value`` (an array or a tensor) as a finite float64 NumPy array of that shape, else an error naming it."""
    if isinstance(value, Tensor):
        value = value.detach().to("cpu", torch.float64).numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array or a torch.Tensor, got {type(value).__name__}")
    if value.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
    value = value.astype(np.float64)
    if not np.isfinite(value).all():
        raise ValueError(f"{name} must hold finite values only")
    return value


def _labels(value: Any, name: str, shape: tuple[int, ...], n_inputs: int) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer NumPy array or tensor, got {type(value).__name__}")
    if value.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
    if value.size and (value.min() < 0 or value.max() >= n_inputs):
        raise ValueError(f"{name} must hold input indices in [0, {n_inputs}), got [{value.min()}, {value.max()}]")
    return value.astype(np.int64)


def check_grid(grid: Any) -> tuple[int, int]:
    """``grid`` as an (h, w) pair of ints >= 1, else an error naming it."""
    if isinstance(grid, (tuple, list)) and len(grid) == 2 and all(is_int(side) for side in grid):
        if min(grid) >= 1:
            return int(grid[0]), int(grid[1])
        raise ValueError(f"grid must have h >= 1 and w >= 1 blocks, got {tuple(grid)}")
    raise TypeError(f"grid must be an (h, w) pair of ints, got {type(grid).__name__} {grid!r}")


# ------------------------------------------------------------------------------- on the input's device, batched
def block_index(size: int, blocks: int, device: torch.device | str | None = None) -> Tensor:
    """(size,) int64: the block of each pixel row (or column), ``(r * blocks) // size``, so block sizes differ by at
    most one pixel and equal ``size // blocks`` when ``blocks`` divides ``size`` (then this is the code's nearest
    upsampling of the block masks, match.py:57-59)."""
    size, blocks = _int(size, "size", 1), _int(blocks, "blocks", 1)
    if blocks > size:
        raise ValueError(f"blocks must be <= size ({size}), got {blocks}")
    return torch.arange(size, device=device) * blocks // size


def block_saliency(saliency: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, h, w) float32: each sample's saliency averaged over the pixels of each block (:func:`block_index`), then
    divided by its sum over the blocks (mixup.py:24, 36-37: ``avg_pool2d`` by the block side, then ``sc /
    sc.sum()``). ``saliency``: (B, H, W) floating point, non-negative, H >= h and W >= w. A map that sums to 0 stays
    0. Computed as two products with 0/1 block matrices (deterministic on every device)."""
    if not isinstance(saliency, Tensor) or not saliency.is_floating_point() or saliency.dim() != 3:
        raise ValueError("saliency must be a (B, H, W) floating point tensor")
    height, width = saliency.shape[1:]
    grid_h, grid_w = check_grid(grid)
    rows = F.one_hot(block_index(height, grid_h, saliency.device), grid_h).to(torch.float32)  # (H, h)
    cols = F.one_hot(block_index(width, grid_w, saliency.device), grid_w).to(torch.float32)  # (W, w)
    sums = rows.T @ saliency.to(torch.float32) @ cols  # (B, h, w)
    means = sums / (rows.sum(0)[:, None] * cols.sum(0)[None, :])
    total = means.sum(dim=(1, 2), keepdim=True)
    return means / total.clamp_min(torch.finfo(torch.float32).tiny)


def salient_positions(saliency: Tensor, kernel: int = 8, stride: int = 1) -> Tensor:
    """(B, 2) float32 (row, column) of each sample's most salient location: the argmax (first one) of the saliency
    average-pooled over ``kernel x kernel`` windows with ``stride`` (main.py:304-309: kernel 8, stride 1; the ImageNet
    code pools with stride 8, main_fast_ddp.py:300). The kernel is cut to the image's sides when they are smaller."""
    if not isinstance(saliency, Tensor) or not saliency.is_floating_point() or saliency.dim() != 3:
        raise ValueError("saliency must be a (B, H, W) floating point tensor")
    kernel = min(_int(kernel, "kernel", 1), *saliency.shape[1:])
    pooled = F.avg_pool2d(saliency.to(torch.float32).unsqueeze(1), kernel, _int(stride, "stride", 1))
    columns = pooled.shape[-1]
    flat = pooled.flatten(1).argmax(dim=1)
    return torch.stack([flat // columns, flat % columns], dim=1).to(torch.float32)


def compatibility(positions: Tensor, omega: float) -> Tensor:
    """(m, m) float64 ``A = (1 - omega) I + omega D m / sum(D)``, ``D`` the L1 distances between the (m, 2)
    ``positions`` (:func:`salient_positions` of one partition; utils.py:131-147 with main.py:310, mixup.py:39-41).
    A zero ``D`` gives ``A = (1 - omega) I`` (the code would divide 0 by 0)."""
    if not isinstance(positions, Tensor) or positions.dim() != 2 or positions.shape[1] != 2:
        raise ValueError("positions must be an (m, 2) tensor")
    omega = _real(omega, "omega", 0.0, 1.0)
    positions = positions.to(torch.float64)
    count = positions.shape[0]
    distance = (positions[:, None, :] - positions[None, :, :]).abs().sum(dim=-1)
    total = distance.sum()
    scaled = torch.where(total > 0, distance * count / total.clamp_min(1e-300), torch.zeros_like(distance))
    eye = torch.eye(count, dtype=torch.float64, device=positions.device)
    return (1.0 - omega) * eye + omega * scaled


# -------------------------------------------------------------------------------------- on the CPU (with gco)
def prior_cost(rng: np.random.Generator, n_inputs: int, alpha: float, eta: float, n_blocks: int) -> np.ndarray:
    """(m,) float64 cost per block of showing each input: ``-eta / n * log(a_i + 1e-8)`` with one draw ``a ~
    Dirichlet(alpha 1_m)`` from ``rng`` (match.py:194-203; the ImageNet code draws from Dirichlet(1_m) whatever
    its ``alpha``, comix-imagenet/lib/utils.py:265)."""
    alpha = _real(alpha, "alpha", 0.0, low_open=True)
    eta = _real(eta, "eta")
    draw = rng.dirichlet(np.full(_int(n_inputs, "n_inputs", 1), alpha))
    return -(eta / _int(n_blocks, "n_blocks", 1)) * np.log(draw + PRIOR_EPS)


def usage(lo: np.ndarray, hi: np.ndarray, n_inputs: int) -> np.ndarray:
    """(..., m) float64 blocks of each input in each output: a block labelled (a, b) counts 1/2 for a and 1/2 for b
    (a == b: one input, 1). ``lo``, ``hi``: (..., n) int64 labels."""
    eye = np.eye(n_inputs)
    return 0.5 * (eye[lo] + eye[hi]).sum(axis=-2)


def block_shares(lo: np.ndarray, hi: np.ndarray, n_inputs: int) -> np.ndarray:
    """(..., n, m) float32 ``z``: each block's share of each input (0, 1/2 or 1), from the labels (lo, hi)."""
    eye = np.eye(n_inputs, dtype=np.float32)
    return 0.5 * (eye[lo] + eye[hi])


def label_pairs(count: np.ndarray, blends: bool) -> np.ndarray:
    """(L, 2) int64 labels of one output's graph cut: (i, i) for each of the m inputs, then, with ``blends``, the
    blends of the inputs it uses now (``count``: (m,) its blocks of each input): (a, b) when it uses exactly two,
    (a, b), (a, c), (b, c) for its three most used ones a < b < c when it uses more (ties: lower index first)
    (match.py:118-175; its ``torch.topk`` leaves ties unspecified)."""
    n_inputs = count.shape[0]
    labels = [np.repeat(np.arange(n_inputs), 2).reshape(-1, 2)]
    if blends:
        used = np.flatnonzero(count > 0)
        if used.size >= 3:
            used = np.sort(np.argsort(-count, kind="stable")[:3])
            labels.append(used[[[0, 1], [0, 2], [1, 2]]])
        elif used.size == 2:
            labels.append(used.reshape(1, 2))
    return np.concatenate(labels).astype(np.int64)


def pair_smoothness(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``V`` in quarters between labels given as (..., 2) pairs: 0 when equal, 1 between an input and a blend that
    contains it, 4 otherwise (match.py:100-109: ``1 - I``, with 0.25 between a blend and its own two inputs)."""
    same = (first == second).all(-1) | (first[..., ::-1] == second).all(-1)
    first_hard, second_hard = first[..., 0] == first[..., 1], second[..., 0] == second[..., 1]
    first_in_second = (first[..., 0:1] == second).any(-1)
    second_in_first = (second[..., 0:1] == first).any(-1)
    contained = (first_hard & ~second_hard & first_in_second) | (second_hard & ~first_hard & second_in_first)
    return np.where(same, 0, np.where(contained, 1, QUARTERS)).astype(np.int32)


def label_unary(unary: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(n, L) float64: the cost of each label at each block, from the (n, m) per-input ``unary``: a blend (a, b)
    costs the mean of a's and b's minus ``5e-4`` (match.py:127, 151)."""
    cost = 0.5 * (unary[:, labels[:, 0]] + unary[:, labels[:, 1]])
    return cost - BLEND_BONUS * (labels[:, 0] != labels[:, 1])


def output_energy(
    unary: np.ndarray, labels: np.ndarray, assignment: np.ndarray, grid: tuple[int, int], beta: float
) -> np.ndarray:
    """``E_j`` of (..., n) label ``assignment`` (indices into the (L, 2) ``labels``), given the (n, m) per-input
    ``unary`` of this output (saliency, prior and the modular diversity cost): the sum over blocks of
    :func:`label_unary` plus ``beta / n`` times ``V`` over the 4-neighbour edges of the row-major (h, w) grid. This
    is what one graph-cut step minimises (match.py:95-115, 236-242)."""
    grid_h, grid_w = check_grid(grid)
    n_blocks = grid_h * grid_w
    costs = label_unary(unary, labels)  # (n, L)
    data = np.take_along_axis(np.broadcast_to(costs, assignment.shape + costs.shape[-1:]), assignment[..., None], -1)
    first, second = _grid_edges(grid_h, grid_w)
    smooth = pair_smoothness(labels[assignment[..., first]], labels[assignment[..., second]]) / QUARTERS
    return data[..., 0].sum(-1) + beta / n_blocks * smooth.sum(-1)


def diversity_cost(
    compat: np.ndarray,
    others: np.ndarray,
    gamma: float,
    thres: float,
    thres_type: str,
    n_blocks: int,
    columns: bool = False,
) -> np.ndarray:
    """(m,) float64 modular cost per block of each input for one output, from ``others`` (m,), the other outputs'
    blocks of each input: with ``q = A others``, ``2 gamma / n [q > thres n] q`` (``"hard"``) or ``2 gamma / n
    [q > thres n] (q - thres n)`` (``"soft"``) (match.py:224-233). ``columns`` (hard only) reproduces the code's
    expression ``((q > tau') * A) @ others`` (match.py:225-227), which thresholds the columns of ``A``: input i
    then pays ``sum_c A[i, c] [q_c > tau'] others_c``."""
    scale, limit = 2.0 * gamma / n_blocks, thres * n_blocks
    weighted = compat @ others
    over = weighted > limit
    if thres_type == "hard":
        if columns:
            return scale * (compat @ np.where(over, others, 0.0))
        return scale * np.where(over, weighted, 0.0)
    if thres_type == "soft":
        return scale * np.where(over, weighted - limit, 0.0)
    raise ValueError(f"thres_type must be one of {THRES_TYPES}, got {thres_type!r}")


def resolve_costs(counts: np.ndarray) -> np.ndarray:
    """(m', m) 0/1: for each pair of outputs i1 < i2 that use the same set of inputs (two or more), 1 on the first
    of those inputs for i1 and on the second for i2 (match.py:74-92); ``counts``: (m', m) blocks of each input."""
    used = counts > 0
    costs = np.zeros(counts.shape, dtype=np.float64)
    for first, second in zip(*np.nonzero(np.triu((used[:, None, :] == used[None, :, :]).all(-1), k=1))):
        inputs = np.flatnonzero(used[first])
        if inputs.size > 1:
            costs[first, inputs[0]] = 1.0
            costs[second, inputs[1]] = 1.0
    return costs


def cut_output(unary: np.ndarray, labels: np.ndarray, grid: tuple[int, int], beta: float) -> np.ndarray:
    """(n,) int64 label indices (into ``labels``) minimising :func:`output_energy` by gco's alpha-beta swap from
    label 0, run to convergence (match.py:95-115; exact for two labels, a swap-local minimum otherwise). Integer
    scaling: module docstring."""
    grid_h, grid_w = check_grid(grid)
    n_blocks = grid_h * grid_w
    costs = label_unary(unary, labels)
    shifted = costs - costs.min(axis=1, keepdims=True)
    smooth = pair_smoothness(labels[:, None, :], labels[None, :, :])
    pair_largest = beta / n_blocks  # beta' times the largest V (1)
    largest = max(float(shifted.max()), pair_largest)
    first, second = _grid_edges(grid_h, grid_w)
    if labels.shape[0] == 1 or first.size == 0 or beta == 0.0 or largest == 0.0:
        return shifted.argmin(axis=1)
    scale = TERM_LIMIT / largest
    # C order: gco reads the raw buffers row-major, whatever the strides (a transposed unary would be misread)
    data = np.ascontiguousarray(np.rint(shifted * scale), dtype=np.int32)
    weight = int(np.rint(pair_largest * scale / QUARTERS))
    if weight == 0:
        return data.argmin(axis=1)
    weights = np.full(first.shape, weight, dtype=np.int32)
    return _cut(data, np.ascontiguousarray(smooth), first, second, weights, "swap", -1).astype(np.int64)


def batch_objective(
    cost: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    grid: tuple[int, int],
    compat: np.ndarray,
    beta: float,
    gamma: float,
) -> float:
    """``F`` of the module docstring for the labels (lo, hi) (m', n): per-input block costs ``cost`` (m, n) (minus
    saliency plus prior), smoothness ``beta / n`` with the graph cut's ``V``, diversity ``gamma / n sum_{j != j'}
    c_j^T A c_j'`` (match.py:21-32 with ``A`` and ``V``; no threshold, as the code's ``obj_fn``)."""
    grid_h, grid_w = check_grid(grid)
    n_inputs, n_blocks = cost.shape
    blocks = np.arange(n_blocks)
    unary = 0.5 * (cost[lo, blocks] + cost[hi, blocks]).sum()
    first, second = _grid_edges(grid_h, grid_w)
    pairs = np.stack([lo, hi], axis=-1)
    smooth = pair_smoothness(pairs[:, first], pairs[:, second]).sum() / QUARTERS
    counts = usage(lo, hi, n_inputs)
    total = counts.sum(axis=0)
    overlap = total @ compat @ total - np.einsum("ji,ik,jk->", counts, compat, counts)
    return float(unary + beta / n_blocks * smooth + gamma / n_blocks * overlap)


def solve_partition(
    cost: Any,
    compat: Any,
    grid: tuple[int, int],
    *,
    beta: float = 0.32,
    gamma: float = 1.0,
    thres: float = 0.83,
    thres_type: str = "hard",
    n_iter: int = 4,
    set_resolve: bool = True,
    blends: bool = True,
    threshold_columns: bool = False,
    rng: np.random.Generator | None = None,
    init: Any = None,
    history: list[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Label the m outputs of one partition of m inputs: the modular-approximation loop of the module docstring
    (``get_onehot_matrix``, match.py:178-256).

    Args:
        cost: (m, n) per-input block costs ``-s + prior`` (n = h w blocks, row-major).
        compat: (m, m) symmetric compatibility ``A`` (:func:`compatibility`).
        grid: (h, w), h w = n.
        beta, gamma, thres, thres_type: as the code's ``m_beta``, ``m_gamma``, ``m_thres``, ``m_thres_type``
            (normalised here: ``beta / n``, ``gamma / n``, ``thres n``; match.py:193-195).
        n_iter: outer iterations (``m_niter``); ``set_resolve``: the code's post-processing of identical outputs;
            ``blends``: the blended labels from the second iteration on; ``threshold_columns``: the code's reading
            of the hard threshold (:func:`diversity_cost`).
        rng: draws the initial labels uniformly (match.py:16-18) when ``init`` (m, n) int labels is not given.
        history: when a list, ``F`` after the initial labels and after each outer iteration is appended to it.

    Returns:
        ``(lo, hi)``, each (m, n) int64: block k of output j shows inputs ``lo[j, k]`` and ``hi[j, k]`` half each
        (one input when they are equal).
    """
    grid = check_grid(grid)
    n_blocks = grid[0] * grid[1]
    if not isinstance(cost, (np.ndarray, Tensor)) or cost.ndim != 2 or cost.shape[1] != n_blocks:
        raise ValueError(f"cost must be an (m, {n_blocks}) array for grid {grid}, got {getattr(cost, 'shape', cost)}")
    n_inputs = cost.shape[0]
    cost = _array(cost, "cost", (n_inputs, n_blocks))
    compat = _array(compat, "compat", (n_inputs, n_inputs))
    if not np.allclose(compat, compat.T, rtol=0, atol=1e-12):
        raise ValueError("compat must be symmetric")
    beta, gamma, thres = _real(beta, "beta"), _real(gamma, "gamma"), _real(thres, "thres")
    if thres_type not in THRES_TYPES:
        raise ValueError(f"thres_type must be one of {THRES_TYPES}, got {thres_type!r}")
    n_iter = _int(n_iter, "n_iter", 1)
    if init is None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator when init is None, got {type(rng).__name__}")
        init = rng.integers(0, n_inputs, size=(n_inputs, n_blocks))
    lo = _labels(init, "init", (n_inputs, n_blocks), n_inputs).copy()
    hi = lo.copy()
    if n_inputs == 1:
        return lo, hi

    counts = usage(lo, hi, n_inputs)
    total = counts.sum(axis=0)
    unary_base = cost.T  # (n, m)
    previous = batch_objective(cost, lo, hi, grid, compat, beta, gamma)
    if history is not None:
        history.append(previous)
    resolve = None
    for step in range(n_iter):
        for output in range(n_inputs):
            others = total - counts[output]
            unary = unary_base + diversity_cost(compat, others, gamma, thres, thres_type, n_blocks, threshold_columns)
            if resolve is not None:
                unary = unary + gamma / n_blocks * resolve[output]  # match.py:235-237
            labels = label_pairs(counts[output], blends and step > 0)  # no blends in the first iteration
            chosen = labels[cut_output(unary, labels, grid, beta)]
            lo[output], hi[output] = chosen[:, 0], chosen[:, 1]
            counts[output] = usage(lo[output], hi[output], n_inputs)
            total = others + counts[output]
        if set_resolve and step == n_iter - 2:  # match.py:246-249
            resolve = resolve_costs(counts)
        current = batch_objective(cost, lo, hi, grid, compat, beta, gamma)
        if history is not None:
            history.append(current)
        if abs(previous - current) < STOP_TOLERANCE * abs(current):  # match.py:251-254
            break
        previous = current
    return lo, hi
