"""What a run folder holds and who may write to it, without importing Lightning (the runner and the report use it).

The names of the files that :mod:`openmix.bench.runner`, :mod:`openmix.bench.report` and
:class:`~openmix.lightning.loggers.RunLogger` share are spelled here once. A run folder holds:

- ``metrics.csv`` (:data:`METRICS_FILE`): the per-epoch (and per-step) metrics, one continuous file across resumes;
  folders of older runners also hold ``metrics.before-N.csv`` segments (:data:`METRICS_SEGMENTS`), read before it
  (:func:`metrics_files`);
- ``config.yaml`` (:data:`CONFIG_FILE`): the resolved config, saved by LightningCLI;
- ``checkpoints/last.ckpt`` (:data:`CHECKPOINTS_DIR`, :data:`LAST_CHECKPOINT`) and the best checkpoint;
- ``run.json`` (:data:`RUN_JSON`): the runner's record of the run's processes (:func:`read_run_json`);
- ``output.log`` (:data:`OUTPUT_LOG`): the output of the runner's processes;
- ``job.json`` (:data:`JOB_JSON`): the scheduler job that owns the run, when it was submitted as a job
  (:mod:`openmix.bench.jobs`, :func:`read_job_json`);
- ``run.lock`` (:data:`LOCK_FILE`): the writer's lock, below;
- ``test/version_N/metrics.csv`` (:data:`TEST_FOLDER`): the logs of ``openmix test`` of the run's checkpoint (the
  grid's ``test:`` step, recorded under ``test`` in ``run.json``, or a user's own).

A grid's folder holds its run folders, ``environment.json`` (:data:`ENVIRONMENT_FILE`) and, when its runs were
submitted as jobs, the launcher's job files and logs in ``jobs/`` (:data:`JOBS_DIR`); ``openmix fit`` without
the runner puts each run in a ``version_N`` folder (:data:`VERSION_PATTERN`, :func:`version_folder`).

A run folder has one writer at a time: the process that writes it (its :class:`~openmix.lightning.loggers.RunLogger`)
holds an exclusive ``fcntl.flock`` on ``run.lock`` while it lives; the kernel releases it when the process ends,
however it ends. The file holds the writer's pid, for the error message of a second writer.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

LOCK_FILE = "run.lock"
RUN_JSON = "run.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
METRICS_SEGMENTS = "metrics.before-*.csv"  # metrics.before-N.csv, left by runners before the continuous metrics.csv
OUTPUT_LOG = "output.log"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
ENVIRONMENT_FILE = "environment.json"  # in a grid's folder
JOB_JSON = "job.json"
TEST_FOLDER = "test"  # in a run folder: the CSV logs of `openmix test`, test/version_N/metrics.csv
JOBS_DIR = "jobs"  # in a grid's folder: submitit's pickles and the jobs' logs
VERSION_PATTERN = re.compile(r"version_(\d+)")  # the run folders of `openmix fit`: version_0, version_1, ...


def run_json_path(folder: str | Path) -> Path:
    """The run's ``run.json``."""
    return Path(folder) / RUN_JSON


def job_json_path(folder: str | Path) -> Path:
    """The run's ``job.json``: the scheduler job that owns it."""
    return Path(folder) / JOB_JSON


def config_path(folder: str | Path) -> Path:
    """The ``config.yaml`` LightningCLI saved in the run folder."""
    return Path(folder) / CONFIG_FILE


def metrics_path(folder: str | Path) -> Path:
    """The run's ``metrics.csv``."""
    return Path(folder) / METRICS_FILE


def checkpoints_dir(folder: str | Path) -> Path:
    """The run's ``checkpoints`` folder."""
    return Path(folder) / CHECKPOINTS_DIR


def last_checkpoint_path(folder: str | Path) -> Path:
    """The run's ``checkpoints/last.ckpt``, which a resume continues from."""
    return checkpoints_dir(folder) / LAST_CHECKPOINT


def version_folder(root: str | os.PathLike, version: int) -> str:
    """The path of the ``version_N`` folder ``version`` under ``root``."""
    return os.path.join(root, f"version_{version}")


def read_record(path: Path) -> dict[str, Any]:
    """A ``run.json``; a truncated or corrupt one raises ``ValueError`` naming the file."""
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); delete it to run that run again") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} does not hold a run record (a JSON object)")
    return record


def read_run_json(folder: str | Path) -> dict[str, Any] | None:
    """The record in a run folder's ``run.json``, ``None`` when it has none (a corrupt one raises ``ValueError``
    naming it, see :func:`read_record`)."""
    path = run_json_path(folder)
    return read_record(path) if path.is_file() else None


def read_job_json(folder: str | Path) -> dict[str, Any] | None:
    """The job record in a run folder's ``job.json``, ``None`` when it was never submitted as a job (a corrupt one
    raises ``ValueError`` naming it)."""
    path = job_json_path(folder)
    return read_record(path) if path.is_file() else None


def metrics_files(folder: str | Path) -> list[Path]:
    """A run's CSV logs in order: ``metrics.csv``, after the ``metrics.before-N.csv`` segments that runners before
    the continuous :class:`~openmix.lightning.loggers.RunLogger` left behind."""
    directory = Path(folder)
    before = sorted(directory.glob(METRICS_SEGMENTS), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    return [*before, *([metrics_path(directory)] if metrics_path(directory).is_file() else [])]


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock."""


def lock_folder(directory: str | Path) -> Any:
    """Take the exclusive lock of a run folder; returns the open lock file (keep it open to hold the lock), or
    ``None`` where file locks are not available. Raises ``RuntimeError`` when another process holds it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    os.makedirs(directory, exist_ok=True)
    handle = open(os.path.join(directory, LOCK_FILE), "a+")
    for attempt in range(6):  # a probe (folder_is_locked) holds the lock for an instant: try again briefly
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            if attempt < 5:
                time.sleep(0.1)
    else:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise RunFolderBusy(
            f"{directory} is being written by another process (pid {holder}): one writer per run folder. "
            "Wait for it to end, or stop it, before resuming this run."
        ) from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def folder_is_locked(directory: str | Path) -> bool:
    """Whether a process holds the lock of a run folder now: a read-only probe (a shared lock of the existing
    ``run.lock``, taken without waiting and released at once; the file is neither created nor written)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return False
    try:
        handle = open(os.path.join(directory, LOCK_FILE))
    except OSError:  # no lock file: never locked
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False
