"""Benchmark grids: a base config plus axes, expanded into runs.

A grid file (YAML)::

    name: quickstart                  # the folder of the runs under --runs-dir
    base:                             # config files stacked for every run (relative to the grid file)
      - ../data/fashion_mnist.yaml
      - ../model/resnet_tiny_fmnist.yaml
    args:                             # overrides for every run: dotted config keys
      trainer.max_epochs: 2
    axes:
      mixer:                          # a named axis: label -> overrides ("config": files stacked after the base)
        vanilla: {model.init_args.mixer: null}
        mixup: {model.init_args.mixer: mixup}
        cutmix: {config: ../mixers/cifar/cutmix.yaml}
      seed: [0, 1, 2]                 # a list axis; "seed" sets every seed (Lightning, model, data)
      model.init_args.label_smoothing: [0.0, 0.1]   # a list axis on any config key
    baseline: {mixer: vanilla}        # the row the report compares against (optional)
    wandb: false                      # also log to wandb, one group per grid (optional)
    cluster:                          # what each run's job asks a scheduler for (optional; openmix.bench.cluster)
      partition: gpu
      time: "24:00:00"
    test:                             # after each fit, `openmix test` of its last checkpoint (optional; true:
      model.init_args.evaluation.ood_limit: 500   # the defaults; a mapping: dotted overrides of the test command)

Runs are the product of the axes, named by their labels (``mixer=mixup,seed=0``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from openmix.bench.cluster import ClusterOptions, cluster_options

SEED_KEYS = ("seed_everything", "model.init_args.seed", "data.init_args.seed")


@dataclass(frozen=True)
class Run:
    """One run of a grid: its labels (axis -> value label), config files and overrides (dotted key -> value)."""

    labels: dict[str, str]
    configs: tuple[Path, ...]
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Folder name of the run: ``axis=label`` pairs joined by commas, in axis order."""
        return ",".join(f"{axis}={label}" for axis, label in self.labels.items()) or "run"


@dataclass
class Grid:
    """A parsed grid file."""

    name: str
    path: Path
    configs: tuple[Path, ...]
    args: dict[str, Any]
    axes: dict[str, dict[str, dict[str, Any]]]
    baseline: dict[str, str]
    wandb: bool = False
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    test: dict[str, Any] | None = None  # None: no test step; else the overrides of each run's `openmix test`

    def runs(self) -> list[Run]:
        """Every combination of the axes, in file order (the last axis varies fastest)."""
        names = list(self.axes)
        runs = []
        for choice in itertools.product(*(self.axes[name].items() for name in names)):
            labels = {name: label for name, (label, _) in zip(names, choice)}
            configs, overrides = list(self.configs), dict(self.args)
            for _, values in choice:
                values = dict(values)
                configs += [self.path.parent.joinpath(c).resolve() for c in _as_list(values.pop("config", []))]
                overrides.update(values)
            runs.append(Run(labels, tuple(configs), overrides))
        return runs


GRID_KEYS = ("name", "base", "args", "axes", "baseline", "wandb", "cluster", "test")


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _label(value: Any) -> str:
    return "null" if value is None else str(value)


def _kind(value: Any) -> str:
    """How an error message names a YAML value's type: ``a list``, ``a str 'x'``..."""
    text = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return f"a {type(value).__name__} {text}"


def _config_files(value: Any, where: str) -> list[str]:
    """A ``config`` entry: one file or a list of files (strings), else a ``ValueError`` naming ``where``."""
    files = [value] if isinstance(value, str) else value
    if not isinstance(files, list) or not all(isinstance(file, str) for file in files):
        raise ValueError(f"{where} must be a config file or a list of config files, got {_kind(value)}")
    return files


def _axis(name: str, spec: Any, where: str = "") -> dict[str, dict[str, Any]]:
    """Normalise one axis to ``label -> overrides``; errors start with ``where`` (the file) and name the axis."""
    key = f"{where}axes.{name}"
    if isinstance(spec, dict):
        if not spec:
            raise ValueError(f"{key}: a mapping axis needs at least one label -> {{key: value}} entry")
        axis = {}
        for label, values in spec.items():
            if not isinstance(values, dict):
                raise ValueError(
                    f"{key}.{label}: a mapping axis needs label -> {{key: value}} entries, got {_kind(values)}"
                )
            if "config" in values:
                _config_files(values["config"], f"{key}.{label}.config")
            if str(label) in axis:
                raise ValueError(f"{key}: the label {str(label)!r} appears twice")
            axis[str(label)] = dict(values)
        return axis
    if isinstance(spec, list) and spec:
        keys = SEED_KEYS if name == "seed" else (name,)
        labels = [_label(value) for value in spec]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"{key}: the value(s) {repeated} appear more than once (each run needs its own name)")
        return {_label(value): {key_: value for key_ in keys} for value in spec}
    raise ValueError(f"{key} must be a non-empty list of values or a mapping label -> overrides, got {_kind(spec)}")


def _read_yaml(path: Path) -> Any:
    """The YAML document of ``path``; a syntax error is a ``ValueError`` naming the file, line and column."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(filter(None, (getattr(error, "context", None), getattr(error, "problem", None))))
        raise ValueError(f"{path}{where}: invalid YAML: {problem or error}") from None


def _mapping(spec: dict[str, Any], key: str, path: Path, what: str) -> dict[Any, Any]:
    """``spec[key]`` as a dict (missing or null: empty); anything else is a ``ValueError`` naming file and key."""
    value = spec.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {key} must be a mapping {what}, got {_kind(value)}")
    return value


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file; config paths are resolved relative to it.

    Raises:
        FileNotFoundError: the grid file, or a config file it names, does not exist.
        ValueError: invalid YAML, or a grid of the wrong shape; the message names the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file not found: {path}")
    spec = _read_yaml(path)
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ValueError(
            f"{path}: a grid file must be a mapping with the keys {', '.join(GRID_KEYS)}, got {_kind(spec)}"
        )
    unknown = sorted(str(key) for key in set(spec) - set(GRID_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown grid keys {unknown}; a grid file has the keys {', '.join(GRID_KEYS)}")
    name = spec.get("name", path.stem)
    if not isinstance(name, (str, int)) or isinstance(name, bool) or not str(name).strip():
        raise ValueError(f"{path}: name must be a non-empty string (the runs' folder), got {_kind(name)}")
    if str(name) in (".", "..") or any(sep in str(name) for sep in ("/", "\\")):
        raise ValueError(f"{path}: name must be a plain folder name inside --runs-dir, got {str(name)!r}")
    base = spec.get("base") or []
    if not isinstance(base, list) or not all(isinstance(config, str) for config in base):
        raise ValueError(f"{path}: base must be a list of config files (a YAML list, '- file.yaml'), got {_kind(base)}")
    configs = tuple((path.parent / config).resolve() for config in base)
    missing = [str(config) for config in configs if not config.is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: base config files not found: {missing}")
    args = _mapping(spec, "args", path, "of dotted config keys to values")
    bad_keys = [key for key in args if not isinstance(key, str)]
    if bad_keys:
        raise ValueError(f"{path}: args keys must be dotted config keys (strings), got {bad_keys}")
    axes_spec = _mapping(spec, "axes", path, "axis name -> list of values or label -> overrides")
    axes = {str(name): _axis(str(name), axis, f"{path}: ") for name, axis in axes_spec.items()}
    extra = [path.parent / c for axis in axes.values() for v in axis.values() for c in _as_list(v.get("config", []))]
    missing = [str(config) for config in extra if not config.is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: axis config files not found: {missing}")
    baseline_spec = _mapping(spec, "baseline", path, "axis -> label")
    baseline = {str(k): _label(v) for k, v in baseline_spec.items()}
    for axis, label in baseline.items():
        if axis not in axes or label not in axes[axis]:
            raise ValueError(f"{path}: baseline {axis}={label} is not a value of the grid's axes")
    wandb = spec.get("wandb") or False  # missing or null: off
    if not isinstance(wandb, bool):
        raise ValueError(f"{path}: wandb must be true or false, got {_kind(wandb)}")
    cluster = cluster_options(spec.get("cluster"), f"{path}: ")
    test = spec.get("test", False)
    if test is True or test is None:  # `test:` with nothing under it reads as null: the defaults
        test = {}
    elif test is False:
        test = None
    elif not isinstance(test, dict) or not all(isinstance(key, str) for key in test):
        raise ValueError(f"{path}: test must be true, false or a mapping of dotted config keys, got {_kind(test)}")
    return Grid(
        name=str(name),
        path=path,
        configs=configs,
        args=dict(args),
        axes=axes,
        baseline=baseline,
        wandb=wandb,
        cluster=cluster,
        test=None if test is None else dict(test),
    )
