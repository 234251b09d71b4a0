"""The benchmark harness never mixes up experiments: changed grids, typos, two grids in one folder, failed runs,
a killed runner, one writer per run folder. The commands run as real `openmix` processes, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY_ARGS, needs_fmnist
from conftest import run_openmix as openmix

from openmix.bench.report import report
from openmix.bench.run_folder import folder_is_locked, lock_folder

ROOT = Path(__file__).resolve().parents[1]


def write_grid(folder: Path, name: str = "tiny", axes: dict | None = None, **args) -> Path:
    spec = {
        "name": name,
        "base": [str(ROOT / "configs/trainer/cpu_quick.yaml")],
        "args": {**TINY_ARGS, **args},
        "axes": axes or {"mixer": {"vanilla": {"model.init_args.mixer": None}}},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_a_misspelt_key_stops_the_grid_before_anything_runs(tmp_path):
    grid = write_grid(tmp_path, axes={"mixer": {"cutmix": {"model.init_args.mixr": "cutmix"}}})
    result = openmix("bench", str(grid), "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "mixer=cutmix" in result.stderr and "mixr" in result.stderr
    assert not (tmp_path / "runs" / "tiny" / "mixer=cutmix").exists(), "nothing may start"


@needs_fmnist
@pytest.mark.slow
def test_a_changed_grid_is_refused_and_a_failed_run_is_reported(tmp_path, capsys):
    from openmix.bench.grid import load_grid
    from openmix.bench.runner import is_complete, run_grid

    runs = tmp_path / "runs"
    grid = write_grid(tmp_path)
    spec = yaml.safe_load(grid.read_text())
    spec["test"] = {  # the test step: `openmix test` of each finished run, with these overrides
        "model.init_args.evaluation.corruptions": ["gaussian_noise"],
        "model.init_args.evaluation.severities": [1, 5],
        "model.init_args.evaluation.ood_limit": 40,
    }
    grid.write_text(yaml.safe_dump(spec))
    run_grid(load_grid(grid), runs, dry_run=True)
    dry = capsys.readouterr().out
    assert "openmix.cli fit" in dry and "openmix.cli test" in dry
    assert "'--model.init_args.evaluation.severities=[1, 5]'" in dry
    first = openmix("bench", str(grid), "--runs-dir", str(runs), "--last", "1", "--progress-every", "0.2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "mixer=vanilla: test done" in first.stdout
    folder = runs / "tiny" / "mixer=vanilla"
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "done" and record["test"]["status"] == "done"
    assert (folder / "test" / "version_0" / "metrics.csv").is_file()
    table = (runs / "tiny" / "results.md").read_text()
    assert "gaussian_noise" in table and "OOD AUROC, MSP" in table  # the report's evaluation table
    assert is_complete(load_grid(grid), folder)  # a complete run is left alone
    # a test that did not finish (the runner was killed during it): only the test runs again, not the fit
    record.pop("test")
    (folder / "run.json").write_text(json.dumps(record))
    fitted = {name: (folder / name).read_text() for name in ("metrics.csv", "config.yaml")}
    run_grid(load_grid(grid), runs)  # the runner in this process, as `openmix bench` calls it
    assert "test done" in capsys.readouterr().out
    assert {name: (folder / name).read_text() for name in fitted} == fitted, "a test step leaves the fit's logs"
    after = json.loads((folder / "run.json").read_text())
    assert after["segments"] == record["segments"] and after["test"]["status"] == "done"
    assert (folder / "test" / "version_1" / "metrics.csv").is_file()
    grid_copy = (runs / "tiny" / "grid.yaml").read_text()
    # the same name, another schedule: refused, nothing rerun, nothing overwritten
    changed = write_grid(tmp_path, **{"trainer.max_epochs": 2})
    second = openmix("bench", str(changed), "--runs-dir", str(runs), "--last", "1")
    assert second.returncode == 2
    assert "trainer.max_epochs: 1 -> 2" in second.stderr and "mixer=vanilla" in second.stderr
    assert (runs / "tiny" / "results.md").read_text() == table and (
        runs / "tiny" / "grid.yaml"
    ).read_text() == grid_copy
    assert json.loads((folder / "run.json").read_text())["status"] == "done"
    # a new run that fails at run time (its data is missing): exit 1, the reason, the log, a marked row
    broken = write_grid(
        tmp_path,
        axes={"mixer": {"vanilla": {"model.init_args.mixer": None}, "mixup": {"data.init_args.root": str(tmp_path)}}},
    )
    third = openmix("bench", str(broken), "--runs-dir", str(runs), "--last", "1")
    assert third.returncode == 1
    log = runs / "tiny" / "mixer=mixup" / "output.log"
    assert "mixer=mixup: failed" in third.stdout and str(log) in third.stdout
    assert "Error" in third.stdout.split("mixer=mixup: failed", 1)[1].splitlines()[0]
    assert "Not in the table" in (runs / "tiny" / "results.md").read_text()
    assert "mixer=mixup (failed" in (runs / "tiny" / "results.md").read_text()


def fake_run(grid_dir: Path, run: str, grid: str | None, top1: float) -> None:
    folder = grid_dir / run
    folder.mkdir(parents=True)
    lines = ["epoch,step,val/top1,val/top5,val/nll,val/ece,train/images_per_sec", f"0,9,{top1},0.99,0.5,0.05,"]
    lines.append("0,9,,,,,100.0")
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    record = {"status": "done", "labels": {"mixer": run, "seed": "0"}, "wall_time_s": 1.0, "peak_rss_mb": 1.0}
    if grid is not None:
        record["grid"] = grid
    (folder / "run.json").write_text(json.dumps(record))


@pytest.mark.parametrize("recorded", [True, False], ids=["grid-in-run-json", "grid-from-folder"])
def test_report_never_merges_two_grids(tmp_path, recorded):
    """Grids with a seed-0 vanilla run each: one report per grid folder, not one row of "3 seeds", also when two
    grids share a name (a grid and its smoke test in another --runs-dir)."""
    folders = {"runs/first": 0.5, "runs/second": 0.7, "smoke/first": 0.6}
    for folder, top1 in folders.items():
        fake_run(tmp_path / folder, "vanilla", folder.split("/")[1] if recorded else None, top1)
    text = report(tmp_path, last=1)
    assert text.count("## grid first") == 2 and text.count("## grid second") == 1
    for folder, top1 in folders.items():
        table = (tmp_path / folder / "results.md").read_text()
        assert f"| vanilla | 1 | {100 * top1:.2f} |" in table
    assert not (tmp_path / "results.md").exists()


def test_report_refuses_a_baseline_that_matches_nothing(tmp_path):
    fake_run(tmp_path / "g", "vanilla", "g", 0.5)
    with pytest.raises(ValueError, match="baseline mixer=nosuch matches no runs; the runs' labels are mixer=vanilla"):
        report(tmp_path / "g", last=1, baseline={"mixer": "nosuch"})
    with pytest.raises(FileNotFoundError, match="no such directory"):
        report(tmp_path / "nowhere")


def test_set_may_not_override_what_an_axis_varies_and_unknown_mixers_stop_the_grid(tmp_path):
    axes = {"mixer": {"vanilla": {"model.init_args.mixer": None}, "mixup": {"model.init_args.mixer": "mixupp"}}}
    grid = write_grid(tmp_path, axes=axes)
    clash = openmix("bench", str(grid), "--runs-dir", str(tmp_path / "runs"), "--set", "model.init_args.mixer=cutmix")
    assert clash.returncode == 2 and "axis 'mixer' varies model.init_args.mixer" in clash.stderr
    typo = openmix("bench", str(grid), "--runs-dir", str(tmp_path / "runs"))
    assert typo.returncode == 2 and "unknown mixer 'mixupp'; did you mean 'mixup'" in typo.stderr
    assert not (tmp_path / "runs" / "tiny" / "mixer=vanilla").exists(), "nothing may train first"
    only = openmix("bench", str(grid), "--runs-dir", str(tmp_path / "runs"), "--only", "mixr=mixup")
    assert only.returncode == 2 and "no axis 'mixr' (its axes: mixer)" in only.stderr


def test_a_grid_name_stays_inside_the_runs_folder(tmp_path):
    from openmix.bench import load_grid

    for name in ("../escape", "a/b", ".."):
        path = tmp_path / "g.yaml"
        path.write_text(yaml.safe_dump({"name": name, "axes": {"seed": [0]}}))
        with pytest.raises(ValueError, match="plain folder name"):
            load_grid(path)


def test_a_run_folder_has_one_writer(tmp_path):
    held = lock_folder(tmp_path)
    try:
        assert folder_is_locked(tmp_path)
        with pytest.raises(RuntimeError, match=f"pid {os.getpid()}"):
            lock_folder(tmp_path)
    finally:
        held.close()
    assert not folder_is_locked(tmp_path)


@needs_fmnist
@pytest.mark.slow
def test_killing_the_runner_kills_its_runs_and_a_second_writer_is_refused(tmp_path):
    runs = tmp_path / "runs"
    marker = tmp_path / "paused"
    pause = {"class_path": "kill_callback.PauseAt", "init_args": {"marker": str(marker), "step": 5}}
    grid = write_grid(
        tmp_path, **{"trainer.max_epochs": 5, "data.init_args.limit_train": 64, "trainer.callbacks": [pause]}
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    command = [sys.executable, "-m", "openmix.cli", "bench", str(grid), "--runs-dir", str(runs)]
    output = open(tmp_path / "bench.out", "w")
    runner = subprocess.Popen([*command, "--progress-every", "0.2"], env=env, stdout=output, stderr=subprocess.STDOUT)
    folder = runs / "tiny" / "mixer=vanilla"
    deadline = time.monotonic() + 300
    while not marker.is_file():  # the run pauses after epoch 2 (2 steps per epoch), holding its folder
        assert time.monotonic() < deadline and runner.poll() is None
        time.sleep(0.1)
    while "epoch 2 done" not in (tmp_path / "bench.out").read_text():  # progress while the run is in flight
        assert time.monotonic() < deadline and runner.poll() is None
        time.sleep(0.1)
    child = int((folder / "run.lock").read_text())
    assert folder_is_locked(folder)
    # a second writer on the same folder stops at once with a clear error
    second = openmix(
        "fit", "--config", str(folder / "config.yaml"), f"--ckpt_path={folder / 'checkpoints' / 'last.ckpt'}"
    )
    assert second.returncode != 0 and "being written by another process" in second.stderr
    assert "Traceback" not in second.stderr  # one line, like every clean error
    runner.send_signal(signal.SIGTERM)  # `kill PID` of the runner only
    runner.wait(timeout=60)
    for _ in range(100):  # the fit child follows its parent
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the fit process outlived the runner")
    output.close()
    assert "mixer=vanilla: epoch 2 done, val top-1 " in (tmp_path / "bench.out").read_text()
    assert not folder_is_locked(folder)


def test_report_header_names_the_epochs_it_used_and_plots_keep_colours(tmp_path, monkeypatch):
    import matplotlib.colors
    from matplotlib.figure import Figure

    for name, top1 in (("vanilla", 0.5), ("mixup", 0.6), ("cutmix", 0.55)):
        fake_run(tmp_path / "g", name, "g", top1)
    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figures.append(self))
    text = report(tmp_path / "g", last=10)
    assert "median of the last epoch (1 epoch)" in text and "last 10" not in text
    curves, bars, cost = (figure.axes[0] for figure in figures)
    line_colours = {line.get_label(): matplotlib.colors.to_hex(line.get_color()) for line in curves.get_lines()}
    bar_colours = [matplotlib.colors.to_hex(patch.get_facecolor()) for patch in bars.patches]
    names = [label.get_text() for label in bars.get_xticklabels()]
    assert dict(zip(names, bar_colours)) == line_colours  # one colour per method across figures
    assert bars.get_ylim()[0] == 0  # the bar axis is not truncated
    assert len(set(bar_colours)) == 3


def test_a_corrupt_run_record_is_named(tmp_path):
    grid = write_grid(tmp_path)
    folder = tmp_path / "runs" / "tiny" / "mixer=vanilla"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text('{"status": "do')  # cut while written
    result = openmix("bench", str(grid), "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{folder / 'run.json'} is not valid JSON" in result.stderr


def test_a_grid_test_step_must_be_a_flag_or_overrides(tmp_path):
    from openmix.bench.grid import load_grid

    grid = write_grid(tmp_path)
    spec = yaml.safe_load(grid.read_text())
    for value, expected in ((True, {}), (None, {}), (False, None), ({"trainer.precision": "64-true"}, None)):
        (tmp_path / "t.yaml").write_text(yaml.safe_dump({**spec, "test": value}))
        assert load_grid(tmp_path / "t.yaml").test == (expected if expected is not None or value is False else value)
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({**spec, "test": ["x"]}))
    with pytest.raises(ValueError, match="test must be true, false or a mapping"):
        load_grid(tmp_path / "t.yaml")


def test_a_bad_test_step_stops_the_grid_before_anything_runs(tmp_path):
    from openmix.bench.grid import load_grid
    from openmix.bench.runner import GridError, run_grid

    grid = write_grid(tmp_path)
    spec = yaml.safe_load(grid.read_text())
    for test, pattern in (
        ({"model.init_args.evaluation.corruption_evry": 2}, "test step's overrides are not a valid configuration"),
        ({"model.init_args.evaluation.corruption_every": 0}, "corruption_every must be an int >= 1"),
        ({"model.init_args.evaluation.ood": str(tmp_path / "missing")}, "the OOD set .*missing does not exist"),
    ):
        grid.write_text(yaml.safe_dump({**spec, "test": test}))
        with pytest.raises(GridError, match=pattern):
            run_grid(load_grid(grid), tmp_path / "runs")
        assert not (tmp_path / "runs" / "tiny" / "mixer=vanilla").exists(), "nothing may start"


def test_a_run_is_complete_only_with_its_test_step_and_status_says_why(tmp_path):
    from openmix.bench.grid import load_grid
    from openmix.bench.runner import execute_test, is_complete, run_directory
    from openmix.bench.status import grid_status

    path = write_grid(tmp_path)
    spec = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**spec, "test": {"model.init_args.evaluation.severities": [1]}}))
    grid = load_grid(path)
    folder = run_directory(tmp_path / "runs", grid, grid.runs()[0])
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text("epoch,step,val/top1\n0,3,0.5\n")
    record = {"status": "done", "labels": {"mixer": "vanilla"}, "wall_time_s": 1.0, "peak_rss_mb": 1.0}

    def state(test: dict | None) -> tuple[bool, str, str]:
        (folder / "run.json").write_text(json.dumps({**record, **({"test": test} if test else {})}))
        status = grid_status(grid, tmp_path / "runs")[0]
        return is_complete(grid, folder), status.state, status.detail

    assert state(None) == (False, "not submitted", "fit done; its test step has not run")
    assert state({"status": "failed", "reason": "FileNotFoundError: x"}) == (
        False,
        "failed",
        "fit done; test: FileNotFoundError: x",
    )
    other = {"status": "done", "overrides": {"model.init_args.evaluation.severities": [1, 5]}}
    assert state(other)[:2] == (False, "not submitted")  # run with other test: options, so run again
    assert state({"status": "done", "overrides": grid.test})[:2] == (True, "done")
    # one writer per run folder: a test does not start while another process holds the folder
    (folder / "run.json").write_text(json.dumps(record))
    holder = lock_folder(folder)
    try:
        assert state(None)[1:] == ("running", "fit done; its test step is running")
        assert execute_test(grid, folder, threads=1)["status"] == "busy"
    finally:
        holder.close()
    assert "test" not in json.loads((folder / "run.json").read_text())
