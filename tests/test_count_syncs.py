"""tools/count_syncs.py: the counter of the ops that would synchronise a CUDA device, checked on known cases."""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from count_syncs import (  # noqa: E402
    SyncCounter,
    count_sync_ops,
    host_synced_mixers,
    step_cases,
    step_counts,
    tiny_model,
)


def test_known_synchronising_ops_are_counted_and_plain_compute_is_not():
    x = torch.randn(4, 3)
    assert count_sync_ops(lambda: x.sum().item()) == {"_local_scalar_dense": 1}
    assert count_sync_ops(lambda: int(x.argmax())) == {"_local_scalar_dense": 1}
    assert count_sync_ops(lambda: x[x > 0]) == {"nonzero": 1}
    assert count_sync_ops(lambda: torch.tensor([1.0, 2.0])) == {"lift_fresh": 1}
    layer = nn.Linear(3, 2)
    assert count_sync_ops(lambda: layer(x).square().mean().backward()) == {}  # a bare step: none


def test_a_training_step_with_a_host_solver_is_counted():
    counts = step_counts("comixup", None)
    assert sum(counts.values()) > 0 and set(counts) <= {"_local_scalar_dense", "nonzero", "lift_fresh"}


# ------------------------------------------------------------------ no host synchronisation in a training step
SYNC_FREE = [case for case in step_cases() if case[0] not in host_synced_mixers()]


@pytest.mark.parametrize(("mixer", "mode"), SYNC_FREE, ids=[f"{m}-{mode}" for m, mode in SYNC_FREE])
def test_a_training_step_never_waits_for_the_device(mixer, mode):
    """Every mixer but the two whose graph cut runs on the CPU: 0 ops that would synchronise a CUDA device in a
    whole step (mixing, forward, loss, logging, backward)."""
    assert step_counts(mixer, mode) == {}


@pytest.mark.parametrize("objective", ["ce", "bce", "regmixup", "decoupled"])
@pytest.mark.parametrize("mixer", ["mixup", "cutmix"])
def test_every_objective_is_sync_free_too(mixer, objective):
    assert step_counts(mixer, "elem", objective=objective) == {}


def test_only_the_host_solvers_are_left_out():
    assert sorted(host_synced_mixers()) == ["comixup", "puzzlemix"]
    assert {name for name, _ in step_cases()} - {None} - set(host_synced_mixers()) >= {
        "mixup", "cutmix", "fmix", "gridmix", "resizemix", "saliencymix", "smoothmix", "snapmix", "attentivemix",
        "randomchoice", "manifoldmix", "alignmix", "sumix", "adamixup",
    }  # fmt: skip


def test_labels_on_the_host_are_still_checked_with_a_value_error():
    from openmix.mixers import create_mixer

    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, -2, 3])
    with pytest.raises(ValueError, match="y holds negative class ids"):
        create_mixer("mixup")(x, y)
    mix = create_mixer("mixup")(x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        mix.soft_targets(3)


class _CountPerStep(Callback):
    """Counts the sync-like ops of each whole training batch (step, backward, optimizer, Lightning's logging)."""

    def __init__(self) -> None:
        self.per_step: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._counter = SyncCounter().__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._counter.__exit__(None, None, None)
        self.per_step.append(sum(self._counter.counts.values()))


def test_the_training_batches_of_a_lightning_fit_never_wait_for_the_device():
    """Under a real Trainer (logging every 3 steps), each training batch from its start hook to its end hook
    (step, backward, optimizer, ``self.log``) counts 0 after the first, where Lightning makes its logging buffers
    once (2 tensors from Python numbers). Lightning turns the logged tensors into numbers after the end hook, at its
    logging interval only."""
    torch.manual_seed(0)
    model = tiny_model("cutmix", "elem")
    data = TensorDataset(torch.randn(48, 3, 16, 16), torch.randint(0, 10, (48,)))
    counter = _CountPerStep()
    trainer = L.Trainer(
        max_steps=6,
        log_every_n_steps=3,
        logger=CSVLogger(tempfile.mkdtemp()),
        callbacks=[counter],
        accelerator="cpu",
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, DataLoader(data, batch_size=8))
    assert len(counter.per_step) == 6 and counter.per_step[0] <= 2
    assert counter.per_step[1:] == [0] * 5, counter.per_step


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("mixer", "mode"), SYNC_FREE, ids=[f"{m}-{mode}" for m, mode in SYNC_FREE])
def test_on_cuda_a_step_runs_under_sync_debug_mode_error(mixer, mode):
    model = tiny_model(mixer, mode).cuda()
    x = torch.randn(16, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (16,), device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.training_step((x, y), 0).backward()  # warm-up
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model.training_step((x, y), 1).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
