"""RunLogger: Lightning's CSV logger made safe for resumed runs.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, and appends rows whose columns it
only knows from the current process. A run resumed into the same folder therefore lost its earlier epochs or died
with ``dict contains fields not in fieldnames``. ``RunLogger`` keeps one continuous ``metrics.csv`` per run:

- an existing file is never deleted; its header is read back, and a row with new columns rewrites the file once
  with the union of the columns (earlier rows keep their values, new columns stay empty there);
- when training starts, :meth:`RunLogger.discard_from` drops the rows of epochs that are about to be trained
  again: the partial epoch of a killed run, which the resumed run repeats exactly. Rows of finished epochs stay, so
  every epoch appears once;
- ``save_dir=None`` puts the logs under the trainer's ``default_root_dir`` (Lightning's convention for the default
  logger); the ``openmix`` command resolves it when it builds the trainer.

Rows are written to disk after every ``log_metrics`` call, so a killed process loses nothing that the checkpoint it
resumes from covers. A run folder has one writer at a time: the logger holds an exclusive lock on ``run.lock`` in
its folder while the process lives (``fcntl.flock``, released by the kernel when the process ends however it ends),
and a second process that would write there stops with an error.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from openmix.bench.run_folder import (  # noqa: F401 (folder_is_locked, METRICS_FILE: re-exported)
    METRICS_FILE,
    VERSION_PATTERN,
    folder_is_locked,
    lock_folder,
    version_folder,
)


def read_rows(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a CSV file; ``([], [])`` when it does not exist or is empty."""
    if not os.path.isfile(path):
        return [], []
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def write_rows(path: str | Path, header: list[str], rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` under ``header`` atomically (a temporary file renamed over ``path``)."""
    temporary = f"{path}.tmp"
    with open(temporary, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, path)


class ResumableWriter(ExperimentWriter):
    """Lightning's CSV experiment writer without the deletion of an existing ``metrics.csv``."""

    def _check_log_dir_exists(self) -> None:  # Lightning deletes metrics.csv here; keep it
        header, _ = read_rows(self.metrics_file_path)
        self.metrics_keys = header  # the file's columns, so appended rows line up with them

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        """Lightning truncates the file and writes it again: a kill in between left it empty. Write a new file
        beside it and rename it over the old one instead (atomic on POSIX)."""
        _, rows = read_rows(self.metrics_file_path)
        write_rows(self.metrics_file_path, fieldnames, rows)

    def discard_from(self, epoch: int, step: int) -> int:
        """Drop the rows of epochs ``>= epoch`` from ``metrics.csv``, and the rows without an epoch (the learning
        rate at an epoch's start) logged at steps ``>= step``; returns how many rows were dropped."""
        self.save()
        header, rows = read_rows(self.metrics_file_path)

        def earlier(row: dict[str, str]) -> bool:
            if None in row.values():  # a row cut short by a kill in the middle of its append
                return False
            if row.get("epoch"):
                return int(float(row["epoch"])) < epoch
            return not row.get("step") or int(float(row["step"])) < step

        kept = [row for row in rows if earlier(row)]
        if len(kept) != len(rows):
            write_rows(self.metrics_file_path, header, kept)
        return len(rows) - len(kept)


class RunLogger(CSVLogger):
    """A CSV logger whose ``metrics.csv`` survives resumes: one continuous file per run (see the module docstring).

    Args:
        save_dir: folder of the logs; ``None``: the trainer's ``default_root_dir`` (set by the ``openmix`` command).
        name: experiment sub-folder (``""``: none).
        version: run sub-folder: an int (``version_N``), a string, or ``None`` for the next free ``version_N``.
        prefix, flush_logs_every_n_steps: as Lightning's ``CSVLogger``.
    """

    def __init__(
        self,
        save_dir: str | None = None,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ):
        self.follows_trainer_root = save_dir is None
        super().__init__(save_dir or ".", name, version, prefix, flush_logs_every_n_steps)
        self._lock: Any = None

    def set_save_dir(self, save_dir: str | os.PathLike) -> None:
        """Point the logger at ``save_dir`` before anything is written (used for ``save_dir=None``)."""
        if self._experiment is not None:
            raise RuntimeError("the logger has already written to its folder; set its save_dir before training")
        self._save_dir = self._root_dir = os.fspath(save_dir)

    @property
    @rank_zero_experiment
    def experiment(self) -> ResumableWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._lock = lock_folder(self.log_dir)  # before anything is written: one writer per run folder
            self._experiment = ResumableWriter(log_dir=self.log_dir)
        return self._experiment

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Record ``metrics`` and write them to disk at once (callbacks such as the learning-rate monitor log
        without the trainer's save, which Lightning would otherwise leave to every 100th step)."""
        super().log_metrics(metrics, step)
        self.save()

    def discard_from(self, epoch: int, step: int) -> int:
        """Drop logged rows of epochs ``>= epoch`` (and epoch-less rows of steps ``>= step``): called when training
        starts or resumes at (``epoch``, ``step``), which logs them again."""
        if rank_zero_only.rank != 0:
            return 0
        return self.experiment.discard_from(epoch, step)


def latest_version(root: str | os.PathLike, containing: str | None = None) -> int | None:
    """The largest N of the ``version_N`` folders in ``root`` (that hold the file ``containing``, when given),
    ``None`` when there are none."""
    if not os.path.isdir(root):
        return None
    numbers = [int(m.group(1)) for entry in os.listdir(root) if (m := VERSION_PATTERN.fullmatch(entry))]
    if containing is not None:
        numbers = [n for n in numbers if os.path.isfile(os.path.join(version_folder(root, n), containing))]
    return max(numbers) if numbers else None
