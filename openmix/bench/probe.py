"""What a grid's runs will cost, from a short timed probe: ``openmix bench GRID --dry-run --probe [STEPS]``.

The runs that differ only in their seed (the ``seed`` axis, or any axis that sets nothing but
:data:`~openmix.bench.grid.SEED_KEYS`) train the same thing at the same pace, so they share one probe: ONE
``openmix fit`` process of the group's first run, in a temporary folder, cut down to ``warmup + steps`` training
batches and a few validation batches (:func:`probe_arguments`), with :class:`StepTimer` recording the wall time of
each batch. From its record (:func:`read_probe`), a run's cost is (:func:`fit_seconds`,
:func:`seconds_of_test_step`)::

    epochs left x train batches x s/step
    + validation passes in those epochs x validation batches x s/validation batch
    + (grid test: step) one validation pass x (1 + corruptions x severities / corruption_every)
      + OOD images at the validation rate

What is not in it: the start of each process (imports, reading the data, building the model), the checkpoints,
the sanity check, the corruption transforms themselves and the learning-rate schedule's effect on speed (none);
a probe on this machine says nothing about another (a cluster's GPUs). It is a rough figure, and says so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from openmix.bench.grid import SEED_KEYS, Grid, Run

DEFAULT_STEPS = 5  # timed training steps of `--probe` without a value
DEFAULT_WARMUP = 2  # training steps run first and not timed (allocations, caches, cudnn's autotuning)
PROBE_VAL_BATCHES = 3  # validation batches a probe times
PROBE_TIMEOUT_S = 900.0  # a probe still running after this is stopped and reported as failed
PROBE_FILE = "probe.json"  # what StepTimer writes, in the probe's temporary folder
PROBE_LOG = "probe.log"  # the probe process's output, beside it
NOISY_SPREAD = 2.0  # a probe whose slowest timed step took this many times its fastest is flagged
DIGITS_IMAGES = 1797  # scikit-learn's bundled digits (openmix.evaluation's default OOD set)
EVALUATION_KEYS = ("model.init_args.evaluation", "model.evaluation")  # how a `test:` override names the Evaluation


def device_name(device: Any) -> str:
    """What a person calls a ``torch.device``: the CUDA device's name, else the processor's model name (from
    ``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return device.type
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "CPU"


def _loader_length(loaders: Any) -> int | None:
    """The batches of a loader, or the sum over a list / dict of them (``None`` when one has no length)."""
    if loaders is None:
        return None
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if not isinstance(loaders, (list, tuple)):
        loaders = [loaders]
    try:
        return sum(len(loader) for loader in loaders)
    except TypeError:  # an iterable dataset without a length
        return None


def _batch_size(loaders: Any) -> int | None:
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    first = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
    size = getattr(first, "batch_size", None)
    return size if isinstance(size, int) else None


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


class StepTimer(Callback):
    """Record the wall time of every training and validation batch of a fit, and write a summary at its end.

    The time of a training step is the wall time from the end of the previous step (or the start of the epoch,
    or the end of a validation inside it) to the end of this one: it holds fetching the batch, the step and
    whatever the other callbacks do, i.e. what an epoch is made of. The same holds for validation batches.
    ``train_compute_times_s`` (start to end of the step alone) are kept beside them. On CUDA the device is
    synchronised before each reading (``torch.cuda.synchronize``), so a reading includes the kernels queued
    before it; on the CPU nothing is synchronised.

    At the end of fit, rank 0 writes ``path`` (JSON):

    - ``train_step_s``: the median time of a training step after the first ``warmup`` (seconds; ``null`` when no
      step came after them), ``train_compute_s`` the same for the step alone, ``train_steps_timed`` how many;
    - ``val_batch_s``: the median time of a validation batch (``null`` when none ran; the sanity check is not
      counted), ``val_batches_timed`` how many;
    - ``train_batches`` / ``val_batches``: the FULL number of batches of a training epoch and of a validation pass
      on one process: the length of the loaders Lightning iterates (distributed samplers included), else of the
      data module's; not ``trainer.num_training_batches``, which ``limit_train_batches`` cuts; ``null`` when
      a loader has no length;
    - ``train_batch_size`` / ``val_batch_size``, ``world_size`` (processes), ``device`` (its name:
      :func:`device_name`), ``device_type`` (``cpu``, ``cuda`` ...), ``threads`` (``torch.get_num_threads()``),
      ``warmup``;
    - ``evaluation``: the fields of the model's :class:`~openmix.evaluation.Evaluation` (what its ``test`` will
      measure; ``null`` without one);
    - ``train_times_s`` / ``train_compute_times_s`` / ``val_times_s``: every reading, in order.

    Args:
        path: the JSON file to write (its folder must exist).
        warmup: training steps not counted in the medians (their time holds first allocations and caches), >= 0.
        stop_after: ask the fit to stop (``trainer.should_stop``) once this many training steps have run; Lightning
            then runs a validation pass and ends the fit. ``None``: the fit runs to its own end.

    Raises:
        ValueError: a negative ``warmup`` or a ``stop_after`` < 1 (or not ints).
    """

    def __init__(self, path: str, warmup: int = DEFAULT_WARMUP, stop_after: int | None = None) -> None:
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
        if stop_after is not None and (
            isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 1
        ):
            raise ValueError(f"stop_after must be an int >= 1 or None, got {stop_after!r}")
        self.path = str(path)
        self.warmup = warmup
        self.stop_after = stop_after
        self.train_times: list[float] = []
        self.train_compute_times: list[float] = []
        self.val_times: list[float] = []
        self._train_mark: float | None = None
        self._batch_start: float | None = None
        self._val_mark: float | None = None

    @staticmethod
    def _now(pl_module: L.LightningModule) -> float:
        """``time.perf_counter()`` once the module's CUDA device (if any) has finished its queued work."""
        device = getattr(pl_module, "device", None)
        if device is not None and getattr(device, "type", None) == "cuda":
            import torch

            torch.cuda.synchronize(device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train_mark = self._now(pl_module)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_start = self._now(pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = self._now(pl_module)
        start = self._batch_start if self._batch_start is not None else now
        self.train_times.append(now - (self._train_mark if self._train_mark is not None else start))
        self.train_compute_times.append(now - start)
        self._train_mark, self._batch_start = now, None
        if self.stop_after is not None and len(self.train_times) >= self.stop_after:
            trainer.should_stop = True

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val_mark = self._now(pl_module)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or self._val_mark is None:
            return
        now = self._now(pl_module)
        self.val_times.append(now - self._val_mark)
        self._val_mark = now

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_mark = None
        if not trainer.sanity_checking:  # a validation inside a training epoch is not part of the next step
            self._train_mark = self._now(pl_module)

    def summary(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The record :meth:`on_fit_end` writes (see the class)."""
        import torch

        timed = self.train_times[self.warmup :]
        datamodule = getattr(trainer, "datamodule", None)
        train_loaders = trainer.train_dataloader
        if train_loaders is None and datamodule is not None:
            train_loaders = datamodule.train_dataloader()
        val_loaders = trainer.val_dataloaders
        if val_loaders is None and datamodule is not None and hasattr(datamodule, "val_dataloader"):
            val_loaders = datamodule.val_dataloader()
        evaluator = getattr(pl_module, "evaluator", None)
        config = getattr(evaluator, "config", None)
        return {
            "train_step_s": _median(timed),
            "train_compute_s": _median(self.train_compute_times[self.warmup :]),
            "train_steps_timed": len(timed),
            "val_batch_s": _median(self.val_times),
            "val_batches_timed": len(self.val_times),
            "warmup": self.warmup,
            "train_batches": _loader_length(train_loaders),
            "val_batches": _loader_length(val_loaders),
            "train_batch_size": _batch_size(train_loaders),
            "val_batch_size": _batch_size(val_loaders),
            "world_size": trainer.world_size,
            "device": device_name(pl_module.device),
            "device_type": pl_module.device.type,
            "threads": torch.get_num_threads(),
            "evaluation": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None,
            "train_times_s": self.train_times,
            "train_compute_times_s": self.train_compute_times,
            "val_times_s": self.val_times,
        }

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            Path(self.path).write_text(json.dumps(self.summary(trainer, pl_module), indent=2))


# ---------------------------------------------------------------------------------------------------- the probes


def probe_arguments(run: Run, folder: Path, steps: int, warmup: int) -> list[str]:
    """The ``openmix fit`` arguments of a probe of ``run`` in ``folder``: the run's own arguments
    (:func:`~openmix.bench.runner.run_arguments`), then overrides that make it ``warmup + steps`` training batches
    and a validation pass of :data:`PROBE_VAL_BATCHES` batches at each epoch's end, with no logger, no checkpoint
    written, no sanity check, and :class:`StepTimer` writing ``folder/probe.json``.

    The epochs are cut to ``warmup + steps`` batches (``limit_train_batches``), and :class:`StepTimer` stops the
    fit after ``warmup + steps`` batches in all (``stop_after``). A long epoch therefore ends after them and
    validates; an epoch shorter than that goes on into the next ones (up to ``warmup + steps`` epochs). This is
    not ``max_steps``: a fit stopped by ``max_steps`` inside an epoch never validates, and ``max_steps`` counts
    optimizer steps (``accumulate_grad_batches`` batches each). The CLI's own checkpoint callback
    (``--checkpoint.*``) stays (Lightning refuses ``enable_checkpointing=false`` beside it) but saves nothing."""
    from openmix.bench.runner import run_arguments

    timer = {
        "class_path": f"{StepTimer.__module__}.{StepTimer.__name__}",
        "init_args": {"path": str(folder / PROBE_FILE), "warmup": warmup, "stop_after": warmup + steps},
    }
    return [
        *run_arguments(run),
        f"--trainer.max_epochs={warmup + steps}",
        "--trainer.min_epochs=null",
        "--trainer.max_steps=-1",
        "--trainer.min_steps=null",
        "--trainer.max_time=null",
        f"--trainer.limit_train_batches={warmup + steps}",
        f"--trainer.limit_val_batches={PROBE_VAL_BATCHES}",
        "--trainer.val_check_interval=1.0",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={folder}",
        f"--checkpoint.dirpath={folder / 'checkpoints'}",
        "--checkpoint.save_top_k=0",
        "--checkpoint.save_last=false",
        f"--trainer.callbacks+={json.dumps(timer)}",
    ]


def run_probe(run: Run, steps: int, warmup: int, threads: int, timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Run one probe of ``run`` (:func:`probe_arguments`) in a temporary folder, removed afterwards, with
    ``OMP_NUM_THREADS=threads``; returns its :class:`StepTimer` record.

    Raises:
        RuntimeError: the process failed, timed out or wrote no record; the message is the line of its output
            that says why (:func:`~openmix.bench.runner.reason_in_log`).
    """
    from openmix.bench.runner import _die_with_parent, reason_in_log

    folder = Path(tempfile.mkdtemp(prefix="openmix-probe-"))
    try:
        args = [sys.executable, "-m", "openmix.cli", "fit", *probe_arguments(run, folder, steps, warmup)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        with open(folder / PROBE_LOG, "w") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
            try:
                returncode = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise RuntimeError(f"still running after {timeout:.0f} s: stopped") from None
        record = folder / PROBE_FILE
        if returncode != 0 or not record.is_file():
            reason = reason_in_log(folder / PROBE_LOG)
            raise RuntimeError(reason if returncode != 0 else f"exited without writing {PROBE_FILE}: {reason}")
        return read_probe(record)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def read_probe(path: str | Path) -> dict[str, Any]:
    """A :class:`StepTimer` record, checked: a training step must have been timed after the warm-up.

    Raises:
        RuntimeError: no training step came after the warm-up (an epoch shorter than ``warmup + 1`` batches), or
            the full number of training batches is unknown (a loader without a length).
    """
    record = json.loads(Path(path).read_text())
    if record.get("train_step_s") is None:
        raise RuntimeError(
            f"no training step was timed after the {record.get('warmup')} warm-up step(s) "
            f"({len(record.get('train_times_s') or [])} step(s) ran)"
        )
    if record.get("train_batches") is None:
        raise RuntimeError("the training loader has no length: the batches of an epoch are unknown")
    return record


# ------------------------------------------------------------------------------------------------------ estimates


def limited(batches: int, limit: Any) -> int:
    """The batches Lightning runs of a loader of ``batches`` under ``limit_*_batches``: a float is a fraction
    (``int(batches * limit)``), an int a count; ``None``: all."""
    if limit is None or isinstance(limit, bool):
        return batches
    if isinstance(limit, float):
        return int(batches * limit)
    return min(batches, int(limit))


def validation_passes(trainer: dict[str, Any], train_batches: int, done: int, left: int) -> int:
    """How many validation passes Lightning runs in the epochs ``done`` to ``done + left - 1`` (counting from 0) of
    a run of ``train_batches`` training batches per epoch, with the run's ``check_val_every_n_epoch`` (epochs
    ``n - 1``, ``2n - 1`` ... validate; ``null``: count ``val_check_interval`` batches across epochs) and
    ``val_check_interval`` (a fraction of an epoch or a number of batches: one pass every that many batches)."""
    every = trainer.get("check_val_every_n_epoch", 1)
    interval = trainer.get("val_check_interval")
    if interval is None or isinstance(interval, float):
        check_batch = max(1, int(train_batches * (1.0 if interval is None else interval)))
    else:
        check_batch = max(1, int(interval))
    if every is None:  # every `check_batch` batches, counted over the whole run
        return ((done + left) * train_batches) // check_batch - (done * train_batches) // check_batch
    validated_epochs = (done + left) // every - done // every
    return validated_epochs * (train_batches // check_batch)


def fit_seconds(probe: dict[str, Any], trainer: dict[str, Any], done: int, left: int) -> float:
    """Seconds of training and validation of the epochs ``done`` to ``done + left - 1`` of a run whose resolved
    ``trainer`` configuration is given, at the pace of ``probe`` (a :class:`StepTimer` record): training batches
    (``left`` epochs of them, under the run's ``limit_train_batches``) x s/step + validation passes
    (:func:`validation_passes`) x validation batches (under ``limit_val_batches``) x s/validation batch.

    A ``max_steps`` > 0 ends the run earlier when it comes first, as in Lightning: the batches stop at
    ``max_steps x accumulate_grad_batches``, and only the epochs finished by then validate."""
    train = limited(int(probe["train_batches"]), trainer.get("limit_train_batches"))
    end = done + left
    batches = left * train
    max_steps = trainer.get("max_steps")
    if isinstance(max_steps, int) and not isinstance(max_steps, bool) and max_steps > 0 and train > 0:
        cap = max_steps * int(trainer.get("accumulate_grad_batches") or 1)
        batches = max(0, min(end * train, cap) - min(done * train, cap))
        end = max(done, min(end, cap // train))  # the epochs that reach their end (and validate)
    seconds = batches * float(probe["train_step_s"])
    if probe.get("val_batch_s") is not None and probe.get("val_batches"):
        val = limited(int(probe["val_batches"]), trainer.get("limit_val_batches"))
        seconds += validation_passes(trainer, train, done, end - done) * val * float(probe["val_batch_s"])
    return seconds


def evaluation_of_test_step(fit_evaluation: dict[str, Any] | None, test: dict[str, Any]) -> Any:
    """The :class:`~openmix.evaluation.Evaluation` a grid's ``openmix test`` runs: the fit's (its fields, as
    :class:`StepTimer` records them; ``None``: none), then the grid's ``test:`` overrides of it
    (``model.init_args.evaluation: null | {...}``, ``model.init_args.evaluation.FIELD: value``). ``None`` when
    the test has no evaluation.

    Raises:
        ValueError / TypeError: the overrides make an invalid Evaluation (naming the field).
    """
    from openmix.evaluation import Evaluation

    fields = None if fit_evaluation is None else dict(fit_evaluation)
    for key, value in test.items():
        prefix = next((p for p in EVALUATION_KEYS if key == p or key.startswith(f"{p}.")), None)
        if prefix is None:
            continue
        if key == prefix:
            fields = None if value is None else dict(value)
        else:
            fields = {**(fields or {}), key.removeprefix(f"{prefix}."): value}
    return None if fields is None else Evaluation(**fields)


def ood_images(evaluation: Any) -> int | None:
    """How many images the OOD pass of ``evaluation`` scores: ``ood_limit`` at most; scikit-learn's digits
    (:data:`DIGITS_IMAGES`, none when scikit-learn is missing: the evaluator skips them), a folder's image files;
    ``None`` for a file whose size is not known without reading it (SVHN ``.mat``, idx)."""
    if evaluation is None or evaluation.ood is None:
        return 0
    from openmix.data.readers import DIGITS_SOURCE, image_files, sklearn_digits_path

    if evaluation.ood == DIGITS_SOURCE:
        try:
            sklearn_digits_path()
            count = DIGITS_IMAGES
        except (ModuleNotFoundError, FileNotFoundError):
            count = 0
    elif Path(evaluation.ood).is_dir():
        count = len(image_files(Path(evaluation.ood)))
    else:
        count = None
    limit = evaluation.ood_limit
    if count is None:
        return limit
    return count if limit is None else min(count, limit)


def seconds_of_test_step(probe: dict[str, Any], trainer: dict[str, Any], evaluation: Any, ood: int | None) -> float:
    """Seconds of a grid's ``openmix test`` step, roughly: one pass over the held-out split on one device (the
    validation batches x ``world_size``, under ``limit_test_batches``) for the clean images and one more per
    corruption x severity of ``evaluation`` over every ``corruption_every``-th batch, at the probe's s/validation
    batch; plus ``ood`` images at the
    validation rate per image (``None``: as many as a pass over the held-out split). 0 without a validation timing."""
    if probe.get("val_batch_s") is None or not probe.get("val_batches"):
        return 0.0
    batches = limited(int(probe["val_batches"]) * int(probe.get("world_size") or 1), trainer.get("limit_test_batches"))
    cases = len(evaluation.corruptions) * len(evaluation.severities) if evaluation is not None else 0
    corrupted = -(-batches // evaluation.corruption_every) if evaluation is not None else 0  # batches 0, k, 2k, ...
    seconds = (batches + cases * corrupted) * float(probe["val_batch_s"])
    per_image = float(probe["val_batch_s"]) / max(1, int(probe.get("val_batch_size") or 1))
    if ood is None:
        ood = batches * int(probe.get("val_batch_size") or 1)
    return seconds + ood * per_image


# ------------------------------------------------------------------------------------------------------ the table


def seed_axes(grid: Grid) -> set[str]:
    """The axes that vary only the seed: ``seed``, and any whose labels set nothing but :data:`SEED_KEYS`."""
    return {
        name
        for name, labels in grid.axes.items()
        if name == "seed" or all(set(values) <= set(SEED_KEYS) for values in labels.values())
    }


def without_seed(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved configuration without its seeds (:data:`SEED_KEYS`), in a copy."""
    from openmix.lightning.cli import without_keys

    return without_keys(json.loads(json.dumps(config, default=str)), SEED_KEYS)


def group_runs(
    grid: Grid, runs: list[Run], directories: list[Path], configs: list[dict[str, Any]]
) -> list[list[tuple[Run, Path, dict[str, Any]]]]:
    """The runs grouped by their resolved configuration without the seeds (:func:`without_seed`), in grid order:
    the runs of one group train the same thing and share one probe."""
    groups: dict[str, list[tuple[Run, Path, dict[str, Any]]]] = {}
    for run, directory, config in zip(runs, directories, configs):
        key = json.dumps(without_seed(config), sort_keys=True, default=str)
        groups.setdefault(key, []).append((run, directory, config))
    return list(groups.values())


def method_label(grid: Grid, run: Run) -> str:
    """A group's name: the run's labels without the seed axes (``run`` when nothing is left)."""
    seeds = seed_axes(grid)
    return ",".join(f"{axis}={label}" for axis, label in run.labels.items() if axis not in seeds) or "run"


def figure(value: float) -> str:
    """A table's number: 3 significant digits, without an exponent (``0.0437``, ``42.9``, ``2140``)."""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def duration(seconds: float) -> str:
    """``4.2 s``, ``42 s``, ``12.5 min``, ``3.2 h``."""
    if seconds < 100:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 6000:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def probe_grid(
    grid: Grid,
    runs: list[Run],
    directories: list[Path],
    configs: list[dict[str, Any]],
    steps: int = DEFAULT_STEPS,
    warmup: int = DEFAULT_WARMUP,
    *,
    parallel: int | None = 1,
    threads: int | None = None,
    devices_per_run: int | None = None,
    timeout: float = PROBE_TIMEOUT_S,
) -> list[str]:
    """Time one probe per group of ``runs`` (the pending ones; :func:`group_runs`) and estimate what they cost;
    returns the lines to print: a header naming the device and the probe, a table (method, runs, s/step,
    s/epoch, est. per run, est. total), then the totals: run time, wall time with ``parallel`` runs at a time
    (``None``: all at once) and device-hours.

    Args:
        grid: the runs' grid (its ``test:`` step is estimated when it has one).
        runs, directories, configs: the pending runs, their folders (for the epochs already finished,
            :func:`~openmix.bench.runner.epochs_to_train`) and resolved configurations.
        steps: training steps timed per probe, >= 1.
        warmup: training steps run first and not timed, >= 0.
        parallel: runs at a time, for the wall-time line (``None``: all at once).
        threads: ``OMP_NUM_THREADS`` of each probe (default: this machine's CPUs / ``parallel``, as the runner
            gives each run).
        devices_per_run: devices one run holds, for device-hours (default: the probe's ``world_size``).
        timeout: seconds after which a probe is stopped and reported as failed.

    A probe that fails is reported on its group's row (which group, and the line of its output that says why); the
    other groups are still estimated. Raises ``ValueError`` for ``steps`` < 1 or ``warmup`` < 0.
    """
    from openmix.bench.runner import epochs_to_train, is_done, test_is_done

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"--probe: the steps to time must be an int >= 1, got {steps!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if not runs:
        return ["probe: no run to go, nothing to time"]
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // max(1, parallel or len(runs)))
    rows, problems, devices, total, device_seconds = [], [], [], 0.0, 0.0
    uncounted = failed = 0
    groups = group_runs(grid, runs, directories, configs)
    for number, group in enumerate(groups, 1):
        name = method_label(grid, group[0][0])
        print(f"openmix bench: probing {name} ({number} of {len(groups)})", file=sys.stderr, flush=True)
        try:
            probe = run_probe(group[0][0], steps, warmup, threads, timeout)
        except (RuntimeError, OSError) as error:
            rows.append((name, str(len(group)), "-", "-", "-", "-"))
            problems.append(f"  {name}: probe failed: {error}")
            failed += len(group)
            continue
        device = f"{probe['device']} ({probe['device_type']})"
        if device not in devices:
            devices.append(device)
        timed = [float(t) for t in probe.get("train_times_s", [])[warmup:]]
        if len(timed) > 1 and min(timed) > 0 and max(timed) / min(timed) > NOISY_SPREAD:
            problems.append(
                f"  {name}: its timed steps took {figure(min(timed))} to {figure(max(timed))} s (a busy machine, or "
                "steps that differ): a rough median; more --probe steps steady it"
            )
        evaluation_error, evaluation = None, None
        if grid.test is not None:
            try:
                evaluation = evaluation_of_test_step(probe.get("evaluation"), grid.test)
            except (TypeError, ValueError) as error:
                evaluation_error = f"  {name}: test step not estimated: {error}"
        costs = []
        for _, directory, config in group:
            trainer = config.get("trainer") or {}
            left = epochs_to_train(directory, config) if not is_done(directory) else 0
            if left is None:
                uncounted += 1
                continue
            seconds = fit_seconds(probe, trainer, trainer["max_epochs"] - left if left else 0, left)
            if grid.test is not None and evaluation_error is None and not test_is_done(grid, directory):
                test_trainer = {**trainer, **{k[8:]: v for k, v in grid.test.items() if k.startswith("trainer.")}}
                seconds += seconds_of_test_step(probe, test_trainer, evaluation, ood_images(evaluation))
            costs.append(seconds)
            device_seconds += seconds * (devices_per_run or int(probe.get("world_size") or 1))
        if evaluation_error is not None:
            problems.append(evaluation_error)
        total += sum(costs)
        trainer = group[0][2].get("trainer") or {}
        train = limited(int(probe["train_batches"]), trainer.get("limit_train_batches"))
        span = trainer.get("check_val_every_n_epoch") or 1  # an epoch's share of the validation
        epoch = fit_seconds(probe, {**trainer, "max_steps": -1}, 0, span) / span  # a whole epoch's pace
        per_run = duration(sum(costs) / len(costs)) if costs else "-"
        rows.append(
            (
                name,
                str(len(group)),
                figure(probe["train_step_s"]),
                figure(epoch) if train else "-",
                per_run,
                duration(sum(costs)) if costs else "-",
            )
        )
    what = f"{steps} step(s) after {warmup} warm-up step(s), one probe per method (the seeds share it)"
    if devices:
        lines = [
            f"probe: timed on this machine's {', '.join(devices)}, {threads} thread(s) per run, with {what}; startup "
            "time (imports, reading the data, building the model) and checkpoints are not included"
        ]
    else:
        lines = [f"probe: every probe failed ({what}, {threads} thread(s) per run); nothing was timed"]
    header = ("method", "runs", "s/step", "s/epoch", "est. per run", "est. total")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append(
            "  "
            + "  ".join(
                cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths))
            ).rstrip()
        )
    lines += problems
    if grid.test is not None:
        lines.append(
            "  est. per run includes the test step: one validation pass x (1 + corruptions x severities / "
            "corruption_every) and the OOD images at the validation pace (the corruption transforms themselves are "
            "not timed)"
        )
    if uncounted:
        lines.append(f"  {uncounted} run(s) without a max_epochs not estimated")
    if not devices:
        return lines
    at_once = min(parallel or len(runs), len(runs))
    share = f"all {len(runs)} at once" if parallel is None else f"{parallel} at a time"
    without = f" (without the {failed} run(s) of the failed probes)" if failed else ""
    lines.append(
        f"total{without}: {duration(total)} of run time; about {duration(total / at_once)} of wall time running "
        f"{share} (sum / {at_once}, a rough figure); {device_seconds / 3600:.2f} device-hours"
    )
    return lines
