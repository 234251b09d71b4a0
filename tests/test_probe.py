"""`openmix bench GRID --dry-run --probe`: the step timer's record, the cost formula, one probe per method (the
seeds share it), a failed probe named while the others are estimated, and the command end to end."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import TINY_ARGS

from openmix.bench import probe as probing
from openmix.bench.grid import load_grid
from openmix.bench.probe import (
    StepTimer,
    duration,
    evaluation_of_test_step,
    fit_seconds,
    seconds_of_test_step,
    validation_passes,
)
from openmix.evaluation import Evaluation

ROOT = Path(__file__).resolve().parents[1]


def write_grid(folder: Path, name: str = "tiny", axes: dict | None = None, test: dict | None = None, **args) -> Path:
    spec = {
        "name": name,
        "base": [str(ROOT / "configs/trainer/cpu_quick.yaml")],
        "args": {**TINY_ARGS, **args},
        "axes": axes or {"mixer": {"vanilla": {"model.init_args.mixer": None}}},
    }
    if test is not None:
        spec["test"] = test
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def nested(overrides: dict) -> dict:
    """Dotted keys -> the nested dict a resolved configuration is."""
    config: dict = {}
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config


class Clock:
    """A fake ``time.perf_counter``: the given readings, in order."""

    def __init__(self, readings: list[float]):
        self.readings = list(readings)

    def __call__(self) -> float:
        return self.readings.pop(0)


def test_step_timer_records_steps_after_the_warm_up_and_the_full_loader_lengths(tmp_path, monkeypatch):
    train_loader = torch.utils.data.DataLoader(list(range(100)), batch_size=8)  # 13 batches
    val_loader = torch.utils.data.DataLoader(list(range(30)), batch_size=10)  # 3 batches
    trainer = SimpleNamespace(
        sanity_checking=False,
        train_dataloader=train_loader,
        val_dataloaders=val_loader,
        datamodule=None,
        world_size=1,
        is_global_zero=True,
    )
    module = SimpleNamespace(device=torch.device("cpu"), evaluator=SimpleNamespace(config=Evaluation(ood=None)))
    timer = StepTimer(str(tmp_path / "probe.json"), warmup=2)
    # (start, end) of five training steps after the epoch starts at 0.0; then a validation pass from 8.0
    steps = [(0.5, 1.5), (1.7, 2.7), (2.8, 3.8), (4.0, 6.0), (6.1, 7.1)]
    val_ends = [8.5, 9.5, 9.8]
    clock = [0.0, *[t for step in steps for t in step], 8.0, *val_ends, 10.0]
    monkeypatch.setattr(probing.time, "perf_counter", Clock(clock))
    timer.on_train_epoch_start(trainer, module)
    for index, _ in enumerate(steps):
        timer.on_train_batch_start(trainer, module, None, index)
        timer.on_train_batch_end(trainer, module, None, None, index)
    timer.on_validation_epoch_start(trainer, module)
    for index, _ in enumerate(val_ends):
        timer.on_validation_batch_end(trainer, module, None, None, index)
    timer.on_validation_epoch_end(trainer, module)
    trainer.sanity_checking = True  # a sanity check reads no clock and records nothing
    timer.on_validation_epoch_start(trainer, module)
    timer.on_validation_batch_end(trainer, module, None, None, 0)
    timer.on_fit_end(trainer, module)

    record = json.loads((tmp_path / "probe.json").read_text())
    ends = [end for _, end in steps]
    intervals = [b - a for a, b in zip([0.0, *ends], ends)]  # from the previous step's end (the epoch start first)
    assert record["train_times_s"] == pytest.approx(intervals)
    assert record["train_step_s"] == pytest.approx(statistics.median(intervals[2:]))
    assert record["train_compute_s"] == pytest.approx(statistics.median([end - start for start, end in steps][2:]))
    assert record["val_times_s"] == pytest.approx([0.5, 1.0, 0.3])
    assert record["val_batch_s"] == pytest.approx(0.5)
    assert (record["train_steps_timed"], record["val_batches_timed"]) == (3, 3)
    assert record["train_batches"] == len(train_loader) == 13 and record["val_batches"] == len(val_loader) == 3
    assert (record["train_batch_size"], record["val_batch_size"]) == (8, 10)
    assert record["device_type"] == "cpu" and record["device"] == probing.device_name("cpu")
    assert record["evaluation"]["ood"] is None and record["evaluation"]["severities"] == [1, 2, 3, 4, 5]


def test_step_timer_synchronises_only_a_cuda_module(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    StepTimer._now(SimpleNamespace(device=torch.device("cpu")))
    assert calls == []
    StepTimer._now(SimpleNamespace(device=torch.device("cuda", 0)))
    assert calls == [torch.device("cuda", 0)]
    with pytest.raises(ValueError, match="warmup must be an int >= 0"):
        StepTimer("x.json", warmup=-1)


@pytest.mark.parametrize(
    ("train_size", "epochs", "validations"),
    [(40, 1, 1), (8, 3, 3)],  # 10 batches: one cut epoch; 2 batches: epochs of 2, 2 and 1 step, each validated
    ids=["long-epoch", "short-epochs"],
)
def test_step_timer_in_a_probe_shaped_fit_counts_the_full_epoch(tmp_path, train_size, epochs, validations):
    """A fit shaped as a probe (5 batches in all, epochs cut to 5, 2 validation batches, a sanity check left on):
    5 steps timed (3 after the warm-up), the validation batches of the fit only (not the sanity check's), and the
    full lengths of the loaders."""
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, index):
            return self.layer(batch).pow(2).mean()

        def validation_step(self, batch, index):
            self.log("val", self.layer(batch).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    train = torch.utils.data.DataLoader(torch.randn(train_size, 2), batch_size=4)
    val = torch.utils.data.DataLoader(torch.randn(20, 2), batch_size=5)
    timer = StepTimer(str(tmp_path / "probe.json"), warmup=2, stop_after=5)
    trainer = L.Trainer(
        max_epochs=5,
        limit_train_batches=5,
        limit_val_batches=2,
        callbacks=[timer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Tiny(), train, val)
    record = json.loads((tmp_path / "probe.json").read_text())
    assert record["train_batches"] == len(train) == train_size // 4 and record["val_batches"] == len(val) == 4
    assert len(record["train_times_s"]) == 5 and record["train_steps_timed"] == 3 and trainer.current_epoch == epochs
    assert record["train_step_s"] == statistics.median(record["train_times_s"][2:])
    assert record["val_batches_timed"] == 2 * validations and record["world_size"] == 1


PROBE = {  # a StepTimer record, as a probe writes it
    "train_step_s": 0.2,
    "val_batch_s": 0.05,
    "train_batches": 50,
    "val_batches": 20,
    "val_batch_size": 32,
    "world_size": 1,
    "device": "Test CPU",
    "device_type": "cpu",
    "evaluation": {"corruptions": ["gaussian_noise", "contrast"], "severities": [1, 2, 3, 4, 5], "ood": "digits"},
}


def test_the_estimate_is_epochs_times_batches_times_the_probed_pace():
    # epochs 2..9 of 10 left; validation every 3rd epoch (epochs 2, 5, 8), on half the validation batches
    trainer = {"max_epochs": 10, "check_val_every_n_epoch": 3, "limit_val_batches": 0.5}
    assert validation_passes(trainer, 50, done=2, left=8) == 3
    assert fit_seconds(PROBE, trainer, done=2, left=8) == pytest.approx(8 * 50 * 0.2 + 3 * 10 * 0.05)
    # max_steps first: 120 steps of 2 batches = 240 batches, 4 full epochs of 50 (epochs 2 and 3 left) and 40 more
    capped = {**trainer, "max_steps": 120, "accumulate_grad_batches": 2, "check_val_every_n_epoch": 1}
    assert fit_seconds(PROBE, capped, done=2, left=8) == pytest.approx((240 - 100) * 0.2 + 2 * 10 * 0.05)
    # validation every 20 batches across epochs: 50 x 3 batches hold 7 checks
    assert validation_passes({"check_val_every_n_epoch": None, "val_check_interval": 20}, 50, 0, 3) == 7
    assert validation_passes({"val_check_interval": 0.5}, 50, 0, 3) == 6  # twice an epoch
    # the test step: the grid's overrides on top of the fit's evaluation; one pass per corruption x severity
    evaluation = evaluation_of_test_step(PROBE["evaluation"], {"model.init_args.evaluation.severities": [1, 5]})
    assert evaluation.corruptions == ("gaussian_noise", "contrast") and evaluation.severities == (1, 5)
    assert seconds_of_test_step(PROBE, {}, evaluation, 100) == pytest.approx((1 + 2 * 2) * 20 * 0.05 + 100 * 0.05 / 32)
    every = evaluation_of_test_step(PROBE["evaluation"], {"model.init_args.evaluation.corruption_every": 3})
    # 20 batches: the corrupted ones are 0, 3, ..., 18 (7 of them), for each of 2 corruptions x 5 severities
    assert seconds_of_test_step(PROBE, {}, every, 0) == pytest.approx((20 + 2 * 5 * 7) * 0.05)
    assert evaluation_of_test_step(PROBE["evaluation"], {"model.init_args.evaluation": None}) is None
    assert seconds_of_test_step(PROBE, {"limit_test_batches": 4}, None, 0) == pytest.approx(4 * 0.05)


def test_one_probe_per_method_and_a_failed_one_is_named_while_the_others_print(tmp_path, monkeypatch, capsys):
    test = {"model.init_args.evaluation.corruptions": ["contrast"], "model.init_args.evaluation.severities": [1, 2]}
    test["model.init_args.evaluation.ood_limit"] = 40
    axes = {
        "mixer": {"vanilla": {"model.init_args.mixer": None}, "broken": {"data.init_args.root": "/nowhere"}},
        "seed": [0, 1],
    }
    grid = load_grid(write_grid(tmp_path, axes=axes, test=test, **{"trainer.max_epochs": 3}))
    runs = grid.runs()
    directories = [tmp_path / "runs" / run.name for run in runs]
    configs = [nested(run.overrides) for run in runs]
    # mixer=vanilla,seed=1 already finished its first epoch: 2 epochs left
    directories[1].mkdir(parents=True)
    (directories[1] / "metrics.csv").write_text("epoch,step,val/top1\n0,3,0.5\n")
    probed = []

    def fake_probe(run, steps, warmup, threads, timeout):
        probed.append((run.name, steps, warmup))
        if run.labels["mixer"] == "broken":
            raise RuntimeError("FileNotFoundError: /nowhere/train-images-idx3-ubyte.gz")
        return {**PROBE, "train_times_s": [9.0, 9.0, 0.2, 0.2, 0.5]}  # after the warm-up: 0.2 to 0.5 s, flagged

    monkeypatch.setattr(probing, "run_probe", fake_probe)
    lines = probing.probe_grid(grid, runs, directories, configs, steps=3, warmup=2, parallel=2, threads=1)
    assert probed == [("mixer=vanilla,seed=0", 3, 2), ("mixer=broken,seed=0", 3, 2)]  # the seeds share a probe
    text = "\n".join(lines)
    assert lines[0].startswith("probe: timed on this machine's Test CPU (cpu), 1 thread(s) per run, with 3 step(s)")
    assert "startup time" in lines[0] and "not included" in lines[0]
    assert "mixer=broken: probe failed: FileNotFoundError: /nowhere/train-images-idx3-ubyte.gz" in text
    assert "mixer=vanilla: its timed steps took 0.2 to 0.5 s (a busy machine" in text
    epoch = 50 * 0.2 + 20 * 0.05  # validation every epoch
    test_step = (1 + 1 * 2) * 20 * 0.05 + 40 * 0.05 / 32
    per_run = [3 * epoch + test_step, 2 * epoch + test_step]
    row = next(line for line in lines if line.strip().startswith("mixer=vanilla")).split()
    assert row[1:4] == ["2", "0.2", f"{epoch:.3g}"]
    assert " ".join(row[4:]) == f"{duration(sum(per_run) / 2)} {duration(sum(per_run))}"
    assert next(line for line in lines if line.strip().startswith("mixer=broken")).split()[1:] == [
        "2",
        "-",
        "-",
        "-",
        "-",
    ]
    total = next(line for line in lines if line.startswith("total"))
    assert f"{duration(sum(per_run))} of run time" in total and f"{duration(sum(per_run) / 2)} of wall time" in total
    assert "without the 2 run(s) of the failed probes" in total
    assert f"{sum(per_run) / 3600:.2f} device-hours" in total
    assert "openmix bench: probing mixer=broken (2 of 2)" in capsys.readouterr().err


def test_probe_needs_a_dry_run_and_a_positive_step_count(tmp_path, monkeypatch, capsys):
    import openmix.bench
    from openmix.cli import bench_command

    grid = write_grid(tmp_path)
    for args, message in (([], "--probe estimates"), (["--dry-run", "--probe", "0"], "at least 1, got 0")):
        with pytest.raises(SystemExit) as stopped:
            bench_command([str(grid), *args, "--probe"] if not args else [str(grid), *args])
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    asked = []
    monkeypatch.setattr(openmix.bench, "run_grid", lambda *args, **kwargs: asked.append(kwargs["probe"]) or [])
    for args in (["--probe"], ["--probe", "3"], []):
        bench_command([str(grid), "--dry-run", *args])
    assert asked == [5, 3, None]


def test_a_slurm_dry_run_probes_here_with_the_array_parallelism(tmp_path, monkeypatch, capsys):
    from openmix.bench.cluster import ClusterOptions
    from openmix.bench.jobs import submit_grid

    axes = {"mixer": {"vanilla": {"model.init_args.mixer": None}, "mixup": {"model.init_args.mixer": "mixup"}}}
    grid = load_grid(write_grid(tmp_path, axes=axes))
    monkeypatch.setattr(probing, "run_probe", lambda run, *args: PROBE)
    per_run = 50 * 0.2 + 20 * 0.05  # one epoch, validated
    for cluster, share in (
        (ClusterOptions(time_min=60, array_parallelism=1), "1 at a time (sum / 1"),
        (None, "all 2 at once (sum / 2"),
    ):
        submit_grid(
            grid, tmp_path / "runs", "slurm", ClusterOptions(time_min=60) if cluster is None else cluster, True, probe=2
        )
        out = capsys.readouterr().out
        total = next(line for line in out.splitlines() if line.startswith("total"))
        assert f"{duration(2 * per_run)} of run time" in total and share in total
        assert out.index("cost:") < out.index("probe: timed") < out.index("requested:") < out.index("sbatch script")
    assert not (tmp_path / "runs" / "tiny").exists(), "a dry run submits and writes nothing"
