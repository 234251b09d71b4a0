"""The ``openmix`` command.

- ``openmix fit|validate|test|predict``: LightningCLI over :class:`~openmix.lightning.MixClassifier` and any
  :class:`~openmix.data.ClassificationData` (Fashion-MNIST by default). Config files stack
  (``--config a.yaml --config b.yaml``), ``--print_config`` prints every default, unknown keys are errors, and each
  run saves its resolved ``config.yaml`` next to its logs. The data module's ``num_classes`` and ``in_chans``
  are linked into the model, so a dataset config is enough to size the classifier.
- ``openmix list``: the registered mixers with their papers and default hyperparameters.
- ``openmix show MIXER``: a PNG grid of mixed samples from a dataset.
- ``openmix bench GRID.yaml``: run a grid of fits (resumable; N at a time), then report it; or submit them as jobs
  (``--executor slurm|local``) and follow them (``--status``).
- ``openmix report RUN_DIR``: markdown / CSV tables and plots of finished runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def run_lightning(args: Sequence[str] | None, run: bool = True) -> Any:
    """Run a LightningCLI subcommand (see :func:`openmix.lightning.cli.run_lightning`); imports Lightning."""
    from openmix.lightning.cli import run_lightning as run_cli

    return run_cli(args, run)


def resolve_config(args: Sequence[str]) -> dict[str, Any]:
    """The complete configuration ``openmix fit *args`` would train (:func:`openmix.lightning.cli.resolve_config`)."""
    from openmix.lightning.cli import resolve_config as resolve

    return resolve(args)


def list_command(args: Sequence[str]) -> None:
    """Print every registered mixer: name, whether it needs a network, default hyperparameters, paper."""
    parser = argparse.ArgumentParser(prog="openmix list", description="List the registered mixers.")
    parser.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. '*mix'")
    options = parser.parse_args(args)
    import openmix

    if not openmix.list_mixers(options.pattern):
        raise ValueError(f"no mixer matches {options.pattern!r}; registered: {', '.join(openmix.list_mixers())}")
    for name in openmix.list_mixers(options.pattern):
        entry = openmix.get_mixer_entry(name)
        defaults = ", ".join(f"{key}={value!r}" for key, value in entry.defaults.items()) or "-"
        needs = f"  [needs: {', '.join(entry.requires)}]" if entry.requires else ""  # the class says so
        learned = "  [learned]" if entry.learned else ""
        hooks = ", ".join(entry.hooks)
        print(f"{name}{needs}{learned}\n    acts on: {hooks}\n    defaults: {defaults}")
        print(f"    paper: {entry.paper}\n    {entry.url}")


def show_command(args: Sequence[str]) -> None:
    """Write a PNG grid of mixed samples from a dataset."""
    parser = argparse.ArgumentParser(prog="openmix show", description="Draw a mixer on samples of a dataset.")
    parser.add_argument("mixer", nargs="+", help="registered mixer name(s)")
    parser.add_argument("--data", default="FashionMNISTData", help="data module class in openmix.data")
    parser.add_argument("--root", default=None, help="dataset root (the data module's default if omitted)")
    parser.add_argument("--num", type=int, default=8, help="samples per row (at least 1)")
    parser.add_argument("--mode", default=None, choices=("batch", "elem"), help="default: each mixer's own")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="mixers.png", help="PNG file to write")
    options = parser.parse_args(args)
    if options.num < 1:
        parser.error(f"--num must be at least 1, got {options.num}")
    import openmix

    for name in options.mixer:
        try:
            entry = openmix.get_mixer_entry(name)  # unknown names fail before any data is read
        except ValueError as error:
            parser.error(str(error))
        if entry.learned:  # a learned mixer has nothing to show before it is trained
            parser.error(
                f"{name} is learned during training ({entry.cls.trained_by or 'openmix.lightning.MixClassifier'}); "
                "an untrained one has no masks to show"
            )
    import torch

    import openmix.data as data_modules
    from openmix.viz import render_grid

    module_class = getattr(data_modules, options.data, None)
    if not (isinstance(module_class, type) and issubclass(module_class, data_modules.ClassificationData)):
        parser.error(f"--data must name a data module of openmix.data, got {options.data!r}")
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


CLUSTER_FLAGS = {  # --flag -> the cluster: key it sets (openmix.bench.cluster.KEYS)
    "--partition": "partition",
    "--account": "account",
    "--time": "time",
    "--gpus-per-node": "gpus_per_node",
    "--nodes": "nodes",
    "--cpus-per-task": "cpus_per_task",
    "--mem-gb": "mem_gb",
    "--array-parallelism": "array_parallelism",
    "--max-requeues": "max_requeues",
}


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "jobs", "submit the runs to a scheduler and return (these override the grid file's cluster: section)"
    )
    group.add_argument(
        "--executor", choices=("slurm", "local"), default=None, help="slurm, or local: the same path on this machine"
    )
    group.add_argument("--status", action="store_true", help="show each run's state (run folders and scheduler)")
    helps = {
        "--time": "time limit of one job (HH:MM:SS, D-HH:MM:SS or minutes)",
        "--gpus-per-node": "default: the runs' trainer.devices",
        "--nodes": "default: the runs' trainer.num_nodes",
        "--array-parallelism": "at most this many jobs at a time",
        "--max-requeues": "times a job that reaches its time limit requeues itself (default 5)",
    }
    for flag in CLUSTER_FLAGS:
        group.add_argument(flag, default=None, help=helps.get(flag))
    group.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra sbatch option (YAML value; KEY=true: a bare flag)",
    )
    group.add_argument("--setup", action="append", default=[], metavar="LINE", help="shell line run before a job")


def _cluster_from_command_line(options: argparse.Namespace) -> Any:
    """The cluster options given on the command line (``ValueError`` naming the flag for a wrong value)."""
    from openmix.bench.cluster import ClusterOptions, check_value

    values: dict[str, Any] = {}
    for flag, key in CLUSTER_FLAGS.items():
        value = getattr(options, flag[2:].replace("-", "_"))
        if value is not None:
            values["time_min" if key == "time" else key] = check_value(key, value, flag)
    import yaml

    extra = {}
    for text in options.sbatch:
        key, equals, value = text.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"--sbatch {text}: expected KEY=VALUE (a bare flag is KEY=true, e.g. exclusive=true)")
        extra[key.strip()] = yaml.safe_load(value)  # read as --set reads its values: exclusive=true is a flag
    if extra:
        values["sbatch"] = check_value("sbatch", extra, "--sbatch")
    if options.setup:
        values["setup"] = check_value("setup", list(options.setup), "--setup")
    return ClusterOptions(**values)


def bench_command(args: Sequence[str]) -> None:
    """Run every unfinished run of a grid file, then write its report; or submit them as scheduler jobs and return
    (``--executor``), or show where each run stands (``--status``). Exits 1 when a run did not finish, 2 when the
    grid cannot run (invalid runs, or folders of another configuration), before anything starts."""
    import yaml

    from openmix.bench import load_grid, report, run_grid
    from openmix.bench.runner import GridError, is_complete

    parser = argparse.ArgumentParser(prog="openmix bench", description="Run a benchmark grid (resumable).")
    parser.add_argument("grid", help="grid YAML file")
    parser.add_argument("--runs-dir", default="runs", help="where run folders go (RUNS_DIR/<grid name>/<run>)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (CPU threads are split evenly)")
    parser.add_argument("--last", type=int, default=10, help="epochs of the 'median of the last N' column")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the commands of the unfinished runs and what they will cost"
    )
    parser.add_argument(
        "--probe",
        type=int,
        nargs="?",
        const=5,  # openmix.bench.probe.DEFAULT_STEPS, without importing Lightning here
        default=None,
        metavar="STEPS",
        help="with --dry-run: estimate the cost from STEPS (default 5) timed training steps of one short fit per "
        "method on this machine (after 2 warm-up steps; startup not included); give the grid file first, since a "
        "word after --probe is read as STEPS",
    )
    parser.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines")
    parser.add_argument(
        "--only", action="append", default=[], metavar="AXIS=LABEL[,LABEL]", help="run only these runs (repeatable)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key in every run (YAML)"
    )
    _add_cluster_options(parser)
    options = parser.parse_args(args)
    if options.probe is not None and not options.dry_run:
        parser.error("--probe estimates what a grid will cost without running it: add --dry-run")
    if options.probe is not None and options.probe < 1:
        parser.error(f"--probe: the steps to time must be at least 1, got {options.probe}")
    if options.status and (options.dry_run or options.probe is not None):
        parser.error("--status shows where the runs stand; it does not go with --dry-run or --probe")
    only, overrides = {}, {}
    for text, target in [(t, only) for t in options.only] + [(t, overrides) for t in options.set]:
        if "=" not in text:
            parser.error(f"expected KEY=VALUE, got {text!r}")
        key, value = text.split("=", 1)
        target[key] = value.split(",") if target is only else yaml.safe_load(value)
    grid = load_grid(options.grid)
    cluster = _cluster_from_command_line(options)
    if options.status:
        from openmix.bench.status import grid_status, status_table

        print(status_table(grid, grid_status(grid, options.runs_dir, only)))
        return
    if options.executor is None and cluster != type(cluster)():
        parser.error("the job options (--partition, --time, --sbatch ...) need --executor slurm or local")
    try:
        if options.executor is not None:
            from openmix.bench.jobs import submit_grid

            submit_grid(
                grid, options.runs_dir, options.executor, cluster, options.dry_run, only, overrides, options.probe
            )
            return
        directories = run_grid(
            grid,
            options.runs_dir,
            options.parallel,
            options.dry_run,
            options.progress_every,
            only,
            overrides,
            probe=options.probe,
        )
    except GridError as error:
        print(f"openmix bench: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if options.dry_run:
        return
    unfinished = [d for d in directories if not is_complete(grid, d)]  # a failed test step counts too
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
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
USAGE = """usage: openmix COMMAND [options]

Training (LightningCLI; `openmix COMMAND --help` lists every option, `--print_config` every default):
  fit        train a classifier with a mixer (logs and checkpoints: runs/lightning_logs/version_N/)
  validate   evaluate a checkpoint on the validation split (logs beside the run it comes from)
  test       evaluate a checkpoint on the test split
  predict    class probabilities of a checkpoint on the held-out split

Library and benchmarks:
  list       the registered mixers, their papers and defaults
  show       a PNG of mixed samples from a dataset
  bench      run a grid of fits (resumable), then report it
  report     tables and plots of finished runs

Docs: README.md, docs/training.md, docs/benchmarks.md.
"""


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``openmix`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return
    if args[0] in COMMANDS:
        try:
            COMMANDS[args[0]](args[1:])
        except (FileNotFoundError, ValueError) as error:  # a clean error: one line, no traceback
            print(f"openmix {args[0]}: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        return
    if args[0] not in LIGHTNING_COMMANDS and not args[0].startswith("-"):
        import difflib

        close = difflib.get_close_matches(args[0], [*LIGHTNING_COMMANDS, *COMMANDS], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"openmix: unknown command {args[0]!r}{hint}\n\n{USAGE}", file=sys.stderr, end="")
        raise SystemExit(2)
    from openmix.bench.run_folder import RunFolderBusy

    try:  # LightningCLI reads sys.argv itself when called as the console script (no "args given twice" warning)
        run_lightning(None if argv is None else args)
    except RunFolderBusy as error:
        print(f"openmix {args[0]}: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
