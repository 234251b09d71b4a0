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

Runs are the product of the axes, named by their labels (``mixer=mixup,seed=0``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _label(value: Any) -> str:
    return "null" if value is None else str(value)


def _axis(name: str, spec: Any) -> dict[str, dict[str, Any]]:
    """Normalise one axis to ``label -> overrides``."""
    if isinstance(spec, dict):
        if not all(isinstance(values, dict) for values in spec.values()):
            raise ValueError(f"axis {name!r}: a mapping axis needs label -> {{key: value}} entries")
        return {str(label): dict(values) for label, values in spec.items()}
    if isinstance(spec, list) and spec:
        keys = SEED_KEYS if name == "seed" else (name,)
        return {_label(value): {key: value for key in keys} for value in spec}
    raise ValueError(f"axis {name!r} must be a non-empty list of values or a mapping label -> overrides")


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file; config paths are resolved relative to it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file not found: {path}")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(spec) - {"name", "base", "args", "axes", "baseline", "wandb"})
    if unknown:
        raise ValueError(f"{path}: unknown grid keys {unknown}")
    configs = tuple((path.parent / config).resolve() for config in spec.get("base", []))
    missing = [str(config) for config in configs if not config.is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: base config files not found: {missing}")
    axes = {str(name): _axis(str(name), axis) for name, axis in (spec.get("axes") or {}).items()}
    extra = [path.parent / c for axis in axes.values() for v in axis.values() for c in _as_list(v.get("config", []))]
    missing = [str(config) for config in extra if not config.is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: axis config files not found: {missing}")
    baseline = {str(k): str(v) for k, v in (spec.get("baseline") or {}).items()}
    for axis, label in baseline.items():
        if axis not in axes or label not in axes[axis]:
            raise ValueError(f"{path}: baseline {axis}={label} is not a value of the grid's axes")
    return Grid(
        name=str(spec.get("name", path.stem)),
        path=path,
        configs=configs,
        args=dict(spec.get("args") or {}),
        axes=axes,
        baseline=baseline,
        wandb=bool(spec.get("wandb", False)),
    )
