"""tools/count_syncs.py: the counter of the ops that would synchronise a CUDA device, checked on known cases."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from count_syncs import count_sync_ops, step_counts  # noqa: E402


def test_known_synchronising_ops_are_counted_and_plain_compute_is_not():
    x = torch.randn(4, 3)
    assert count_sync_ops(lambda: x.sum().item()) == {"_local_scalar_dense": 1}
    assert count_sync_ops(lambda: int(x.argmax())) == {"_local_scalar_dense": 1}
    assert count_sync_ops(lambda: x[x > 0]) == {"nonzero": 1}
    assert count_sync_ops(lambda: torch.tensor([1.0, 2.0])) == {"lift_fresh": 1}
    layer = nn.Linear(3, 2)
    assert count_sync_ops(lambda: layer(x).square().mean().backward()) == {}  # a bare step: none


def test_a_training_step_is_counted():
    counts = step_counts("mixup", "batch")
    assert sum(counts.values()) > 0 and set(counts) <= {"_local_scalar_dense", "nonzero", "lift_fresh"}
