"""Where a grid's runs stand: ``openmix bench GRID --status``, and the scheduler's view of the jobs that own run
folders (which :mod:`openmix.bench.jobs` and :mod:`openmix.bench.runner` ask before starting anything).

A run's state comes from its folder (``run.json``: done, or failed with the reason; ``metrics.csv``: the epochs
done; ``job.json``: the job that owns it) and from the scheduler about that job: SLURM's ``sacct`` through
submitit, else ``squeue``; for a job of the local executor, whether its process lives. What cannot be asked is
``unknown``: a run folder is never handed to a second writer on a guess.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from openmix.bench.grid import Grid
from openmix.bench.run_folder import folder_is_locked, job_json_path, last_checkpoint_path, read_job_json, read_run_json
from openmix.bench.runner import is_complete, is_done, progress, reason_in_log, run_directory, select_runs

# SLURM job states (squeue / sacct), by what they mean for the run
WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING", "SUSPENDED"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
UNKNOWN = "UNKNOWN"

# ---------------------------------------------------------------------------------------------- the scheduler's view


def _local_state(job: dict[str, Any]) -> str:
    """RUNNING while the local job's controller process lives, ENDED after; UNKNOWN for another machine's."""
    if job.get("host") != socket.gethostname():
        return UNKNOWN
    try:
        pid = int(job["job_id"])
        os.kill(pid, 0)
    except (KeyError, TypeError, ValueError, ProcessLookupError):
        return "ENDED"
    except PermissionError:  # a process of another user: not our controller
        return "ENDED"
    stat, cmdline = Path(f"/proc/{pid}/stat"), Path(f"/proc/{pid}/cmdline")
    if stat.is_file():
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z" or b"submitit" not in cmdline.read_bytes():
                return "ENDED"  # a zombie not yet reaped, or the pid reused by another program
        except (OSError, IndexError):
            return "ENDED"
    return "RUNNING"


def _squeue_states() -> dict[str, str] | None:
    """Every job of this user in squeue (array tasks one by one) and its state; ``None`` when squeue fails."""
    if shutil.which("squeue") is None:
        return None
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
    try:
        output = subprocess.run(
            ["squeue", "--noheader", "--array", "--user", user, "--format", "%i|%T"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return dict(line.strip().split("|", 1) for line in output.splitlines() if "|" in line)


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM's state of each job id (``sacct`` through submitit, then ``squeue`` for what sacct does not know: a
    job id squeue does not list has ended); ``UNKNOWN`` when neither can say."""
    states = dict.fromkeys(job_ids, UNKNOWN)
    if job_ids and shutil.which("sacct") is not None:
        submitit.SlurmJob.watcher.clear()  # submitit caches ended jobs' states; ask afresh
        jobs = [submitit.SlurmJob(folder=".", job_id=job_id) for job_id in job_ids]  # registered: one sacct call
        for job in jobs:
            states[job.job_id] = (job.state.split() or [UNKNOWN])[0].upper()  # "CANCELLED by 123" -> CANCELLED
    missing = [job_id for job_id, state in states.items() if state == UNKNOWN]
    listed = _squeue_states() if missing else None
    if listed is not None:
        states.update({job_id: listed.get(job_id, "ENDED") for job_id in missing})
    return states


def scheduler_states(jobs: dict[Path, dict[str, Any]]) -> dict[Path, str]:
    """The scheduler's state of each run's recorded job (``job.json`` records, by run folder)."""
    slurm_ids = [str(job["job_id"]) for job in jobs.values() if job.get("executor") == "slurm" and job.get("job_id")]
    slurm = slurm_states(slurm_ids)
    states = {}
    for directory, job in jobs.items():
        if not job.get("job_id"):
            states[directory] = UNKNOWN  # submitted, but the id never got written
        elif job.get("executor") == "local":
            states[directory] = _local_state(job)
        else:
            states[directory] = slurm.get(str(job["job_id"]), UNKNOWN)
    return states


def _recorded_jobs(directories: list[Path]) -> dict[Path, dict[str, Any]]:
    jobs = {}
    for directory in directories:
        record = read_job_json(directory)
        if record is not None:
            jobs[directory] = record
    return jobs


def live_jobs(directories: list[Path], grid: Grid | None = None) -> dict[Path, str]:
    """The run folders whose recorded job is pending or running, or cannot be asked about, each with a line
    naming the job and its state (no second job, and no local run, may then write there). Complete runs are left
    out (done, and with the ``grid``'s test step done when it has one)."""
    finished = is_done if grid is None else functools.partial(is_complete, grid)
    jobs = {d: job for d, job in _recorded_jobs(directories).items() if not finished(d)}
    live = {}
    for directory, state in scheduler_states(jobs).items():
        job_id = jobs[directory].get("job_id")
        if state in WAITING or state in RUNNING:
            live[directory] = f"job {job_id} is {state.lower()}"
        elif state == UNKNOWN:
            live[directory] = (
                f"the state of job {job_id} ({jobs[directory].get('executor')}) cannot be learnt here; if it has "
                f"ended, delete {job_json_path(directory)} to run it again"
            )
    return live


# ---------------------------------------------------------------------------------------------------------- status


@dataclass(frozen=True)
class RunStatus:
    """Where one run stands: ``state`` is done, running, pending, failed, not submitted or unknown."""

    name: str
    directory: Path
    state: str
    job_id: str | None = None
    detail: str = ""


def _epochs(directory: Path) -> str:
    state = progress(directory)
    return "" if state is None else f"epoch {state[0]}, val top-1 {100 * state[1]:.2f}%"


def _resumes(directory: Path) -> str:
    """``resumes after epoch N`` for a run with a checkpoint, else empty."""
    if not last_checkpoint_path(directory).is_file():
        return ""
    state = progress(directory)
    return f"resumes after epoch {state[0]}" if state else "resumes from its checkpoint"


def _failed_in(record: dict[str, Any] | None, job: dict[str, Any]) -> bool:
    """Whether ``run.json`` records a failure of the job ``job`` (its last segment ran in that job)."""
    segments = (record or {}).get("segments") or [{}]
    return bool(record) and record.get("status") == "failed" and segments[-1].get("job_id") == job.get("job_id")


def _ended_reason(directory: Path, job: dict[str, Any], state: str) -> str:
    """Why a run whose job ended is not done: the run's own failure, else the job's state and log."""
    record = read_run_json(directory) or {}
    if _failed_in(record, job):
        return str(record.get("reason", "?"))
    log = Path(job["log"]) if job.get("log") else None
    ended = "ended" if state in ("ENDED", "COMPLETED") else f"ended {state}"
    return f"job {job.get('job_id')} {ended}" + (f": {reason_in_log(log)}" if log and log.is_file() else "")


def run_status(
    directory: Path, job: dict[str, Any] | None, state: str | None, grid: Grid | None = None
) -> tuple[str, str]:
    """(state, detail) of one run from its folder and its job's scheduler ``state``; with a ``grid`` that has a
    test step, a run whose fit is done is done only once its test is."""
    try:
        record = read_run_json(directory)
    except ValueError as error:
        return "unknown", str(error)
    if record is not None and record.get("status") == "done":
        if grid is None or grid.test is None or is_complete(grid, directory):
            return "done", _epochs(directory)
        return _test_status(directory, record, job, state)
    if job is not None:
        if state in WAITING:
            return "pending", ", ".join(filter(None, (state.lower(), _resumes(directory))))
        if state in RUNNING:
            return "running", _epochs(directory) or "starting"
        if folder_is_locked(directory):  # the job has ended (or cannot be asked about) but its fit still writes
            return "running", f"folder locked by a live process; {_epochs(directory) or 'starting'}"
        if state == UNKNOWN or state is None:
            if _failed_in(record, job):  # the job recorded its own failure: no scheduler needed
                return "failed", str(record.get("reason", "?")) + _again(directory)
            return "unknown", f"the scheduler cannot say ({job.get('executor')} job {job.get('job_id')})"
        return "failed", _ended_reason(directory, job, state) + _again(directory)
    if folder_is_locked(directory):  # a plain `openmix bench` resuming it, failed before or not
        return "running", f"outside a scheduler; {_epochs(directory) or 'starting'}"
    if record is not None and record.get("status") == "failed":
        return "failed", str(record.get("reason", "?")) + _again(directory)
    return "not submitted", _resumes(directory)


def _test_status(
    directory: Path, record: dict[str, Any], job: dict[str, Any] | None, state: str | None
) -> tuple[str, str]:
    """(state, detail) of a run whose fit is done and whose test step is not."""
    if job is not None and state in WAITING:
        return "pending", "fit done; its test step waits for the job"
    if (job is not None and state in RUNNING) or folder_is_locked(directory):
        return "running", "fit done; its test step is running"
    test = record.get("test") or {}
    if test.get("status") == "failed":
        return "failed", f"fit done; test: {test.get('reason', '?')}"
    if test.get("status") == "done":
        return "not submitted", "fit done; its test ran with other test: options, to run again"
    return "not submitted", "fit done; its test step has not run"


def _again(directory: Path) -> str:
    resumes = _resumes(directory)
    return f"; submitted again, it {resumes}" if resumes else ""


def grid_status(grid: Grid, runs_dir: str | Path = "runs", only: dict[str, list[str]] | None = None) -> list[RunStatus]:
    """The state of every run of the grid (or of those ``only`` keeps), from the run folders and the scheduler."""
    runs = select_runs(grid.runs(), only)
    directories = [run_directory(runs_dir, grid, run) for run in runs]
    jobs, unreadable = {}, {}
    for directory in directories:
        try:
            record = read_job_json(directory)
        except ValueError as error:  # the error a submission stops with
            unreadable[directory] = str(error)
            continue
        if record is not None:
            jobs[directory] = record
    states = scheduler_states({d: job for d, job in jobs.items() if not is_complete_quietly(grid, d)})
    statuses = []
    for run, directory in zip(runs, directories):
        job = jobs.get(directory)
        if directory in unreadable and not is_done_quietly(directory):
            statuses.append(RunStatus(run.name, directory, "unknown", None, unreadable[directory]))
            continue
        state, detail = run_status(directory, job, states.get(directory), grid)
        statuses.append(RunStatus(run.name, directory, state, None if job is None else job.get("job_id"), detail))
    return statuses


def is_done_quietly(directory: Path) -> bool:
    """:func:`~openmix.bench.runner.is_done`, with a corrupt ``run.json`` counting as not done."""
    try:
        return is_done(directory)
    except ValueError:
        return False


def is_complete_quietly(grid: Grid, directory: Path) -> bool:
    """:func:`~openmix.bench.runner.is_complete`, with a corrupt ``run.json`` counting as not complete."""
    try:
        return is_complete(grid, directory)
    except ValueError:
        return False


def status_table(grid: Grid, statuses: list[RunStatus]) -> str:
    """``--status``: a count per state, then one line per run."""
    order = ("done", "running", "pending", "failed", "not submitted", "unknown")
    counts = {state: sum(status.state == state for status in statuses) for state in order}
    summary = ", ".join(f"{count} {state}" for state, count in counts.items() if count)
    width = max((len(status.name) for status in statuses), default=0)
    lines = [f"grid {grid.name}: {len(statuses)} runs: {summary}"]
    for status in statuses:
        job = f"job {status.job_id}" if status.job_id else ""
        lines.append(f"  {status.name:<{width}}  {status.state:<13}  {job:<16}  {status.detail}".rstrip())
    return "\n".join(lines)
