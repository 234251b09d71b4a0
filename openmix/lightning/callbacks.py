"""RunCheckpoint: Lightning's ModelCheckpoint whose ``last.ckpt`` is always the end of the last finished epoch.

``last.ckpt`` is what ``--ckpt_path last`` resumes, so it must be a state a resume can repeat exactly. Lightning
(2.x) writes it only when a top-k checkpoint is saved, and at whatever point that happens: an epoch that does not
beat the best leaves it at an older epoch, and with ``check_val_every_n_epoch > 1`` or ``val_check_interval < 1`` it
is written at a validation inside an epoch, from which Lightning resumes an epoch it cannot replay (its batches count
as done; the data loader is not resumable). ``RunCheckpoint`` writes ``last.ckpt`` exactly once per epoch, at the end
of the training epoch (after the module's epoch-end hooks, which log the epoch's summary first), and never
elsewhere. The top-k checkpoints (the best by ``val/top1``) are saved as Lightning saves them.

Every checkpoint file is written beside its name and renamed over it once complete, so a process killed while
saving leaves the previous checkpoint intact instead of a truncated one.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint (same arguments) whose ``last.ckpt`` is written at every epoch end and only there."""

    _at_epoch_end = False

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        temporary = f"{filepath}.partial"
        trainer.save_checkpoint(temporary, self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(temporary, filepath)  # atomic: the old file, or the whole new one
        trainer.strategy.barrier("openmix-checkpoint-renamed")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        if self._at_epoch_end:  # Lightning's own calls (after a top-k save, mid-epoch included) are left out
            super()._save_last_checkpoint(trainer, monitor_candidates)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not self.save_last or trainer.sanity_checking or trainer.fast_dev_run:
            return
        self._at_epoch_end = True
        try:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        finally:
            self._at_epoch_end = False
