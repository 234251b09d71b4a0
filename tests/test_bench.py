"""The benchmark harness: grid expansion, resumable execution, tables with honest statistics."""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY_ARGS
from scipy import stats

from openmix.bench import load_grid
from openmix.bench.grid import SEED_KEYS
from openmix.bench.report import load_runs, markdown_table, metric_logs, read_metrics, report, summarise
from openmix.bench.runner import command, is_done, run_directory

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def write_grid(tmp_path: Path, **spec) -> Path:
    base = tmp_path / "base.yaml"
    base.write_text("trainer:\n  max_epochs: 1\n")
    grid = {"name": "g", "base": ["base.yaml"], **spec}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def test_grid_expands_the_product_of_its_axes(tmp_path):
    path = write_grid(
        tmp_path,
        args={"trainer.max_epochs": 3},
        axes={
            "mixer": {"vanilla": {"model.init_args.mixer": None}, "mixup": {"model.init_args.mixer": "mixup"}},
            "seed": [0, 1, 2],
            "model.init_args.label_smoothing": [0.0, 0.1],
        },
        baseline={"mixer": "vanilla"},
    )
    grid = load_grid(path)
    runs = grid.runs()
    assert len(runs) == 2 * 3 * 2
    assert runs[0].name == "mixer=vanilla,seed=0,model.init_args.label_smoothing=0.0"
    assert len({run.name for run in runs}) == len(runs)
    last = runs[-1]
    assert last.overrides["model.init_args.mixer"] == "mixup" and last.overrides["trainer.max_epochs"] == 3
    assert all(last.overrides[key] == 2 for key in SEED_KEYS)
    assert last.overrides["model.init_args.label_smoothing"] == 0.1
    assert grid.configs == ((tmp_path / "base.yaml").resolve(),)


@pytest.mark.parametrize(
    "spec, error, pattern",
    [
        ({"axes": {"seed": []}}, ValueError, "non-empty list"),
        ({"axes": {"mixer": {"a": 1}}}, ValueError, "label -> "),
        ({"axes": {"seed": [0]}, "baseline": {"mixer": "vanilla"}}, ValueError, "baseline mixer=vanilla"),
        ({"axes": {"seed": [0]}, "typo": 1}, ValueError, "unknown grid keys"),
        ({"base": ["missing.yaml"]}, FileNotFoundError, "base config files not found"),
    ],
)
def test_bad_grids_are_refused(tmp_path, spec, error, pattern):
    with pytest.raises(error, match=pattern):
        load_grid(write_grid(tmp_path, **spec))


def test_command_passes_overrides_and_resumes_from_last(tmp_path):
    grid = load_grid(write_grid(tmp_path, axes={"mixer": {"fmix": {"model.init_args.mixer_kwargs": {"alpha": 0.2}}}}))
    run = grid.runs()[0]
    directory = run_directory(tmp_path / "runs", grid, run)
    args = command(grid, run, directory)
    assert args[:4] == [sys.executable, "-m", "openmix.cli", "fit"]
    assert "--model.init_args.mixer_kwargs={alpha: 0.2}" in args
    assert not any(a.startswith("--ckpt_path") for a in args)
    (directory / "checkpoints").mkdir(parents=True)
    (directory / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert command(grid, run, directory)[-1] == f"--ckpt_path={directory / 'checkpoints' / 'last.ckpt'}"


def fake_run(root: Path, labels: dict, top1: list[float], nll: float = 0.5, images_per_sec: float = 100.0) -> None:
    """A finished run folder: metrics.csv as Lightning's CSV logger writes it, and run.json."""
    directory = root / ",".join(f"{k}={v}" for k, v in labels.items())
    directory.mkdir(parents=True)
    lines = ["epoch,step,train/loss_step,val/top1,val/top5,val/nll,val/ece,train/images_per_sec"]
    for epoch, accuracy in enumerate(top1):
        lines.append(f"{epoch},{epoch * 10 + 5},0.9,,,,,")
        lines.append(f"{epoch},{epoch * 10 + 9},,{accuracy},0.99,{nll},0.05,")
        lines.append(f"{epoch},{epoch * 10 + 9},,,,,,{images_per_sec}")
    (directory / "metrics.csv").write_text("\n".join(lines) + "\n")
    record = {"status": "done", "labels": labels, "wall_time_s": 60.0, "peak_rss_mb": 800.0}
    (directory / "run.json").write_text(json.dumps(record))


def test_read_metrics_keeps_one_value_per_epoch(tmp_path):
    fake_run(tmp_path, {"mixer": "a"}, [0.5, 0.6, 0.7])
    epochs, curves = read_metrics(tmp_path / "mixer=a" / "metrics.csv")
    assert epochs == [0, 1, 2] and curves["val/top1"] == [0.5, 0.6, 0.7]
    assert curves["train/images_per_sec"] == [100.0, 100.0, 100.0]


def test_log_segments_of_older_runners_are_read_in_order(tmp_path):
    """Runners before the continuous RunLogger moved metrics.csv aside at each resume; the report still reads such
    folders, the later attempt winning for the epoch that was repeated."""
    fake_run(tmp_path, {"mixer": "a"}, [0.5, 0.6])  # the first attempt logged epochs 0 and 1
    directory = tmp_path / "mixer=a"
    (directory / "metrics.csv").rename(directory / "metrics.before-1.csv")
    lines = ["epoch,step,val/top1,val/top5,val/nll,val/ece,train/images_per_sec", "1,19,0.65,0.99,0.4,0.05,"]
    lines += ["2,29,0.7,0.99,0.4,0.05,"]
    (directory / "metrics.csv").write_text("\n".join(lines) + "\n")  # the resumed attempt repeats epoch 1
    assert metric_logs(directory) == [directory / "metrics.before-1.csv", directory / "metrics.csv"]
    epochs, curves = read_metrics(*metric_logs(directory))
    assert epochs == [0, 1, 2] and curves["val/top1"] == [0.5, 0.65, 0.7]


def test_summary_statistics_against_direct_computation(tmp_path):
    vanilla = {0: [0.70, 0.80, 0.90], 1: [0.72, 0.81, 0.91], 2: [0.69, 0.79, 0.89]}
    mixup = {0: [0.71, 0.85, 0.93], 1: [0.73, 0.86, 0.94], 2: [0.70, 0.84, 0.95]}
    for seed in range(3):
        fake_run(tmp_path, {"mixer": "vanilla", "seed": seed}, vanilla[seed])
        fake_run(tmp_path, {"mixer": "mixup", "seed": seed}, mixup[seed])
    fake_run(tmp_path / "failed", {"mixer": "broken", "seed": 0}, [0.1])
    record = tmp_path / "failed" / "mixer=broken,seed=0" / "run.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "status": "failed"}))
    rows = {row["method"]: row for row in summarise(load_runs(tmp_path), {"mixer": "vanilla"}, last=2)}
    assert set(rows) == {"vanilla", "mixup"}, "failed runs are left out"
    finals = [100 * mixup[s][-1] for s in range(3)]
    base = [100 * vanilla[s][-1] for s in range(3)]
    assert rows["mixup"]["top1"] == pytest.approx(statistics.fmean(finals))
    assert rows["mixup"]["top1_std"] == pytest.approx(statistics.stdev(finals))
    medians = [100 * statistics.median(mixup[s][-2:]) for s in range(3)]
    assert rows["mixup"]["top1_median_last"] == pytest.approx(statistics.fmean(medians))
    assert rows["mixup"]["delta_top1"] == pytest.approx(statistics.fmean(finals) - statistics.fmean(base))
    p_value = stats.ttest_ind(finals, base, equal_var=False).pvalue
    assert rows["mixup"]["p_value"] == pytest.approx(p_value)
    assert rows["mixup"]["marker"] == ("**" if p_value < 0.01 else "*" if p_value < 0.05 else "")
    assert rows["vanilla"]["baseline"] and math.isnan(rows["vanilla"]["delta_top1"])
    table = markdown_table(list(rows.values()), last=2)
    assert "| mixup | 3 |" in table and "baseline" in table


def test_report_writes_tables_and_plots(tmp_path):
    for seed in range(2):
        fake_run(tmp_path, {"mixer": "vanilla", "seed": seed}, [0.5, 0.6 + 0.01 * seed])
        fake_run(tmp_path, {"mixer": "cutmix", "seed": seed}, [0.55, 0.65 + 0.01 * seed])
    table = report(tmp_path, tmp_path / "out", last=1)
    for name in ("results.md", "results.csv", "curves.png", "top1_bars.png", "top1_vs_cost.png"):
        assert (tmp_path / "out" / name).is_file(), name
    assert "cutmix" in table and "+5.00" in table
    (tmp_path / "empty").mkdir()  # a folder without runs (a missing folder is its own error)
    with pytest.raises(FileNotFoundError, match="no finished runs"):
        report(tmp_path / "empty")


def _tiny_grid(tmp_path: Path) -> Path:
    spec = {
        "name": "tiny",
        "base": [str(ROOT / "configs/trainer/cpu_quick.yaml")],
        "args": dict(TINY_ARGS),
        "axes": {
            "mixer": {
                "vanilla": {"model.init_args.mixer": None},
                "mixup": {"model.init_args.mixer": "mixup"},
                "cutmix": {"model.init_args.mixer": "cutmix"},
            },
            "seed": [0],
        },
        "baseline": {"mixer": "vanilla"},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")
def test_a_killed_grid_loses_no_finished_run_and_continues(tmp_path):
    grid_path = _tiny_grid(tmp_path)
    runs_dir = tmp_path / "runs"
    grid = load_grid(grid_path)
    directories = [run_directory(runs_dir, grid, run) for run in grid.runs()]
    args = [sys.executable, "-m", "openmix.cli", "bench", str(grid_path), "--runs-dir", str(runs_dir), "--last", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 300
    while time.time() < deadline and not is_done(directories[0]):  # wait for the first run to finish ...
        time.sleep(0.5)
    while time.time() < deadline and not (directories[1] / "metrics.csv").exists():  # ... and the second to start
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the runner and its fit process, mid-run
    process.wait()
    assert is_done(directories[0]) and not is_done(directories[1])
    first_record = (directories[0] / "run.json").read_text()
    finished = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "1 already done, 2 to run" in finished.stdout
    assert (directories[0] / "run.json").read_text() == first_record, "a finished run must not be run again"
    assert all(is_done(directory) for directory in directories)
    rows = {row["method"]: row for row in summarise(load_runs(runs_dir))}
    assert set(rows) == {"vanilla", "mixup", "cutmix"} and all(row["seeds"] == 1 for row in rows.values())
    for directory in directories:
        assert (directory / "config.yaml").is_file() and (directory / "metrics.csv").is_file()
    assert (runs_dir / "tiny" / "results.md").is_file()
    assert (runs_dir / "tiny" / "grid.yaml").read_text() == grid_path.read_text()
    environment = json.loads((runs_dir / "tiny" / "environment.json").read_text())
    assert environment["torch"] and environment["command"].startswith("openmix bench")
    assert "Made by `openmix bench" in (runs_dir / "tiny" / "results.md").read_text()


def test_axis_values_may_stack_config_files(tmp_path):
    (tmp_path / "extra.yaml").write_text("model:\n  init_args:\n    mixer: cutmix\n")
    grid = load_grid(write_grid(tmp_path, axes={"mixer": {"cutmix": {"config": "extra.yaml"}}}))
    run = grid.runs()[0]
    assert run.configs[-1] == (tmp_path / "extra.yaml").resolve() and "config" not in run.overrides
    args = command(grid, run, tmp_path / "runs" / run.name)
    assert args[args.index(str(run.configs[-1])) - 1] == "--config"
    with pytest.raises(FileNotFoundError, match="axis config files not found"):
        load_grid(write_grid(tmp_path, axes={"mixer": {"x": {"config": "nope.yaml"}}}))


def test_wandb_runs_of_a_grid_share_one_group(tmp_path):
    grid = load_grid(write_grid(tmp_path, name="cifar_grid", wandb=True, axes={"seed": [0, 1]}))
    for run in grid.runs():
        args = command(grid, run, tmp_path / run.name)
        loggers = json.loads(next(a for a in args if a.startswith("--trainer.logger=")).split("=", 1)[1])
        wandb = [spec for spec in loggers if spec["class_path"].endswith("WandbLogger")]
        assert wandb and wandb[0]["init_args"]["group"] == "cifar_grid" and wandb[0]["init_args"]["name"] == run.name
        assert any(spec["class_path"].endswith("RunLogger") for spec in loggers)


@pytest.mark.parametrize("grid_file", sorted((ROOT / "configs" / "grids").glob("*.yaml")), ids=lambda p: p.stem)
def test_committed_grids_expand(grid_file):
    grid = load_grid(grid_file)
    runs = grid.runs()
    assert runs and grid.baseline == {"mixer": "vanilla"}
    assert {run.labels["mixer"] for run in runs} >= {"vanilla", "mixup", "cutmix", "fmix"}


def test_run_grid_rejects_a_bad_parallel_count(tmp_path):
    from openmix.bench import run_grid

    grid = load_grid(write_grid(tmp_path, axes={"seed": [0]}))
    with pytest.raises(ValueError, match="parallel must be >= 1"):
        run_grid(grid, tmp_path / "runs", parallel=0)


def test_report_covers_the_whole_of_a_resumed_run(tmp_path):
    """Wall time and peak memory come from the training process's cumulative log (all segments), not from the
    runner's record of its last process (a 10-epoch run resumed once showed only its last segment's time)."""
    fake_run(tmp_path, {"mixer": "a"}, [0.5, 0.6, 0.7])
    directory = tmp_path / "mixer=a"
    lines = (directory / "metrics.csv").read_text().splitlines()
    lines[0] += ",train/wall_time_s,train/peak_rss_mb"
    cumulative = {0: (40.0, 700.0), 1: (80.0, 950.0), 2: (120.0, 900.0)}
    for number, line in enumerate(lines[1:], start=1):
        epoch = int(line.split(",")[0])
        is_epoch_row = line.endswith(",100.0")  # the row with the epoch's training statistics
        lines[number] = line + (",{},{}".format(*cumulative[epoch]) if is_epoch_row else ",,")
    (directory / "metrics.csv").write_text("\n".join(lines) + "\n")
    (result,) = load_runs(tmp_path)  # run.json says 60 s and 800 MB: the last segment only
    assert result.wall_time_s == 120.0 and result.peak_rss_mb == 950.0


def test_runner_records_every_process_of_a_run(tmp_path, monkeypatch):
    """run.json sums the wall time and keeps the largest peak over the runner's processes of one run."""
    from openmix.bench import runner

    grid = load_grid(write_grid(tmp_path))
    run = grid.runs()[0]
    directory = run_directory(tmp_path / "runs", grid, run)
    monkeypatch.setattr(runner, "command", lambda *a: [sys.executable, "-c", "import time; time.sleep(0.2)"])
    first = runner.execute(grid, run, directory, threads=1)
    second = runner.execute(grid, run, directory, threads=1)
    assert len(second["segments"]) == 2 and first["segments"] == second["segments"][:1]
    assert second["wall_time_s"] == pytest.approx(sum(s["wall_time_s"] for s in second["segments"]))
    assert second["wall_time_s"] >= 0.4
    assert second["peak_rss_mb"] == max(s["peak_rss_mb"] for s in second["segments"])


def test_training_statistics_come_from_every_epoch_validated_or_not(tmp_path):
    """With check_val_every_n_epoch > 1 the images/s of every epoch count, and the wall time is the last epoch's."""
    folder = tmp_path / "mixer=a"
    folder.mkdir()
    lines = ["epoch,step,val/top1,train/images_per_sec,train/wall_time_s,train/top1_epoch"]
    for epoch in range(4):
        lines.append(f"{epoch},{epoch * 10 + 9},,{100.0 + 10 * epoch},{5.0 * (epoch + 1)},{0.5 + 0.1 * epoch}")
        if epoch % 2 == 1:  # validated at epochs 1 and 3 only
            lines.append(f"{epoch},{epoch * 10 + 9},{0.6 + 0.1 * epoch},,,")
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    epochs, curves = read_metrics(folder / "metrics.csv")
    assert epochs == [1, 3] and curves["val/top1"] == pytest.approx([0.7, 0.9])
    assert curves["train/images_per_sec"] == [100.0, 110.0, 120.0, 130.0]
    assert curves["train/wall_time_s"][-1] == 20.0
    from openmix.bench.report import read_training_curves

    assert read_training_curves(folder / "metrics.csv")["train/top1_epoch"] == pytest.approx(
        {0: 0.5, 1: 0.6, 2: 0.7, 3: 0.8}
    )
