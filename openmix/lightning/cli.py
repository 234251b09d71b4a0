"""The Lightning side of the ``openmix`` command: LightningCLI over :class:`~openmix.lightning.MixClassifier` and
any :class:`~openmix.data.ClassificationData`, with openmix's defaults and run-folder rules.

Kept apart from :mod:`openmix.cli` so that the verbs that do not train (``list``, ``report``, ``--help``) start
without importing Lightning.

- ``fit --ckpt_path last`` continues the newest run folder (:func:`resume_into_run_folder`);
- ``validate`` / ``test`` / ``predict`` of a run log beside it (:func:`evaluate_beside_run`);
- :func:`resolve_config` gives the complete configuration a ``fit`` command would train, without training.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from openmix.data import ClassificationData
from openmix.lightning.callbacks import RunCheckpoint
from openmix.lightning.loggers import RunLogger, latest_version
from openmix.lightning.module import MixClassifier


class _NoAdvertisement(logging.Filter):
    """Drops Lightning's "Tip: ... try installing litlogger" line, printed by every Trainer: it is not about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdvertisement())
# Lightning 2.6 calls a torch pytree API that torch 2.14 deprecates, once per fit: not the user's to act on
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")

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
                "data": {"class_path": "openmix.data.FashionMNISTData"},
                "model": {"class_path": "openmix.lightning.MixClassifier"},
            }
        )
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_chans", "model.init_args.in_chans", apply_on="instantiate")
        parser.add_lightning_class_args(LearningRateLogger, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "epoch"})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        refuse_linked_arguments(list(sys.argv[1:] if args is None else args))
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is not None:  # before LightningCLI reads the checkpoint's hyperparameters
            check_checkpoint_file(self.config[subcommand].get("ckpt_path"))

    def instantiate_classes(self) -> None:
        """Build model, data and trainer; a bad argument stops with its own message on one line, not with the
        chained tracebacks of jsonargparse's union checks."""
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as error:
            root = error  # the innermost error the user caused (a `raise ... from None` ends the chain)
            while True:
                inner = root.__cause__ or (None if root.__suppress_context__ else root.__context__)
                if inner is None:
                    break
                root = inner
            command = f"openmix {self.subcommand}" if self.subcommand else "openmix"
            raise SystemExit(f"{command}: {type(root).__name__}: {root}") from None

    def before_instantiate_classes(self) -> None:
        if self.subcommand == "fit":
            config = self.config["fit"]
            put_run_logger_first(config["trainer"])
            folder = resume_into_run_folder(config)
            if folder is not None:
                check_same_configuration(folder, self._subcommand_parsers["fit"], config)
        elif self.subcommand in ("validate", "test", "predict"):
            evaluate_beside_run(self.config[self.subcommand], self.subcommand)

    def instantiate_trainer(self, **kwargs: Any):  # noqa: ANN201
        trainer = super().instantiate_trainer(**kwargs)
        for logger in trainer.loggers:  # RunLogger(save_dir=None): under the trainer's root directory
            if isinstance(logger, RunLogger) and logger.follows_trainer_root:
                logger.set_save_dir(trainer.default_root_dir)
        return trainer


def check_checkpoint_file(ckpt_path: Any) -> None:
    """A ``--ckpt_path`` that names a file must be a PyTorch checkpoint (a zip archive, as ``torch.save`` writes
    it): a truncated or foreign file stops here with its name, not deep inside ``torch.load``."""
    import zipfile

    if not isinstance(ckpt_path, str) or ckpt_path in ("last", "best", "hpc", "registry"):
        return
    path = Path(ckpt_path)
    if not path.is_file():
        raise SystemExit(f"openmix: checkpoint file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise SystemExit(
            f"openmix: {path} is not a PyTorch checkpoint (not a complete zip archive: truncated, still being "
            "written, or another kind of file)"
        )


LINKED = {"num_classes": "data", "in_chans": "data"}  # model arguments the data module sets


def refuse_linked_arguments(args: list[str]) -> None:
    """A model argument that the data module sets (``num_classes``, ``in_chans``) given on the command line or in a
    config file would be silently replaced: refuse it, naming where it came from."""
    import yaml

    configs = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--config"]
    configs += [arg.split("=", 1)[1] for arg in args if arg.startswith("--config=")]
    for name in LINKED:
        given = [arg for arg in args if arg.split("=", 1)[0] in (f"--model.init_args.{name}", f"--model.{name}")]
        for config in configs:
            try:
                data = yaml.safe_load(Path(config).read_text()) or {}
            except (OSError, yaml.YAMLError):
                continue  # the parser reports unreadable config files itself
            model = (data.get("model") or {}) if isinstance(data, dict) else {}
            init_args = (model.get("init_args") or {}) if isinstance(model, dict) else {}
            if isinstance(init_args, dict) and name in init_args:
                given.append(f"{config} (model.init_args.{name})")
        if given:
            raise SystemExit(
                f"openmix: model.init_args.{name} is set by the data module (data.{name}), so {given[0]} would be "
                "ignored; choose the data module instead (a data config, or --data and its arguments)"
            )


def put_run_logger_first(trainer_config: Any) -> None:
    """Checkpoints go to the first logger's folder: with a RunLogger among several loggers, it goes first, so that
    the run's checkpoints, ``metrics.csv`` and ``config.yaml`` share one folder that ``--ckpt_path last`` finds."""
    loggers = trainer_config.get("logger")
    if not isinstance(loggers, list):
        return
    spec = _run_logger_spec(trainer_config)
    if spec is not None and loggers[0] is not spec:
        trainer_config["logger"] = [spec, *[other for other in loggers if other is not spec]]


def _run_logger_spec(trainer_config: Any) -> Any:
    """The config node of the first RunLogger of the trainer (a Namespace with ``init_args``), or None."""
    loggers = trainer_config.get("logger")
    for spec in loggers if isinstance(loggers, list) else [loggers]:
        class_path = spec.get("class_path") if hasattr(spec, "get") else None
        if class_path and class_path.rsplit(".", 1)[-1] == RunLogger.__name__:
            return spec
    return None


def resume_into_run_folder(config: Any) -> Path | None:
    """Make ``fit --ckpt_path ...`` continue the run it resumes, in its own folder; returns that folder (``None``
    when the logger's folder is fixed or nothing is resumed).

    With the default logger (a RunLogger without a fixed version) a new process would open the next
    ``version_N`` folder, where ``--ckpt_path last`` finds no checkpoint. Here the run folder is chosen first:
    ``last`` resumes the newest ``version_N`` that holds a ``checkpoints/last.ckpt`` (folders of evaluations or of
    other loggers do not count), or, when none does, starts the newest ``version_N`` over (a run killed before its
    first epoch ended); a checkpoint file inside ``<root>/<name>/<version>/checkpoints/`` resumes that version. Logs
    then continue in the same ``metrics.csv`` (see :mod:`openmix.lightning.loggers`).
    """
    ckpt_path = config.get("ckpt_path")
    spec = _run_logger_spec(config["trainer"])
    if ckpt_path is None or spec is None:
        return None
    init_args = spec.get("init_args") or {}
    if init_args.get("version") is not None:
        return None
    save_dir = init_args.get("save_dir") or config["trainer"].get("default_root_dir") or "."
    name = init_args.get("name", "lightning_logs") or ""
    versions_root = Path(save_dir) / name
    if ckpt_path == "last":
        if config.get("checkpoint", {}).get("dirpath") is not None:  # the user keeps checkpoints elsewhere
            version = latest_version(versions_root)
            if version is not None:
                _set_version(spec, version)
            return None
        resumable = latest_version(versions_root, containing="checkpoints/last.ckpt")
        version = resumable if resumable is not None else latest_version(versions_root)
        if version is None:  # a mistyped root must not turn a resume into a new run
            raise SystemExit(
                f"openmix fit: --ckpt_path last: no run to resume under {versions_root} (no version_N folder); "
                "leave out --ckpt_path to start a new run, or point --trainer.default_root_dir at the run's root"
            )
        folder = versions_root / f"version_{version}"
        if resumable is None:
            config["ckpt_path"] = None  # nothing to resume from yet: start over in the same folder
            rank_zero_info(f"no checkpoint in {folder} yet: training it from the start")
        _set_version(spec, version)
        return folder if resumable is not None else None
    checkpoint = Path(ckpt_path).resolve()
    if checkpoint.parent.name == "checkpoints" and checkpoint.parent.parent.parent == versions_root.resolve():
        version_name = checkpoint.parent.parent.name
        number = version_name.removeprefix("version_")
        _set_version(spec, int(number) if number.isdigit() else version_name)
        return checkpoint.parent.parent
    return None


def check_same_configuration(folder: Path, fit_parser: Any, config: Any) -> None:
    """A resumed run must train what its folder's run trained: compare the resolved configurations and stop, with
    the keys that changed, when they differ (a longer schedule, another mixer, other data ...)."""
    from openmix.bench.runner import config_changes, resolved_config_file

    saved = folder / "config.yaml"
    if not saved.is_file():
        return
    current = folder / ".resume-config.yaml"
    current.write_text(fit_parser.dump(config, skip_validation=True))
    try:
        before, after = resolved_config_file(saved), resolved_config_file(current)
    finally:
        current.unlink(missing_ok=True)
    changes = config_changes(before, after)
    if changes:
        shown = "\n  ".join(changes[:10]) + (f"\n  ... {len(changes) - 10} more" if len(changes) > 10 else "")
        raise SystemExit(
            f"openmix fit: the run in {folder} was made with another configuration; resuming it would mix two "
            f"experiments:\n  {shown}\nResume it with its own configuration ({saved}), or start a new run."
        )


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


def run_lightning(args: Sequence[str] | None, run: bool = True) -> OpenmixCLI:
    """Run a LightningCLI subcommand with ``args`` (``None``: the command line; ``run=False``: only parse and
    instantiate, no subcommand)."""
    return OpenmixCLI(
        MixClassifier,
        ClassificationData,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=None if args is None else list(args),
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


# Keys that say where a run writes and how it reports, not what it trains: left out when runs are compared.
LOCATION_KEYS = (
    "ckpt_path",
    "trainer.logger",
    "trainer.default_root_dir",
    "trainer.callbacks",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "checkpoint.dirpath",
    "model.init_args.evaluation",  # what test/validate measure, not what is trained
)


def resolve_config(args: Sequence[str], keep_location_keys: bool = False) -> dict[str, Any]:
    """The complete configuration (every default filled in) that ``openmix fit *args`` would train, as plain data,
    without the :data:`LOCATION_KEYS` (unless ``keep_location_keys``). Invalid arguments raise ``ValueError`` with
    jsonargparse's message."""
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
    return config if keep_location_keys else without_location_keys(config)


def without_location_keys(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a plain nested dict) with the :data:`LOCATION_KEYS` removed, in place; returns it."""
    return without_keys(config, LOCATION_KEYS)


def without_keys(config: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """``config`` (a plain nested dict) without the dotted ``keys`` (``trainer.logger``), in place; returns it."""
    for key in keys:
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return config
