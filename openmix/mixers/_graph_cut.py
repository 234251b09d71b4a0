"""PuzzleMix's mask labelling: a multi-label graph cut over the block grid (private helpers of the PuzzleMix mixer).

Kim, Choo and Song, "Puzzle Mix: Exploiting Saliency and Local Statistics for Optimal Mixup", ICML 2020.
https://arxiv.org/abs/2009.06962. Authors' code: github.com/snu-mllab/PuzzleMix (commit e2dbf3a), ``mixup.py``:
``graphcut_multi`` lines 132-167, ``neigh_penalty`` lines 170-181, the terms built in ``mixup_graph`` lines 230-292.
OpenMixup's port (Westlake-AI/openmixup, ``openmixup/models/augments/puzzlemix.py``) computes the same terms.

The labels
----------
Each block of an h x w grid gets a label ``k`` in {0, ..., L - 1} (L = ``n_labels``): the block shows the share
``m_k = k / (L - 1)`` of sample 1 (the sample whose mixing ratio is ``lam``) and ``1 - m_k`` of sample 2. The
authors' gco label runs the other way (their mask is ``1 - label / (L - 1)``, mixup.py:163-164); the energy is the
same up to that renaming.

The energy
----------
The mask part of the paper's objective (saliency, label smoothness beta, data smoothness gamma, prior eta), written
as the authors' code builds it; the code lines are the reference here (the paper's equation number could not be
checked against its full text when this was written).

``E(k) = sum_p U[p, k_p] + sum_{(p, q) vertical} Wv[p] V[k_p, k_q] + sum_{(p, q) horizontal} Wh[p] V[k_p, k_q]``

- ``V[k, k'] = (k - k')^2 / (L - 1)^2`` (mixup.py:155-159), the squared difference of the two blocks' shares.
- ``U[p, k] = m_k A1[p] + (1 - m_k) A2[p] + eta / (h w) * pi_k(lam)`` (mixup.py:151-154) where
  ``A1 = s2 + D1`` is the cost of showing sample 1 in block p: the saliency of sample 2 that is lost plus the data
  smoothness reparameterised onto the block, ``A2 = s1 + D2`` likewise for sample 2; ``s1``, ``s2`` are each
  sample's block saliency divided by its sum (mixup.py:239-241).
- ``pi_k(lam) = -log(C(L - 1, k) lam^k (1 - lam)^(L - 1 - k) + 1e-8)``: the block share of sample 1 is a
  Binomial(L - 1, lam) count over L - 1 (mixup.py:138-149 for L = 2, 3, 4; any L here), so its mean is ``lam``.
- Data smoothness: ``P[a, b]`` on an edge is ``beta' gamma`` times the mean absolute difference between the two
  images across the shared boundary (``neigh_penalty``, mixup.py:170-181, and mixup.py:244-258) when the first block
  (top or left) shows sample a and the second shows sample b (0 = sample 1, 1 = sample 2). For 0/1 shares it is
  rewritten exactly (up to a constant) as unaries plus a term on disagreement (mixup.py:260-275): the first block's
  ``D`` for source a gets ``(P[a, 0] + P[a, 1]) / 2``, the second block's for source b gets
  ``(P[0, b] + P[1, b]) / 2`` and the edge keeps ``w = (P[0, 1] + P[1, 0] - P[0, 0] - P[1, 1]) / 2``.
- Edge weights ``W = beta' + w`` (mixup.py:161-162) with ``beta' = beta / (16 h)`` (mixup.py:236, h = block_num).
  They are clamped at 0 here so that every move stays a submodular cut: ``w >= -beta' gamma`` for images in [0, 1],
  so the clamp never acts when gamma <= 1 (the paper uses 0.5).

For L = 2 this is the paper's binary energy up to a constant; for L >= 3 the shares enter linearly in the unaries
and through ``V`` in the pairwise terms, as in the authors' code.

The solver
----------
gco (the ``gco-wrapper`` package, as the authors use) with alpha-beta swap until convergence (``algorithm='swap'``,
``n_iter=-1``; mixup.py:163-164). For L = 2 one swap is one s-t min cut: the exact minimum (all weights >= 0). For
L >= 3 swap reaches a labelling no single alpha-beta swap move can lower, not necessarily the global minimum; the
alpha-expansion moves, which carry the 2c approximation bound, need a metric ``V`` and the squared difference is not
one (gco aborts the whole process on it), so ``algorithm='expansion'`` is accepted only for a metric ``label_cost``.

Integer costs: gco takes int32 terms and aborts on any term above 1e7. Per sample, each site's unaries are shifted
by their minimum (no change to the minimiser) and every cost is multiplied by ``scale = 2**22 / T``, T the largest
single float term (a shifted unary or ``max(W) max(V)``), then rounded. ``V / max(V)`` is stored exactly as integers
over the smallest denominator q <= 2048 that represents it to 1e-6 (q = (L - 1)^2 for PuzzleMix's ``V``), else
rounded over 2048. So each integer term is at most 2**22 + 1024, and the integer energy equals ``scale`` times the
float one up to ``(n_sites + q n_edges) / 2`` units: the labels minimise the float energy to within
``(n_sites + q n_edges) T / 2**23`` (about 7e-6 T on a 3 x 3 grid with L = 3). The solver runs on the CPU; the
labels come back on the input's device.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from openmix._checks import is_int, is_real

PRIOR_EPS = 1e-8  # inside the log of the prior (mixup.py:132, eps)
TERM_LIMIT = 2**22  # the largest float term maps to this integer (gco aborts on terms above 1e7)
MAX_DENOMINATOR = 2048  # label costs are stored over at most this denominator
ALGORITHMS = ("swap", "expansion")


def _load_gco() -> Any:
    """The ``gco`` module. Its import sets ``numpy.int`` and ``numpy.float`` when missing (gco/__init__.py); they
    are removed again once it has loaded, so that importing it leaves numpy as it was."""
    if "gco" in sys.modules:
        return sys.modules["gco"]
    added = [name for name in ("int", "float", "bool") if name not in np.__dict__]
    try:
        import gco
    except ImportError as error:  # pragma: no cover - gco-wrapper is an install requirement
        raise ImportError("PuzzleMix's graph cut needs the gco-wrapper package: pip install gco-wrapper") from error
    finally:
        for name in added:
            np.__dict__.pop(name, None)
    return gco


def _float_tensor(value: Any, name: str, shape: tuple[int, ...] | None = None, ndim: int | None = None) -> Tensor:
    """``value`` if it is a finite floating point tensor of that shape (or number of dimensions), else an error."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got {value.dtype}")
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    if shape is not None and tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must hold finite values only")
    return value


def _real(value: Any, name: str, low: float = 0.0, high: float = math.inf) -> float:
    if not is_real(value):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not low <= float(value) <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return float(value)


def _int(value: Any, name: str, low: int) -> int:
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if int(value) < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def squared_label_cost(n_labels: int, dtype: torch.dtype = torch.float32, device: Any = "cpu") -> Tensor:
    """(L, L) ``V[k, k'] = (k - k')^2 / (L - 1)^2``: PuzzleMix's label smoothness (mixup.py:155-159)."""
    n_labels = _int(n_labels, "n_labels", 2)
    levels = torch.arange(n_labels, dtype=torch.float64) / (n_labels - 1)
    return ((levels.view(-1, 1) - levels.view(1, -1)) ** 2).to(dtype=dtype, device=device)


def neighbour_differences(images1: Tensor, images2: Tensor, grid: int, neigh_size: int = 4) -> tuple[Tensor, Tensor]:
    """Image differences across the block boundaries, for each pair of sources (``neigh_penalty``, mixup.py:170-181).

    ``images1``, ``images2``: (B, C, H, W) in pixel scale (the authors undo the normalisation first, mixup.py:244),
    H and W divisible by ``grid``. The images are average-pooled over ``n x n`` cells, ``n = min(neigh_size, block
    side)`` (mixup.py:232, 244); across each boundary between two blocks, the last pooled row (column) of the first
    block is compared with the first pooled row (column) of the second: absolute difference, mean over channels and
    over the pooled cells along the boundary.

    Returns ``(diff_h, diff_v)`` of shapes (B, 2, 2, grid, grid - 1) and (B, 2, 2, grid - 1, grid): entry
    ``[:, a, b, i, j]`` is for the edge from block (i, j) to its right (below) neighbour, the first block taken from
    source a and the second from source b, 0 = ``images1``, 1 = ``images2`` (the authors' ``pw_y`` and ``pw_x``,
    indexed 1 = input1, 0 = input2, mixup.py:247-255).
    """
    _float_tensor(images1, "images1", ndim=4)
    _float_tensor(images2, "images2", shape=tuple(images1.shape))
    if images2.device != images1.device:
        raise ValueError(f"images2 is on {images2.device} but images1 is on {images1.device}")
    grid = _int(grid, "grid", 1)
    neigh_size = _int(neigh_size, "neigh_size", 1)
    batch, _, height, width = images1.shape
    if height % grid or width % grid:
        raise ValueError(f"grid must divide the image size {height} x {width}, got {grid}")
    block_h, block_w = height // grid, width // grid
    cell = min(neigh_size, block_h, block_w)
    if block_h % cell or block_w % cell:
        raise ValueError(f"neigh_size must divide the block size {block_h} x {block_w}, got {neigh_size}")
    per_h, per_w = block_h // cell, block_w // cell  # pooled cells per block side (k in the authors' code)
    pooled = F.avg_pool2d(torch.stack([images1, images2], dim=1).flatten(0, 1), cell)
    pooled = pooled.view(batch, 2, *pooled.shape[1:])  # (B, source, C, H', W')
    rows, cols = pooled.shape[-2:]

    first = pooled[..., per_h - 1 : rows - 1 : per_h, :]  # last pooled row of blocks 0 .. grid - 2
    second = pooled[..., per_h::per_h, :]  # first pooled row of blocks 1 .. grid - 1
    diff_v = (first[:, :, None] - second[:, None, :]).abs().mean(dim=3)  # (B, 2, 2, grid - 1, W')
    diff_v = diff_v.view(*diff_v.shape[:-1], grid, per_w).mean(dim=-1)

    first = pooled[..., per_w - 1 : cols - 1 : per_w]
    second = pooled[..., per_w::per_w]
    diff_h = (first[:, :, None] - second[:, None, :]).abs().mean(dim=3)  # (B, 2, 2, H', grid - 1)
    diff_h = diff_h.view(batch, 2, 2, grid, per_h, grid - 1).mean(dim=4)
    return diff_h, diff_v


def puzzle_energy_terms(
    saliency1: Tensor,
    saliency2: Tensor,
    lam: Tensor | float,
    diff_h: Tensor,
    diff_v: Tensor,
    *,
    n_labels: int = 3,
    beta: float = 1.2,
    gamma: float = 0.5,
    eta: float = 0.2,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """PuzzleMix's unary and pairwise terms for :func:`puzzle_labels` (the energy in the module docstring).

    ``saliency1``, ``saliency2``: (B, h, h) non-negative block saliency of the two samples (each is divided by its
    own sum); ``lam``: (B,) or a number in [0, 1], the expected share of sample 1; ``diff_h`` (B, 2, 2, h, h - 1)
    and ``diff_v`` (B, 2, 2, h - 1, h): :func:`neighbour_differences`. ``beta``, ``gamma``, ``eta`` as in the paper
    (defaults: the authors' main.py:98-102); they are normalised here as the code does (``beta / (16 h)``,
    ``eta / h^2``). The grid must be square (the authors' ``block_num``).

    Returns ``(unary, label_cost, weight_h, weight_v)``: (B, h, h, L), (L, L), (B, h, h - 1), (B, h - 1, h), on
    ``saliency1``'s device, in its dtype (at least float32). A saliency map that sums to 0 stays 0 (the authors'
    code would divide by zero).
    """
    _float_tensor(saliency1, "saliency1", ndim=3)
    batch, height, width = saliency1.shape
    if height != width:
        raise ValueError(f"saliency1 must be a square block grid (B, h, h), got shape {tuple(saliency1.shape)}")
    _float_tensor(saliency2, "saliency2", shape=tuple(saliency1.shape))
    for name, value in (("saliency1", saliency1), ("saliency2", saliency2)):
        if value.device != saliency1.device:
            raise ValueError(f"{name} is on {value.device} but saliency1 is on {saliency1.device}")
        if bool((value < 0).any()):
            raise ValueError(f"{name} must be non-negative")
    n_labels = _int(n_labels, "n_labels", 2)
    beta = _real(beta, "beta")
    gamma = _real(gamma, "gamma")
    eta = _real(eta, "eta")
    dtype = torch.promote_types(saliency1.dtype, torch.float32)
    device = saliency1.device
    if isinstance(lam, Tensor):
        _float_tensor(lam, "lam", shape=(batch,))
        lam = lam.to(device=device, dtype=torch.float64)
    else:
        lam = torch.full((batch,), _real(lam, "lam", 0.0, 1.0), dtype=torch.float64, device=device)
    if bool(((lam < 0) | (lam > 1)).any()):
        raise ValueError("lam must be in [0, 1]")
    diffs = []
    for name, value, shape in (
        ("diff_h", diff_h, (batch, 2, 2, height, width - 1)),
        ("diff_v", diff_v, (batch, 2, 2, height - 1, width)),
    ):
        _float_tensor(value, name, shape=shape)
        diffs.append(value.to(device=device, dtype=dtype))
    diff_h, diff_v = diffs

    sums = [s.to(dtype).sum(dim=(1, 2), keepdim=True) for s in (saliency1, saliency2)]
    tiny = torch.finfo(dtype).tiny
    s1 = saliency1.to(dtype) / sums[0].clamp_min(tiny)  # mixup.py:240-241; a zero map stays zero
    s2 = saliency2.to(dtype) / sums[1].clamp_min(tiny)

    beta_n = beta / width / 16  # mixup.py:236
    pen_h, pen_v = beta_n * gamma * diff_h, beta_n * gamma * diff_v  # mixup.py:257-258
    cost1, cost2 = s2.clone(), s1.clone()  # showing sample 1 loses sample 2's saliency, and vice versa
    for cost, src in ((cost1, 0), (cost2, 1)):  # mixup.py:264-272
        cost[:, :-1, :] += (pen_v[:, src, 0] + pen_v[:, src, 1]) / 2
        cost[:, 1:, :] += (pen_v[:, 0, src] + pen_v[:, 1, src]) / 2
        cost[:, :, :-1] += (pen_h[:, src, 0] + pen_h[:, src, 1]) / 2
        cost[:, :, 1:] += (pen_h[:, 0, src] + pen_h[:, 1, src]) / 2
    weight_h = beta_n + (pen_h[:, 0, 1] + pen_h[:, 1, 0] - pen_h[:, 0, 0] - pen_h[:, 1, 1]) / 2  # mixup.py:274-275
    weight_v = beta_n + (pen_v[:, 0, 1] + pen_v[:, 1, 0] - pen_v[:, 0, 0] - pen_v[:, 1, 1]) / 2

    steps = n_labels - 1
    counts = torch.arange(n_labels, dtype=torch.float64, device=device)
    binomial = torch.tensor([float(math.comb(steps, k)) for k in range(n_labels)], dtype=torch.float64, device=device)
    lam = lam.view(-1, 1)
    probability = binomial * lam**counts * (1 - lam) ** (steps - counts)
    prior = -torch.log(probability + PRIOR_EPS) * (eta / (height * width))  # (B, L), mixup.py:138-151
    share = (counts / steps).to(dtype)
    unary = share * cost1.unsqueeze(-1) + (1 - share) * cost2.unsqueeze(-1) + prior.to(dtype).view(batch, 1, 1, -1)
    label_cost = squared_label_cost(n_labels, dtype=dtype, device=device)
    return unary, label_cost, weight_h.clamp_min(0), weight_v.clamp_min(0)


def _integer_label_cost(normalised: np.ndarray) -> tuple[np.ndarray, int]:
    """``(round(normalised * q), q)`` for the smallest q <= MAX_DENOMINATOR that is exact to 1e-6 q, else q = max."""
    denominators = np.arange(1, MAX_DENOMINATOR + 1, dtype=np.float64).reshape(-1, 1, 1)
    scaled = normalised[None] * denominators
    error = np.abs(scaled - np.rint(scaled)).max(axis=(1, 2))
    exact = np.nonzero(error <= 1e-6 * denominators.ravel())[0]
    index = int(exact[0]) if exact.size else MAX_DENOMINATOR - 1
    return np.rint(scaled[index]).astype(np.int32), index + 1


def _check_label_cost(cost: np.ndarray, metric: bool, name: str = "label_cost") -> None:
    if not np.array_equal(cost, cost.T):
        raise ValueError(f"{name} must be symmetric")
    if np.any(np.diag(cost) != 0) or np.any(cost < 0):
        raise ValueError(f"{name} must be >= 0 with a zero diagonal")
    if metric:
        through = cost[:, :, None] + cost[None, :, :]  # [a, b, c] = V[a, b] + V[b, c]
        if np.any(cost[:, None, :] > through):
            raise ValueError(f"{name} must be a metric (triangle inequality) for algorithm='expansion'; use 'swap'")


def _grid_edges(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Site indices (row-major) of the ends of the horizontal edges, then the vertical ones."""
    sites = np.arange(height * width, dtype=np.int32).reshape(height, width)
    first = np.concatenate([sites[:, :-1].ravel(), sites[:-1, :].ravel()])
    second = np.concatenate([sites[:, 1:].ravel(), sites[1:, :].ravel()])
    return first, second


def puzzle_labels(
    unary: Tensor,
    label_cost: Tensor,
    weight_h: Tensor,
    weight_v: Tensor,
    *,
    algorithm: str = "swap",
    n_iter: int = -1,
) -> Tensor:
    """(B, h, w) int64 labels minimising ``E`` of the module docstring for each sample, by gco graph cuts.

    ``unary``: (B, h, w, L) float; ``label_cost``: (L, L) float ``V``, symmetric, >= 0, zero diagonal (a metric for
    ``algorithm='expansion'``); ``weight_h``: (B, h, w - 1) float, the edge from (i, j) to (i, j + 1); ``weight_v``:
    (B, h - 1, w), from (i, j) to (i + 1, j); both >= 0. ``n_iter``: -1 runs the moves until no move lowers the
    energy (the authors' setting), else that many cycles over the labels. Exact for L = 2; for L >= 3 a local
    minimum under alpha-beta swaps (module docstring). Integer scaling: module docstring.
    """
    _float_tensor(unary, "unary", ndim=4)
    batch, height, width, n_labels = unary.shape
    if n_labels < 2:
        raise ValueError(f"unary must have at least 2 labels (last dimension), got shape {tuple(unary.shape)}")
    if height < 1 or width < 1:
        raise ValueError(f"unary must have a non-empty block grid, got shape {tuple(unary.shape)}")
    _float_tensor(label_cost, "label_cost", shape=(n_labels, n_labels))
    _float_tensor(weight_h, "weight_h", shape=(batch, height, width - 1))
    _float_tensor(weight_v, "weight_v", shape=(batch, height - 1, width))
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    n_iter = _int(n_iter, "n_iter", -1)
    if n_iter == 0:
        raise ValueError("n_iter must be -1 (until convergence) or >= 1, got 0")

    cost = label_cost.detach().to("cpu", torch.float64).numpy()
    _check_label_cost(cost, metric=algorithm == "expansion")
    if batch == 0:
        return torch.empty(0, height, width, dtype=torch.int64, device=unary.device)
    edges_h = weight_h.detach().to("cpu", torch.float64).numpy().reshape(batch, -1)
    edges_v = weight_v.detach().to("cpu", torch.float64).numpy().reshape(batch, -1)
    for name, edges in (("weight_h", edges_h), ("weight_v", edges_v)):
        if np.any(edges < 0):
            raise ValueError(f"{name} must be >= 0 (negative weights make the cut non-submodular)")
    weights = np.concatenate([edges_h, edges_v], axis=1)  # (B, E), in _grid_edges' order
    costs = unary.detach().to("cpu", torch.float64).numpy().reshape(batch, height * width, n_labels)
    cost_max = float(cost.max())
    cost_int, denominator = np.zeros_like(cost, dtype=np.int32), 1
    if cost_max > 0:
        cost_int, denominator = _integer_label_cost(cost / cost_max)
        _check_label_cost(cost_int, metric=algorithm == "expansion", name="label_cost (as integers)")
    first, second = _grid_edges(height, width)

    labels = np.empty((batch, height * width), dtype=np.int64)
    for index in range(batch):
        shifted = costs[index] - costs[index].min(axis=1, keepdims=True)
        pairwise = weights[index] * cost_max  # the largest pairwise term of each edge
        largest = max(float(shifted.max()), float(pairwise.max(initial=0.0)))
        if largest == 0.0 or not np.any(pairwise > 0):
            labels[index] = shifted.argmin(axis=1)
            continue
        scale = TERM_LIMIT / largest
        data_int = np.rint(shifted * scale).astype(np.int32)
        weight_int = np.rint(pairwise / denominator * scale).astype(np.int32)
        if not np.any(weight_int):
            labels[index] = data_int.argmin(axis=1)
            continue
        labels[index] = _cut(data_int, cost_int, first, second, weight_int, algorithm, n_iter)
    return torch.from_numpy(labels.reshape(batch, height, width)).to(unary.device)


def _cut(
    data: np.ndarray,
    cost: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    weights: np.ndarray,
    algorithm: str,
    n_iter: int,
) -> np.ndarray:
    """gco on one sample's int32 terms (what ``gco.cut_grid_graph`` does, with the graph freed on any error)."""
    gco = _load_gco()
    # gco reads the raw buffers: every array must be C-contiguous int32 (a transposed view would be misread)
    data, cost, first, second, weights = (
        np.ascontiguousarray(array, dtype=np.int32) for array in (data, cost, first, second, weights)
    )
    graph = gco.GCO()
    graph.create_general_graph(data.shape[0], data.shape[1], False)
    try:
        graph.set_data_cost(data)
        graph.set_all_neighbors(first, second, weights)
        graph.set_smooth_cost(cost)
        if algorithm == "swap":
            graph.swap(n_iter)
        else:
            graph.expansion(n_iter)
        return graph.get_labels().astype(np.int64)
    finally:
        graph.destroy_graph()
