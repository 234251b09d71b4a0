"""Training-step throughput: MixClassifier under Lightning against a bare PyTorch loop with timm's Mixup, and the
cost of an AutoMix step against a mixup step.

Both sides train the same timm model (same architecture, same initial weights) on the same in-memory batches
with SGD and a mixed soft-target cross entropy: openmix through ``Trainer.fit`` (mixer ``mixup``, the default
warm-up + cosine schedule, a CSV logger, as a user runs it), the reference as a ten-line loop around
``timm.data.Mixup`` and ``timm.loss.SoftTargetCrossEntropy``. Each run trains ``--steps`` steps after
``--warmup`` untimed ones; runs alternate (ours, theirs, AutoMix, ours, ...) so machine noise hits all alike, and
each ratio is computed per round and then medianed. The AutoMix rows train ``AutoMixClassifier`` (Mix Block,
momentum network, clean one-hot loss) on the same backbone and batches; their cost is mixup's images/s over
AutoMix's, with the clean one-hot loss (the default) and without it (``clean_loss_weight=0``).

Reproduce (from the repository root)::

    PYTHONPATH=. python tools/bench_train.py                      # writes docs/benchmarks/train.md
    PYTHONPATH=. python tools/bench_train.py --quick              # smoke test
"""

from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import timm
import torch
from lightning.pytorch.callbacks import Callback
from timm.data import Mixup as TimmMixup
from timm.loss import SoftTargetCrossEntropy
from torch.utils.data import DataLoader

from openmix.lightning import AutoMixClassifier, MixClassifier

MODEL = {"backbone": "resnet18", "cifar_stem": True, "backbone_kwargs": {"channels": (32, 64, 128, 256)}}


class StepTimer(Callback):
    """Wall time of the training steps after the first ``warmup`` ones (data fetch included, as in the loop)."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.start = 0.0
        self.end = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self.end = time.perf_counter()
        self.steps = batch_idx + 1 - self.warmup


def make_batches(args: argparse.Namespace) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    shape = (args.batch_size, 3, args.size, args.size)
    count = args.steps + args.warmup
    return [
        (torch.randn(shape, generator=generator), torch.randint(0, 10, (shape[0],), generator=generator))
        for _ in range(count)
    ]


def run_openmix(module: MixClassifier, batches: list, warmup: int) -> float:
    """Images per second of Trainer.fit over ``batches`` (one epoch)."""
    timer = StepTimer(warmup)
    with tempfile.TemporaryDirectory() as log_dir:
        trainer = L.Trainer(
            max_epochs=1,
            accelerator="cpu",
            logger=L.pytorch.loggers.CSVLogger(log_dir),
            callbacks=[timer],
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
        )
        trainer.fit(module, DataLoader(batches, batch_size=None))
    return timer.steps * batches[0][0].shape[0] / (timer.end - timer.start)


def run_reference(model: torch.nn.Module, batches: list, warmup: int) -> float:
    """Images per second of a bare loop with timm's Mixup (alpha 1, batch mode) and SGD."""
    mixup = TimmMixup(mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=10)
    criterion = SoftTargetCrossEntropy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()
    start = 0.0
    for step, (x, y) in enumerate(batches):
        if step == warmup:
            start = time.perf_counter()
        x, targets = mixup(x.clone(), y)  # timm mixes in place: keep the shared batch intact
        loss = criterion(model(x), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (len(batches) - warmup) * batches[0][0].shape[0] / (time.perf_counter() - start)


def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    batches = make_batches(args)
    torch.manual_seed(0)
    template = MixClassifier(num_classes=10, in_chans=3, mixer="mixup", **MODEL)
    automix = AutoMixClassifier(num_classes=10, in_chans=3, **MODEL)
    automix_no_clean = AutoMixClassifier(num_classes=10, in_chans=3, clean_loss_weight=0.0, **MODEL)
    results: dict[str, list[float]] = {key: [] for key in ("openmix", "reference", "automix", "automix_no_clean")}
    for _ in range(args.repeats):
        results["openmix"].append(run_openmix(copy.deepcopy(template), batches, args.warmup))
        results["reference"].append(run_reference(copy.deepcopy(template.network), batches, args.warmup))
        results["automix"].append(run_openmix(copy.deepcopy(automix), batches, args.warmup))
        results["automix_no_clean"].append(run_openmix(copy.deepcopy(automix_no_clean), batches, args.warmup))
    results["ratio"] = [ours / theirs for ours, theirs in zip(results["openmix"], results["reference"])]
    results["automix_cost"] = [mixup / auto for mixup, auto in zip(results["openmix"], results["automix"])]
    results["automix_no_clean_cost"] = [
        mixup / auto for mixup, auto in zip(results["openmix"], results["automix_no_clean"])
    ]
    return results


def report(args: argparse.Namespace, results: dict[str, list[float]]) -> str:
    ratio = statistics.median(results["ratio"])
    cost = statistics.median(results["automix_cost"])
    lines = [
        "# Training-step throughput: MixClassifier vs a bare PyTorch loop with timm's Mixup",
        "",
        f"- command: `{' '.join(shlex.quote(a) for a in ['python', 'tools/bench_train.py', *sys.argv[1:]])}`",
        f"- date (UTC): {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
        f"- torch {torch.__version__}, timm {timm.__version__}, lightning {L.__version__}; "
        f"{torch.get_num_threads()} CPU threads",
        f"- model: timm resnet18, CIFAR stem, channels (32, 64, 128, 256); batch {args.batch_size} x 3 x "
        f"{args.size} x {args.size}; {args.steps} timed steps after {args.warmup}; {args.repeats} alternating pairs",
        "",
        "| run | images/s (median) |",
        "|---|---:|",
        f"| openmix MixClassifier + mixup (Lightning) | {statistics.median(results['openmix']):.1f} |",
        f"| bare loop + timm Mixup | {statistics.median(results['reference']):.1f} |",
        f"| openmix AutoMixClassifier (Mix Block + momentum network + clean loss) | "
        f"{statistics.median(results['automix']):.1f} |",
        f"| openmix AutoMixClassifier without the clean one-hot loss | "
        f"{statistics.median(results['automix_no_clean']):.1f} |",
        "",
        f"Ratio (ours / reference, per round, median): **{ratio:.3f}** "
        f"({'pass' if ratio >= 0.95 else 'FAIL'}: target >= 0.95). Per round: "
        + ", ".join(f"{r:.3f}" for r in results["ratio"]),
        "",
        f"AutoMix step cost (mixup images/s over AutoMix images/s, per round, median): **{cost:.2f}x** "
        f"({'pass' if cost <= 2.2 else 'FAIL'}: target <= 2.2x); without the clean one-hot loss: "
        f"{statistics.median(results['automix_no_clean_cost']):.2f}x.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/train.md"))
    parser.add_argument("--quick", action="store_true", help="tiny run for a smoke test (output in the temp dir)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.size, args.steps, args.warmup, args.repeats = 8, 16, 3, 1, 1
        args.out = Path(tempfile.gettempdir()) / "openmix_bench_train.md"
    text = report(args, measure(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
