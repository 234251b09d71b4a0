"""Targets: one-hot, label-smoothed and mixed soft targets (the ground floor that mixers and losses both use).

Label smoothing belongs to the targets, not to the mixer: :func:`one_hot_targets` smooths each sample's own target
before :func:`mix_targets` interpolates them.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
from torch import Tensor

from openmix._checks import check_class_ids, is_real


def check_tensor(value: Any, name: str, dims: tuple[int, ...] | None = None) -> Tensor:
    """``value`` if it is a tensor (with one of ``dims`` dimensions), else a ``TypeError`` / ``ValueError`` naming
    ``name``."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if dims is not None and value.dim() not in dims:
        shapes = " or ".join({1: "(B,)", 2: "(B, K)"}.get(d, f"{d}-d") for d in dims)
        raise ValueError(f"{name} must have shape {shapes}, got {tuple(value.shape)}")
    return value


def check_smoothing(smoothing: Any) -> float:
    if not is_real(smoothing):
        raise TypeError(f"smoothing must be a number, got {type(smoothing).__name__}")
    if not 0.0 <= smoothing < 1.0 or math.isnan(smoothing):
        raise ValueError(f"smoothing must lie in [0, 1), got {smoothing}")
    return float(smoothing)


def one_hot_targets(y: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """(B, K) float32 targets from class ids (B,) or soft / multi-hot targets (B, K), label-smoothed.

    Smoothing moves ``smoothing`` of the mass to the uniform distribution: ``t * (1 - s) + s / K``.
    """
    smoothing = check_smoothing(smoothing)
    if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, (bool, np.bool_)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    num_classes = int(num_classes)
    check_tensor(y, "y")
    if y.dim() == 1:
        if y.dtype != torch.int64:
            raise TypeError(f"y with shape (B,) must hold int64 class ids, got {y.dtype}")
        check_class_ids(y, num_classes)
        # scatter, not F.one_hot: one_hot reads the ids' range back to the host (a device sync every step)
        targets = torch.zeros(y.shape[0], num_classes, device=y.device).scatter_(1, y.unsqueeze(1), 1.0)
    elif y.dim() == 2:
        if y.shape[1] != num_classes:
            raise ValueError(f"y has {y.shape[1]} classes but num_classes={num_classes}")
        targets = y.float()
    else:
        raise ValueError(f"y must have shape (B,) or (B, K), got {tuple(y.shape)}")
    if smoothing > 0:
        targets = targets * (1.0 - smoothing) + smoothing / num_classes
    return targets


def mix_targets(y_a: Tensor, y_b: Tensor, lam: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """(B, K) float32 ``lam * t(y_a) + (1 - lam) * t(y_b)`` with t from :func:`one_hot_targets`."""
    target_a = one_hot_targets(y_a, num_classes, smoothing)
    target_b = one_hot_targets(y_b, num_classes, smoothing)
    check_tensor(lam, "lam")
    lam = lam.to(device=target_a.device, dtype=torch.float32).reshape(-1, 1)
    return torch.lerp(target_b, target_a, lam)
