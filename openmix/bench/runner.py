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
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from openmix.bench.grid import Grid, Run


def run_directory(runs_dir: str | Path, grid: Grid, run: Run) -> Path:
    return Path(runs_dir) / grid.name / run.name


def is_done(directory: Path) -> bool:
    record = directory / "run.json"
    return record.is_file() and json.loads(record.read_text()).get("status") == "done"


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


def command(grid: Grid, run: Run, directory: Path) -> list[str]:
    """The ``openmix fit`` command of a run (resuming from ``last.ckpt`` when there is one)."""
    args = [sys.executable, "-m", "openmix.cli", "fit"]
    for config in run.configs:
        args += ["--config", str(config)]
    for key, value in run.overrides.items():
        args.append(f"--{key}={_value(value)}")
    args += [
        f"--trainer.default_root_dir={directory}",
        f"--trainer.logger={json.dumps(loggers(grid, run, directory))}",
        f"--checkpoint.dirpath={directory / 'checkpoints'}",
        "--trainer.enable_progress_bar=false",
    ]
    last = directory / "checkpoints" / "last.ckpt"
    if last.is_file():
        args.append(f"--ckpt_path={last}")
    return args


def previous_segments(directory: Path) -> list[dict[str, Any]]:
    """The processes a run's ``run.json`` recorded before this one (empty for a new run)."""
    record = directory / "run.json"
    if not record.is_file():
        return []
    data = json.loads(record.read_text())
    if "segments" in data:
        return list(data["segments"])
    keys = ("returncode", "wall_time_s", "peak_rss_mb")
    return [{key: data[key] for key in keys if key in data}]  # a record written before segments existed


def execute(grid: Grid, run: Run, directory: Path, threads: int) -> dict[str, Any]:
    """Run one fit process to its end; record status, wall time and peak memory in ``run.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    args = command(grid, run, directory)
    segments = previous_segments(directory)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(directory / "output.log", "a") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)  # the child's own resource usage
        process.returncode = os.waitstatus_to_exitcode(status)
    # a segment killed with the grid runner itself leaves no record; the training process logs its own cumulative
    # wall time and peak memory into metrics.csv, which the report prefers
    segments.append(
        {
            "returncode": process.returncode,
            "wall_time_s": time.perf_counter() - start,
            "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux reports kilobytes
        }
    )
    record = {
        "status": "done" if process.returncode == 0 else "failed",
        "returncode": process.returncode,
        "wall_time_s": sum(segment["wall_time_s"] for segment in segments),
        "peak_rss_mb": max(segment["peak_rss_mb"] for segment in segments),
        "segments": segments,
        "labels": run.labels,
        "command": args,
    }
    (directory / "run.json").write_text(json.dumps(record, indent=2))
    return record


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


def run_grid(grid: Grid, runs_dir: str | Path = "runs", parallel: int = 1, dry_run: bool = False) -> list[Path]:
    """Run every unfinished run of ``grid``; returns the run folders (finished ones included). The grid folder
    also gets a copy of the grid file and ``environment.json`` (updated at every start)."""
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    runs = grid.runs()
    directories = [run_directory(runs_dir, grid, run) for run in runs]
    if not dry_run:
        grid_dir = Path(runs_dir) / grid.name
        grid_dir.mkdir(parents=True, exist_ok=True)
        (grid_dir / "grid.yaml").write_text(grid.path.read_text())
        (grid_dir / "environment.json").write_text(json.dumps(environment(parallel), indent=2))
    pending = [(run, d) for run, d in zip(runs, directories) if not is_done(d)]
    print(f"grid {grid.name}: {len(runs)} runs, {len(runs) - len(pending)} already done, {len(pending)} to run")
    if dry_run:
        for run, directory in pending:
            print(" ".join(command(grid, run, directory)))
        return directories
    threads = max(1, (os.cpu_count() or 1) // parallel)
    lock = threading.Lock()

    def one(item: tuple[Run, Path]) -> None:
        run, directory = item
        record = execute(grid, run, directory, threads)
        with lock:
            print(f"  {run.name}: {record['status']} in {record['wall_time_s']:.0f} s", flush=True)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(one, pending))
    return directories
