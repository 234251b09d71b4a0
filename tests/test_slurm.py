"""A grid's runs as scheduler jobs (openmix.bench.jobs, through submitit): the ``cluster:`` section, the sbatch
script and submission SLURM would receive (fake ``sbatch`` / ``sacct`` on the PATH), ``--status`` without a
scheduler, and whole grids through submitit's local executor: a job killed mid-run and resubmitted, a job warned of
its time limit that requeues itself, and the ranks of a DDP run under Lightning's SLURM environment."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY_ARGS, needs_fmnist
from conftest import run_openmix as openmix
from lightning.pytorch.callbacks import Callback

from openmix.bench import load_grid
from openmix.bench.cluster import ClusterOptions, parse_time
from openmix.bench.jobs import Resources, RunJob, job_resources, sbatch_script, submit_grid
from openmix.bench.runner import command, is_done, run_directory
from openmix.bench.status import grid_status

ROOT = Path(__file__).resolve().parents[1]
TWO_MIXERS = {"mixer": {"vanilla": {"model.init_args.mixer": None}, "mixup": {"model.init_args.mixer": "mixup"}}}


class PauseOnce(Callback):
    """Write ``marker`` and sleep once training reaches ``step``, unless ``marker`` exists (so that the resumed run
    goes on): the test then kills or warns the job at exactly that point."""

    def __init__(self, marker: str, step: int, seconds: float = 300.0):
        self.marker, self.step, self.seconds = Path(marker), step, seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            time.sleep(self.seconds)  # the test kills or warns the job within this time


def write_grid(folder: Path, axes: dict | None = None, cluster: dict | None = None, **args) -> Path:
    spec = {
        "name": "tiny",
        "base": [str(ROOT / "configs/trainer/cpu_quick.yaml")],
        "args": {**TINY_ARGS, **args},
        "axes": axes or TWO_MIXERS,
    }
    if cluster is not None:
        spec["cluster"] = cluster
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------ the cluster section


@pytest.mark.parametrize(
    "cluster, message",
    [
        (["gpu"], "cluster must be a mapping"),
        ({"partiton": "gpu"}, "cluster.partiton: unknown key; did you mean 'partition'?"),
        ({"time": "1:2:3:4"}, "cluster.time must be a time limit"),
        ({"time": "0:00"}, "cluster.time must be at least one minute"),
        ({"time": 90}, 'cluster.time must be quoted, e.g. time: "12:00:00"'),
        ({"gpus_per_node": -1}, "cluster.gpus_per_node must be a number of GPUs >= 0"),
        ({"nodes": 1.5}, "cluster.nodes must be a number of nodes >= 1"),
        ({"mem_gb": "lots"}, "cluster.mem_gb must be a memory size in GB > 0"),
        ({"partition": ""}, "cluster.partition must be a partition name"),
        ({"sbatch": {"array": "0-3"}}, "cluster.sbatch.array: set by openmix bench"),
        ({"sbatch": {"time": "1:00:00"}}, r"cluster.sbatch.time: set by openmix bench \(use cluster.time"),
        ({"sbatch": ["qos=high"]}, "cluster.sbatch must be a mapping of sbatch options"),
        ({"setup": [1]}, "cluster.setup must be a list of shell lines"),
    ],
)
def test_the_cluster_section_is_checked_like_the_other_grid_keys(tmp_path, cluster, message):
    path = write_grid(tmp_path, cluster=cluster)
    with pytest.raises(ValueError, match=message) as error:
        load_grid(path)
    assert str(error.value).startswith(f"{path}: cluster")


def test_time_limits_are_read_in_slurms_formats():
    assert [parse_time(text, "t") for text in ("90", "90:30", "1:30:00", "2-0", "1-2:03", "1-00:00:01")] == [
        90,
        91,
        90,
        2880,
        1563,
        1441,
    ]
    assert parse_time(45, "t") == 45
    with pytest.raises(ValueError, match="^--time must be a time limit"):
        parse_time(True, "--time")


def test_the_command_line_overrides_the_grid_file():
    grid = ClusterOptions(partition="cpu", time_min=60, sbatch={"qos": "low"}, setup=("module load cuda",))
    line = ClusterOptions(partition="gpu", sbatch={"qos": "high", "constraint": "a100"}, setup=("ulimit -n 4096",))
    merged = grid.updated(line)
    assert merged.partition == "gpu" and merged.time_min == 60
    assert merged.sbatch == {"qos": "high", "constraint": "a100"}
    assert merged.setup == ("module load cuda", "ulimit -n 4096")


def test_job_options_need_an_executor_and_name_the_flag(tmp_path):
    grid = write_grid(tmp_path)
    alone = openmix("bench", str(grid), "--partition", "gpu", "--dry-run")
    assert alone.returncode == 2 and "need --executor slurm or local" in alone.stderr
    bad = openmix("bench", str(grid), "--executor", "slurm", "--time", "soon", "--dry-run")
    assert bad.returncode == 2 and "--time must be a time limit" in bad.stderr and "Traceback" not in bad.stderr
    untimed = openmix("bench", str(grid), "--executor", "slurm", "--dry-run", "--runs-dir", str(tmp_path / "runs"))
    assert untimed.returncode == 2 and "--executor slurm needs the time limit of a job" in untimed.stderr


def test_a_job_asks_for_what_the_runs_train_on():
    gpu = {"trainer": {"accelerator": "gpu", "devices": 4, "num_nodes": 2}}
    assert job_resources([gpu, gpu], ClusterOptions(), "slurm") == Resources(2, 4, 4)  # a task per device
    cpu = {"trainer": {"accelerator": "cpu", "devices": 2}}
    assert job_resources([cpu], ClusterOptions(), "slurm") == Resources(1, 2, 0)
    assert job_resources([cpu], ClusterOptions(), "local") == Resources(1, 1, 0)  # Lightning starts the processes
    with pytest.raises(ValueError, match="gpus_per_node=2 .* trainer.devices=4: pass --set trainer.devices=2"):
        job_resources([gpu], ClusterOptions(gpus_per_node=2), "slurm")
    with pytest.raises(ValueError, match="nodes=1 .* trainer.num_nodes=2"):
        job_resources([gpu], ClusterOptions(nodes=1), "slurm")
    with pytest.raises(ValueError, match="--executor local runs on this machine"):
        job_resources([gpu], ClusterOptions(), "local")
    with pytest.raises(ValueError, match="different resources .* --only"):
        job_resources([gpu, cpu], ClusterOptions(), "slurm")
    auto = {"trainer": {"accelerator": "gpu", "devices": "auto"}}
    with pytest.raises(ValueError, match="give the GPUs per node"):
        job_resources([auto], ClusterOptions(), "slurm")
    assert job_resources([auto], ClusterOptions(gpus_per_node=8), "slurm") == Resources(1, 8, 8)


# ------------------------------------------------------------------------------------------------- what SLURM gets

EXPECTED_SBATCH = """#!/bin/bash

# Parameters
#SBATCH --account=mixing
#SBATCH --array=0-2%2
#SBATCH --constraint=a100
#SBATCH --cpus-per-task=8
#SBATCH --error=JOBS/%A_%a_0_log.err
#SBATCH --exclusive
#SBATCH --gpus-per-node=4
#SBATCH --job-name=openmix-tiny
#SBATCH --mem=48GB
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --open-mode=append
#SBATCH --output=JOBS/%A_%a_0_log.out
#SBATCH --partition=gpu
#SBATCH --signal=USR2@90
#SBATCH --time=1470
#SBATCH --wckey=submitit

# setup
module load cuda/12.4

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output JOBS/%A_%a_%t_log.out --error JOBS/%A_%a_%t_log.err --kill-on-bad-exit=1 \
PYTHON -u -m submitit.core._submit JOBS
"""


def test_the_sbatch_script_is_the_recorded_one(tmp_path):
    cluster = {
        "partition": "gpu",
        "account": "mixing",
        "time": "1-00:30:00",
        "cpus_per_task": 8,
        "mem_gb": 48,
        "array_parallelism": 2,
        "sbatch": {"constraint": "a100", "exclusive": True},
        "setup": ["module load cuda/12.4"],
    }
    grid = load_grid(write_grid(tmp_path, cluster=cluster))
    folder = tmp_path / "runs" / "tiny" / "jobs"
    script = sbatch_script(grid, grid.cluster, Resources(nodes=2, tasks_per_node=4, gpus_per_node=4), folder, 3)
    normalised = script.replace(str(folder), "JOBS").replace(sys.executable, "PYTHON")
    assert normalised == EXPECTED_SBATCH.replace("\\\n", "")


def fake_slurm(folder: Path, monkeypatch) -> Path:
    """``srun``, ``sbatch`` (records each script it is given, answers job ids from 4242 on) and ``sacct`` (prints
    ``sacct.txt``) on the PATH; returns the folder of the records."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    scripts = {
        "srun": "exit 0\n",
        "sbatch": f'n=$(ls {folder}/sbatch-*.sh 2>/dev/null | wc -l)\ncp "$1" {folder}/sbatch-$n.sh\n'
        f'[ -f {folder}/refuse ] && {{ echo "sbatch: error: invalid account" >&2; exit 1; }}\n'
        'echo "Submitted batch job $((4242 + n))"\n',
        "sacct": f"cat {folder}/sacct.txt\n",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return folder


def test_a_submission_to_slurm_records_job_ids_and_never_resubmits_live_or_done_runs(tmp_path, monkeypatch, capsys):
    """The whole SLURM path with sbatch and sacct faked: the script sent, the pickled job of each array task, the
    ids in job.json, --status from sacct, and what a second submission leaves alone."""
    records = fake_slurm(tmp_path, monkeypatch)
    grid = load_grid(write_grid(tmp_path, cluster={"partition": "gpu", "time": "2:00:00"}))
    runs_dir = tmp_path / "runs"
    directories = submit_grid(grid, runs_dir, "slurm", ClusterOptions(account="mixing"))
    jobs = runs_dir / "tiny" / "jobs"
    sent = (records / "sbatch-0.sh").read_text()
    assert "#SBATCH --array=0-1%2" in sent and "#SBATCH --account=mixing" in sent and "#SBATCH --time=120" in sent
    assert "#SBATCH --partition=gpu" in sent and "#SBATCH --ntasks-per-node=1" in sent and "gpus" not in sent
    assert sent == sbatch_script(
        grid, grid.cluster.updated(ClusterOptions(account="mixing")), Resources(1, 1, 0), jobs, 2
    )
    import cloudpickle

    for index, directory in enumerate(directories):
        owner = json.loads((directory / "job.json").read_text())
        assert owner["executor"] == "slurm" and owner["job_id"] == f"4242_{index}"
        with open(jobs / f"4242_{index}_submitted.pkl", "rb") as stream:
            job = cloudpickle.load(stream).function
        assert isinstance(job, RunJob) and job.directory == directory and job.token == owner["token"]
        assert command(job.grid, job.run, job.directory) == command(grid, grid.runs()[index], directory)

    (records / "sacct.txt").write_text("JobID|State|NodeList\n4242_0|RUNNING|node1\n4242_1|PENDING|None\n")
    states = {status.name: (status.state, status.job_id) for status in grid_status(grid, runs_dir)}
    assert states == {"mixer=vanilla": ("running", "4242_0"), "mixer=mixup": ("pending", "4242_1")}
    capsys.readouterr()
    submit_grid(grid, runs_dir, "slurm")  # both are queued: nothing is sent
    assert "0 already done, 2 queued or running, 0 to submit" in capsys.readouterr().out
    assert not (records / "sbatch-1.sh").exists()

    # the first run's job timed out for good; the second finished
    (records / "sacct.txt").write_text("JobID|State|NodeList\n4242_0|TIMEOUT|node1\n4242_1|COMPLETED|node2\n")
    (directories[1] / "run.json").write_text(json.dumps({"status": "done", "labels": {"mixer": "mixup"}}))
    (directories[0] / "run.json").write_text(
        json.dumps({"status": "failed", "reason": "RuntimeError: boom", "segments": [{"job_id": "4242_0"}]})
    )
    states = {status.name: (status.state, status.detail) for status in grid_status(grid, runs_dir)}
    assert states == {"mixer=vanilla": ("failed", "RuntimeError: boom"), "mixer=mixup": ("done", "")}
    submit_grid(grid, runs_dir, "slurm")
    assert "1 already done, 0 queued or running, 1 to submit" in capsys.readouterr().out
    assert "#SBATCH --array" not in (records / "sbatch-1.sh").read_text()  # one run: one plain job
    owner = json.loads((directories[0] / "job.json").read_text())
    assert owner["job_id"] == "4243" and [job["job_id"] for job in owner["previous"]] == ["4242_0"]
    assert json.loads((directories[1] / "job.json").read_text())["job_id"] == "4242_1"

    (records / "refuse").write_text("")  # a refused submission leaves the records as they were
    (records / "sacct.txt").write_text("JobID|State|NodeList\n4243|FAILED|node1\n")
    with pytest.raises(Exception, match="invalid account"):
        submit_grid(grid, runs_dir, "slurm")
    assert json.loads((directories[0] / "job.json").read_text()) == owner


def test_status_needs_no_scheduler(tmp_path, monkeypatch):
    """Without sacct or squeue, a recorded SLURM job is 'unknown'; a local job whose process is gone is 'failed'
    with its reason; and --status reads the run folders alone for the rest."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no SLURM commands
    grid = load_grid(write_grid(tmp_path, axes={"seed": [0, 1, 2, 3, 4]}))
    runs_dir = tmp_path / "runs"
    folders = [run_directory(runs_dir, grid, run) for run in grid.runs()]
    for folder in folders[:4]:
        folder.mkdir(parents=True)
    (folders[0] / "run.json").write_text(json.dumps({"status": "done"}))
    (folders[0] / "metrics.csv").write_text("epoch,step,val/top1\n0,3,0.5\n")
    (folders[1] / "job.json").write_text(json.dumps({"executor": "slurm", "job_id": "77_1", "token": "t"}))
    log = tmp_path / "77_2_0_log.err"
    log.write_text("loading\nsubmitit ERROR: RuntimeError: CUDA out of memory\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    local = {"executor": "local", "job_id": str(dead.pid), "host": socket.gethostname(), "log": str(log)}
    (folders[2] / "job.json").write_text(json.dumps(local))
    (folders[2] / "checkpoints").mkdir()
    (folders[2] / "checkpoints" / "last.ckpt").write_bytes(b"")
    (folders[3] / "run.json").write_text(json.dumps({"status": "failed", "reason": "ValueError: bad root"}))
    result = {status.name: (status.state, status.job_id, status.detail) for status in grid_status(grid, runs_dir)}
    assert result["seed=0"] == ("done", None, "epoch 1, val top-1 50.00%")
    assert result["seed=1"][:2] == ("unknown", "77_1") and "cannot say" in result["seed=1"][2]
    assert result["seed=2"] == (
        "failed",
        str(dead.pid),
        f"job {dead.pid} ended: submitit ERROR: RuntimeError: CUDA out of memory; submitted again, it resumes from "
        "its checkpoint",
    )
    assert result["seed=3"] == ("failed", None, "ValueError: bad root")
    assert result["seed=4"] == ("not submitted", None, "")
    shown = openmix("bench", str(grid.path), "--runs-dir", str(runs_dir), "--status")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "5 runs: 1 done, 2 failed, 1 not submitted, 1 unknown" in shown.stdout
    assert "job 77_1" in shown.stdout


def test_an_unquoted_time_in_the_grid_file_is_refused_not_read_as_base_60(tmp_path):
    """YAML 1.1 reads ``time: 12:00:00`` as 43200: a 30-day limit if taken as minutes."""
    path = write_grid(tmp_path)
    path.write_text(path.read_text() + "cluster:\n  time: 12:00:00\n")
    with pytest.raises(ValueError, match=r'cluster.time must be quoted, e.g. time: "12:00:00".* an int 43200'):
        load_grid(path)
    path.write_text(path.read_text().replace("time: 12:00:00", 'time: "12:00:00"'))
    assert load_grid(path).cluster.time_min == 720


def test_gpus_are_not_requested_for_cpu_runs():
    cpu = {"trainer": {"accelerator": "cpu", "devices": 1}}
    with pytest.raises(ValueError, match="gpus_per_node=1 .* trainer.accelerator=cpu"):
        job_resources([cpu], ClusterOptions(gpus_per_node=1), "slurm")
    assert job_resources([cpu], ClusterOptions(gpus_per_node=0), "slurm") == Resources(1, 1, 0)


def test_sbatch_options_on_the_command_line_are_read_as_yaml(tmp_path):
    from openmix.cli import CLUSTER_FLAGS, _cluster_from_command_line

    def options(*sbatch: str) -> argparse.Namespace:
        flags = {flag[2:].replace("-", "_"): None for flag in CLUSTER_FLAGS}
        return argparse.Namespace(**flags, sbatch=list(sbatch), setup=[])

    cluster = _cluster_from_command_line(options("exclusive=true", "qos=high", "--nice=10"))
    assert cluster.sbatch == {"exclusive": True, "qos": "high", "nice": 10}
    grid = load_grid(write_grid(tmp_path))
    script = sbatch_script(grid, dataclasses.replace(cluster, time_min=60), Resources(1, 1, 0), tmp_path, 1)
    assert "#SBATCH --exclusive\n" in script and "#SBATCH --qos=high\n" in script
    with pytest.raises(ValueError, match="^--sbatch qos: expected KEY=VALUE"):
        _cluster_from_command_line(options("qos"))
    with pytest.raises(ValueError, match="--sbatch.exclusive must be a value or true"):
        _cluster_from_command_line(options("exclusive=false"))


def test_the_reason_of_a_failure_is_the_traceback_or_the_signal(tmp_path):
    from openmix.bench.runner import exit_reason, reason_in_log

    log = tmp_path / "output.log"
    summary = "3 | calibration | MulticlassCalibrationError | 0      | train"
    log.write_text(
        f"Traceback (most recent call last):\n  File 'x.py'\nValueError: first\n{summary}\n"
        "Traceback (most recent call last):\n  File 'y.py', line 3\n    raise RuntimeError('boom')\n"
        "torch.OutOfMemoryError: CUDA out of memory\nException ignored in atexit\n"
    )
    assert reason_in_log(log) == "torch.OutOfMemoryError: CUDA out of memory"
    log.write_text(f"submitit ERROR: RuntimeError: stopped\n{summary}\nEpoch 3: 100%\n")
    assert reason_in_log(log) == "submitit ERROR: RuntimeError: stopped"
    log.write_text(f"{summary}\nEpoch 3: 100%\n")
    assert reason_in_log(log) == "Epoch 3: 100%"
    assert exit_reason(-signal.SIGKILL, log) == "killed by signal SIGKILL"
    assert exit_reason(1, log) == "Epoch 3: 100%"


def test_a_corrupt_job_record_shows_the_submissions_error(tmp_path, monkeypatch):
    fake_slurm(tmp_path, monkeypatch)
    grid = load_grid(write_grid(tmp_path, cluster={"time": "1:00:00"}))
    runs_dir = tmp_path / "runs"
    folder = run_directory(runs_dir, grid, grid.runs()[0])
    folder.mkdir(parents=True)
    (folder / "job.json").write_text('{"executor": "slu')
    with pytest.raises(ValueError) as error:
        submit_grid(grid, runs_dir, "slurm")
    assert "job.json is not valid JSON" in str(error.value)
    status = grid_status(grid, runs_dir)[0]
    assert (status.state, status.detail) == ("unknown", str(error.value))


def test_a_failure_a_job_recorded_needs_no_scheduler(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    grid = load_grid(write_grid(tmp_path, axes={"seed": [0, 1]}))
    runs_dir = tmp_path / "runs"
    folders = [run_directory(runs_dir, grid, run) for run in grid.runs()]
    for folder, job_id in zip(folders, ("5", "6")):
        folder.mkdir(parents=True)
        (folder / "job.json").write_text(json.dumps({"executor": "slurm", "job_id": job_id, "token": "t"}))
        failed = {"status": "failed", "reason": "ValueError: bad", "segments": [{"job_id": "5"}]}
        (folder / "run.json").write_text(json.dumps(failed))
    result = [(status.state, status.detail) for status in grid_status(grid, runs_dir)]
    assert result[0] == ("failed", "ValueError: bad")
    assert result[1][0] == "unknown"  # job 6 came after the recorded failure: it may be running


def test_a_folder_a_live_process_writes_is_running_and_not_submitted(tmp_path, monkeypatch, capsys):
    """A fit still holding run.lock after its job ended: --status says running, a submission skips it; probing the
    lock leaves run.lock as it was."""
    from openmix.bench.run_folder import folder_is_locked, lock_folder

    records = fake_slurm(tmp_path, monkeypatch)
    grid = load_grid(write_grid(tmp_path, cluster={"time": "1:00:00"}))
    runs_dir = tmp_path / "runs"
    folders = [run_directory(runs_dir, grid, run) for run in grid.runs()]
    (records / "sacct.txt").write_text("JobID|State|NodeList\n9|CANCELLED|node1\n")
    folders[0].mkdir(parents=True)
    (folders[0] / "job.json").write_text(json.dumps({"executor": "slurm", "job_id": "9", "token": "t"}))
    (folders[0] / "run.lock").write_text("someone")
    assert not folder_is_locked(folders[0]) and (folders[0] / "run.lock").read_text() == "someone"
    assert not folder_is_locked(folders[1]) and not folders[1].exists()
    holder = lock_folder(folders[0])
    try:
        written = (folders[0] / "run.lock").read_text()
        assert folder_is_locked(folders[0]) and (folders[0] / "run.lock").read_text() == written
        status = grid_status(grid, runs_dir)[0]
        assert status.state == "running" and status.detail.startswith("folder locked by a live process")
        capsys.readouterr()
        submit_grid(grid, runs_dir, "slurm")
        out = capsys.readouterr().out
        assert "1 queued or running, 1 to submit" in out and "run.lock is held by a live process" in out
        assert json.loads((folders[0] / "job.json").read_text())["job_id"] == "9"
        assert json.loads((folders[1] / "job.json").read_text())["job_id"] == "4242"
    finally:
        holder.close()
    assert not folder_is_locked(folders[0])


def test_a_second_submission_waits_for_the_first(tmp_path, monkeypatch, capsys):
    """The grid's submission lock: a submission started while another holds it waits, then sees its jobs."""
    import fcntl
    import threading

    records = fake_slurm(tmp_path, monkeypatch)
    grid = load_grid(write_grid(tmp_path, cluster={"time": "1:00:00"}))
    runs_dir = tmp_path / "runs"
    (records / "sacct.txt").write_text("JobID|State|NodeList\n4242_0|PENDING|None\n4242_1|PENDING|None\n")
    (runs_dir / "tiny").mkdir(parents=True)
    with open(runs_dir / "tiny" / "submit.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the first submission, mid-way
        second = threading.Thread(target=submit_grid, args=(grid, runs_dir, "slurm"))
        second.start()
        time.sleep(1.0)
        assert second.is_alive() and not (records / "sbatch-0.sh").exists()
        assert "another submission of this grid holds" in capsys.readouterr().out
    second.join(60)
    assert (records / "sbatch-0.sh").exists()
    threads = [threading.Thread(target=submit_grid, args=(grid, runs_dir, "slurm")) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not (records / "sbatch-1.sh").exists()  # both saw the queued jobs
    assert not list((runs_dir / "tiny").glob("*/.job.json*partial"))


# ------------------------------------------------------------------------------------- whole grids, local executor


def _pid_file(path: Path, deadline: float) -> int:
    while not path.is_file() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)
    return int(path.read_text())


def _parent(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _stop_jobs(directories: list[Path]) -> None:
    """Kill what a failed test may leave behind: each run's local job controller, its task and the fit (only
    processes that are still those: a pid may have been reused)."""
    for directory in directories:
        pids = []
        if (directory / "job.json").is_file():
            pids.append(json.loads((directory / "job.json").read_text()).get("job_id"))
        if (directory / "run.lock").is_file() and (directory / "run.lock").read_text().strip():
            fit = int((directory / "run.lock").read_text())
            pids.append(fit)
            try:
                pids.append(_parent(fit))
            except (OSError, StopIteration, ValueError):
                pass
        for pid in pids:
            try:
                if any(word in Path(f"/proc/{pid}/cmdline").read_bytes() for word in (b"submitit", b"openmix")):
                    _kill(int(pid))
            except (OSError, TypeError, ValueError):
                pass


def _status_until(grid_path: Path, runs_dir: Path, text: str, deadline: float) -> str:
    """``--status`` again and again until its output holds ``text``."""
    while True:
        shown = openmix("bench", str(grid_path), "--runs-dir", str(runs_dir), "--status").stdout
        if text in shown:
            return shown
        assert time.monotonic() < deadline, shown
        time.sleep(1)


def _wait_done(directories: list[Path], deadline: float) -> None:
    while not all(is_done(directory) for directory in directories):
        assert time.monotonic() < deadline, [str(d) for d in directories if not is_done(d)]
        time.sleep(0.5)


@needs_fmnist
@pytest.mark.slow
def test_a_grid_through_the_local_executor_resumes_a_killed_job_and_a_warned_one(tmp_path):
    """Two runs of 2 epochs pause after their first epoch's checkpoint. The first run's job is killed outright
    (SIGKILL, as a node failure) and resubmitted; the second is warned of its time limit (USR2, what SLURM sends)
    and requeues itself. Both resume from last.ckpt and finish; a third submission sends nothing."""
    markers = {name: tmp_path / f"{name}.paused" for name in ("vanilla", "mixup")}

    def pausing(name: str, mixer: str | None) -> dict:
        pause = {"class_path": "test_slurm.PauseOnce", "init_args": {"marker": str(markers[name]), "step": 5}}
        return {"model.init_args.mixer": mixer, "trainer.callbacks": [pause]}

    axes = {"mixer": {"vanilla": pausing("vanilla", None), "mixup": pausing("mixup", "mixup")}}
    grid_path = write_grid(tmp_path, axes=axes, **{"trainer.max_epochs": 2})
    runs_dir = tmp_path / "runs"
    grid = load_grid(grid_path)
    killed, warned = (run_directory(runs_dir, grid, run) for run in grid.runs())
    try:
        _killed_and_warned(grid_path, runs_dir, killed, warned, markers)
    finally:
        _stop_jobs([killed, warned])


def _killed_and_warned(grid_path: Path, runs_dir: Path, killed: Path, warned: Path, markers: dict) -> None:
    bench = ["bench", str(grid_path), "--runs-dir", str(runs_dir), "--executor", "local"]
    first = openmix(*bench)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "0 already done, 0 queued or running, 2 to submit" in first.stdout
    killed_job = json.loads((killed / "job.json").read_text())["job_id"]
    deadline = time.monotonic() + 400
    fits = {name: _pid_file(marker, deadline) for name, marker in markers.items()}  # both paused after epoch 1
    status = openmix("bench", str(grid_path), "--runs-dir", str(runs_dir), "--status")
    assert "2 runs: 2 running" in status.stdout and "epoch 1, val top-1" in status.stdout, status.stdout
    again = openmix(*bench)  # live jobs are not submitted twice
    assert "2 queued or running, 0 to submit" in again.stdout, again.stdout + again.stderr

    # the first job dies outright: its controller, its task and the fit
    for pid in (int(killed_job), _parent(fits["vanilla"]), fits["vanilla"]):
        _kill(pid)
    # the second is warned of its time limit: submitit's handler stops the fit and requeues the job
    os.kill(_parent(fits["mixup"]), signal.SIGUSR2)
    status = _status_until(grid_path, runs_dir, "mixer=vanilla  failed", deadline)
    assert f"job {killed_job} ended" in status and "resumes after epoch 1" in status
    resubmitted = openmix(*bench)
    assert resubmitted.returncode == 0, resubmitted.stderr[-3000:]
    assert "1 to submit" in resubmitted.stdout
    owner = json.loads((killed / "job.json").read_text())
    assert owner["job_id"] != killed_job and owner["previous"][-1]["job_id"] == killed_job
    _wait_done([killed, warned], deadline)

    for directory in (killed, warned):
        record = json.loads((directory / "run.json").read_text())
        assert record["command"][-1] == f"--ckpt_path={directory / 'checkpoints' / 'last.ckpt'}", "resumed"
        with open(directory / "metrics.csv", newline="") as stream:
            epochs = {row["epoch"] for row in csv.DictReader(stream) if row.get("val/top1")}
        assert epochs == {"0", "1"}, "each epoch once, the resumed one continuing the file"
    assert "the scheduler warned this job" in (warned / "output.log").read_text()
    warned_record = json.loads((warned / "run.json").read_text())
    assert {segment["job_id"] for segment in warned_record["segments"]} == {
        json.loads((warned / "job.json").read_text())["job_id"]
    }

    finished = {directory: (directory / "run.json").read_text() for directory in (killed, warned)}
    last = openmix(*bench)
    assert "2 already done, 0 queued or running, 0 to submit" in last.stdout
    assert all(directory.joinpath("run.json").read_text() == text for directory, text in finished.items())
    status = openmix("bench", str(grid_path), "--runs-dir", str(runs_dir), "--status")
    assert "2 runs: 2 done" in status.stdout


@needs_fmnist
@pytest.mark.slow
def test_the_ranks_of_a_ddp_run_under_slurm_pair_across_ranks(tmp_path):
    """A 2-process run as SLURM starts it (two tasks with SLURM's variables, no srun here): Lightning's SLURM
    environment makes one DDP world of them, mixing with pairing_scope global; rank 0 alone records the run."""
    import cloudpickle

    grid_path = write_grid(
        tmp_path,
        axes={"mixer": {"mixup": {"model.init_args.mixer": "mixup"}}},
        **{
            "trainer.accelerator": "cpu",
            "trainer.devices": 2,
            "trainer.strategy": "ddp",
            "model.init_args.pairing_scope": "global",
            "data.init_args.limit_train": 64,
        },
    )
    grid = load_grid(grid_path)
    (run,) = grid.runs()
    directory = run_directory(tmp_path / "runs", grid, run)
    directory.mkdir(parents=True)
    (directory / "job.json").write_text(json.dumps({"executor": "slurm", "job_id": "4242", "token": "t0"}))
    pickled = tmp_path / "job.pkl"
    pickled.write_bytes(cloudpickle.dumps(RunJob(grid, run, directory, "t0", threads=1)))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    slurm = {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "openmix-tiny",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_NNODES": "1",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "127.0.0.1",
        "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    code = "import sys, cloudpickle; print(cloudpickle.load(open(sys.argv[1], 'rb'))())"
    tasks = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(pickled)],
            env={**os.environ, **slurm, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [task.communicate(timeout=400)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    log = (directory / "output.log").read_text()
    assert "MEMBER: 1/2" in log and "MEMBER: 2/2" in outputs[1], "one DDP world of the two tasks"
    record = json.loads((directory / "run.json").read_text())
    assert record["status"] == "done" and [s["job_id"] for s in record["segments"]] == ["4242"]
    config = yaml.safe_load((directory / "config.yaml").read_text())
    assert config["model"]["init_args"]["pairing_scope"] == "global" and str(config["trainer"]["devices"]) == "2"
    assert "'rank': 1" in outputs[1]  # the other rank ran the same fit and left the run folder to rank 0
