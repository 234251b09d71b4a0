"""What a grid's jobs ask the scheduler for: the ``cluster:`` section of a grid file and the matching options of
``openmix bench`` (the command line overrides the file), checked once, here, without importing submitit.

A grid file may say::

    cluster:
      partition: gpu
      account: my-project
      time: "24:00:00"                # the time limit of one job, quoted (SLURM's formats, or "90" minutes)
      gpus_per_node: 1                # default: the runs' trainer.devices (GPU runs) or 0
      nodes: 1                        # default: the runs' trainer.num_nodes
      cpus_per_task: 8
      mem_gb: 32
      array_parallelism: 16           # at most this many runs at a time (the job array's %N)
      max_requeues: 5                 # times a job that reaches its time limit resubmits itself
      sbatch: {qos: high, constraint: a100}   # any other sbatch option
      setup: ["module load cuda/12.4"]        # shell lines run before the job starts

See :mod:`openmix.bench.jobs` for how runs become jobs.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from typing import Any

# sbatch options the harness sets itself (submitit's job files, the array, the requeue signal) or that have a key
# of their own above; ``sbatch:`` may not set them
MANAGED_SBATCH = {
    "array": "the job array is made from the grid's runs",
    "output": "the logs go to the grid's jobs/ folder",
    "error": "the logs go to the grid's jobs/ folder",
    "open-mode": "the logs are appended across requeues",
    "signal": "submitit's requeue signal",
    "job-name": "the job is named after the grid",
    "ntasks-per-node": "one task per device: the runs' trainer.devices",
    "ntasks": "one task per device: the runs' trainer.devices",
    "time": "use cluster.time (--time)",
    "partition": "use cluster.partition (--partition)",
    "account": "use cluster.account (--account)",
    "nodes": "use cluster.nodes (--nodes)",
    "gpus-per-node": "use cluster.gpus_per_node (--gpus-per-node)",
    "cpus-per-task": "use cluster.cpus_per_task (--cpus-per-task)",
    "mem": "use cluster.mem_gb (--mem-gb)",
}
TIME_FORMATS = "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"


@dataclass(frozen=True)
class ClusterOptions:
    """The scheduler request of every job of a grid. ``None``: not set (the scheduler's default, or, for
    ``gpus_per_node`` and ``nodes``, what the runs' trainer config asks for)."""

    partition: str | None = None
    account: str | None = None
    time_min: int | None = None  # the time limit of one job, in minutes
    gpus_per_node: int | None = None
    nodes: int | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    array_parallelism: int | None = None
    max_requeues: int | None = None
    sbatch: dict[str, Any] = field(default_factory=dict)
    setup: tuple[str, ...] = ()

    def updated(self, other: ClusterOptions) -> ClusterOptions:
        """These options with every option ``other`` sets replacing ours (the command line over the grid file;
        ``sbatch`` options are merged key by key, ``setup`` lines are appended)."""
        changes = {
            item.name: getattr(other, item.name)
            for item in dataclasses.fields(self)
            if item.name not in ("sbatch", "setup") and getattr(other, item.name) is not None
        }
        return dataclasses.replace(
            self, **changes, sbatch={**self.sbatch, **other.sbatch}, setup=(*self.setup, *other.setup)
        )

    @property
    def time_text(self) -> str | None:
        """The time limit as SLURM prints it (``D-HH:MM:SS`` or ``HH:MM:SS``)."""
        return None if self.time_min is None else format_time(self.time_min)


# key -> (kind, what the message calls a valid value); the keys are the YAML spelling, ``--key-with-dashes`` on the
# command line
KEYS: dict[str, tuple[str, str]] = {
    "partition": ("text", "a partition name"),
    "account": ("text", "an account name"),
    "time": ("time", f"a time limit ({TIME_FORMATS})"),
    "gpus_per_node": ("count0", "a number of GPUs >= 0"),
    "nodes": ("count", "a number of nodes >= 1"),
    "cpus_per_task": ("count", "a number of CPUs >= 1"),
    "mem_gb": ("positive", "a memory size in GB > 0"),
    "array_parallelism": ("count", "a number of jobs >= 1"),
    "max_requeues": ("count0", "a number of requeues >= 0"),
    "sbatch": ("sbatch", "a mapping of sbatch options (without --) to values"),
    "setup": ("lines", "a list of shell lines"),
}


def _kind(value: Any) -> str:
    text = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name} {text}"


def parse_time(value: Any, where: str) -> int:
    """A SLURM time limit (an int of minutes, or ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``,
    ``D-HH:MM:SS``) in whole minutes, seconds rounded up; anything else is a ``ValueError`` naming ``where``."""
    if isinstance(value, int) and not isinstance(value, bool):
        minutes = value
    elif isinstance(value, str) and re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}", value.strip()):
        text = value.strip()
        days, _, clock = text.rpartition("-")
        parts = [int(part) for part in clock.split(":")]
        if days:  # D-HH, D-HH:MM, D-HH:MM:SS
            hours, minutes_part, seconds = (parts + [0, 0])[:3]
            seconds += 60 * (minutes_part + 60 * (hours + 24 * int(days)))
        elif len(parts) == 3:  # HH:MM:SS
            seconds = parts[2] + 60 * (parts[1] + 60 * parts[0])
        else:  # MM or MM:SS
            seconds = 60 * parts[0] + (parts[1] if len(parts) == 2 else 0)
        minutes = -(-seconds // 60)
    else:
        raise ValueError(f"{where} must be a time limit ({TIME_FORMATS}), got {_kind(value)}")
    if minutes < 1:
        raise ValueError(f"{where} must be at least one minute, got {value!r}")
    return minutes


def format_time(minutes: int) -> str:
    """``minutes`` as SLURM writes a time limit: ``HH:MM:SS``, with ``D-`` in front from one day on."""
    days, rest = divmod(minutes, 24 * 60)
    clock = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{clock}" if days else clock


def _sbatch(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be {KEYS['sbatch'][1]}, e.g. {{qos: high}}, got {_kind(value)}")
    options = {}
    for key, item in value.items():
        name = str(key).removeprefix("--").replace("_", "-")
        if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
            raise ValueError(f"{where}.{key}: not an sbatch option name")
        if name in MANAGED_SBATCH:
            raise ValueError(f"{where}.{key}: set by openmix bench ({MANAGED_SBATCH[name]})")
        if item is False or item is None or isinstance(item, (list, dict)):
            raise ValueError(f"{where}.{key} must be a value or true (a flag), got {_kind(item)}")
        options[name] = item
    return options


def check_value(key: str, value: Any, where: str) -> Any:
    """``value`` of the option ``key`` (see :data:`KEYS`) as :class:`ClusterOptions` holds it; a wrong one is a
    ``ValueError`` whose message starts with ``where`` (``grid.yaml: cluster.time`` or ``--time``)."""
    kind, valid = KEYS[key]
    if kind == "time":
        return parse_time(value, where)
    if kind == "sbatch":
        return _sbatch(value, where)
    if kind == "lines":
        lines = [value] if isinstance(value, str) else value
        if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
            raise ValueError(f"{where} must be {valid}, got {_kind(value)}")
        return tuple(lines)
    if kind == "text":
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where} must be {valid} (a non-empty string), got {_kind(value)}")
        return value.strip()
    number = value
    if isinstance(value, str):  # from the command line
        try:
            number = float(value) if kind == "positive" else int(value)
        except ValueError:
            raise ValueError(f"{where} must be {valid}, got {value!r}") from None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or (kind != "positive" and number % 1):
        raise ValueError(f"{where} must be {valid}, got {_kind(value)}")
    lowest = {"count0": 0, "count": 1, "positive": 0}[kind]
    if number < lowest or (kind == "positive" and number <= 0):
        raise ValueError(f"{where} must be {valid}, got {value!r}")
    return float(number) if kind == "positive" else int(number)


def cluster_options(spec: Any, where: str = "") -> ClusterOptions:
    """Check a ``cluster:`` mapping (from a grid file, or the command line's options as a mapping); errors name
    ``where`` (e.g. the grid file) and the dotted key, ``cluster.time``."""
    if spec is None:
        return ClusterOptions()
    if not isinstance(spec, dict):
        raise ValueError(f"{where}cluster must be a mapping of {', '.join(KEYS)}, got {_kind(spec)}")
    values: dict[str, Any] = {}
    for key, value in spec.items():
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), list(KEYS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; the keys are {', '.join(KEYS)}"
            raise ValueError(f"{where}cluster.{key}: unknown key{hint}")
        if value is None:
            continue
        if key == "time" and not isinstance(value, str):
            # YAML 1.1 reads an unquoted 12:00:00 as the base-60 number 43200: never guess which was meant
            raise ValueError(
                f'{where}cluster.time must be quoted, e.g. time: "12:00:00" or time: "90" (minutes): YAML reads an '
                f"unquoted 12:00:00 as the number 43200; got {_kind(value)}"
            )
        values["time_min" if key == "time" else key] = check_value(key, value, f"{where}cluster.{key}")
    return ClusterOptions(**values)
