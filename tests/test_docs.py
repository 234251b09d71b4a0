"""Every `openmix` command shown in README.md, docs/ and model_zoo/ runs, as a user would type it.

The commands are read from the documents' ```bash blocks and run in order (a resume or an evaluation follows the
fit before it) in a scratch folder that holds `configs/` and small data sets written in the real on-disk formats
(CIFAR python batches, ImageNet folders; Fashion-MNIST from Debian's package). Only what a CPU-only CI machine
cannot afford is changed, by arguments appended to each command: a tiny network, a few images, one epoch, and the
CPU instead of GPUs for the recipes that ask for them.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_data import write_cifar10, write_cifar100, write_imagenet

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "model_zoo").rglob("*.md"))]
TINY_MODEL = {
    "model.init_args.backbone": "resnet10t",
    "model.init_args.backbone_kwargs": {"channels": [8, 8, 8, 8], "stem_width": 8},
    "model.init_args.cifar_stem": True,
}
TINY_DATA = {"data.init_args.limit_train": 64, "data.init_args.limit_val": 32, "data.init_args.num_workers": 0}
ON_THE_CPU = {"trainer.accelerator": "cpu", "trainer.devices": 1, "trainer.strategy": "auto", "trainer.precision": 32}
LIGHTNING_VERBS = ("fit", "validate", "test", "predict")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed"),
]


def documented_commands(document: Path) -> list[tuple[int, dict[str, str], list[str]]]:
    """(line, environment, argv) of every `openmix` command in the document's bash blocks, in order."""
    commands, block, start = [], None, 0
    lines = document.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if line.strip().startswith("```"):
            block = [] if block is None and line.strip() == "```bash" else None
            continue
        if block is None:
            continue
        if block and block[-1][1].endswith("\\"):  # a continued line
            block[-1] = (block[-1][0], block[-1][1][:-1] + " " + line.strip())
        else:
            block.append((number, line.strip()))
        if not line.strip().endswith("\\"):
            start, text = block[-1]
            words = shlex.split(text, comments=True)
            environment = {}
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                key, value = words.pop(0).split("=", 1)
                environment[key] = value
            if words and words[0] == "openmix":
                commands.append((start, environment, words[1:]))
    return commands


def _option(values: dict) -> list[str]:
    return [f"--{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            for key, value in values.items()]  # fmt: skip


def _asks_for_gpus(argv: list[str], workspace: Path) -> bool:
    configs = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "--config"]
    for config in configs:
        data = yaml.safe_load((workspace / config).read_text()) if (workspace / config).is_file() else {}
        if isinstance(data, dict) and (data.get("trainer") or {}).get("accelerator") == "gpu":
            return True
    return False


def runnable(argv: list[str], workspace: Path) -> list[str]:
    """The documented command with the arguments that make it affordable here appended."""
    verb = argv[0]
    if verb in LIGHTNING_VERBS:
        extra = dict(TINY_DATA)
        if verb == "fit" and not any(word.startswith("--config=runs") for word in argv):
            extra |= TINY_MODEL | {"trainer.max_epochs": 1, "data.init_args.batch_size": 4}
        if _asks_for_gpus(argv, workspace):
            extra |= ON_THE_CPU
        return argv + _option(extra)
    if verb == "bench":  # a dry run too: it checks the runs made with the same settings
        grid = yaml.safe_load((workspace / argv[1]).read_text())
        # one epoch of two steps, whatever the grid's schedules: max_steps, since a grid may vary max_epochs
        settings = TINY_MODEL | TINY_DATA | ON_THE_CPU
        settings |= {"trainer.max_steps": 2, "data.init_args.limit_train": 8, "data.init_args.batch_size": 4}
        varied = {key for axis in (grid.get("axes") or {}).values() if isinstance(axis, dict)
                  for values in axis.values() for key in values}  # fmt: skip
        extra = [word for key, value in settings.items() if key not in varied
                 for word in ("--set", _option({key: value})[0][2:])]  # fmt: skip
        if "seed" in grid.get("axes", {}) and not any(word.startswith("seed=") for word in argv):
            extra += ["--only", "seed=0"]
        if not any(word.startswith("mixer=") for word in argv):  # one run is enough to check the command
            extra += ["--only", "mixer=vanilla"]
        for axis, values in (grid.get("axes") or {}).items():  # one value of every other axis
            if axis not in ("seed", "mixer") and not any(word.startswith(f"{axis}=") for word in argv):
                first = next(iter(values)) if isinstance(values, dict) else values[0]
                extra += ["--only", f"{axis}={first}"]
        return argv + extra
    return argv


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("docs")
    (folder / "configs").symlink_to(ROOT / "configs")
    write_cifar10(folder / "data" / "cifar")
    write_cifar100(folder / "data" / "cifar", train_count=40, test_count=20)
    write_imagenet(folder / "data" / "imagenet")
    return folder


def run_document(document: Path, workspace: Path) -> list[str]:
    """Run the document's commands in order; returns the failures (empty when every command exits 0)."""
    folder = workspace / document.stem  # one scratch folder per document: its runs follow each other
    folder.mkdir(exist_ok=True)
    for name in ("configs", "data"):
        if not (folder / name).exists():
            (folder / name).symlink_to(workspace / name)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT)}
    for line, environment, argv in documented_commands(document):
        command = [sys.executable, "-m", "openmix.cli", *runnable(argv, folder)]
        result = subprocess.run(command, cwd=folder, env={**env, **environment}, capture_output=True, text=True)
        if result.returncode != 0:
            where = f"{document.relative_to(ROOT)}:{line}: openmix {shlex.join(argv)}"
            return [f"{where}\n{(result.stdout + result.stderr)[-3000:]}"]  # later commands may depend on it
    return []


def test_every_documented_command_runs(workspace):
    """Each document's commands run in order; the documents run two at a time (each command is one thread)."""
    from concurrent.futures import ThreadPoolExecutor

    documents = [document for document in DOCUMENTS if documented_commands(document)]
    assert {ROOT / "README.md", ROOT / "docs" / "training.md"} <= set(documents)
    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [failure for failures in pool.map(lambda d: run_document(d, workspace), documents)
                    for failure in failures]  # fmt: skip
    assert not failures, "\n\n".join(failures)
