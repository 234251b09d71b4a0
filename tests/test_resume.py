"""Resume never loses or breaks a run's log: real `openmix fit` processes killed with SIGKILL from outside at
several points, resumed with `--ckpt_path last` exactly as the README documents it (default logger, no pinned
version or checkpoint folder), end where an uninterrupted run ends, with every epoch logged once."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed"),
]
EPOCHS, STEPS_PER_EPOCH = 3, 8  # 256 training images in batches of 32
ARGS = [
    "fit",
    "--model.init_args.backbone=resnet10t",
    "--model.init_args.backbone_kwargs={channels: [8, 8, 8, 8], stem_width: 8}",
    "--model.init_args.cifar_stem=true",
    "--model.init_args.mixer=fmix",
    "--data.init_args.limit_train=256",
    "--data.init_args.limit_val=64",
    "--data.init_args.batch_size=32",
    "--data.init_args.augment=true",
    f"--trainer.max_epochs={EPOCHS}",
    "--trainer.log_every_n_steps=2",
    "--trainer.enable_progress_bar=false",
]


# trainer options under which Lightning validates inside an epoch, or not at every epoch's end
VALIDATION_SCHEDULES = {
    "every-2-epochs": ["--trainer.check_val_every_n_epoch=2"],
    "twice-per-epoch": ["--trainer.val_check_interval=0.5"],
}


def start(root: Path, *extra: str) -> subprocess.Popen:
    """An `openmix fit` process writing under ``root`` (its working directory is a sibling folder, to show that
    nothing goes to ./runs when --trainer.default_root_dir is given)."""
    cwd = root.parent / "cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}"}
    command = [sys.executable, "-m", "openmix.cli", *ARGS, f"--trainer.default_root_dir={root}", *extra]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]


def kill_at(root: Path, *extra: str, **point: int) -> None:
    """Run until the PauseAt callback reaches ``point``, then SIGKILL the process from outside."""
    marker = root.parent / "paused"
    options = [f"--trainer.callbacks.{key}={value}" for key, value in point.items()]
    pause = ["--trainer.callbacks+=kill_callback.PauseAt", f"--trainer.callbacks.marker={marker}", *options]
    process = start(root, *extra, *pause)
    deadline = time.monotonic() + 600
    while not marker.is_file():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the run never reached the kill point"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def rows(root: Path) -> list[dict[str, str]]:
    versions = sorted((root / "lightning_logs").iterdir())
    assert [v.name for v in versions] == ["version_0"], "a resume must continue the run's own folder"
    with open(versions[0] / "metrics.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def per_epoch(log: list[dict[str, str]], key: str) -> dict[int, list[float]]:
    """Every value of ``key`` logged for each epoch."""
    values: dict[int, list[float]] = {}
    for row in log:
        if row.get(key):
            values.setdefault(int(row["epoch"]), []).append(float(row[key]))
    return values


def finished_epochs_before(log: list[dict[str, str]]) -> int:
    """Epochs that were completely logged (validation and the epoch's training statistics) before the kill."""
    return len([e for e, v in per_epoch(log, "train/images_per_sec").items() if v])


@pytest.fixture(scope="module")
def straight_root(tmp_path_factory) -> Path:
    """An uninterrupted run (the later tests only resume it, which must change nothing)."""
    root = tmp_path_factory.mktemp("straight") / "root"
    finish(start(root))
    return root


@pytest.fixture(scope="module")
def straight(straight_root) -> list[dict[str, str]]:
    return rows(straight_root)


@pytest.mark.parametrize("schedule", VALIDATION_SCHEDULES)
def test_validation_inside_or_between_epochs_resumes_exactly(tmp_path, schedule):
    """With validation every 2 epochs or twice per epoch, Lightning's own last.ckpt would be written mid-epoch and
    the resumed epoch lost or not replayed; openmix's last.ckpt is always an epoch's end."""
    options = VALIDATION_SCHEDULES[schedule]
    straight_root, root = tmp_path / "straight" / "root", tmp_path / "killed" / "root"
    finish(start(straight_root, *options))
    kill_at(root, *options, step=STEPS_PER_EPOCH + 6)  # late in epoch 2, after its mid-epoch validation
    finish(start(root, *options, "--ckpt_path=last"))
    after, uninterrupted = rows(root), rows(straight_root)
    for key in ("train/loss_epoch", "train/lam_mean", "val/top1", "val/nll", "val/ece"):
        assert per_epoch(after, key) == per_epoch(uninterrupted, key), key
    assert all(len(v) == 1 for v in per_epoch(after, "train/images_per_sec").values())
    assert min(v[0] for v in per_epoch(after, "train/images_per_sec").values()) > 0


@pytest.mark.parametrize(
    "point",
    [{"step": 3}, {"step": STEPS_PER_EPOCH + 4}, {"epoch": 2}],
    ids=["before-first-validation", "mid-epoch-2", "between-epochs"],
)
def test_a_run_killed_anywhere_resumes_to_the_uninterrupted_result(tmp_path, straight, point):
    root = tmp_path / "root"
    kill_at(root, **point)
    version = root / "lightning_logs" / "version_0"
    before = rows(root) if (version / "metrics.csv").is_file() else []
    done = finished_epochs_before(before)
    finish(start(root, "--ckpt_path=last"))
    after = rows(root)
    assert not (tmp_path / "cwd" / "runs").exists(), "logs or checkpoints ignored --trainer.default_root_dir"
    for key in ("val/top1", "val/nll", "val/ece", "train/loss_epoch", "train/images_per_sec", "train/wall_time_s"):
        logged = per_epoch(after, key)
        assert sorted(logged) == list(range(EPOCHS)), (key, logged)
        assert all(len(values) == 1 for values in logged.values()), f"{key} logged twice for an epoch: {logged}"
    for key in ("val/top1", "val/nll", "val/ece", "train/loss_epoch"):  # the uninterrupted run's values
        resumed, uninterrupted = per_epoch(after, key), per_epoch(straight, key)
        assert [resumed[e][0] for e in range(EPOCHS)] == pytest.approx(
            [uninterrupted[e][0] for e in range(EPOCHS)], abs=1e-6
        ), key
    # nothing written for a finished epoch is lost or rewritten
    finished_rows = [row for row in before if row.get("epoch") and int(row["epoch"]) < done]
    kept = [{k: v for k, v in row.items() if v} for row in after if row.get("epoch") and int(row["epoch"]) < done]
    assert [{k: v for k, v in row.items() if v} for row in finished_rows] == kept
    wall = per_epoch(after, "train/wall_time_s")
    assert all(wall[e][0] < wall[e + 1][0] for e in range(EPOCHS - 1)), "wall time must add up across the resume"


def test_resuming_a_finished_run_keeps_its_log(straight_root, straight):
    root = straight_root
    log = (root / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    finish(start(root, "--ckpt_path=last"))
    assert (root / "lightning_logs" / "version_0" / "metrics.csv").read_text() == log
    assert sorted(p.name for p in (root / "lightning_logs").iterdir()) == ["version_0"]


def test_a_resume_with_another_configuration_is_refused(straight_root, straight):
    """`--ckpt_path last` continues the run's own experiment: a longer schedule or another mixer would mix two."""
    root = straight_root
    log = (root / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    for change, shown in (("--trainer.max_epochs=4", "trainer.max_epochs: 3 -> 4"),
                          ("--model.init_args.mixer=cutmix", "model.init_args.mixer: 'fmix' -> 'cutmix'")):  # fmt: skip
        process = start(root, change, "--ckpt_path=last")
        output, _ = process.communicate(timeout=600)
        assert process.returncode != 0 and shown in output and "Traceback" not in output, output[-2000:]
    assert (root / "lightning_logs" / "version_0" / "metrics.csv").read_text() == log
