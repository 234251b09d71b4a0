"""Default optimizer and learning-rate schedule of the trainer, as classes so LightningCLI can print and override them.

``SGD`` is ``torch.optim.SGD`` with lr 0.1 and momentum 0.9 (OpenMixup's CIFAR recipes) and weight decay 5e-4
(openmix's own default; the CIFAR configs set OpenMixup's 1e-4). ``WarmupCosineLR`` warms up linearly, then
follows a cosine to ``min_lr``; it is stepped every optimisation step, and the trainer tells it the run's length
(:meth:`WarmupCosineLR.set_total_steps`), so a config never repeats ``max_epochs``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LRScheduler


class SGD(torch.optim.SGD):
    """SGD with momentum: lr 0.1, momentum 0.9 (OpenMixup's CIFAR recipes), weight decay 5e-4 (openmix's default;
    ``configs/model/cifar_resnet18.yaml`` sets OpenMixup's 1e-4)."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        nesterov: bool = False,
    ):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


class WarmupCosineLR(LRScheduler):
    """Linear warm-up from ``warmup_start_factor * lr`` over ``warmup_epochs``, then cosine decay to ``min_lr``.

    Args:
        optimizer: the optimizer whose learning rates are scheduled.
        warmup_epochs: epochs of linear warm-up (may be fractional; 0 disables it).
        warmup_start_factor: the first step's share of the base learning rate.
        min_lr: learning rate at the end of the run.
        total_steps: optimisation steps of the run; ``None`` until the trainer calls :meth:`set_total_steps`.
        steps_per_epoch: converts ``warmup_epochs`` to steps; set with ``total_steps``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_epochs: float = 1.0,
        warmup_start_factor: float = 0.01,
        min_lr: float = 0.0,
        total_steps: int | None = None,
        steps_per_epoch: int | None = None,
    ):
        if warmup_epochs < 0 or not 0 < warmup_start_factor <= 1 or min_lr < 0:
            raise ValueError(
                f"need warmup_epochs >= 0, 0 < warmup_start_factor <= 1, min_lr >= 0; got "
                f"{warmup_epochs}, {warmup_start_factor}, {min_lr}"
            )
        self.warmup_epochs = warmup_epochs
        self.warmup_start_factor = warmup_start_factor
        self.min_lr = min_lr
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        super().__init__(optimizer)

    def set_total_steps(self, total_steps: int, steps_per_epoch: int) -> None:
        """Called by :class:`~openmix.lightning.MixClassifier` once the trainer knows the run's length."""
        self.total_steps = max(1, int(total_steps))
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        learning_rates = self.get_lr()  # the current step's rates under the now known schedule
        for group, learning_rate in zip(self.optimizer.param_groups, learning_rates):
            group["lr"] = learning_rate
        self._last_lr = learning_rates

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a checkpoint's schedule. A resume must ask for the run the checkpoint was part of: a cosine
        schedule ends at its last step, so continuing a finished run for more epochs would train at ``min_lr``
        (a run's length changed under it is refused, naming both lengths)."""
        wanted = self.total_steps
        saved = state_dict.get("total_steps")
        if (
            wanted is not None
            and saved is not None
            and (wanted, self.steps_per_epoch)
            != (
                saved,
                state_dict.get("steps_per_epoch"),
            )
        ):
            raise ValueError(
                f"the checkpoint's learning-rate schedule covers {saved} steps ({state_dict.get('steps_per_epoch')} "
                f"per epoch) but this run has {wanted} ({self.steps_per_epoch} per epoch): a resume must keep "
                "trainer.max_epochs / max_steps and the data of the run it continues. To train longer, start a new "
                "run (e.g. from the checkpoint's weights) with the longer schedule."
            )
        super().load_state_dict(state_dict)

    def factor(self, step: int) -> float:
        """Share of each base learning rate at ``step`` (0-based), before ``min_lr`` is applied."""
        if self.total_steps is None:
            return 1.0  # not bound to a run yet (e.g. while Lightning builds it): constant
        warmup = int(round(self.warmup_epochs * (self.steps_per_epoch or 1)))
        if step < warmup:
            return self.warmup_start_factor + (1 - self.warmup_start_factor) * step / warmup
        progress = min(1.0, (step - warmup) / max(1, self.total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        share = self.factor(self.last_epoch)
        return [self.min_lr + (base - self.min_lr) * share for base in self.base_lrs]
