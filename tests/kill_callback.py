"""Callbacks that stop their own process at a chosen point, for crash-and-resume tests.

- ``KillAtStep`` kills the process (SIGKILL, no clean-up) once a training step is reached.
- ``PauseAt`` writes a marker file at a chosen point (a training step, or the start of an epoch) and then sleeps, so
  that a test can kill the process from outside, with a real SIGKILL, at exactly that point.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    """Kill the process once ``trainer.global_step`` reaches ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class PauseAt(Callback):
    """Write ``marker`` and sleep once training reaches ``step`` (after that batch) or the start of epoch ``epoch``
    (between epochs: the previous epoch is logged and checkpointed, nothing of this one has run)."""

    def __init__(self, marker: str, step: int | None = None, epoch: int | None = None, seconds: float = 600.0):
        self.marker, self.step, self.epoch, self.seconds = Path(marker), step, epoch, seconds

    def pause(self) -> None:
        self.marker.write_text(str(os.getpid()))
        time.sleep(self.seconds)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.step is not None and trainer.global_step >= self.step:
            self.pause()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.epoch is not None and trainer.current_epoch == self.epoch:
            self.pause()
