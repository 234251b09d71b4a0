"""A grid's runs as scheduler jobs: ``openmix bench GRID --executor slurm`` (or ``local``) and ``--status``.

The launcher is submitit (facebookincubator/submitit): it writes the sbatch script, submits job arrays, runs a
pickled Python callable in each task, and requeues a job that SLURM warns of its time limit or of a preemption
when the callable is :class:`submitit.helpers.Checkpointable`. Its ``LocalExecutor`` runs the same submission
path as processes of this machine, which is how the tests drive it without a cluster.

How a run maps to a job:

- Each unfinished run is one job; the runs of one submission are one job array (``sbatch --array``, task ``i``
  runs the i-th of them), with the same request for every run: partition, account, time limit, memory, extra
  sbatch options (:class:`~openmix.bench.cluster.ClusterOptions`, from the grid's ``cluster:`` section and the
  command line), one task per device (``--ntasks-per-node`` = the runs' ``trainer.devices``, ``--nodes`` =
  ``trainer.num_nodes``). Lightning's SLURM environment turns the tasks into one DDP world; rank 0 writes the run
  folder.
- A job runs :class:`RunJob`: the run's ``openmix fit`` command, built and recorded as the local runner does
  (:func:`openmix.bench.runner.execute`): it resumes from ``last.ckpt``, appends to ``output.log`` and writes
  ``run.json``.
- The job's id is written into the run folder's ``job.json`` (:data:`~openmix.bench.run_folder.JOB_JSON`) with
  the executor, the submission time and a token; the launcher's files and logs go to the grid's ``jobs/`` folder.

The guarantees of the local runner hold:

- A run that is done is never submitted, and a job that starts on a done run does nothing.
- One writer per run folder: a run whose recorded job is pending or running (or whose state cannot be learnt) is
  not submitted again; a job runs only while the folder's ``job.json`` holds its own token (a later submission
  supersedes it), and the fit process holds ``run.lock``.
- When SLURM warns of the time limit (``USR2``, 90 s ahead; 30 s for the local executor), the job stops the fit
  (its last epoch's checkpoint is on disk) and requeues itself (up to ``max_requeues`` time limits); the requeued
  job resumes from ``last.ckpt``. A preemption comes as ``SIGTERM`` or as SLURM's own requeue; a job requeued by
  SLURM, or killed any other way and submitted again, resumes the same way.
- Two submissions of a grid at once are serialised by the grid's ``submit.lock``; a run folder whose ``run.lock``
  a live process holds is not submitted.

``--status`` (:mod:`openmix.bench.status`) reads each run's state from its folder and asks the scheduler about the
recorded job.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from openmix.bench.cluster import ClusterOptions, format_time
from openmix.bench.grid import Grid, Run
from openmix.bench.run_folder import (
    JOBS_DIR,
    LOCK_FILE,
    OUTPUT_LOG,
    folder_is_locked,
    job_json_path,
    last_checkpoint_path,
    read_job_json,
    read_run_json,
)
from openmix.bench.runner import (
    child_setup,
    command,
    cost_lines,
    environment,
    execute,
    execute_test,
    grid_directories,
    is_complete,
    is_done,
    prepare_runs,
    test_command,
    write_grid_folder,
)
from openmix.bench.status import live_jobs

EXECUTORS = ("local", "slurm")
LOCAL_TIME_MIN = 7 * 24 * 60  # a local job without a time limit: a week
DEFAULT_REQUEUES = 5
SUBMIT_LOCK = "submit.lock"  # in the grid's runs folder: one submission of a grid at a time


@dataclass(frozen=True)
class Resources:
    """What one job of the grid holds: ``nodes`` x ``tasks_per_node`` processes, ``gpus_per_node`` GPUs a node."""

    nodes: int
    tasks_per_node: int
    gpus_per_node: int

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


def _device_count(devices: Any) -> int | None:
    """How many devices per node a ``trainer.devices`` value asks for; ``None`` for ``auto`` / ``-1``."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices if devices > 0 else None
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str) and devices.strip().isdigit():
        return int(devices) or None
    if isinstance(devices, str) and "," in devices:  # "0,1": device indices
        return len([part for part in devices.split(",") if part.strip()])
    return None


def job_resources(configs: list[dict[str, Any]], cluster: ClusterOptions, executor: str) -> Resources:
    """The request of every job of the grid, from the runs' trainer configs (``accelerator``, ``devices``,
    ``num_nodes``) and the cluster options, which must agree with them (``ValueError`` naming both otherwise)."""
    shapes = set()
    for config in configs:
        trainer = config.get("trainer") or {}
        accelerator = str(trainer.get("accelerator") or "auto")
        shapes.add((accelerator, _device_count(trainer.get("devices", "auto")), int(trainer.get("num_nodes") or 1)))
    if len(shapes) > 1:
        seen = "; ".join(
            f"accelerator={a}, devices={d or 'auto'}, num_nodes={n}" for a, d, n in sorted(shapes, key=str)
        )
        raise ValueError(
            f"the runs ask for different resources ({seen}): one submission is one request; submit them in groups "
            "with --only"
        )
    accelerator, devices, num_nodes = shapes.pop() if shapes else ("auto", 1, 1)
    on_gpus = accelerator in ("gpu", "cuda") or (accelerator == "auto" and bool(cluster.gpus_per_node))
    if accelerator == "cpu" and cluster.gpus_per_node:
        raise ValueError(
            f"gpus_per_node={cluster.gpus_per_node} (--gpus-per-node or cluster.gpus_per_node) but the runs train "
            "on trainer.accelerator=cpu: drop the GPUs, or pass --set trainer.accelerator=gpu"
        )
    gpus = cluster.gpus_per_node
    if gpus is None:
        gpus = (devices or 0) if on_gpus else 0
    elif on_gpus and devices is not None and gpus != devices:
        raise ValueError(
            f"gpus_per_node={gpus} (--gpus-per-node or cluster.gpus_per_node) but the runs train on "
            f"trainer.devices={devices}: pass --set trainer.devices={gpus} (and scale the learning rate), or "
            f"--gpus-per-node {devices}"
        )
    if on_gpus and gpus < 1:
        raise ValueError(
            f"the runs train on trainer.accelerator={accelerator} with trainer.devices={devices or 'auto'}: give "
            "the GPUs per node (--gpus-per-node or cluster.gpus_per_node)"
        )
    nodes = cluster.nodes if cluster.nodes is not None else num_nodes
    if nodes != num_nodes:
        raise ValueError(
            f"nodes={nodes} (--nodes or cluster.nodes) but the runs train on trainer.num_nodes={num_nodes}: pass "
            f"--set trainer.num_nodes={nodes}, or --nodes {num_nodes}"
        )
    if executor == "local":
        if nodes > 1:
            raise ValueError(f"--executor local runs on this machine; the runs ask for trainer.num_nodes={nodes}")
        return Resources(1, 1, gpus)  # one process; Lightning starts the others itself, as with `openmix fit`
    return Resources(nodes, (gpus if on_gpus else devices) or 1, gpus)


def _memory(mem_gb: float) -> str:
    return f"{int(mem_gb)}GB" if mem_gb == int(mem_gb) else f"{round(mem_gb * 1024)}MB"


def slurm_parameters(grid: Grid, cluster: ClusterOptions, resources: Resources) -> dict[str, Any]:
    """submitit's ``SlurmExecutor`` parameters (sbatch's options, underscored) of every job of the grid."""
    if cluster.time_min is None:
        raise ValueError(
            "--executor slurm needs the time limit of a job: --time or cluster.time in the grid file "
            "(e.g. 24:00:00; a run that needs longer requeues itself from its last checkpoint)"
        )
    parameters: dict[str, Any] = {
        "job_name": f"openmix-{grid.name}",
        "time": cluster.time_min,
        "nodes": resources.nodes,
        "ntasks_per_node": resources.tasks_per_node,
        "srun_args": ["--kill-on-bad-exit=1"],  # a rank that fails stops the others (no DDP hang to the time limit)
    }
    optional = {
        "gpus_per_node": resources.gpus_per_node or None,
        "partition": cluster.partition,
        "account": cluster.account,
        "cpus_per_task": cluster.cpus_per_task,
        "mem": None if cluster.mem_gb is None else _memory(cluster.mem_gb),
        "array_parallelism": cluster.array_parallelism,
        "setup": list(cluster.setup) or None,
        "additional_parameters": dict(cluster.sbatch) or None,
    }
    parameters.update({key: value for key, value in optional.items() if value is not None})
    return parameters


class ScriptOnlySlurmExecutor(submitit.SlurmExecutor):
    """submitit's ``SlurmExecutor`` where no SLURM is installed: it renders sbatch scripts (``--dry-run``, tests)
    and never submits."""

    @classmethod
    def affinity(cls) -> int:
        return 2  # the parent refuses to start without srun

    def _submit_command(self, command: str) -> submitit.Job:
        raise RuntimeError("this executor only renders sbatch scripts")


def make_executor(
    name: str, folder: Path, grid: Grid, cluster: ClusterOptions, resources: Resources, script_only: bool = False
) -> submitit.Executor:
    """The submitit executor of ``--executor name`` for the grid's jobs, their files in ``folder``."""
    requeues = DEFAULT_REQUEUES if cluster.max_requeues is None else cluster.max_requeues
    if name == "local":
        executor = submitit.LocalExecutor(folder, max_num_timeout=requeues)
        # the cluster's setup lines (module load ...) are not run here
        executor.update_parameters(
            timeout_min=cluster.time_min or LOCAL_TIME_MIN,
            gpus_per_node=resources.gpus_per_node,
            tasks_per_node=1,
            nodes=1,
        )
        return executor
    if name != "slurm":
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
    parameters = slurm_parameters(grid, cluster, resources)
    kind = ScriptOnlySlurmExecutor if script_only else submitit.SlurmExecutor
    executor = kind(folder, max_num_timeout=requeues)
    executor.update_parameters(**parameters)
    return executor


def sbatch_script(grid: Grid, cluster: ClusterOptions, resources: Resources, folder: Path, jobs: int) -> str:
    """The sbatch script submitit writes for ``jobs`` runs of the grid (an array when more than one), rendered
    without a cluster."""
    executor = make_executor("slurm", folder, grid, cluster, resources, script_only=True)
    if jobs > 1:
        executor.parameters["map_count"] = jobs  # what submitit sets on its copy for an array
    return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")


class RunJob(Checkpointable):
    """The callable a job runs: one run of a grid, to its end or to the scheduler's warning.

    Args:
        grid: the run's grid.
        run: the run.
        directory: its run folder.
        token: the token of the submission, also in the folder's ``job.json``; a job whose token is no longer
            there was superseded by a later submission and does nothing.
        threads: ``OMP_NUM_THREADS`` of the fit process when SLURM does not say ``SLURM_CPUS_PER_TASK``.
    """

    def __init__(self, grid: Grid, run: Run, directory: Path, token: str, threads: int = 1):
        self.grid, self.run, self.directory, self.token, self.threads = grid, run, Path(directory), token, threads
        self._process: subprocess.Popen | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_process": None}  # a process is not pickled with the requeued job

    def __call__(self) -> dict[str, Any]:
        job = submitit.JobEnvironment()
        owner = read_job_json(self.directory) or {}
        if owner.get("token") != self.token:
            return {"status": "superseded", "reason": f"{self.directory} belongs to job {owner.get('job_id')}"}
        threads = int(os.environ.get("SLURM_CPUS_PER_TASK") or self.threads)
        if is_done(self.directory):
            if self.grid.test is None or job.global_rank > 0:
                return {"status": "done", "reason": "already done"}
            return self._test(threads)
        ignored = (signal.Signals[f"SIG{submitit.JobEnvironment.USR_SIG}"],)  # submitit's warning is ours to handle
        if job.global_rank > 0:  # another process of a multi-device run: Lightning's SLURM environment ranks it
            return self._follow(job.global_rank, threads, ignored)
        record = execute(
            self.grid, self.run, self.directory, threads, job_id=job.job_id, ignored_signals=ignored, started=self._keep
        )
        if record["status"] == "busy":  # an error: srun stops the other ranks
            raise RuntimeError(record["reason"])
        if record["status"] != "done":  # recorded in run.json; the job fails too, for the scheduler's accounts
            raise RuntimeError(
                f"{self.run.name} failed: {record.get('reason', '?')} (see {self.directory / OUTPUT_LOG})"
            )
        return record if self.grid.test is None else self._test(threads)

    def _test(self, threads: int) -> dict[str, Any]:
        """The grid's ``test:`` step on rank 0, alone (:func:`~openmix.bench.runner.execute_test`); a folder that
        another process holds is an error, as for the fit."""
        test = execute_test(self.grid, self.directory, threads)
        if test["status"] != "done":
            raise RuntimeError(
                f"{self.run.name}: test failed: {test.get('reason', '?')} (see {self.directory / OUTPUT_LOG})"
            )
        return {**(read_run_json(self.directory) or {}), "status": "done"}

    def _keep(self, process: subprocess.Popen) -> None:
        self._process = process

    def _follow(self, rank: int, threads: int, ignored: tuple[int, ...]) -> dict[str, Any]:
        """Rank ``rank`` > 0 runs the same fit command; rank 0 alone records the run (its output: the job's log)."""
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(
            command(self.grid, self.run, self.directory), env=env, preexec_fn=child_setup(ignored)
        )
        self._keep(process)
        if process.wait() != 0:
            raise RuntimeError(f"rank {rank}: openmix fit exited with status {process.returncode}")
        return {"status": "done", "rank": rank}

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Called by submitit on rank 0 when the job is warned of its time limit or of a preemption: stop the fit
        (the last finished epoch's checkpoint is on disk, written atomically) and requeue this same job, which
        resumes from it."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        with open(self.directory / OUTPUT_LOG, "a") as log:
            last = last_checkpoint_path(self.directory)
            log.write(
                f"openmix bench: the scheduler warned this job; fit stopped, job requeued to resume from {last}\n"
            )
        return super().checkpoint(*args, **kwargs)


def _write_job_json(directory: Path, record: dict[str, Any]) -> None:
    """Replace the run's ``job.json`` whole (a job reading it never sees half of it)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = job_json_path(directory)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")  # one per writer
    partial.write_text(json.dumps(record, indent=2))
    os.replace(partial, path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------------ submission


def submit_grid(
    grid: Grid,
    runs_dir: str | Path = "runs",
    executor: str = "slurm",
    cluster: ClusterOptions | None = None,
    dry_run: bool = False,
    only: dict[str, list[str]] | None = None,
    overrides: dict | None = None,
    probe: int | None = None,
) -> list[Path]:
    """Submit every unfinished run of ``grid`` that no live job owns, as one job array, and return at once; the
    job ids go to each run folder's ``job.json``. ``cluster`` (the command line's options) overrides the grid
    file's ``cluster:`` section. With ``dry_run``, print the cost estimate and the sbatch script (or, locally, the
    commands) instead; ``probe`` (steps, with ``dry_run`` only) adds an estimate from a short timed fit per method
    on THIS machine (:func:`openmix.bench.probe.probe_grid`). Returns the folders of the selected runs, finished
    ones included.

    Raises :class:`~openmix.bench.runner.GridError` before anything is submitted when a run cannot run (see
    :func:`~openmix.bench.runner.check_runs`), ``ValueError`` for options that do not fit the runs."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    options = grid.cluster.updated(cluster or ClusterOptions())
    runs_dir = Path(runs_dir).absolute()  # a job may start in another working directory
    runs, directories, configs = prepare_runs(grid, runs_dir, only, overrides)
    resources = job_resources(configs, options, executor)
    if executor == "slurm":
        slurm_parameters(grid, options, resources)  # a missing time limit stops even a dry run
    grid_dir = Path(runs_dir) / grid.name
    with nullcontext() if dry_run else _submission_lock(grid_dir):
        return _submit_unowned(grid, runs_dir, executor, options, resources, dry_run, runs, directories, configs, probe)


def _submit_unowned(
    grid: Grid,
    runs_dir: Path,
    executor: str,
    options: ClusterOptions,
    resources: Resources,
    dry_run: bool,
    runs: list[Run],
    directories: list[Path],
    configs: list[dict[str, Any]],
    probe: int | None = None,
) -> list[Path]:
    """:func:`submit_grid` once it holds the grid's submission lock: what no live job and no live process owns is
    submitted."""
    owned = live_jobs(directories, grid)
    for directory in directories:
        if directory not in owned and not is_complete(grid, directory) and folder_is_locked(directory):
            owned[directory] = f"{LOCK_FILE} is held by a live process (a fit or its test still writing the run)"
    todo = [(run, d, c) for run, d, c in zip(runs, directories, configs) if not is_complete(grid, d) and d not in owned]
    done = sum(is_complete(grid, d) for d in directories)
    queued = f"{len(owned)} queued or running"
    print(f"grid {grid.name}: {len(runs)} runs, {done} already done, {queued}, {len(todo)} to submit")
    for directory, job in owned.items():
        print(f"  {directory.name}: {job}; not submitted again")
    grid_dir = Path(runs_dir) / grid.name
    if dry_run:
        _print_plan(grid, options, resources, executor, todo, grid_dir, probe)
        return directories
    if not todo:
        return directories
    threads = options.cpus_per_task or max(1, (os.cpu_count() or 1) // len(todo))
    provenance = {**environment(len(todo)), "executor": executor, "cluster": dataclasses.asdict(options)}
    write_grid_folder(grid, runs_dir, provenance)
    launcher = make_executor(executor, grid_dir / JOBS_DIR, grid, options, resources)
    submitted = _submit(launcher, executor, grid, [(run, directory) for run, directory, _ in todo], threads)
    first, last = submitted[0], submitted[-1]
    span = first if first == last else f"{first} ... {last}"
    print(f"submitted {len(todo)} run(s) as {executor} job(s) {span}; each run folder's job.json names its job")
    print(f"follow them with: openmix bench {grid.path} --runs-dir {runs_dir} --status")
    return directories


@contextmanager
def _submission_lock(grid_dir: Path) -> Iterator[None]:
    """Hold the grid's submission lock (``SUBMIT_LOCK`` in its runs folder) for the duration: a second submission
    of the same grid waits here, then sees the first one's jobs as live."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    grid_dir.mkdir(parents=True, exist_ok=True)
    with open(grid_dir / SUBMIT_LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print(f"another submission of this grid holds {grid_dir / SUBMIT_LOCK}; waiting for it to end")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _submit(
    launcher: submitit.Executor, executor: str, grid: Grid, todo: list[tuple[Run, Path]], threads: int
) -> list[str]:
    """Write each run's ``job.json`` (its token first: a job may start before its id is known), submit the jobs as
    one batch, then record their ids. A failed submission puts the previous records back."""
    previous = {directory: read_job_json(directory) for _, directory in todo}
    records = {}
    for _, directory in todo:
        before = previous[directory]
        history = (
            [*before.get("previous", []), {k: before.get(k) for k in ("executor", "job_id", "submitted_utc")}]
            if before
            else []
        )
        records[directory] = {
            "executor": executor,
            "job_id": None,
            "token": secrets.token_hex(8),
            "host": socket.gethostname(),
            "submitted_utc": _now(),
            "previous": history,
        }
        _write_job_json(directory, records[directory])
    quiet = _output_to(Path(launcher.folder) / "local-controllers.log") if executor == "local" else nullcontext()
    try:
        with quiet, launcher.batch():
            jobs = [launcher.submit(RunJob(grid, run, d, records[d]["token"], threads)) for run, d in todo]
    except BaseException:
        for _, directory in todo:
            if previous[directory] is None:
                job_json_path(directory).unlink(missing_ok=True)
            else:
                _write_job_json(directory, previous[directory])
        raise
    for job, (_, directory) in zip(jobs, todo):
        records[directory].update(job_id=str(job.job_id), folder=str(job.paths.folder), log=str(job.paths.stderr))
        _write_job_json(directory, records[directory])
    return [str(job.job_id) for job in jobs]


@contextmanager
def _output_to(log: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (the file descriptors) to ``log`` for the duration: the processes that
    submitit's local executor starts outlive this command, and must not hold its output open (whoever reads it to
    the end would wait for the jobs)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log, "a") as stream:
            os.dup2(stream.fileno(), 1)
            os.dup2(stream.fileno(), 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for number, copy in zip((1, 2), saved):
            os.dup2(copy, number)
            os.close(copy)


def _print_plan(
    grid: Grid,
    options: ClusterOptions,
    resources: Resources,
    executor: str,
    todo: list,
    grid_dir: Path,
    probe: int | None = None,
) -> None:
    """The dry run: the cost estimate, then the sbatch script and the run of each array task (or the commands).
    ``probe``: also time that many steps of each method here (:func:`openmix.bench.probe.probe_grid`), the jobs
    running ``array_parallelism`` at a time (SLURM; else all at once), with the CPU threads a job gets."""
    pending = [directory for _, directory, _ in todo]
    configs = [config for _, _, config in todo]
    devices = max(1, resources.gpus or resources.nodes * resources.tasks_per_node)
    probed = None
    if probe is not None and todo:
        from openmix.bench.probe import probe_grid

        parallel = options.array_parallelism if executor == "slurm" else None
        threads = options.cpus_per_task or max(1, (os.cpu_count() or 1) // len(todo))  # as _submit_unowned
        probed = probe_grid(
            grid,
            [run for run, _, _ in todo],
            pending,
            configs,
            probe,
            parallel=parallel,
            threads=threads,
            devices_per_run=devices,
        )
    tests = len(pending) if grid.test is not None else 0
    lines = cost_lines(pending, configs, grid_directories(grid, grid_dir.parent), devices, probe=probed, tests=tests)
    if executor == "slurm" and todo:
        requeues = DEFAULT_REQUEUES if options.max_requeues is None else options.max_requeues
        unit = f"{resources.gpus} GPU(s)" if resources.gpus else f"{resources.nodes} node(s)"
        hours = len(todo) * (resources.gpus or resources.nodes) * options.time_min / 60
        lines.append(
            f"  requested: {len(todo)} job(s) x {unit} x {format_time(options.time_min)} = at most {hours:.1f} "
            f"{'GPU' if resources.gpus else 'node'}-hours before requeues (a job that reaches its time limit requeues "
            f"itself, at most {requeues} times)"
        )
    print("\n".join(lines))
    if not todo:
        return
    if executor == "slurm":
        print(f"\nsbatch script ({grid_dir / JOBS_DIR}):\n")
        print(sbatch_script(grid, options, resources, grid_dir / JOBS_DIR, len(todo)))
    import shlex

    for index, (run, directory, _) in enumerate(todo):
        label = f"task {index}: " if executor == "slurm" and len(todo) > 1 else ""
        steps = [] if is_done(directory) else [shlex.join(command(grid, run, directory))]  # the fit, unless done
        if grid.test is not None:  # then its test step, on rank 0
            steps.append(shlex.join(test_command(grid, directory)))
        print(f"{label}{run.name}\n" + "\n".join(f"  {step}" for step in steps))
