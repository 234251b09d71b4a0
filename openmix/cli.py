"""The ``openmix`` command.

- ``openmix fit|validate|test|predict``: LightningCLI over :class:`~openmix.lightning.MixClassifier` and any
  :class:`~openmix.lightning.data.ClassificationData` (Fashion-MNIST by default). Config files stack
  (``--config a.yaml --config b.yaml``), ``--print_config`` prints every default, unknown keys are errors, and each
  run saves its resolved ``config.yaml`` next to its logs. The data module's ``num_classes`` and ``in_chans``
  are linked into the model, so a dataset config is enough to size the classifier.
- ``openmix list``: the registered mixers with their papers and default hyperparameters.
- ``openmix show MIXER``: a PNG grid of mixed samples from a dataset.
- ``openmix bench GRID.yaml``: run a grid of fits (resumable; N at a time), then report it.
- ``openmix report RUN_DIR``: markdown / CSV tables and plots of finished runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_info

import openmix
from openmix.lightning.callbacks import RunCheckpoint
from openmix.lightning.data import ClassificationData
from openmix.lightning.loggers import RunLogger, latest_version
from openmix.lightning.module import MixClassifier

# Logs and checkpoints of a plain `openmix fit` go to runs/lightning_logs/version_N/ (Lightning's layout under the
# default root directory, which --trainer.default_root_dir moves).
TRAINER_DEFAULTS = {
    "logger": {"class_path": "openmix.lightning.loggers.RunLogger"},
    "default_root_dir": "runs",
    "max_epochs": 10,
}


class LearningRateLogger(LearningRateMonitor):
    """Lightning's LearningRateMonitor, silent when the run has no logger (``--trainer.logger false``)."""

    def on_train_start(self, trainer, *args, **kwargs) -> None:  # noqa: ANN001
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer, *args, **kwargs) -> None:  # noqa: ANN001
        if trainer.loggers:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer, *args, **kwargs) -> None:  # noqa: ANN001
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)


class OpenmixCLI(LightningCLI):
    """LightningCLI with openmix's defaults: Fashion-MNIST data, last + best checkpoints, learning-rate logging."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/top1",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch}",
                "data": {"class_path": "openmix.lightning.data.FashionMNISTData"},
                "model": {"class_path": "openmix.lightning.MixClassifier"},
            }
        )
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_chans", "model.init_args.in_chans", apply_on="instantiate")
        parser.add_lightning_class_args(LearningRateLogger, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "epoch"})

    def before_instantiate_classes(self) -> None:
        if self.subcommand == "fit":
            resume_into_run_folder(self.config["fit"])
        elif self.subcommand in ("validate", "test", "predict"):
            evaluate_beside_run(self.config[self.subcommand], self.subcommand)

    def instantiate_trainer(self, **kwargs: Any):  # noqa: ANN201
        trainer = super().instantiate_trainer(**kwargs)
        for logger in trainer.loggers:  # RunLogger(save_dir=None): under the trainer's root directory
            if isinstance(logger, RunLogger) and logger.follows_trainer_root:
                logger.set_save_dir(trainer.default_root_dir)
        return trainer


def _run_logger_spec(trainer_config: Any) -> Any:
    """The config node of the first RunLogger of the trainer (a Namespace with ``init_args``), or None."""
    loggers = trainer_config.get("logger")
    for spec in loggers if isinstance(loggers, list) else [loggers]:
        class_path = spec.get("class_path") if hasattr(spec, "get") else None
        if class_path and class_path.rsplit(".", 1)[-1] == RunLogger.__name__:
            return spec
    return None


def resume_into_run_folder(config: Any) -> None:
    """Make ``fit --ckpt_path ...`` continue the run it resumes, in its own folder.

    With the default logger (a RunLogger without a fixed version) a new process would open the next
    ``version_N`` folder, where ``--ckpt_path last`` finds no checkpoint. Here the run folder is chosen first:
    ``last`` resumes the newest ``version_N`` (starting over there when it holds no checkpoint yet, i.e. the run was
    killed before its first validation); a checkpoint file inside ``<root>/<name>/<version>/checkpoints/`` resumes
    that version. Logs then continue in the same ``metrics.csv`` (see :mod:`openmix.lightning.loggers`).
    """
    ckpt_path = config.get("ckpt_path")
    spec = _run_logger_spec(config["trainer"])
    if ckpt_path is None or spec is None:
        return
    init_args = spec.get("init_args") or {}
    if init_args.get("version") is not None:
        return
    save_dir = init_args.get("save_dir") or config["trainer"].get("default_root_dir") or "."
    name = init_args.get("name", "lightning_logs") or ""
    versions_root = Path(save_dir) / name
    if ckpt_path == "last":
        version = latest_version(versions_root)
        if version is None:
            return
        folder = versions_root / f"version_{version}"
        if not (folder / "checkpoints").is_dir() and config.get("checkpoint", {}).get("dirpath") is None:
            config["ckpt_path"] = None  # nothing to resume from yet: start over in the same folder
            rank_zero_info(f"no checkpoint in {folder} yet: training it from the start")
        _set_version(spec, version)
        return
    checkpoint = Path(ckpt_path).resolve()
    if checkpoint.parent.name == "checkpoints" and checkpoint.parent.parent.parent == versions_root.resolve():
        version_name = checkpoint.parent.parent.name
        number = version_name.removeprefix("version_")
        _set_version(spec, int(number) if number.isdigit() else version_name)


def _run_log_dir(config: Any, spec: Any) -> Path | None:
    """The folder a RunLogger spec writes to, when its version is fixed (``None``: the next free version)."""
    init_args = spec.get("init_args") or {}
    version = init_args.get("version")
    if version is None:
        return None
    save_dir = init_args.get("save_dir") or config["trainer"].get("default_root_dir") or "."
    folder = version if isinstance(version, str) else f"version_{version}"
    return Path(save_dir) / (init_args.get("name", "lightning_logs") or "") / folder


def evaluate_beside_run(config: Any, subcommand: str) -> None:
    """Send the logs of ``validate`` / ``test`` / ``predict`` to ``<run folder>/<subcommand>/version_N``.

    Evaluating a finished run must not write over it: with the run's own ``config.yaml`` (``--config
    RUN/config.yaml``) the logger would reopen the run's folder, and LightningCLI would overwrite its
    ``config.yaml``. The run folder is the one holding the checkpoint (``.../checkpoints/x.ckpt``), else the
    logger's own fixed folder when it already holds a run."""
    spec = _run_logger_spec(config["trainer"])
    if spec is None:
        return
    run_folder = None
    ckpt_path = config.get("ckpt_path")
    if ckpt_path not in (None, "last", "best", "hpc", "registry") and Path(ckpt_path).parent.name == "checkpoints":
        run_folder = Path(ckpt_path).resolve().parent.parent
    else:
        log_dir = _run_log_dir(config, spec)
        if log_dir is not None and any((log_dir / name).exists() for name in ("metrics.csv", "config.yaml")):
            run_folder = log_dir
    if run_folder is None:
        return  # a new version folder of its own: nothing to protect
    if spec.get("init_args") is None:
        spec["init_args"] = Namespace()
    spec["init_args"]["save_dir"] = str(run_folder)
    spec["init_args"]["name"] = subcommand
    spec["init_args"]["version"] = None
    rank_zero_info(f"{subcommand} logs go to {run_folder / subcommand}/version_N (the run itself is left as it is)")


def _set_version(spec: Any, version: int | str) -> None:
    if spec.get("init_args") is None:
        spec["init_args"] = Namespace()
    spec["init_args"]["version"] = version


def run_lightning(args: Sequence[str], run: bool = True) -> OpenmixCLI:
    """Run a LightningCLI subcommand with ``args`` (``run=False``: only parse and instantiate, no subcommand)."""
    return OpenmixCLI(
        MixClassifier,
        ClassificationData,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=list(args),
        run=run,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        seed_everything_default=0,  # reproducible unless a config asks otherwise
    )


class _ParseOnlyCLI(OpenmixCLI):
    """The ``fit`` parser without instantiating anything: what a run's command resolves to."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


# Keys that say where a run writes, not what it trains: left out when runs are compared.
LOCATION_KEYS = (
    "ckpt_path",
    "trainer.logger",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "checkpoint.dirpath",
)


def resolve_config(args: Sequence[str]) -> dict[str, Any]:
    """The complete configuration (every default filled in) that ``openmix fit *args`` would train, as plain data,
    without the :data:`LOCATION_KEYS`. Invalid arguments raise ``ValueError`` with jsonargparse's message."""
    import logging
    import warnings

    import yaml

    seed_log = logging.getLogger("lightning.fabric.utilities.seed")
    level = seed_log.level
    try:
        seed_log.setLevel(logging.WARNING)  # parsing seeds the RNGs and says so; nothing trains here
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
            cli = _ParseOnlyCLI(
                MixClassifier,
                ClassificationData,
                subclass_mode_model=True,
                subclass_mode_data=True,
                args=list(args),
                run=False,
                trainer_defaults=TRAINER_DEFAULTS,
                auto_configure_optimizers=False,
                seed_everything_default=0,
                parser_kwargs={"exit_on_error": False},
            )
    except (argparse.ArgumentError, SystemExit) as error:
        raise ValueError(str(error).strip()) from None
    finally:
        seed_log.setLevel(level)
    config = yaml.safe_load(cli.parser.dump(cli.config, skip_validation=True))
    for key in LOCATION_KEYS:
        node, *path = key.split(".")
        parent = config
        for part in [node, *path][:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.pop(key.split(".")[-1], None)
    return config


def list_command(args: Sequence[str]) -> None:
    """Print every registered mixer: name, whether it needs a network, default hyperparameters, paper."""
    parser = argparse.ArgumentParser(prog="openmix list", description="List the registered mixers.")
    parser.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. '*mix'")
    options = parser.parse_args(args)
    for name in openmix.list_mixers(options.pattern):
        entry = openmix.get_mixer_entry(name)
        defaults = ", ".join(f"{key}={value!r}" for key, value in entry.defaults.items()) or "-"
        network = "  [needs a network]" if entry.needs_network else ""  # the class says so
        print(f"{name}{network}\n    defaults: {defaults}\n    paper: {entry.paper}\n    {entry.url}")


def show_command(args: Sequence[str]) -> None:
    """Write a PNG grid of mixed samples from a dataset."""
    from openmix.viz import render_grid

    parser = argparse.ArgumentParser(prog="openmix show", description="Draw a mixer on samples of a dataset.")
    parser.add_argument("mixer", nargs="+", help="registered mixer name(s)")
    parser.add_argument("--data", default="FashionMNISTData", help="data module class in openmix.lightning.data")
    parser.add_argument("--root", default=None, help="dataset root (the data module's default if omitted)")
    parser.add_argument("--num", type=int, default=8, help="samples per row")
    parser.add_argument("--mode", default="elem", choices=("batch", "elem"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="mixers.png", help="PNG file to write")
    options = parser.parse_args(args)
    for name in options.mixer:
        openmix.get_mixer_entry(name)  # unknown names fail before any data is read
    from openmix.lightning import data as data_modules

    module_class = getattr(data_modules, options.data, None)
    if not (isinstance(module_class, type) and issubclass(module_class, ClassificationData)):
        parser.error(f"--data must name a data module of openmix.lightning.data, got {options.data!r}")
    kwargs = {"augment": False} | ({"root": options.root} if options.root else {})
    module = module_class(**kwargs)
    module.setup("validate")
    samples = [module.val_set[i] for i in range(min(options.num, len(module.val_set)))]
    images = torch.stack([image for image, _ in samples])
    labels = torch.tensor([int(label) for _, label in samples])
    names = module.classes
    figure = render_grid(images, labels, options.mixer, options.mode, options.seed, True, names, rescale=True)
    figure.savefig(options.out, dpi=110, bbox_inches="tight", pad_inches=0.05)
    print(f"wrote {options.out}")


def bench_command(args: Sequence[str]) -> None:
    """Run every unfinished run of a grid file, then write its report. Exits 1 when a run did not finish, 2 when
    the grid cannot run (invalid runs, or folders of another configuration), before anything starts."""
    from openmix.bench import load_grid, report, run_grid
    from openmix.bench.runner import GridError, is_done

    parser = argparse.ArgumentParser(prog="openmix bench", description="Run a benchmark grid (resumable).")
    parser.add_argument("grid", help="grid YAML file")
    parser.add_argument("--runs-dir", default="runs", help="where run folders go (RUNS_DIR/<grid name>/<run>)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (CPU threads are split evenly)")
    parser.add_argument("--last", type=int, default=10, help="epochs of the 'median of the last N' column")
    parser.add_argument("--dry-run", action="store_true", help="print the commands of the unfinished runs")
    parser.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines")
    options = parser.parse_args(args)
    grid = load_grid(options.grid)
    try:
        directories = run_grid(grid, options.runs_dir, options.parallel, options.dry_run, options.progress_every)
    except GridError as error:
        print(f"openmix bench: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if options.dry_run:
        return
    unfinished = [d for d in directories if not is_done(d)]
    grid_dir = Path(options.runs_dir) / grid.name
    if len(unfinished) < len(directories):
        print(report(grid_dir, last=options.last, baseline=grid.baseline, directories=directories))
        print(f"tables and plots in {grid_dir}")
    if unfinished:
        print(f"openmix bench: {len(unfinished)} run(s) did not finish; see their output.log", file=sys.stderr)
        raise SystemExit(1)


def report_command(args: Sequence[str]) -> None:
    """Write the tables and plots of a folder of finished runs."""
    from openmix.bench import report

    parser = argparse.ArgumentParser(prog="openmix report", description="Tables and plots of finished runs.")
    parser.add_argument("runs_dir", help="folder holding run folders (searched recursively for run.json)")
    parser.add_argument("--out", default=None, help="output folder (default: runs_dir)")
    parser.add_argument("--last", type=int, default=10, help="epochs of the 'median of the last N' column")
    parser.add_argument("--baseline", default=None, help="baseline row as axis=label, e.g. mixer=vanilla")
    options = parser.parse_args(args)
    baseline = dict([options.baseline.split("=", 1)]) if options.baseline else None
    print(report(options.runs_dir, options.out, options.last, baseline))


COMMANDS: dict[str, Callable[[Sequence[str]], object]] = {
    "list": list_command,
    "show": show_command,
    "bench": bench_command,
    "report": report_command,
}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``openmix`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        COMMANDS[args[0]](args[1:])
        return
    run_lightning(args)


if __name__ == "__main__":
    main()
