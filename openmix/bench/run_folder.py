"""What a run folder holds and who may write to it, without importing Lightning (the runner and the report use it).

A run folder has one writer at a time: the process that writes it (its :class:`~openmix.lightning.loggers.RunLogger`)
holds an exclusive ``fcntl.flock`` on ``run.lock`` while it lives; the kernel releases it when the process ends,
however it ends. The file holds the writer's pid, for the error message of a second writer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

LOCK_FILE = "run.lock"


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
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
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
    """Whether a process holds the lock of a run folder now."""
    if not os.path.isfile(os.path.join(directory, LOCK_FILE)):
        return False
    try:
        handle = lock_folder(directory)
    except RunFolderBusy:
        return True
    if handle is not None:
        handle.close()  # releases the lock at once
    return False
