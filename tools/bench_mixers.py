"""Speed benchmark of every registered openmix mixer against a memory floor, timm and torchvision.

What it measures: the wall time of one mixer call (``forward`` only; no model, no loss) on a float batch, for every
name in ``openmix.list_mixers()``, in ``mode="batch"`` and ``mode="elem"`` with ``inplace=False``, and in batch
mode with ``inplace=True``. Mixers that act on the images (hook ``inputs``) are timed on the images; mixers that act
on hidden states (hook ``features``) are timed on a hidden state of the size a ResNet-18's last stage gives for those
images (``feature_shape``), with a memory floor of that size, since that is where their own work (AlignMix's
optimal transport) happens; at stage 0 they interpolate the images (``align_input=False``: no alignment). The other
hook points (``targets``: TransMix / TokenMix's attention re-weighting, ``loss``) are not timed here; what a mixer
``requires`` (CAMs, saliency, a network) is computed outside the clock (``mixer_inputs``). Three kinds of reference
are timed in the same run:

- the memory floor ``torch.lerp(x, x.index_select(0, perm), w, out=buf)`` (buffer preallocated, ``perm`` drawn
  outside the clock): any random-pairing mixup has to gather the partners and write one output;
- ``timm.data.Mixup`` (mixup only and CutMix only, modes batch and elem; it mixes in place and also builds the
  (B, 1000) soft targets, which openmix leaves to ``MixOutput.soft_targets``);
- ``torchvision.transforms.v2.MixUp`` / ``CutMix`` (one lambda per batch; they also build soft targets).

Method: every case is warmed up, then each round times every case once, in a shuffled order, so machine noise
hits all of them alike (round-robin). Before each call the input is restored from a pristine copy outside the
clock, for every case, so in-place cases see the same data and all cases start from the same cache state. On
CUDA the device is synchronised before each clock read. The table shows the median over rounds; ratios (to the
floor, elem / batch, ours / timm, ours / torchvision) are computed per round and then medianed.

Reproduce (from the repository root)::

    PYTHONPATH=. python tools/bench_mixers.py                  # CPU, writes docs/benchmarks/mixers.md and .json
    PYTHONPATH=. python tools/bench_mixers.py --device cuda --out docs/benchmarks/mixers_cuda.md
    PYTHONPATH=. python tools/bench_mixers.py --quick          # smoke test: tiny shapes, output in the temp dir
"""

from __future__ import annotations

import argparse
import json
import platform
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

import numpy as np
import timm
import torch
import torchvision
from timm.data import Mixup as TimmMixup
from torch import Tensor, nn
from torchvision.transforms import v2

import openmix
from openmix.lightning.services import mixer_inputs
from openmix.mixers._registry import accepts_argument

MODES = ("batch", "elem")
NUM_CLASSES = 1000
DEFAULT_SHAPES = "128x3x224x224,256x3x32x32"
QUICK_SHAPES = "16x3x64x64,32x3x32x32"
DEFAULT_OUT = Path("docs/benchmarks/mixers.md")
FLOOR = "floor: lerp(x, x[perm])"
FEATURE_CHANNELS = 512  # a ResNet-18's last stage
FEATURE_MIXERS = [name for name in openmix.list_mixers() if "features" in openmix.get_mixer_entry(name).hooks]
TIMM_LABELS = {"mixup": "timm Mixup(mixup)", "cutmix": "timm Mixup(cutmix)"}
TORCHVISION_LABELS = {"mixup": "torchvision v2.MixUp", "cutmix": "torchvision v2.CutMix"}
# openmix mixer -> the reference family it is compared with (timm and torchvision implement only these two)
COUNTERPARTS = {"mixup": "mixup", "cutmix": "cutmix"}
NOTES = (
    "attentivemix and automix run with a tiny extractor, Conv2d(3, 8, kernel_size=3, stride=8), so that the "
    "extractor's cost is negligible and the timing measures the mixing itself; for automix (an untrained Mix Block) "
    "that gives a 28 x 28 feature map at 224 px, and its (784 x 784) attention per sample dominates the time.",
    "randomchoice is a composition: mixup (alpha 0.8) or CutMix (alpha 1.0), chosen per call with probability 0.5; "
    "its median mixes the two.",
    "timm's Mixup works in place and needs an even batch (odd batches skip it); timm and torchvision also return "
    f"(B, {NUM_CLASSES}) soft targets, openmix returns label pairs and lambdas.",
    "Every case's input is restored from a pristine copy outside the timed region before each call.",
    "Only forward is timed: for transmix and tokenmix the attention re-weighting of the labels (hook targets, after "
    "the forward pass) is not included; snapmix's class activation maps come from the stand-in network outside the "
    "clock. tokenmix keeps its paper patch size (16 px): a 14 x 14 token grid at 224 px, a 2 x 2 one at 32 px.",
    f"Feature-level mixers (hook features: {', '.join(FEATURE_MIXERS)}) are timed on a hidden state of the size a "
    "ResNet-18's last stage gives, (B, 512, H/32, W/32) for images of 128 px and more (ImageNet stem) and "
    "(B, 512, H/8, W/8) below (CIFAR stem), with a floor of that size: that is where AlignMix aligns (its Sinkhorn "
    "plan is (h w) x (h w) per sample; on the images themselves it would be 50176 x 50176 at 224 px). At stage 0 "
    "(the images) they interpolate the images (AlignMix without alignment, align_input=False), as mixup does.",
)


@dataclass
class Case:
    """One timed callable. ``kind`` is openmix, floor, timm or torchvision; ``family`` is mixup/cutmix or None."""

    label: str
    mode: str
    inplace: bool
    kind: str
    run: Callable[[], Any]
    prepare: Callable[[], None]
    family: str | None = None

    @property
    def key(self) -> str:
        return f"{self.label}|{self.mode}|{'inplace' if self.inplace else 'copy'}"


@dataclass
class Batch:
    """The tensors of one shape: ``work`` is what every case reads, restored from ``pristine`` before each call."""

    pristine: Tensor
    work: Tensor
    labels: Tensor
    skipped: list[str] = field(default_factory=list)

    def restore(self) -> None:
        # a learned mixer's in-place call (its mask requires grad) leaves ``work`` in the autograd graph: every case
        # reads ``batch.work`` when it runs, so the next one gets it detached again
        if self.work.requires_grad:
            self.work = self.work.detach()
        self.work.copy_(self.pristine)


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """``"128x3x224x224"`` -> (128, 3, 224, 224)."""
    parts = text.lower().split("x")
    if len(parts) != 4 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"a shape is BxCxHxW with positive integers, got {text!r}")
    batch, channels, height, width = (int(part) for part in parts)
    return batch, channels, height, width


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", help=f"comma-separated BxCxHxW (default {DEFAULT_SHAPES})")
    parser.add_argument("--repeats", type=int, help="timed rounds (default 25, --quick 5)")
    parser.add_argument("--warmup", type=int, help="untimed calls per case before the rounds (default 3, --quick 1)")
    parser.add_argument("--mixers", help="comma-separated subset of openmix.list_mixers() (default: all)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--out", type=Path, help=f"markdown output; JSON goes next to it (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the mixers and the round order")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny shapes, few repeats, temp-dir output")
    args = parser.parse_args(argv)
    quick_out = Path(tempfile.gettempdir()) / "openmix_bench_mixers_quick.md"
    args.shapes = [parse_shape(s) for s in (args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)).split(",")]
    args.repeats = args.repeats or (5 if args.quick else 25)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.out = args.out or (quick_out if args.quick else DEFAULT_OUT)
    args.mixers = args.mixers.split(",") if args.mixers else openmix.list_mixers()
    unknown = sorted(set(args.mixers) - set(openmix.list_mixers()))
    if unknown:
        parser.error(f"--mixers: unknown {unknown}; registered: {openmix.list_mixers()}")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    return args


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TinyNetwork(nn.Module):
    """The stand-in training network of this benchmark, for mixers that need one: a 3 -> 8 channel 3x3 conv with
    stride 8 as ``forward_features`` and a linear classifier after global average pooling (so class activation maps
    and saliency exist too). Needs are handed over by ``mixer_inputs``, as in training."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=3, stride=8)
        self.head = nn.Linear(8, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.conv(x)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x).mean(dim=(2, 3)))


def make_batch(shape: tuple[int, int, int, int], device: torch.device, seed: int) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    pristine = torch.rand(shape, generator=generator).to(device)  # (B, C, H, W) float32 in [0, 1)
    labels = torch.randint(0, NUM_CLASSES, (shape[0],), generator=generator).to(device)  # (B,) int64
    return Batch(pristine, pristine.clone(), labels)


def probe(case: Case, batch: Batch) -> bool:
    """Run a case once; a case that cannot run on this input is dropped with the reason in ``batch.skipped``."""
    try:
        case.prepare()
        case.run()
    except Exception as error:  # noqa: BLE001  (any failure of one case must not stop the benchmark)
        batch.skipped.append(f"{case.label} {case.mode} inplace={case.inplace}: {type(error).__name__}: {error}")
        return False
    return True


def openmix_case(name: str, mode: str, inplace: bool, batch: Batch, seed: int) -> Case | None:
    """One openmix mixer as a case, or None (reason recorded) when it cannot be built with these arguments."""
    device = batch.work.device
    options = {"mode": mode, "inplace": inplace} if mode != "-" else {"inplace": inplace}
    try:
        mixer = openmix.create_mixer(name, **options)
    except (TypeError, ValueError) as error:
        batch.skipped.append(f"{name} {mode} inplace={inplace}: {error}")
        return None
    mixer = mixer.to(device)
    # what a mixer needs (the network, its saliency, CAMs) comes from the stand-in network, computed once per case
    context = mixer_inputs(mixer, TinyNetwork().to(device), batch.work, batch.labels)
    generator = torch.Generator().manual_seed(seed)  # CPU: mixers draw lambdas, boxes and pairs on the CPU

    def run() -> Any:
        return mixer(batch.work, batch.labels, generator=generator, **context)

    return Case(name, mode, inplace, "openmix", run, batch.restore, COUNTERPARTS.get(name))


def floor_case(batch: Batch) -> Case:
    """The memory floor: gather the partners and write one interpolated batch into a preallocated buffer."""
    buffer = torch.empty_like(batch.work)
    state: dict[str, Tensor] = {}

    def prepare() -> None:
        batch.restore()
        state["perm"] = torch.randperm(batch.work.shape[0], device=batch.work.device)

    def run() -> Tensor:
        return torch.lerp(batch.work, batch.work.index_select(0, state["perm"]), 0.3, out=buffer)

    return Case(FLOOR, "-", False, "floor", run, prepare)


def call_on(transform: Callable[[Tensor, Tensor], Any], batch: Batch) -> Callable[[], Any]:
    """A no-argument call of a reference ``transform(images, labels)`` on the working batch."""
    return lambda: transform(batch.work, batch.labels)


def timm_cases(batch: Batch) -> list[Case]:
    """timm's Mixup in mixup-only and CutMix-only configurations, batch and elem mode (in place)."""
    alphas = {"mixup": {"mixup_alpha": 1.0, "cutmix_alpha": 0.0}, "cutmix": {"mixup_alpha": 0.0, "cutmix_alpha": 1.0}}
    cases = []
    for family, alpha in alphas.items():
        for mode in MODES:
            mixer = TimmMixup(**alpha, mode=mode, label_smoothing=0.0, num_classes=NUM_CLASSES)
            run = call_on(mixer, batch)
            cases.append(Case(TIMM_LABELS[family], mode, True, "timm", run, batch.restore, family))
    return cases


def torchvision_cases(batch: Batch) -> list[Case]:
    """torchvision's v2.MixUp and v2.CutMix (one lambda per batch; they do not modify the input)."""
    cases = []
    for family, cls in (("mixup", v2.MixUp), ("cutmix", v2.CutMix)):
        mixer = cls(num_classes=NUM_CLASSES)
        run = call_on(mixer, batch)
        cases.append(Case(TORCHVISION_LABELS[family], "batch", False, "torchvision", run, batch.restore, family))
    return cases


def build_cases(batch: Batch, mixer_names: list[str], seed: int, references: bool = True) -> list[Case]:
    """Every openmix (mixer, mode, inplace) combination plus the floor and (on images) timm and torchvision, each
    probed once."""
    candidates: list[Case | None] = [floor_case(batch)]
    for name in mixer_names:
        modes = MODES if accepts_argument(openmix.get_mixer_entry(name).cls, "mode") else ("-",)  # Co-Mixup: none
        candidates += [openmix_case(name, mode, inplace, batch, seed) for mode in modes for inplace in (False, True)]
    if references:
        candidates += timm_cases(batch) + torchvision_cases(batch)
    return [case for case in candidates if case is not None and probe(case, batch)]


def time_once(case: Case, device: torch.device) -> float:
    """Milliseconds of one call; preparation happens before the clock starts, freeing the result after it stops."""
    case.prepare()
    synchronize(device)
    start = time.perf_counter()
    result = case.run()
    synchronize(device)
    elapsed = time.perf_counter() - start
    del result
    return elapsed * 1e3


def time_rounds(cases: list[Case], repeats: int, warmup: int, device: torch.device, seed: int) -> dict[str, list]:
    """Per case key, the times of ``repeats`` rounds; each round runs every case once in a shuffled order."""
    for case in cases:
        for _ in range(warmup):
            time_once(case, device)
    order_rng = random.Random(seed)
    times: dict[str, list[float]] = {case.key: [] for case in cases}
    for _ in range(repeats):
        order = list(cases)
        order_rng.shuffle(order)
        for case in order:
            times[case.key].append(time_once(case, device))
    return times


def median_ratio(numerator: list[float], denominator: list[float] | None) -> float | None:
    """Median over rounds of the per-round ratio; None when there is nothing to compare with."""
    if denominator is None:
        return None
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def counterpart_times(case: Case, by_label: dict[tuple[str, str], list[float]]) -> tuple[list | None, list | None]:
    """Round times of the timm and torchvision references that implement the same method in the same mode.

    Like is compared with like: timm's Mixup always mixes in place, so it is compared with the inplace=True rows;
    torchvision returns a new tensor, so it is compared with the inplace=False rows.
    """
    if case.kind != "openmix" or case.family is None:
        return None, None
    timm_times = by_label.get((TIMM_LABELS[case.family], case.mode)) if case.inplace else None
    torchvision_times = None if case.inplace else by_label.get((TORCHVISION_LABELS[case.family], case.mode))
    return timm_times, torchvision_times


def summarise(cases: list[Case], times: dict[str, list[float]]) -> list[dict[str, Any]]:
    """One row per case: median ms and the per-round-medianed ratios."""
    floor = times[next(case.key for case in cases if case.kind == "floor")]
    by_label = {(case.label, case.mode): times[case.key] for case in cases if case.kind in ("timm", "torchvision")}
    batch_times = {(case.label, case.inplace): times[case.key] for case in cases if case.mode == "batch"}
    rows = []
    for case in cases:
        own = times[case.key]
        timm_times, torchvision_times = counterpart_times(case, by_label)
        is_elem = case.kind == "openmix" and case.mode == "elem"
        row = {"method": case.label, "kind": case.kind, "mode": case.mode, "inplace": case.inplace}
        row["median_ms"] = statistics.median(own)
        row["ratio_floor"] = median_ratio(own, floor)
        same_batch = batch_times.get((case.label, case.inplace))
        row["ratio_elem_batch"] = median_ratio(own, same_batch) if is_elem else None
        row["ratio_timm"] = median_ratio(own, timm_times)
        row["ratio_torchvision"] = median_ratio(own, torchvision_times)
        rows.append(row)
    return rows


def ratio_text(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    header = "| method | mode | inplace | median ms | / floor | elem / batch | / timm | / torchvision |"
    lines = [header, "|---|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        ratios = (row["ratio_floor"], row["ratio_elem_batch"], row["ratio_timm"], row["ratio_torchvision"])
        cells = [row["method"], row["mode"], str(row["inplace"]), f"{row['median_ms']:.3f}"]
        lines.append("| " + " | ".join(cells + [ratio_text(value) for value in ratios]) + " |")
    return lines


def find_row(rows: list[dict[str, Any]], method: str, mode: str, inplace: bool) -> dict[str, Any] | None:
    matches = [r for r in rows if (r["method"], r["mode"], r["inplace"]) == (method, mode, inplace)]
    return matches[0] if matches else None


def target_checks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The speed targets as (description, value, limit, passed); rows that were not run are left out."""
    floor_targets = [("mixup", "batch", False, 1.1), ("cutmix", "batch", True, 0.6)]
    floor_targets += [
        ("resizemix", "batch", True, 0.6),
        ("fmix", "batch", False, 1.5),
        ("saliencymix", "elem", False, 3),
    ]
    checks = []
    for method, mode, inplace, limit in floor_targets:
        row = find_row(rows, method, mode, inplace)
        if row is not None:
            checks.append((f"{method} {mode} inplace={inplace} / floor", row["ratio_floor"], limit))
    for row in rows:
        if row["ratio_elem_batch"] is not None and not row["inplace"]:  # the default, out-of-place configuration
            checks.append((f"{row['method']} elem / batch", row["ratio_elem_batch"], 1.3))
        for source in ("timm", "torchvision"):
            if row[f"ratio_{source}"] is not None:
                what = f"{row['method']} {row['mode']} inplace={row['inplace']} / {source}"
                checks.append((what, row[f"ratio_{source}"], 1.0))
    return [{"target": t, "value": v, "limit": limit, "passed": v <= limit} for t, v, limit in checks]


def check_lines(checks: list[dict[str, Any]]) -> list[str]:
    return [
        f"- {'pass' if c['passed'] else 'FAIL'}: {c['target']} = {c['value']:.2f}x (target <= {c['limit']}x)"
        for c in checks
    ]


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    return {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__},
        "openmix": openmix.__version__,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "seed": args.seed,
    }


def header_lines(env: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{name} {version}" for name, version in env["versions"].items())
    gpu = f" ({env['gpu']})" if env["gpu"] else ""
    return [
        "# openmix mixer speed benchmark",
        "",
        f"- command: `{env['command']}`",
        f"- date (UTC): {env['date']}",
        f"- {versions}, openmix {env['openmix']}",
        f"- device: {env['device']}{gpu}; CPU: {env['cpu']}; torch threads: {env['threads']}",
        f"- {env['repeats']} timed rounds after {env['warmup']} warm-up call(s) per case; seed {env['seed']}",
        "",
        "Median milliseconds per call. Ratios are ours / reference, computed per round, then medianed. "
        f"The floor is `torch.lerp(x, x.index_select(0, perm), w, out=buf)`. {' '.join(NOTES)}",
    ]


def shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(size) for size in shape)


def target_shape(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The targets are set on 224 x 224 images; without that shape, the largest one run stands in."""
    at_224 = [result for result in results if tuple(result["shape"][2:]) == (224, 224)]
    return at_224[0] if at_224 else max(results, key=lambda result: result["shape"][2] * result["shape"][3])


def report(env: dict[str, Any], results: list[dict[str, Any]], checks: list[dict[str, Any]], shape: str) -> str:
    lines = header_lines(env)
    for result in results:
        title = f"## {shape_text(result['shape'])} float32"
        if result["input"] == "features":
            title += f": feature-level mixers on the hidden state of {shape_text(result['image_shape'])} images"
        lines += ["", title, "", *markdown_table(result["rows"])]
        lines += [f"- skipped: {reason}" for reason in result["skipped"]]
    note = "" if shape.endswith("224x224") else " (224x224 was not run: these are NOT the reference numbers)"
    lines += ["", f"## Targets, on {shape}{note}", "", *check_lines(checks)]
    return "\n".join(lines) + "\n"


def feature_shape(shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The hidden state a ResNet-18's last stage gives for images of ``shape``: (B, 512, H/32, W/32) from 128 px
    (ImageNet stem), (B, 512, H/8, W/8) below (CIFAR stem: 4 x 4 at 32 px)."""
    batch, _, height, width = shape
    stride = 32 if min(height, width) >= 128 else 8
    return batch, FEATURE_CHANNELS, max(1, height // stride), max(1, width // stride)


def acts_on_features(name: str) -> bool:
    """Whether a mixer mixes hidden states (its declared hook ``features``)."""
    return "features" in openmix.get_mixer_entry(name).hooks


def bench_shape(
    shape: tuple[int, int, int, int], args: argparse.Namespace, device: torch.device
) -> list[dict[str, Any]]:
    """The results on images of ``shape`` and, for the feature-level mixers, on the hidden state of that size."""
    results = []
    on_images = [name for name in args.mixers if not acts_on_features(name)]
    on_features = [name for name in args.mixers if acts_on_features(name)]
    for tensor_shape, names, input_kind in (
        (shape, on_images, "images"),
        (feature_shape(shape), on_features, "features"),
    ):
        if input_kind == "features" and not names:
            continue
        batch = make_batch(tensor_shape, device, args.seed)
        cases = build_cases(batch, names, args.seed, references=input_kind == "images")
        times = time_rounds(cases, args.repeats, args.warmup, device, args.seed)
        result = {"shape": list(tensor_shape), "input": input_kind, "rows": summarise(cases, times)}
        if input_kind == "features":
            result["image_shape"] = list(shape)
        results.append({**result, "times_ms": times, "skipped": batch.skipped})
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # torchvision draws from the global torch RNG
    np.random.seed(args.seed)  # timm draws from the global NumPy RNG
    device = torch.device(args.device)
    env = environment(args, device)
    results = [result for shape in args.shapes for result in bench_shape(shape, args, device)]
    chosen = target_shape([result for result in results if result["input"] == "images"])
    checks = target_checks(chosen["rows"])
    text = report(env, results, checks, shape_text(chosen["shape"]))
    write_outputs(args.out, text, {"environment": env, "notes": NOTES, "results": results, "targets": checks})


def write_outputs(out: Path, text: str, payload: dict[str, Any]) -> None:
    """Print the markdown ``text``, write it to ``out`` and ``payload`` as JSON next to it."""
    print(text, end="")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    print(f"\nwrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
