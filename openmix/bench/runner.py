"""Run a grid: one ``openmix fit`` process per run, one after another or N at a time; finished runs are skipped.

Each run lives in ``RUNS_DIR/<grid name>/<run name>/``:

- ``metrics.csv``: per-epoch (and per-step) metrics, one continuous file across resumes
  (:class:`~openmix.lightning.loggers.RunLogger`, the same mechanism as ``openmix fit --ckpt_path``);
- ``config.yaml``: the resolved config, saved by LightningCLI;
- ``checkpoints/``: ``last.ckpt`` and the best one;
- ``run.json``: written when a process ends: status, wall time and peak memory (max RSS) summed / maxed over every
  process of the run (``segments`` lists each one), command;
- ``output.log``: the process's output.

A run whose ``run.json`` says ``done`` is skipped; a run that has a ``last.ckpt`` but is not done (the grid was
killed) resumes from it with ``--ckpt_path``. So a grid killed at any point loses at most the unfinished epochs of
the runs in flight and continues where it stopped.

A run folder is reused only for the same experiment: before anything starts, every run's command is resolved to
its complete configuration (which also rejects a misspelt key at once), and a run whose folder holds a
``config.yaml`` that resolves differently is refused, with the keys that changed. The ``fit`` processes die with
the runner (Linux), and a folder has one writer at a time (:class:`~openmix.lightning.loggers.RunLogger` holds
``run.lock``); the runner never starts a second one, nor a run that a scheduler job owns (:mod:`openmix.bench.jobs`:
the same runs as jobs of a cluster, with the same guarantees).
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from openmix.bench.grid import Grid, Run
from openmix.bench.run_folder import (
    ENVIRONMENT_FILE,
    OUTPUT_LOG,
    TEST_FOLDER,
    VERSION_PATTERN,
    RunFolderBusy,
    checkpoints_dir,
    config_path,
    folder_is_locked,
    job_json_path,
    last_checkpoint_path,
    lock_folder,
    metrics_path,
    read_run_json,
    run_json_path,
)


def run_directory(runs_dir: str | Path, grid: Grid, run: Run) -> Path:
    return Path(runs_dir) / grid.name / run.name


def is_done(directory: Path) -> bool:
    """Whether the run's ``run.json`` says ``done`` (a corrupt one raises ``ValueError`` naming it)."""
    record = read_run_json(directory)
    return record is not None and record.get("status") == "done"


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def test_is_done(grid: Grid, directory: Path) -> bool:
    """Whether the run's ``run.json`` records a finished ``openmix test`` step with the grid's present ``test:``
    overrides (a changed ``test:`` section runs the test again; the report reads the newest)."""
    test = ((read_run_json(directory) or {}).get("test")) or {}
    return test.get("status") == "done" and test.get("overrides") == _as_json(grid.test)


def is_complete(grid: Grid, directory: Path) -> bool:
    """Whether nothing is left of a run: its fit is done and, when the grid has a ``test:`` step, its test too."""
    return is_done(directory) and (grid.test is None or test_is_done(grid, directory))


def _value(value: Any) -> str:
    """A config value as jsonargparse reads it from the command line (YAML flow style)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def loggers(grid: Grid, run: Run, directory: Path) -> list[dict[str, Any]]:
    """The CSV logger writing into the run's folder, plus wandb (one group per grid) when the grid asks for it."""
    specs: list[dict[str, Any]] = [
        {
            "class_path": "openmix.lightning.loggers.RunLogger",
            "init_args": {"save_dir": str(directory), "name": "", "version": ""},
        }
    ]
    if grid.wandb:
        specs.append(
            {
                "class_path": "lightning.pytorch.loggers.WandbLogger",
                "init_args": {"save_dir": str(directory), "project": "openmix", "group": grid.name, "name": run.name},
            }
        )
    return specs


def run_arguments(run: Run) -> list[str]:
    """What a run trains, as ``openmix fit`` arguments: its config files, then its overrides."""
    args = []
    for config in run.configs:
        args += ["--config", str(config)]
    for key, value in run.overrides.items():
        args.append(f"--{key}={_value(value)}")
    return args


def command(grid: Grid, run: Run, directory: Path) -> list[str]:
    """The ``openmix fit`` command of a run (resuming from ``last.ckpt`` when there is one)."""
    args = [sys.executable, "-m", "openmix.cli", "fit", *run_arguments(run)]
    args += [
        f"--trainer.default_root_dir={directory}",
        f"--trainer.logger={json.dumps(loggers(grid, run, directory))}",
        f"--checkpoint.dirpath={checkpoints_dir(directory)}",
        "--trainer.enable_progress_bar=false",
    ]
    last = last_checkpoint_path(directory)
    if last.is_file():
        args.append(f"--ckpt_path={last}")
    return args


def test_command(grid: Grid, directory: Path) -> list[str]:
    """The ``openmix test`` command of a finished run: its saved config and ``last.ckpt`` (the final model, which
    the report's tables describe), one device, a CSV log in ``<run>/test/version_N/`` (where
    :func:`openmix.bench.report.read_evaluation` reads it), then the grid's ``test:`` overrides."""
    tests = directory / TEST_FOLDER
    versions = (
        [int(m.group(1)) for e in tests.iterdir() if (m := VERSION_PATTERN.fullmatch(e.name))] if tests.is_dir() else []
    )
    version = max(versions, default=-1) + 1  # the next free version_N (the saved config's logger has version "")
    logger = [
        {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(directory), "name": TEST_FOLDER, "version": f"version_{version}"},
        }
    ]
    args = [sys.executable, "-m", "openmix.cli", "test", "--config", str(config_path(directory))]
    args += [
        f"--ckpt_path={last_checkpoint_path(directory)}",
        f"--trainer.logger={json.dumps(logger)}",
        "--trainer.enable_progress_bar=false",
        "--trainer.devices=1",
        "--trainer.num_nodes=1",
        "--trainer.strategy=auto",
    ]
    for key, value in (grid.test or {}).items():
        args.append(f"--{key}={_value(value)}")
    return args


# Modules whose classes moved: a class_path under the old prefix names the same class as under the new one.
MOVED_MODULES = {"openmix.lightning.data.": "openmix.data."}


def current_class_paths(value: Any) -> Any:
    """``value`` with every ``class_path`` of a moved module (:data:`MOVED_MODULES`) spelled as today, so that the
    ``config.yaml`` of a run made before the move compares equal to the same configuration written now."""
    if isinstance(value, list):
        return [current_class_paths(item) for item in value]
    if not isinstance(value, dict):
        return value
    renamed = {key: current_class_paths(item) for key, item in value.items()}
    class_path = renamed.get("class_path")
    for old, new in MOVED_MODULES.items():
        if isinstance(class_path, str) and class_path.startswith(old):
            renamed["class_path"] = new + class_path.removeprefix(old)
    return renamed


def resolved_config_file(path: Path) -> dict[str, Any]:
    """The resolved configuration of a saved ``config.yaml``, as :func:`~openmix.lightning.cli.resolve_config`
    gives it (``fit``'s own options and the location keys left out; class paths of moved modules spelled as today,
    see :func:`current_class_paths`). A file that no longer parses raises ``ValueError`` naming it."""
    from openmix.lightning.cli import resolve_config, without_location_keys

    data = current_class_paths(yaml.safe_load(path.read_text()) or {})
    data = {key: value for key, value in data.items() if key in _fit_keys()}  # not the subcommand's own options
    without_location_keys(data)  # where it wrote is not part of what it trained
    copy = path.with_name(f".{path.stem}-to-compare.yaml")
    copy.write_text(yaml.safe_dump(data))
    try:
        return resolve_config(["--config", str(copy)])
    except ValueError as error:
        raise ValueError(f"{path} no longer parses ({error.args[0].splitlines()[0]})") from None
    finally:
        copy.unlink(missing_ok=True)


def saved_config(directory: Path) -> dict[str, Any] | None:
    """The resolved configuration a run folder was made with (from the ``config.yaml`` LightningCLI saved), or
    ``None`` when the run never got that far."""
    saved = config_path(directory)
    return resolved_config_file(saved) if saved.is_file() else None


@functools.cache
def _fit_keys() -> frozenset[str]:
    """The top-level keys of a resolved run configuration (a saved ``config.yaml`` also has ``fit``'s own
    options, ``ckpt_path`` and ``weights_only``, which say how to start, not what to train)."""
    from openmix.lightning.cli import resolve_config

    return frozenset(resolve_config([]))


def config_changes(before: Any, after: Any, prefix: str = "") -> list[str]:
    """``key: before -> after`` for every leaf that differs between two resolved configurations."""
    if isinstance(before, dict) and isinstance(after, dict):
        changes = []
        for key in sorted(set(before) | set(after), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            changes += config_changes(before.get(key, "<absent>"), after.get(key, "<absent>"), name)
        return changes
    return [] if before == after else [f"{prefix}: {before!r} -> {after!r}"]


def check_runs(
    grid: Grid, runs: list[Run], directories: list[Path], resolved: list[dict[str, Any]] | None = None
) -> list[str]:
    """Problems that stop the grid before anything runs: a run whose arguments do not parse, or whose folder was
    made by a different configuration (a changed grid under the same name). ``resolved``, when given, receives each
    run's complete configuration (an empty one for a run whose arguments do not parse)."""
    from openmix.lightning.cli import resolve_config

    problems = []
    for run, directory in zip(runs, directories):
        try:
            wanted = resolve_config(run_arguments(run))
        except ValueError as error:
            problems.append(f"{run.name}: its arguments are not a valid configuration:\n{error}")
            if resolved is not None:
                resolved.append({})
            continue
        if resolved is not None:
            resolved.append(wanted)
        mixer = ((wanted.get("model") or {}).get("init_args") or {}).get("mixer")
        if isinstance(mixer, str):  # a value the parser cannot check: an unknown mixer fails only when the run starts
            from openmix.mixers import get_mixer_entry

            try:
                get_mixer_entry(mixer)
            except ValueError as error:
                problems.append(f"{run.name}: model.init_args.mixer: {error}")
                continue
        try:
            made = saved_config(directory)
        except ValueError as error:
            problems.append(f"{run.name}: {error}")
            continue
        if made is not None and made != wanted:
            changed = config_changes(made, wanted)
            shown = "\n    ".join(changed[:10]) + (f"\n    ... {len(changed) - 10} more" if len(changed) > 10 else "")
            problems.append(
                f"{run.name}: {directory} holds a run of a different configuration:\n    {shown}\n"
                "  Give the changed grid another name (or --runs-dir), or delete that folder to run it again."
            )
    if grid.test is not None and runs and not problems:
        problems += check_test_step(grid, runs[0])
    return problems


def check_test_step(grid: Grid, run: Run) -> list[str]:
    """Problems of the grid's ``test:`` overrides, found before any fit starts: keys the configuration does not
    have, an :class:`~openmix.evaluation.Evaluation` it refuses, an OOD set that does not exist (checked on
    ``run``'s configuration with the overrides on top)."""
    from openmix.evaluation import DIGITS_SOURCE, Evaluation
    from openmix.lightning.cli import resolve_config

    arguments = run_arguments(run) + [f"--{key}={_value(value)}" for key, value in (grid.test or {}).items()]
    try:
        config = resolve_config(arguments, keep_location_keys=True)  # with the model's evaluation options
    except ValueError as error:
        return [f"test: the test step's overrides are not a valid configuration:\n{error}"]
    evaluation = ((config.get("model") or {}).get("init_args") or {}).get("evaluation")
    if not isinstance(evaluation, dict):
        return []
    fields = {key: value for key, value in evaluation.items() if key in Evaluation.__dataclass_fields__}
    try:
        built = Evaluation(**fields)
    except (TypeError, ValueError) as error:
        return [f"test: model.init_args.evaluation: {error}"]
    if built.ood not in (None, DIGITS_SOURCE) and not Path(built.ood).exists():
        return [f"test: model.init_args.evaluation.ood: the OOD set {built.ood} does not exist"]
    return []


def failure_reason(directory: Path) -> str:
    """The line of a failed run's ``output.log`` that says why (the last error line, else the last line)."""
    return reason_in_log(directory / OUTPUT_LOG)


# the last line of a traceback: ``ValueError: ...``, ``torch.OutOfMemoryError: ...``, ``KeyboardInterrupt``
EXCEPTION_LINE = re.compile(r"^(\w+\.)*\w*(Error|Exception|Interrupt|Exit)\b(:|$)")
# a line that reports an error: ``submitit ERROR: RuntimeError: ...``, ``sbatch: error: ...`` (a bare name such as a
# model summary's ``MulticlassCalibrationError`` row is not one)
ERROR_LINE = re.compile(r"\b\w*(Error|Exception)\b:|\berror:")


def reason_in_log(log: Path) -> str:
    """The line of a log that says why a process failed: the last traceback's exception line, else the last line
    reporting an error (``...Error: ...``), else the last line."""
    if not log.is_file():
        return f"no {log.name}"
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    tracebacks = [index for index, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if tracebacks:
        ends = [line for line in lines[tracebacks[-1] + 1 :] if EXCEPTION_LINE.match(line)]
        if ends:
            return ends[-1][:300]
    errors = [line for line in lines if EXCEPTION_LINE.match(line) or ERROR_LINE.search(line)]
    return (errors or lines or [f"empty {log.name}"])[-1][:300]


def exit_reason(returncode: int, log: Path) -> str:
    """Why a process that exited with ``returncode`` failed: the signal that killed it (a negative code), else the
    line of its log that says why."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by signal {name}"
    return reason_in_log(log)


def progress(directory: Path) -> tuple[int, float] | None:
    """(epochs finished, last val/top1) of a run from its ``metrics.csv``, ``None`` before its first epoch."""
    log = metrics_path(directory)
    if not log.is_file():
        return None
    try:
        with open(log, newline="") as stream:
            rows = [row for row in csv.DictReader(stream) if row.get("val/top1")]
    except (OSError, csv.Error):
        return None
    return (int(float(rows[-1]["epoch"])) + 1, float(rows[-1]["val/top1"])) if rows else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to kill the child when the runner dies (prctl PR_SET_PDEATHSIG), so no fit outlives it."""
    if sys.platform.startswith("linux"):
        import ctypes

        # SIGKILL: Lightning turns SIGTERM into a flag it checks between batches, which a stalled process never
        # reaches; checkpoints are written atomically (RunCheckpoint), so a kill cannot leave a broken one
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def child_setup(ignored_signals: Sequence[int]) -> Callable[[], None]:
    """What the fit child does between fork and exec: die with its parent, and ignore ``ignored_signals`` (a
    scheduler's warning signal, sent to every process of a job, is its parent's to handle)."""

    def setup() -> None:  # pragma: no cover - runs in the child between fork and exec
        _die_with_parent()
        for number in ignored_signals:
            signal.signal(number, signal.SIG_IGN)

    return setup


def previous_segments(directory: Path) -> list[dict[str, Any]]:
    """The processes a run's ``run.json`` recorded before this one (empty for a new run)."""
    data = read_run_json(directory)
    if data is None:
        return []
    if "segments" in data:
        return list(data["segments"])
    keys = ("returncode", "wall_time_s", "peak_rss_mb")
    return [{key: data[key] for key in keys if key in data}]  # a record written before segments existed


def execute(
    grid: Grid,
    run: Run,
    directory: Path,
    threads: int,
    *,
    job_id: str | None = None,
    ignored_signals: Sequence[int] = (),
    started: Callable[[subprocess.Popen], None] | None = None,
) -> dict[str, Any]:
    """Run one fit process to its end; record status, wall time and peak memory in ``run.json``.

    A scheduler job (:class:`openmix.bench.jobs.RunJob`) passes its ``job_id`` (kept in the process's segment of
    ``run.json``), the signals the fit process must ignore, and ``started``, called with the process once it runs."""
    directory.mkdir(parents=True, exist_ok=True)
    if folder_is_locked(directory):  # another fit still writes there (e.g. left by a runner killed elsewhere)
        return {"status": "busy", "reason": f"another process is writing to {directory}", "labels": run.labels}
    args = command(grid, run, directory)
    segments = previous_segments(directory)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(directory / OUTPUT_LOG, "a") as log:
        setup = child_setup(ignored_signals) if ignored_signals else _die_with_parent
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=setup)
        if started is not None:
            started(process)
        _, status, usage = os.wait4(process.pid, 0)  # the child's own resource usage
        process.returncode = os.waitstatus_to_exitcode(status)
    # a segment killed with the grid runner itself leaves no record; the training process logs its own cumulative
    # wall time and peak memory into metrics.csv, which the report prefers
    segments.append(
        {
            "returncode": process.returncode,
            "wall_time_s": time.perf_counter() - start,
            "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux reports kilobytes
            **({"job_id": job_id} if job_id is not None else {}),
        }
    )
    record = {
        "status": "done" if process.returncode == 0 else "failed",
        "returncode": process.returncode,
        "wall_time_s": sum(segment["wall_time_s"] for segment in segments),
        "peak_rss_mb": max(segment["peak_rss_mb"] for segment in segments),
        "segments": segments,
        "grid": grid.name,
        "labels": run.labels,
        "command": args,
    }
    if process.returncode != 0:
        record["reason"] = exit_reason(process.returncode, directory / OUTPUT_LOG)
    path = run_json_path(directory)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")  # a reader never sees half of it
    partial.write_text(json.dumps(record, indent=2))
    os.replace(partial, path)
    return record


def execute_test(grid: Grid, directory: Path, threads: int) -> dict[str, Any]:
    """Run a finished run's ``openmix test`` (:func:`test_command`) to its end, holding the run folder's lock;
    record it under ``test`` in ``run.json`` (status, return code, wall time, command, the grid's ``test:``
    overrides) and return that record (status ``busy``, nothing run, when another process holds the folder). The
    process runs alone, on one device: the variables of a scheduler's job (``SLURM_*``) are not passed on, so that
    Lightning does not wait for the job's other tasks."""
    try:  # one writer per run folder: the runner holds its lock while the test writes there
        lock = lock_folder(directory)
    except RunFolderBusy as error:
        return {"status": "busy", "reason": str(error), "wall_time_s": 0.0}
    args = test_command(grid, directory)
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    try:
        with open(directory / OUTPUT_LOG, "a") as log:
            log.write(f"\n[openmix bench] test: {' '.join(args)}\n")
            log.flush()
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
            returncode = process.wait()
        test = {
            "status": "done" if returncode == 0 else "failed",
            "returncode": returncode,
            "wall_time_s": time.perf_counter() - start,
            "command": args,
            "overrides": _as_json(grid.test),
        }
        if returncode != 0:
            test["reason"] = exit_reason(returncode, directory / OUTPUT_LOG)
        record = read_run_json(directory) or {}
        record["test"] = test
        path = run_json_path(directory)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(record, indent=2))
        os.replace(partial, path)
    finally:
        if lock is not None:
            lock.close()
    return test


def environment(parallel: int) -> dict[str, Any]:
    """What a reader needs to reproduce a grid: versions, processor, threads, command line, date."""
    import platform
    from datetime import datetime, timezone

    import lightning
    import timm
    import torch

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["openmix", *sys.argv[1:]])
        if sys.argv and sys.argv[0].endswith(("openmix", "cli.py"))
        else " ".join(sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "timm": timm.__version__,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "parallel_runs": parallel,
    }


class GridError(RuntimeError):
    """A grid that cannot run as it is (invalid runs, or folders of a different configuration)."""


def write_grid_copy(grid: Grid, grid_dir: Path) -> None:
    """Keep the grid file beside its runs: ``grid.yaml``, and earlier different versions as ``grid.N.yaml``."""
    text = grid.path.read_text()
    current = grid_dir / "grid.yaml"
    if current.is_file() and current.read_text() != text:
        number = 1 + len(list(grid_dir.glob("grid.*.yaml")))
        current.rename(grid_dir / f"grid.{number}.yaml")
    current.write_text(text)


def select_runs(runs: list[Run], only: dict[str, list[str]] | None = None, overrides: dict | None = None) -> list[Run]:
    """The runs whose labels match ``only`` (axis -> accepted labels), each with ``overrides`` added to its own
    (for a smoke test of a grid: ``{"trainer.max_epochs": 1}``). An axis or label ``only`` names that the grid
    lacks is a ``ValueError``."""
    import dataclasses

    for axis, labels in (only or {}).items():
        if axis not in runs[0].labels:
            raise ValueError(
                f"--only {axis}=...: the grid has no axis {axis!r} (its axes: {', '.join(runs[0].labels)})"
            )
        known = {run.labels.get(axis) for run in runs}
        if not set(labels) <= known:
            choices = ", ".join(sorted(str(k) for k in known if k is not None))
            raise ValueError(f"--only {axis}={','.join(labels)}: the grid's values of {axis!r} are {choices}")
    chosen = [run for run in runs if all(run.labels.get(axis) in labels for axis, labels in (only or {}).items())]
    return [dataclasses.replace(run, overrides={**run.overrides, **(overrides or {})}) for run in chosen]


def prepare_runs(
    grid: Grid, runs_dir: str | Path, only: dict[str, list[str]] | None = None, overrides: dict | None = None
) -> tuple[list[Run], list[Path], list[dict[str, Any]]]:
    """The runs :func:`select_runs` keeps, their folders and their complete configurations, once every check that
    stops a grid before anything runs has passed (:class:`GridError` otherwise: see :func:`check_runs`)."""
    varied = {key: axis for axis, labels in grid.axes.items() for values in labels.values() for key in values}
    clashes = sorted(key for key in overrides or {} if key in varied)
    if clashes:  # the runs' labels would then lie about what they trained
        key = clashes[0]
        raise GridError(f"--set {key}: the grid's axis {varied[key]!r} varies {key}; use --only to pick its values")
    runs = select_runs(grid.runs(), only, overrides)
    directories = [run_directory(runs_dir, grid, run) for run in runs]
    configs: list[dict[str, Any]] = []
    problems = check_runs(grid, runs, directories, configs)
    if problems:
        raise GridError(f"grid {grid.name} ({grid.path}) cannot run:\n" + "\n".join(f"- {p}" for p in problems))
    return runs, directories, configs


def write_grid_folder(grid: Grid, runs_dir: str | Path, provenance: dict[str, Any]) -> Path:
    """Make the grid's folder; keep the grid file there (:func:`write_grid_copy`) and ``environment.json``."""
    grid_dir = Path(runs_dir) / grid.name
    grid_dir.mkdir(parents=True, exist_ok=True)
    write_grid_copy(grid, grid_dir)
    (grid_dir / ENVIRONMENT_FILE).write_text(json.dumps(provenance, indent=2))
    return grid_dir


def grid_directories(grid: Grid, runs_dir: str | Path) -> list[Path]:
    """The folders of every run of the grid (not only the selected ones)."""
    return [run_directory(runs_dir, grid, run) for run in grid.runs()]


def jobs_owning(directories: list[Path], grid: Grid | None = None) -> dict[Path, str]:
    """The run folders that a scheduler job, queued or running, owns (``job.json``; :mod:`openmix.bench.jobs`),
    with a line naming the job. A run whose job the scheduler cannot be asked about counts as owned."""
    if not any(job_json_path(directory).is_file() for directory in directories):
        return {}
    from openmix.bench.status import live_jobs

    return live_jobs(directories, grid)


def epochs_to_train(directory: Path, config: dict[str, Any]) -> int | None:
    """The epochs a run has left: its ``trainer.max_epochs`` less those its ``metrics.csv`` shows finished
    (``None`` when its schedule is not a number of epochs)."""
    max_epochs = (config.get("trainer") or {}).get("max_epochs")
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 0:
        return None
    state = progress(directory)
    return max(0, max_epochs - (state[0] if state else 0))


def seconds_per_epoch(directories: list[Path]) -> tuple[float, int] | None:
    """The mean wall time of one epoch over the finished runs among ``directories``, and how many there were."""
    rates = []
    for directory in directories:
        record = read_run_json(directory)
        state = progress(directory)
        if record and record.get("status") == "done" and record.get("wall_time_s") and state and state[0] > 0:
            rates.append(float(record["wall_time_s"]) / state[0])
    return (sum(rates) / len(rates), len(rates)) if rates else None


def cost_lines(
    pending: list[Path],
    configs: list[dict[str, Any]],
    measured_on: list[Path],
    devices_per_run: int = 1,
    probe: list[str] | None = None,
    tests: int = 0,
) -> list[str]:
    """What the ``pending`` runs will cost: their epochs left (and the ``tests`` test steps to run), and the time
    those epochs take at the mean pace of the finished runs among ``measured_on`` (every method alike: a rough
    figure), in device-hours for runs of ``devices_per_run`` devices. ``probe``: the lines of a timed probe
    (:func:`openmix.bench.probe.probe_grid`), added at the end; with them, no advice to finish a run first."""
    epochs = [epochs_to_train(directory, config) for directory, config in zip(pending, configs)]
    known = [count for count in epochs if count is not None]
    line = f"cost: {len(pending)} run(s) to go, {sum(known)} epochs left in all"
    if tests:
        line += f", {tests} test step(s)"
    if len(known) < len(epochs):
        line += f" ({len(epochs) - len(known)} run(s) without a max_epochs not counted)"
    lines = [line]
    if not pending:
        return lines
    measured = seconds_per_epoch(measured_on)
    if measured is None:
        if probe is None:
            lines.append(
                "  no finished run of this grid to time an epoch yet: run one first (--only) to estimate the time"
            )
        return lines + (probe or [])
    rate, count = measured
    hours = sum(known) * rate / 3600
    line = f"  at {rate:.1f} s per epoch (the mean of {count} finished run(s) of this grid): about {hours:.1f} hours"
    if devices_per_run > 1:
        line += f" x {devices_per_run} devices = {hours * devices_per_run:.1f} device-hours"
    lines.append(line)
    return lines + (probe or [])


def run_grid(
    grid: Grid,
    runs_dir: str | Path = "runs",
    parallel: int = 1,
    dry_run: bool = False,
    progress_every: float = 10.0,
    only: dict[str, list[str]] | None = None,
    overrides: dict | None = None,
    probe: int | None = None,
) -> list[Path]:
    """Run every unfinished run of ``grid`` (or of the runs :func:`select_runs` keeps with ``only`` and
    ``overrides``); returns their folders (finished ones included). The grid folder also gets a copy of the grid
    file and ``environment.json`` (updated at every start).

    With ``dry_run``, print the commands and the cost instead; ``probe`` (steps, with ``dry_run`` only) adds an
    estimate from that many timed training steps of one short ``fit`` per method on this machine
    (:func:`openmix.bench.probe.probe_grid`).

    Raises :class:`GridError` before anything runs when a run's arguments do not parse, or when a run folder holds a
    run of a different configuration. While runs are in flight, their finished epochs are printed (at most every
    ``progress_every`` seconds)."""
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    if probe is not None and not dry_run:
        raise ValueError("probe times a dry run's estimate: it needs dry_run (--probe needs --dry-run)")
    runs, directories, configs = prepare_runs(grid, runs_dir, only, overrides)
    if not dry_run:
        write_grid_folder(grid, runs_dir, environment(parallel))
    owned = jobs_owning(directories, grid)
    pending = [(run, d) for run, d in zip(runs, directories) if not is_complete(grid, d) and d not in owned]
    done = sum(is_complete(grid, d) for d in directories)
    queued = f", {len(owned)} owned by scheduler jobs" if owned else ""
    print(f"grid {grid.name}: {len(runs)} runs, {done} already done{queued}, {len(pending)} to run")
    for directory, job in owned.items():
        print(f"  {directory.name}: {job}; not run here (one writer per run folder)")
    if dry_run:
        import shlex

        for run, directory in pending:
            if not is_done(directory):
                print(shlex.join(command(grid, run, directory)))
            if grid.test is not None:
                print(shlex.join(test_command(grid, directory)))
        chosen = {d: config for d, config in zip(directories, configs)}
        probed = None
        if probe is not None and pending:
            from openmix.bench.probe import probe_grid

            threads = max(1, (os.cpu_count() or 1) // parallel)  # as each run gets them below
            probed = probe_grid(
                grid,
                [run for run, _ in pending],
                [d for _, d in pending],
                [chosen[d] for _, d in pending],
                probe,
                parallel=parallel,
                threads=threads,
            )
        pending_dirs = [d for _, d in pending]
        tests = len(pending_dirs) if grid.test is not None else 0
        lines = cost_lines(
            pending_dirs, [chosen[d] for d in pending_dirs], grid_directories(grid, runs_dir), probe=probed, tests=tests
        )
        print("\n".join(lines))
        return directories
    threads = max(1, (os.cpu_count() or 1) // parallel)
    lock = threading.Lock()
    in_flight: dict[str, Path] = {}
    finished = threading.Event()

    def one(item: tuple[Run, Path]) -> dict[str, Any]:
        run, directory = item
        if is_done(directory):  # only the test step is left
            record = {**(read_run_json(directory) or {}), "status": "done"}
        else:
            with lock:  # its epochs are printed while the fit runs
                in_flight[run.name] = directory
            record = execute(grid, run, directory, threads)
            with lock:
                in_flight.pop(run.name, None)
                status = record["status"]
                line = f"  {run.name}: {status}"
                if "wall_time_s" in record:
                    line += f" in {record['segments'][-1]['wall_time_s']:.0f} s"
                if status != "done":
                    line += f": {record.get('reason', '?')}\n    see {directory / OUTPUT_LOG}"
                print(line, flush=True)
        if record["status"] == "done" and grid.test is not None:
            test = execute_test(grid, directory, threads)
            if test["status"] != "done":
                record = {**record, "status": "failed", "reason": f"test: {test.get('reason', '?')}"}
            with lock:
                line = f"  {run.name}: test {test['status']} in {test['wall_time_s']:.0f} s"
                if test["status"] != "done":
                    line += f": {test.get('reason', '?')}\n    see {directory / OUTPUT_LOG}"
                print(line, flush=True)
        return record

    def report_progress() -> None:
        shown: dict[str, int] = {}
        while not finished.wait(progress_every):
            with lock:
                flying = dict(in_flight)
            for name, directory in flying.items():
                state = progress(directory)
                if state is not None and shown.get(name) != state[0]:
                    shown[name] = state[0]
                    print(f"  {name}: epoch {state[0]} done, val top-1 {100 * state[1]:.2f}%", flush=True)

    monitor = threading.Thread(target=report_progress, daemon=True)
    monitor.start()
    try:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            records = list(pool.map(one, pending))
    finally:
        finished.set()
    failed = [(run, record) for (run, _), record in zip(pending, records) if record["status"] != "done"]
    if failed:
        print(f"grid {grid.name}: {len(failed)} of {len(pending)} run(s) did not finish", flush=True)
    return directories
