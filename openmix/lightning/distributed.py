"""Mixing under data parallelism: each rank mixes its own batch, or partners are drawn from every rank's batch.

With ``scope="global"`` every rank gathers all ranks' batches (``all_gather``, no gradients: these are inputs),
runs the mixer on the concatenated global batch with a generator seeded identically on every rank, and keeps its
own slice. ``out.index`` then refers to the global batch (rank-major concatenation), and the pixel/label invariant
holds against it: ``out.x[i] == m_i * x[i] + (1 - m_i) * x_global[out.index[i]]``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from openmix.mixers import MixOutput

PAIRING_SCOPES = ("local", "global")


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_batches(tensor: Tensor) -> tuple[Tensor, list[int]]:
    """Concatenate every rank's ``tensor`` along dim 0 (sizes may differ); return it with the per-rank sizes."""
    world, _ = _world()
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(gathered, sizes)]), sizes


def _per_sample(value: Any, batch_size: int) -> bool:
    return isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch_size


def mix_across_ranks(
    mixer: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator, scope: str = "local", **context: Any
) -> MixOutput:
    """Call ``mixer`` on this rank's batch (``local``) or pair samples across all ranks (``global``).

    For ``global`` the generator must be seeded identically on every rank, so all ranks draw the same partners,
    lambdas and boxes for the global batch. Per-sample needs in ``context`` (tensors whose first dimension is the
    batch: saliency, class activation maps) are gathered with the batch, so that a mixer sees the needs of every
    sample it mixes; other values (a network) are passed as they are.
    """
    world, rank = _world()
    if scope == "local" or world == 1:
        return mixer(x, y, generator=generator, **context)
    if scope != "global":
        raise ValueError(f"scope must be one of {PAIRING_SCOPES}, got {scope!r}")
    x_all, sizes = gather_batches(x.detach())
    y_all, _ = gather_batches(y)
    context = {
        name: gather_batches(value.detach())[0] if _per_sample(value, x.shape[0]) else value
        for name, value in context.items()
    }
    out = mixer(x_all, y_all, generator=generator, **context)
    start = sum(sizes[:rank])
    mine = slice(start, start + x.shape[0])
    mask = out.mask if out.mask is None or out.mask.shape[0] == 1 else out.mask[mine]
    if out.indices is not None:
        raise ValueError(f"{type(mixer).__name__} mixes k > 2 sources, which pairing_scope 'global' does not support")
    label_weights = None if out.label_weights is None else out.label_weights[mine]
    return MixOutput(out.x[mine], out.index[mine], out.lam[mine], out.y_a[mine], out.y_b[mine], mask, label_weights)
