"""RunCheckpoint: Lightning's ModelCheckpoint with a ``last.ckpt`` that is always the end of the last epoch.

Lightning (2.x) refreshes ``last.ckpt`` only when a top-k checkpoint is saved: with ``monitor="val/top1"`` and
``save_top_k=1``, an epoch that does not beat the best leaves ``last.ckpt`` at an older epoch, and
``--ckpt_path last`` then trains the finished epochs again (or, after many epochs without improvement, most of the
run). ``RunCheckpoint`` writes ``last.ckpt`` at every epoch end (when ``save_last`` is set), in addition to what
ModelCheckpoint saves, so a resume loses at most the epoch in flight.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint (same arguments) whose ``last.ckpt`` follows every epoch, not only improvements."""

    def _refresh_last(self, trainer: L.Trainer) -> None:
        # skipped when this step was already saved (a new best refreshes last.ckpt itself), in sanity checks, etc.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)
