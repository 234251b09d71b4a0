"""The benchmark tools under tools/ run end to end (smoke tests: tiny shapes, one round)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import openmix

ROOT = Path(__file__).resolve().parents[1]


def pick_mixers() -> tuple[str, str]:
    """A mixer trained on the CNN (needs nothing, not learned) and one trained on the ViT (needs attention),
    chosen by their declared capabilities."""
    entries = [openmix.get_mixer_entry(name) for name in openmix.list_mixers() if name != "mixup"]
    cnn = next(e.name for e in entries if not e.requires and not e.learned and e.hooks == ("inputs",))
    vit = next(e.name for e in entries if "attention" in e.requires and not e.learned)
    return cnn, vit


def test_bench_train_quick_reports_a_finite_cost_per_mixer(tmp_path):
    cnn, vit = pick_mixers()
    out = tmp_path / "train.md"
    command = [sys.executable, "tools/bench_train.py", "--quick", "--threads", "1", "--mixers", f"{cnn},{vit}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([*command, "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {}
    for line in out.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 9 and cells[0] in (cnn, vit, "mixup"):
            rows[(cells[0], cells[1])] = float(cells[7].strip("*x"))
    assert set(rows) == {(cnn, "cnn"), (vit, "vit"), ("mixup", "cnn"), ("mixup", "vit")}
    assert all(math.isfinite(cost) and cost > 0 for cost in rows.values())
    assert rows[("mixup", "cnn")] == rows[("mixup", "vit")] == 1.0  # each backbone's own reference
    payload = json.loads(out.with_suffix(".json").read_text())
    assert {(row["method"], row["backbone"]) for row in payload["rows"]} == set(rows)
    assert math.isfinite(payload["median_ratio"])  # the mixup step against the bare timm loop


def test_bench_train_refuses_a_device_it_cannot_use():
    import pytest
    import torch

    sys.path.insert(0, str(ROOT / "tools"))
    import bench_train

    with pytest.raises(SystemExit):
        bench_train.parse_args(["--device", "tpu"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            bench_train.parse_args(["--device", "cuda"])
    args = bench_train.parse_args(["--quick"])
    assert args.device == torch.device("cpu") and args.precision == "32-true"


def test_bench_mixers_restores_a_batch_that_a_learned_mixer_wrote_in_place():
    # an in-place mix by a learned mixer (its mask requires grad) puts the shared batch in the autograd graph; the
    # next case (the floor's lerp with out=) must get it detached, with the pristine values
    sys.path.insert(0, str(ROOT / "tools"))
    import bench_mixers
    import torch

    pristine = torch.randn(4, 3, 5, 5)
    batch = bench_mixers.Batch(pristine=pristine, work=pristine.clone(), labels=torch.arange(4))
    mask = torch.rand(4, 1, 5, 5, requires_grad=True)
    batch.work.mul_(mask)
    assert batch.work.requires_grad
    batch.restore()
    assert not batch.work.requires_grad and torch.equal(batch.work, pristine)
    torch.lerp(batch.work, batch.work.flip(0), 0.3, out=torch.empty_like(pristine))
