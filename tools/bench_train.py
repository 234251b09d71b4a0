"""Training-step cost of every registered mixer against a mixup step, and of MixClassifier's mixup step against a
bare PyTorch loop with timm's Mixup.

Every run trains a timm model (same architecture and initial weights per backbone) on the same in-memory batches
with SGD, through ``Trainer.fit`` as a user runs it (the default warm-up + cosine schedule, a CSV logger): it runs
``--warmup`` untimed steps, then ``--steps`` timed ones, each measured end to end (data fetch and logging included);
the run's step time is their median. What each run builds is read from the mixer's declared capabilities, never
from its name:

- the backbone: a ViT (``VIT``) when the mixer ``requires`` class-token ``attention``, else the CNN (``CNN``);
- the module class: the one named by ``trained_by`` (a dotted path, imported) when the mixer is ``learned``, else
  ``MixClassifier``;
- a mixer whose constructor takes ``patch_size`` gets the ViT's, so its token grid is the network's.

The reference of each method is ``MixClassifier`` with ``mixup`` on the *same* backbone and batches; a method's
cost is its step time over that mixup step time (computed per round, then medianed). The ``mixup`` step on the
CNN is also compared with a ten-line loop around ``timm.data.Mixup`` and ``timm.loss.SoftTargetCrossEntropy``
(ratio of images/s, ours over the loop's). Each round runs every case once, in a shuffled order (seeded), so machine
noise hits all of them alike.

Reproduce (from the repository root)::

    PYTHONPATH=. python tools/bench_train.py --variant automix:clean_loss_weight=0   # docs/benchmarks/train.md
    PYTHONPATH=. python tools/bench_train.py --quick --mixers cutmix,transmix          # smoke test (temp dir)
    PYTHONPATH=. python tools/bench_train.py --device cuda --batch-size 256 --steps 40 --warmup 10 \
        --out docs/benchmarks/train_cuda.md                                            # on a CUDA machine

On a CUDA device (``--device cuda[:N]``) the runs use ``--precision`` (default ``bf16-mixed``), channels-last
networks, and pinned batches that each step copies to the device as Lightning does; a step time is the wall time of
the timed steps between two device synchronisations, divided by their number (a synchronisation per step would
hide exactly the host waits this benchmark is for).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import os
import random
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import timm
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from timm.data import Mixup as TimmMixup
from timm.loss import SoftTargetCrossEntropy
from torch.utils.data import DataLoader

import openmix
from openmix.lightning import MixClassifier

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling tool, whatever the working directory
from bench_mixers import cpu_model  # noqa: E402  (one reader of the CPU model for both benchmarks)

REFERENCE = "mixup"  # the step every method is compared with, on its own backbone
NUM_CLASSES = 10
CNN = {"backbone": "resnet18", "cifar_stem": True, "backbone_kwargs": {"channels": (32, 64, 128, 256)}}
VIT_PATCH = 4
VIT = {"backbone": "vit_tiny_patch16_224", "backbone_kwargs": {"patch_size": VIT_PATCH}}  # img_size: the batch's
QUICK_VIT = {"depth": 2, "embed_dim": 32, "num_heads": 2}  # --quick: a smaller ViT, for a smoke test
RATIO_TARGET = 0.95  # openmix mixup step images/s over the bare loop's
LEARNED_COST_TARGET = 2.2  # a learned mixer's step (Mix Block + momentum network) against a mixup step
DEFAULT_OUT = Path("docs/benchmarks/train.md")
BARE = "bare loop + timm Mixup"
BARE_KEY = "bare|cnn"


class StepTimer(Callback):
    """Wall time of each training step after the first ``warmup`` ones, end to end (the interval between the ends
    of two consecutive steps: data fetch and logging included, as in the loop)."""

    def __init__(self, warmup: int, device: torch.device | None = None):
        self.warmup = warmup
        self.device = device or torch.device("cpu")
        self.marks: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            self.marks = [mark(self.device)]

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup and (self.device.type == "cpu" or batch_idx == trainer.num_training_batches - 1):
            self.marks.append(mark(self.device))


def mark(device: torch.device) -> float:
    """The time now; on a CUDA device after waiting for it (used at the start and the end of the timed steps)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def step_time(marks: list[float], steps: int | None = None) -> float:
    """The median of the step intervals between consecutive ``marks``: a few steps slowed down by another process
    on the machine do not move it, as they would move the mean. With two marks around ``steps`` steps (a CUDA run),
    their mean."""
    if steps is not None and len(marks) == 2:
        return (marks[1] - marks[0]) / steps
    return statistics.median(b - a for a, b in zip(marks, marks[1:]))


@dataclass
class Case:
    """One timed run: ``build`` returns a fresh copy of what it trains, ``run`` times it (seconds per step)."""

    key: str
    label: str
    backbone: str
    module: str
    hooks: tuple[str, ...]
    requires: tuple[str, ...]
    learned: bool
    build: Callable[[], Any]
    run: Callable[[Any], float]
    times: list[float] = field(default_factory=list)


def make_batches(args: argparse.Namespace) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Host batches (pinned when the runs are on CUDA: each step copies its batch to the device)."""
    generator = torch.Generator().manual_seed(args.seed)
    shape = (args.batch_size, 3, args.size, args.size)
    batches = [
        (torch.randn(shape, generator=generator), torch.randint(0, NUM_CLASSES, (shape[0],), generator=generator))
        for _ in range(args.steps + args.warmup)
    ]
    if args.device.type == "cuda":
        batches = [(x.pin_memory(), y.pin_memory()) for x, y in batches]
    return batches


def run_lightning(module: L.LightningModule, batches: list, args: argparse.Namespace) -> float:
    """Seconds per training step of ``Trainer.fit`` over ``batches`` (one epoch): the median over the timed steps."""
    timer = StepTimer(args.warmup, args.device)
    on_cuda = args.device.type == "cuda"
    with tempfile.TemporaryDirectory() as log_dir:
        trainer = L.Trainer(
            max_epochs=1,
            accelerator="gpu" if on_cuda else "cpu",
            devices=[args.device.index or 0] if on_cuda else "auto",
            precision=args.precision,
            logger=L.pytorch.loggers.CSVLogger(log_dir),
            callbacks=[timer],
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
        )
        trainer.fit(module, DataLoader(batches, batch_size=None))
    return step_time(timer.marks, args.steps if on_cuda else None)


def run_bare(model: torch.nn.Module, batches: list, args: argparse.Namespace) -> float:
    """Seconds per step (median over the timed ones) of a bare loop with timm's Mixup (alpha 1, batch mode) and
    SGD; on CUDA with the batch copied to the device each step and autocast to ``--precision``'s dtype."""
    device, on_cuda = args.device, args.device.type == "cuda"
    model = model.to(device)
    if on_cuda:
        model = model.to(memory_format=torch.channels_last)
    mixup = TimmMixup(mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=NUM_CLASSES)
    criterion = SoftTargetCrossEntropy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    autocast_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(args.precision)
    model.train()
    marks: list[float] = []
    for step, (x, y) in enumerate(batches):
        if step >= args.warmup and (not on_cuda or step == args.warmup):
            marks.append(mark(device))
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if on_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        x, targets = mixup(x.clone(), y)  # timm mixes in place: keep the shared batch intact
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = criterion(model(x), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    marks.append(mark(device))
    return step_time(marks, args.steps if on_cuda else None)


def import_dotted(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def backbone_of(cls: type) -> str:
    """The backbone a mixer class can be trained on: a ViT when it needs class-token attention, else the CNN."""
    return "vit" if "attention" in getattr(cls, "requires", ()) else "cnn"


def module_class_of(cls: type) -> type:
    """The module that trains a mixer class: the one its ``trained_by`` names, else ``MixClassifier`` (which also
    trains learned mixers through the ``loss`` hook: AdaMixUp)."""
    trained_by = getattr(cls, "trained_by", None)
    return import_dotted(trained_by) if trained_by else MixClassifier


def model_kwargs(backbone: str, args: argparse.Namespace) -> dict[str, Any]:
    """MixClassifier's backbone arguments: the CNN, or the ViT at the batch's image size."""
    channels_last = {"channels_last": True} if args.device.type == "cuda" else {}
    if backbone == "cnn":
        return {**copy.deepcopy(CNN), **channels_last}
    kwargs = {**copy.deepcopy(VIT), **channels_last}
    kwargs["backbone_kwargs"].update(img_size=args.size, **args.vit_kwargs)
    return kwargs


def backbone_text(args: argparse.Namespace) -> dict[str, str]:
    def describe(kwargs: dict[str, Any]) -> str:
        extra = ", ".join(f"{key}={value}" for key, value in kwargs.get("backbone_kwargs", {}).items())
        return f"timm {kwargs['backbone']}" + (" with CIFAR stem" if kwargs.get("cifar_stem") else "") + f" ({extra})"

    return {backbone: describe(model_kwargs(backbone, args)) for backbone in ("cnn", "vit")}


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``"automix:clean_loss_weight=0,momentum=0.99"`` -> ("automix", {"clean_loss_weight": 0, "momentum": 0.99})."""
    name, sep, rest = text.partition(":")
    if not sep or not rest:
        raise argparse.ArgumentTypeError(f"a variant is NAME:key=value[,key=value], got {text!r}")
    kwargs = {}
    for item in rest.split(","):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise argparse.ArgumentTypeError(f"a variant is NAME:key=value[,key=value], got {text!r}")
        kwargs[key.strip()] = yaml.safe_load(value)
    return name.strip().lower(), kwargs


def mixer_case(
    name: str, batches: list, args: argparse.Namespace, extra: dict[str, Any] | None = None, backbone: str | None = None
) -> Case:
    """The training run of one registered mixer (module kwargs ``extra`` for a variant), built by capability; an
    explicit ``backbone`` overrides the one its needs choose (the mixup reference runs on every backbone)."""
    entry = openmix.get_mixer_entry(name)
    backbone = backbone or backbone_of(entry.cls)
    module_cls = module_class_of(entry.cls)
    kwargs: dict[str, Any] = {"num_classes": NUM_CLASSES, "in_chans": 3, "mixer": name}
    kwargs.update(model_kwargs(backbone, args))
    if backbone == "vit" and "patch_size" in entry.defaults:  # the mixer's token grid is the ViT's patch grid
        kwargs["mixer_kwargs"] = {"patch_size": VIT_PATCH}
    kwargs.update(extra or {})
    torch.manual_seed(args.seed)  # the same initial weights for every run on a backbone
    template = module_cls(**kwargs)
    label = name + (" (" + ", ".join(f"{k}={v}" for k, v in extra.items()) + ")" if extra else "")
    return Case(
        key=f"{label}|{backbone}",
        label=label,
        backbone=backbone,
        module=module_cls.__name__,
        hooks=entry.hooks,
        requires=entry.requires,
        learned=entry.learned,
        build=lambda: copy.deepcopy(template),
        run=lambda module: run_lightning(module, batches, args),
    )


def build_cases(args: argparse.Namespace, batches: list) -> tuple[list[Case], list[str]]:
    """The mixup reference on each backbone in use, the bare loop, and every requested mixer (and variant)."""
    skipped: list[str] = []
    wanted = [(name, None) for name in args.mixers] + list(args.variant)
    backbones = sorted({backbone_of(openmix.get_mixer_entry(name).cls) for name, _ in wanted} | {"cnn"})
    cases = {case.key: case for case in (mixer_case(REFERENCE, batches, args, backbone=b) for b in backbones)}
    cnn_reference = cases[f"{REFERENCE}|cnn"]
    cases[BARE_KEY] = Case(
        key=BARE_KEY,
        label=BARE,
        backbone="cnn",
        module="(plain loop)",
        hooks=(),
        requires=(),
        learned=False,
        build=lambda: cnn_reference.build().network,
        run=lambda network: run_bare(network, batches, args),
    )
    for name, extra in wanted:
        try:
            case = mixer_case(name, batches, args, extra)
        except (TypeError, ValueError) as error:
            skipped.append(f"{name}{' ' + str(extra) if extra else ''}: {type(error).__name__}: {error}")
            continue
        cases.setdefault(case.key, case)  # the mixup reference itself is not run twice
    return list(cases.values()), skipped


def measure(args: argparse.Namespace) -> tuple[list[Case], list[str]]:
    batches = make_batches(args)
    cases, skipped = build_cases(args, batches)
    order_rng = random.Random(args.seed)
    failed: set[str] = set()
    for round_index in range(args.repeats):
        order = list(cases)
        order_rng.shuffle(order)
        for case in order:
            if case.key in failed:
                continue
            try:
                case.times.append(case.run(case.build()))
            except Exception as error:  # noqa: BLE001  (one failing method must not stop the benchmark)
                failed.add(case.key)
                skipped.append(f"{case.label} ({case.backbone}): {type(error).__name__}: {error}")
        print(f"round {round_index + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    return [case for case in cases if case.key not in failed], skipped


def per_round(numerator: list[float], denominator: list[float]) -> list[float]:
    return [a / b for a, b in zip(numerator, denominator, strict=True)]


def summarise(cases: list[Case], args: argparse.Namespace) -> dict[str, Any]:
    by_key = {case.key: case for case in cases}
    rows = []
    for case in cases:
        if case.key == BARE_KEY:
            continue
        reference = by_key.get(f"{REFERENCE}|{case.backbone}")
        costs = per_round(case.times, reference.times) if reference else None
        rows.append(
            {
                "method": case.label,
                "backbone": case.backbone,
                "module": case.module,
                "hooks": list(case.hooks),
                "requires": list(case.requires),
                "learned": case.learned,
                "step_ms": [t * 1e3 for t in case.times],
                "median_step_ms": statistics.median(case.times) * 1e3,
                "images_per_s": args.batch_size / statistics.median(case.times),
                "cost": costs,
                "median_cost": statistics.median(costs) if costs else None,
            }
        )
    rows.sort(key=lambda row: (row["backbone"], row["method"] != REFERENCE, row["method"]))
    ours, bare = by_key.get(f"{REFERENCE}|cnn"), by_key.get(BARE_KEY)
    ratio = per_round(bare.times, ours.times) if ours and bare else None  # images/s ours over the loop's
    return {
        "rows": rows,
        "bare_loop": {"step_ms": [t * 1e3 for t in bare.times]} if bare else None,
        "ratio_openmix_over_bare": ratio,
        "median_ratio": statistics.median(ratio) if ratio else None,
    }


def environment(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "command": shlex.join(["python", "tools/bench_train.py", *args.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "versions": {"torch": torch.__version__, "timm": timm.__version__, "lightning": L.__version__},
        "openmix": openmix.__version__,
        "batch": [args.batch_size, 3, args.size, args.size],
        "device": str(args.device),
        "device_name": torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else cpu_model(),
        "precision": args.precision,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "seed": args.seed,
        "backbones": backbone_text(args),
    }


def fmt_cost(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.2f}x"


def report(env: dict[str, Any], summary: dict[str, Any], skipped: list[str]) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in env["versions"].items())
    batch = " x ".join(str(v) for v in env["batch"])
    lines = [
        "# Training-step cost: every mixer against a mixup step, and MixClassifier against a bare timm loop",
        "",
        f"- command: `{env['command']}`",
        f"- date (UTC): {env['date']}",
        f"- {versions}, openmix {env['openmix']}",
        f"- machine: CPU {env['cpu']}, {env['cpu_count']} cores; torch threads: {env['threads']}; load average "
        f"(1, 5, 15 min) at the start {tuple(env['load_average_start'])}, at the end {tuple(env['load_average_end'])}",
        f"- batch {batch}, {NUM_CLASSES} classes; {env['steps']} timed steps after {env['warmup']} untimed ones per "
        f"run; {env['repeats']} rounds, each running every case once in a shuffled order; seed {env['seed']}",
        f"- backbones: CNN = {env['backbones']['cnn']}; ViT = {env['backbones']['vit']}",
        "",
        "Each run is `Trainer.fit` on the same in-memory batches; its step time is the median of its timed steps, "
        "each measured end to end (data fetch and logging included), so a few steps slowed by another process do not "
        "move it. The "
        "backbone and the module class come from the mixer's declared capabilities: a mixer that `requires` "
        "`attention` is trained on the ViT, a `learned` one by the module class its `trained_by` names. **cost** = "
        f"the method's step time / the `{REFERENCE}` step time on the same backbone, per round, then the median "
        "(1.00x: as cheap as mixup). Feature-level mixers (hook `features`) mix at the stage each step draws; the "
        "draws are seeded, so every round sees the same stages. A mixer whose constructor takes `patch_size` gets the "
        "ViT's. Variants (`--variant NAME:key=value`) pass extra module arguments.",
        "",
        "| method | backbone | module | hooks | requires | step ms (median) | images/s | cost vs mixup (median) | "
        "per round |",
        "|---|---|---|---|---|---:|---:|---:|---|",
    ]
    for row in summary["rows"]:
        rounds = ", ".join(f"{c:.2f}" for c in row["cost"]) if row["cost"] else ""
        lines.append(
            f"| {row['method']} | {row['backbone']} | {row['module']} | {', '.join(row['hooks'])} | "
            f"{', '.join(row['requires']) or '-'} | {row['median_step_ms']:.1f} | {row['images_per_s']:.1f} | "
            f"**{fmt_cost(row['median_cost'])}** | {rounds} |"
        )
    lines += [f"- skipped: {reason}" for reason in skipped]
    lines += ["", "## MixClassifier + mixup against a bare PyTorch loop with timm's Mixup (CNN)", ""]
    ratio = summary["median_ratio"]
    ours = next((r for r in summary["rows"] if r["method"] == REFERENCE and r["backbone"] == "cnn"), None)
    if ratio is not None and ours is not None:
        bare_ms = statistics.median(summary["bare_loop"]["step_ms"])
        lines += [
            "| run | step ms (median) | images/s |",
            "|---|---:|---:|",
            f"| openmix MixClassifier + mixup (Lightning) | {ours['median_step_ms']:.1f} | "
            f"{ours['images_per_s']:.1f} |",
            f"| {BARE} | {bare_ms:.1f} | {env['batch'][0] / bare_ms * 1e3:.1f} |",
            "",
            f"Ratio (ours / reference images/s, per round, median): **{ratio:.3f}** "
            f"({'pass' if ratio >= RATIO_TARGET else 'FAIL'}: target >= {RATIO_TARGET}). Per round: "
            + ", ".join(f"{r:.3f}" for r in summary["ratio_openmix_over_bare"]),
        ]
    learned = [row for row in summary["rows"] if row["learned"] and row["median_cost"] is not None]
    if learned:
        lines += ["", f"## Targets for learned mixers (cost <= {LEARNED_COST_TARGET}x a mixup step)", ""]
        lines += [
            f"- {'pass' if row['median_cost'] <= LEARNED_COST_TARGET else 'FAIL'}: {row['method']} "
            f"({row['module']}) = {row['median_cost']:.2f}x"
            for row in learned
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mixers", help="comma-separated subset of openmix.list_mixers() (default: all)")
    parser.add_argument(
        "--variant",
        action="append",
        type=parse_variant,
        default=[],
        help="NAME:key=value[,key=value]: also time mixer NAME with these module arguments (repeatable)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (the ViT's img_size too)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per run before the timed ones")
    parser.add_argument("--repeats", type=int, default=4, help="rounds (every case once per round)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the weights and the round order")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument(
        "--precision", help="Lightning precision of the runs (default 32-true on the CPU, bf16-mixed on CUDA)"
    )
    parser.add_argument("--out", type=Path, help=f"markdown output; JSON goes next to it (default {DEFAULT_OUT})")
    parser.add_argument("--quick", action="store_true", help="tiny run for a smoke test (temp dir unless --out)")
    raw = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw)
    args.argv = list(raw)
    args.vit_kwargs = {}
    if args.quick:
        args.batch_size, args.size, args.steps, args.warmup, args.repeats = 8, 16, 1, 1, 1
        args.vit_kwargs = dict(QUICK_VIT)
        args.out = args.out or Path(tempfile.gettempdir()) / "openmix_bench_train.md"
    args.out = args.out or DEFAULT_OUT
    try:
        args.device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"--device: {error}")
    if args.device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda[:N], got {args.device}")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    args.precision = args.precision or ("bf16-mixed" if args.device.type == "cuda" else "32-true")
    args.mixers = args.mixers.split(",") if args.mixers else openmix.list_mixers()
    unknown = sorted({*args.mixers, *(name for name, _ in args.variant)} - set(openmix.list_mixers()))
    if unknown:
        parser.error(f"unknown mixers {unknown}; registered: {openmix.list_mixers()}")
    if min(args.batch_size, args.size, args.steps, args.repeats) < 1 or args.warmup < 0:
        parser.error("--batch-size, --size, --steps and --repeats must be >= 1, --warmup >= 0")
    if args.size % VIT_PATCH:
        parser.error(f"--size must be a multiple of the ViT patch size {VIT_PATCH}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment(args)
    cases, skipped = measure(args)
    env["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    summary = summarise(cases, args)
    text = report(env, summary, skipped)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    payload = {"environment": env, "skipped": skipped, **summary}
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    print(text)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
