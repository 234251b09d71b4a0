"""Pure functions shared by the mixers: lambda sampling, pairing, boxes, masks and the blending kernels.

Conventions:
- Random draws take an optional ``torch.Generator``; small draws (lambdas, boxes, permutations) are made on the
  generator's device and kept on the CPU, where boxes become Python ints for slicing. The global NumPy RNG is never
  used: Beta draws come from a NumPy ``Generator`` seeded from the torch RNG, so ``torch.manual_seed`` or an
  explicit generator makes every call reproducible.
- A box is a row ``[top, bottom, left, right]`` of int64 pixel coordinates, half-open (``x[..., top:bottom,
  left:right]``). A batch-mode call uses one box, (1, 4); an elem-mode call one per sample, (B, 4).
- A mask is the per-pixel weight of sample i itself: 1 keeps its pixel, 0 takes the partner's.
- No host synchronisation: the host never waits for a device. Host draws are read through NumPy
  (:func:`host_values`), tensors made from them are :func:`host_tensor` s, and they reach the batch's device only
  through :func:`to_device` (pinned memory and a non-blocking copy on CUDA). Values of the batch (labels, images,
  saliency) are never read back to the host on a training path (docs/decisions.md, "Host synchronisation").
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor

from openmix._checks import check_bool, is_int, is_real  # noqa: F401 (part of this module's checks)

PAIRINGS = ("random", "flip")


# ------------------------------------------------------------------------------------------- argument checks
def check_real(value: Any, name: str, condition: str, accept: Callable[[float], bool]) -> float:
    """``value`` as a float: a ``TypeError`` naming ``name`` when it is not a real number (bools are refused), a
    ``ValueError`` saying ``name must <condition>`` when ``accept(value)`` is false (NaN fails every comparison)."""
    if not is_real(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not accept(float(value)):
        raise ValueError(f"{name} must {condition}, got {value!r}")
    return float(value)


def check_pair(value: Any, name: str) -> tuple[float, float]:
    """A (min, max) argument as two floats; a ``TypeError`` / ``ValueError`` naming ``name`` when it is not a
    sequence of two real numbers (the caller checks the range)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a (min, max) pair of numbers, got {type(value).__name__} {value!r}")
    if len(value) != 2:
        raise ValueError(f"{name} must be a (min, max) pair of numbers, got {len(value)} values: {value!r}")
    if not all(is_real(item) for item in value):
        kinds = ", ".join(type(item).__name__ for item in value)
        raise TypeError(f"{name} must be a (min, max) pair of numbers, got ({kinds}): {value!r}")
    return float(value[0]), float(value[1])


# ------------------------------------------------------------------------------------------- host and device
_HOST = threading.local()


@contextmanager
def _making_host_tensor():
    _HOST.depth = getattr(_HOST, "depth", 0) + 1
    try:
        yield
    finally:
        _HOST.depth -= 1


def making_host_tensor() -> bool:
    """Whether :func:`host_tensor` is running in this thread (``tools/count_syncs.py`` reads it: a tensor made
    there from host data lives on the host and is not a host-to-device copy)."""
    return getattr(_HOST, "depth", 0) > 0


def host_tensor(values: np.ndarray | Sequence[float] | float) -> Tensor:
    """A CPU tensor of host values (NumPy draws, box coordinates): it stays on the host until :func:`to_device`."""
    with _making_host_tensor():
        return torch.from_numpy(np.ascontiguousarray(values))


def host_values(tensor: Tensor) -> np.ndarray:
    """The values of a host tensor (a CPU generator's draws, a box) as a NumPy array, read without a torch op.

    A tensor on a device is copied to the host first, which waits for that device: the training paths never call
    this on batch data, only on draws made by a CPU generator."""
    return tensor.detach().cpu().numpy()


def to_device(tensor: Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> Tensor:
    """``tensor`` (a host tensor of draws) on ``device`` without making the host wait: on CUDA the values are
    pinned and copied with ``non_blocking=True``, so the copy is queued behind the device's work instead of waiting
    for it. ``dtype`` converts on the host first (a smaller copy). A tensor already on ``device`` is returned as is."""
    device = torch.device(device)
    if dtype is not None and tensor.dtype != dtype and tensor.device.type == "cpu":
        tensor = tensor.to(dtype)
    if tensor.device == device or (device.type == tensor.device.type and device.index is None):
        return tensor if dtype is None else tensor.to(dtype)
    if tensor.device.type == "cpu" and device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device=device, dtype=dtype, non_blocking=device.type != "cpu")  # never a racy read to the host


def _rng_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    """A NumPy ``Generator`` seeded from the torch RNG (``generator`` or the global one)."""
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=_rng_device(generator))
    return np.random.default_rng(int(host_values(seed)[0]))


def sample_beta(alpha: float, n: int, generator: torch.Generator | None = None) -> Tensor:
    """(n,) float64 CPU draws from Beta(alpha, alpha)."""
    return host_tensor(numpy_rng(generator).beta(alpha, alpha, size=n))


def sample_uniform(low: float, high: float, n: int, generator: torch.Generator | None = None) -> Tensor:
    """(n,) float64 CPU draws from U[low, high)."""
    draws = torch.rand(n, generator=generator, dtype=torch.float64, device=_rng_device(generator)).cpu()
    return draws.mul_(high - low).add_(low)


def _uniform(n: int, generator: torch.Generator | None) -> np.ndarray:
    """(n,) float64 draws from U[0, 1) made by the torch RNG, as a NumPy array (small-array arithmetic is cheaper
    in NumPy than in torch)."""
    return torch.rand(n, generator=generator, dtype=torch.float64, device=_rng_device(generator)).cpu().numpy()


def _sample_int(high: np.ndarray | int, n: int, generator: torch.Generator | None) -> np.ndarray:
    high = np.asarray(high, dtype=np.float64)
    return np.minimum(np.floor(_uniform(n, generator) * high), np.maximum(high - 1, 0)).astype(np.int64)


def sample_int(high: Tensor | int, n: int, generator: torch.Generator | None = None) -> Tensor:
    """(n,) int64 CPU draws uniform in {0, ..., high - 1}; ``high`` may be a (n,) tensor of per-draw bounds."""
    high = host_values(high.double()) if isinstance(high, Tensor) else high
    return host_tensor(_sample_int(high, n, generator))


def partner_index(batch_size: int, pairing: str = "random", generator: torch.Generator | None = None) -> Tensor:
    """(B,) int64 CPU partner of each sample: a random permutation, or the reversed batch for ``"flip"``."""
    if pairing == "random":
        return torch.randperm(batch_size, generator=generator, device=_rng_device(generator)).cpu()
    if pairing == "flip":
        return torch.arange(batch_size - 1, -1, -1)
    raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")


def check_lam(lam: float | Tensor | None, batch_size: int, mode: str) -> Tensor | None:
    """Validate an explicit lambda; return it as a (B,) float64 CPU tensor (or ``None`` when not given)."""
    if lam is None:
        return None
    if isinstance(lam, (bool, np.bool_)):
        raise TypeError("lam must be a number or a tensor, got bool")
    if is_real(lam):  # Python and NumPy scalars alike (np.float32 is not a float subclass)
        values = torch.tensor([float(lam)], dtype=torch.float64)
    elif isinstance(lam, Tensor):
        if lam.is_complex():
            raise TypeError(f"lam must be real, got {lam.dtype}")
        values = lam.detach().to("cpu", torch.float64).reshape(-1)
        if lam.dim() > 1 or values.numel() not in (1, batch_size):
            raise ValueError(f"lam must be a scalar or a ({batch_size},) tensor, got shape {tuple(lam.shape)}")
        if mode == "batch" and values.numel() > 1 and not bool((values == values[0]).all()):
            raise ValueError("lam holds different values per sample but mode='batch' takes one lam for the batch")
    else:
        raise TypeError(f"lam must be a number, a tensor or None, got {type(lam).__name__}")
    if bool(torch.isnan(values).any()):
        raise ValueError("lam must not be NaN")
    if bool(((values < 0) | (values > 1)).any()):
        raise ValueError(f"lam must lie in [0, 1], got {values.tolist()[:4]}")
    return values.expand(batch_size) if values.numel() == 1 else values


def boxes_from_ratio(
    ratio: Tensor, height: int, width: int, generator: torch.Generator | None = None, centers: Tensor | None = None
) -> Tensor:
    """(n, 4) boxes whose sides are ``ratio`` times the image sides, clipped to the image.

    As in CutMix: the centre is uniform over the image (or given as (n, 2) ``centers`` = (row, col)), the box
    extends ``side // 2`` each way from it, then is clipped. Clipping shrinks the box, so callers recompute
    lambda from the area with :func:`box_lam`.
    """
    ratio = host_values(ratio.double())
    n = ratio.shape[0]
    half_h = np.floor(height * ratio).astype(np.int64) // 2  # int(H * ratio) // 2, as the reference code
    half_w = np.floor(width * ratio).astype(np.int64) // 2
    if centers is None:
        center_y, center_x = _sample_int(height, n, generator), _sample_int(width, n, generator)
    else:
        center_y, center_x = (host_values(centers[:, k].long()) for k in (0, 1))
    boxes = np.stack(
        [center_y - half_h, center_y + half_h, center_x - half_w, center_x + half_w], axis=1
    )  # [top, bottom, left, right]
    return host_tensor(np.clip(boxes, 0, [height, height, width, width]))


def boxes_from_lam(lam: Tensor, height: int, width: int, generator: torch.Generator | None = None) -> Tensor:
    """CutMix boxes: sides sqrt(1 - lam) of the image (so the area is 1 - lam before clipping)."""
    return boxes_from_ratio((1.0 - lam.double()).clamp(min=0).sqrt(), height, width, generator)


def boxes_from_minmax(
    minmax: tuple[float, float], n: int, height: int, width: int, generator: torch.Generator | None = None
) -> Tensor:
    """(n, 4) boxes with sides drawn uniformly in [min, max) of the image sides, placed fully inside the image."""
    low, high = minmax
    cut_h = int(height * low) + _sample_int(max(int(height * high) - int(height * low), 1), n, generator)
    cut_w = int(width * low) + _sample_int(max(int(width * high) - int(width * low), 1), n, generator)
    top = _sample_int(height - cut_h + 1, n, generator)
    left = _sample_int(width - cut_w + 1, n, generator)
    return host_tensor(np.stack([top, top + cut_h, left, left + cut_w], axis=1))


def box_sides(boxes: Tensor) -> np.ndarray:
    """(n, 2) (height, width) of (n, 4) host boxes [top, bottom, left, right], 0 for an empty side."""
    values = host_values(boxes)
    return np.clip(values[:, [1, 3]] - values[:, [0, 2]], 0, None)


def box_lam(boxes: Tensor, height: int, width: int) -> Tensor:
    """(n,) float64 share of the image outside each box: the lambda of sample i after pasting."""
    sides = box_sides(boxes)
    return host_tensor(1.0 - (sides[:, 0] * sides[:, 1]) / (height * width))


def box_keep_mask(boxes: Tensor, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """(n, 1, H, W) float32 mask, 0 inside the box and 1 outside (where sample i keeps its own pixel)."""
    if boxes.shape[0] == 1:  # one box: two writes instead of a broadcast over the grid
        top, bottom, left, right = host_values(boxes[0]).tolist()
        mask = torch.ones(1, 1, height, width, device=device)
        mask[..., top:bottom, left:right].fill_(0.0)
        return mask
    top, bottom, left, right = (side.view(-1, 1, 1, 1) for side in to_device(boxes, device).unbind(1))
    rows = torch.arange(height, device=device).view(1, 1, -1, 1)
    cols = torch.arange(width, device=device).view(1, 1, 1, -1)
    outside_rows = ((rows < top) | (rows >= bottom)).to(torch.float32)  # (n, 1, H, 1)
    outside_cols = ((cols < left) | (cols >= right)).to(torch.float32)  # (n, 1, 1, W)
    return torch.maximum(outside_rows, outside_cols)  # one pass over the grid, broadcast


def records_grad(*tensors: Tensor | float) -> bool:
    """Whether autograd must record an op on these inputs: grad mode is on and one of them requires grad.

    Ops with ``out=`` cannot be recorded, so the kernels below take their buffer-writing fast path only when this
    is false and compute a new tensor otherwise."""
    return torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in tensors)


def memory_format_of(x: Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a channels-last (and not also contiguous) 4-d tensor, else contiguous."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def gather_partners(x: Tensor, index: Tensor) -> Tensor:
    """``x[index]`` in a new tensor with the memory format of ``x`` (differentiable when ``x`` requires grad)."""
    if records_grad(x):
        return x.index_select(0, index).contiguous(memory_format=memory_format_of(x))
    partners = torch.empty_like(x)
    torch.index_select(x, 0, index, out=partners)
    return partners


def lerp_into(start: Tensor, end: Tensor, weight: Tensor | float, out: Tensor) -> Tensor:
    """``torch.lerp(start, end, weight, out=out)``, where ``out`` is ``start`` or ``end`` (the in-place mix).

    When autograd must record the blend (an input requires grad), ``out=`` is not allowed: the result is a new
    tensor in ``end``'s memory format, copied into ``out`` only when ``out`` is ``end`` (the caller's input, which an
    in-place mixer promises to overwrite); a scratch ``start`` buffer is simply not reused."""
    if not records_grad(start, end, weight):
        return torch.lerp(start, end, weight, out=out)
    mixed = torch.lerp(start, end, weight).contiguous(memory_format=memory_format_of(end))
    return end.copy_(mixed) if out is end else mixed


def paste_boxes(x: Tensor, index: Tensor, boxes: Tensor, inplace: bool = False) -> tuple[Tensor, Tensor]:
    """Sample i keeps its pixels outside ``boxes[i]`` and takes ``x[index[i]]`` inside (same location).

    One box (batch mode) is a slice assignment that touches only the box; per-sample boxes (elem mode) are one
    vectorised blend with the (B, 1, H, W) mask: at CutMix's box sizes (two thirds of the rows on average) that is
    cheaper than rebuilding the box rows (:func:`merge_rows`), measured on the CPU. Returns (mixed batch, float32
    keep mask).
    """
    height, width = x.shape[-2:]
    mask = box_keep_mask(boxes, height, width, x.device)
    if boxes.shape[0] > 1:
        return blend(x, index, mask, inplace), mask
    top, bottom, left, right = host_values(boxes[0]).tolist()
    out = x if inplace else x.clone()
    if bottom > top and right > left:
        out[:, :, top:bottom, left:right] = x[index, :, top:bottom, left:right]
    return out, mask


# Box rows are rebuilt in blocks of about this many bytes of gathered rows on the CPU, where a block's
# intermediates then stay in cache and the allocator reuses them: there a fresh allocation of tens of MiB costs
# more than the copy itself (page faults). Other devices take every row in one block (one launch per operation).
CPU_BLOCK_BYTES = 2 << 20


def box_rows(boxes: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image rows that boxes cover, from (B, 4) host [top, bottom, left, right]: (sample, offset within its box,
    box height), each (R,) int64 in sample order (R = the sum of the heights of the boxes that have pixels). Host
    bookkeeping: no device is involved."""
    sides = box_sides(boxes).astype(np.int64)
    heights = np.where(sides[:, 1] > 0, sides[:, 0], 0)  # a box without columns has no rows to write
    sample = np.repeat(np.arange(len(sides)), heights)
    offset = np.arange(int(heights.sum())) - np.repeat(np.cumsum(heights) - heights, heights)
    return sample, offset, heights[sample]


def merge_rows(
    x: Tensor,
    out: Tensor,
    partner_rows: Tensor,
    own_rows: Tensor,
    columns: Tensor,
    block_rows: int | None = None,
) -> Tensor:
    """Rebuild R image rows of ``out`` from two rows of ``x`` each, touching no other row; returns ``out``.

    Row k of the output (image row ``own_rows[k]``, counted as b * H + h) becomes ``[x row partner_rows[k] | x row
    own_rows[k]]`` (2 W pixels side by side) read at ``columns[k]``: column c takes pixel ``columns[k, c]``, the
    partner's pixel j for j < W and its own pixel j - W otherwise. One ``index_select`` reads both rows, one
    ``gather`` picks the W pixels and one ``index_copy_`` writes them: ResizeMix's elem mode then reads and writes
    the box rows only, not the whole batch. In channels-last memory a row is W * C contiguous values and a column a
    whole pixel; in channels-first memory it is C rows of W values, gathered alike.

    Args:
        x: (B, C, H, W) batch, read only (it may be ``out``), in any memory layout.
        out: ``x`` (in place) or a copy of it (for the rows not rebuilt); a strided view that is dense in neither
            memory format is rebuilt in a dense copy that is then written back.
        partner_rows, own_rows: (R,) int64 image rows on ``x``'s device; ``own_rows`` distinct.
        columns: (R, W) int64 in [0, 2 W) on ``x``'s device.
        block_rows: rows per block of work; default: blocks of about ``CPU_BLOCK_BYTES`` on the CPU, every row at
            once elsewhere. In place (``out`` shares ``x``'s memory) every row is done in one block, since a later
            block would read partner rows that an earlier one has overwritten.
    """
    batch_size, channels, height, width = x.shape
    if block_rows is not None and (not is_int(block_rows) or block_rows < 1):
        raise ValueError(f"block_rows must be a positive int or None, got {block_rows!r}")
    total = own_rows.shape[0]
    if total == 0:
        return out
    if not (out.is_contiguous() or out.is_contiguous(memory_format=torch.channels_last)):
        # rows of a strided view (a crop, a slice) are not rows of memory: rebuild them in a dense copy, write it back
        dense = out.contiguous(memory_format=memory_format_of(x))
        merge_rows(x, dense, partner_rows, own_rows, columns, block_rows)
        return out.copy_(dense)
    if memory_format_of(out) == torch.channels_last:
        unit = 1  # one memory row per image row: W pixels of C values
        source = x.permute(0, 2, 3, 1).reshape(batch_size * height, width * channels)  # a view when x is dense
        target = out.permute(0, 2, 3, 1).view(batch_size * height, width * channels)
    else:
        unit = channels  # C memory rows of W values per image row: channel c of row b * H + h at (b * C + c) * H + h
        offset = (torch.arange(channels, device=x.device) * height).view(1, -1)
        partner_rows = partner_rows + partner_rows.div(height, rounding_mode="floor") * (channels - 1) * height
        own_rows = own_rows + own_rows.div(height, rounding_mode="floor") * (channels - 1) * height
        partner_rows, own_rows = partner_rows.view(-1, 1) + offset, own_rows.view(-1, 1) + offset  # (R, C)
        source = x.reshape(batch_size * channels * height, width)  # a view when x is dense
        target = out.view(batch_size * channels * height, width)
    pairs = torch.stack([partner_rows.reshape(total, unit), own_rows.reshape(total, unit)], dim=2)  # (R, unit, 2)
    own_rows = own_rows.reshape(total, unit)
    if target.untyped_storage().data_ptr() == source.untyped_storage().data_ptr():
        block_rows = total
    elif block_rows is None:
        row_bytes = 2 * width * channels * x.element_size()
        block_rows = max(1, CPU_BLOCK_BYTES // row_bytes) if x.device.type == "cpu" else total
    for start in range(0, total, block_rows):
        stop = min(total, start + block_rows)
        n = stop - start
        picked = source.index_select(0, pairs[start:stop].flatten())
        if unit == 1:  # (n, 2 W, C): gather whole pixels
            shape, dim = (n, width, channels), 1
            merged = picked.view(n, 2 * width, channels)
            index = columns[start:stop].view(n, width, 1)
        else:  # (n, C, 2 W): gather within each channel's row
            shape, dim = (n, channels, width), 2
            merged = picked.view(n, channels, 2 * width)
            index = columns[start:stop].view(n, 1, width)
        merged = merged.gather(dim, index.expand(*shape))
        target.index_copy_(0, own_rows[start:stop].flatten(), merged.reshape(n * unit, -1))
    return out


def blend(x: Tensor, index: Tensor, weight: Tensor | float, inplace: bool = False) -> Tensor:
    """``weight * x + (1 - weight) * x[index]``; ``weight`` is a number or a tensor broadcastable to ``x``."""
    partners = gather_partners(x, index)
    if isinstance(weight, Tensor):
        weight = to_device(weight, x.device, x.dtype)
    # lerp(start, end, w) = start + w * (end - start): exact at w = 0 and w = 1. A learned mask (AutoMix) or an x
    # that requires grad keeps the graph (no out= buffer).
    return lerp_into(partners, x, weight, out=x if inplace else partners)


def to_network_dtype(network: torch.nn.Module, images: Tensor) -> Tensor:
    """``images`` in the dtype of ``network``'s parameters (e.g. a float32 extractor on a float16 batch)."""
    parameter = next(network.parameters(), None)
    return images if parameter is None else images.to(parameter.dtype)


def lam_to_weight(lam: Tensor, mode: str, x: Tensor) -> Tensor | float:
    """The blend weight of sample i itself: a Python float in batch mode, a (B, 1, 1, 1) tensor in elem mode."""
    if mode == "batch":
        return float(host_values(lam[:1])[0])
    return to_device(lam, x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))


def check_saliency(saliency: Any, x: Tensor, owner: str = "this mixer") -> Tensor:
    """The ``saliency`` need of PuzzleMix and Co-Mixup: a (B, H, W) floating point tensor like ``x``'s batch and image
    size, on ``x``'s device; else a ``ValueError`` / ``TypeError`` naming ``saliency`` and ``owner`` (its values are
    checked where the block averages are made)."""
    if saliency is None:
        raise ValueError(
            f"{owner} needs the saliency of the clean batch: call it with saliency=... of shape (B, H, W), the "
            "channel norm of the input gradient of the clean loss (openmix.lightning.services.input_saliency)"
        )
    if not isinstance(saliency, Tensor):
        raise TypeError(f"saliency must be a torch.Tensor of shape (B, H, W), got {type(saliency).__name__}")
    expected = (x.shape[0], *x.shape[-2:])
    if tuple(saliency.shape) != expected:
        raise ValueError(f"saliency must have shape {expected} like the batch, got {tuple(saliency.shape)}")
    if not saliency.is_floating_point():
        raise TypeError(f"saliency must be a floating point tensor, got {saliency.dtype}")
    if saliency.device != x.device:
        raise ValueError(f"saliency is on {saliency.device} but x is on {x.device}: move both to the same device")
    return saliency
