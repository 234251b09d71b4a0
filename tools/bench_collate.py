"""Speed benchmark of collate-time mixing: openmix's MixCollate against timm's FastCollateMixup, on the CPU.

What it measures: the wall time of one ``collate_fn`` call on a list of B samples ``(uint8 (C, H, W) NumPy array,
int label)``, the input timm's ``FastCollateMixup`` is made for (timm's ``ToNumpy`` gives such arrays), from the list
to the mixed uint8 batch and its (B, 1000) soft targets. Cases:

- openmix ``MixCollate`` with every registered mixer a collate can run (hook ``inputs`` only, nothing required
  from the network, not learned), in ``mode="batch"`` and ``mode="elem"``, alpha 1 where the mixer has one;
- timm ``FastCollateMixup`` as mixup only (``mixup_alpha=1``) and as CutMix only (``cutmix_alpha=1``), modes
  ``batch`` and ``elem`` (timm needs an even batch: odd batch sizes skip it);
- the stack: ``torch.stack`` of the samples without mixing, what collating costs anyway.

Method: one thread by default (``--threads``), as in a DataLoader worker, where torch runs single-threaded. Every
case is warmed up, then each round times every case once in a shuffled order (round-robin), so machine noise hits all
of them alike. The table gives the median over rounds; the ratios (openmix / timm for the same method and mode,
openmix / stack) are computed per round, then medianed. timm pairs sample i with B-1-i, openmix's mixers with a random
permutation (their default; ``pairing="flip"`` would pair as timm does).

Reproduce (from the repository root)::

    PYTHONPATH=. python tools/bench_collate.py                 # writes docs/benchmarks/collate.md and .json
    PYTHONPATH=. python tools/bench_collate.py --quick         # smoke test: small shapes, output in the temp dir
"""

from __future__ import annotations

import argparse
import random
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from timm.data.mixup import FastCollateMixup

import openmix
from openmix.collate import MixCollate
from openmix.mixers._registry import accepts_argument

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mixers import cpu_model, median_ratio, parse_shape, shape_text, write_outputs  # noqa: E402  (one copy of each helper)

MODES = ("batch", "elem")
NUM_CLASSES = 1000
ALPHA = 1.0
DEFAULT_SHAPES = "128x3x224x224,256x3x32x32"
QUICK_SHAPES = "16x3x64x64,32x3x32x32"
DEFAULT_OUT = Path("docs/benchmarks/collate.md")
STACK = "stack (no mixing)"
TIMM_ALPHAS = {
    "mixup": {"mixup_alpha": ALPHA, "cutmix_alpha": 0.0},
    "cutmix": {"mixup_alpha": 0.0, "cutmix_alpha": ALPHA},
}
NOTES = (
    "Both sides start from the same list of NumPy uint8 (C, H, W) samples and return a uint8 (B, C, H, W) batch and "
    f"(B, {NUM_CLASSES}) float32 soft targets; neither modifies the samples.",
    "openmix draws a box-pasting mixer's partners and boxes (cutmix) without calling it and copies each sample and "
    "its partner's box into the output, as timm does; it asks another mixer whose draws do not read the pixels "
    "(mixup, fmix, gridmix, smoothmix, randomchoice of those) for its mix on a (B, 1, H, W) float16 stand-in and "
    "applies it to the uint8 pixels itself; the others (saliencymix, resizemix) mix a float32 copy of the batch. "
    "elem mode draws one box or mask per sample.",
    "timm pairs sample i with B-1-i; openmix's mixers pair with a random permutation (their default).",
)


def collate_mixers() -> list[str]:
    """The registered mixers a collate can run, read from the registry (no list of names here)."""
    names = []
    for name in openmix.list_mixers():
        entry = openmix.get_mixer_entry(name)
        if entry.hooks == ("inputs",) and not entry.requires and not entry.learned:
            names.append(name)
    return names


@dataclass
class Case:
    """One timed collate: ``kind`` is openmix, timm or stack; ``mixer`` the openmix name or the timm method."""

    kind: str
    mixer: str
    mode: str
    run: Callable[[], Any]

    @property
    def key(self) -> str:
        return f"{self.kind}|{self.mixer}|{self.mode}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", help=f"comma-separated BxCxHxW (default {DEFAULT_SHAPES})")
    parser.add_argument("--repeats", type=int, help="timed rounds (default 15, --quick 3)")
    parser.add_argument("--warmup", type=int, help="untimed calls per case before the rounds (default 2, --quick 1)")
    parser.add_argument("--mixers", help="comma-separated openmix mixers (default: every one a collate can run)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1, as in a worker)")
    parser.add_argument("--out", type=Path, help=f"markdown output; JSON goes next to it (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the mixing and the round order")
    parser.add_argument("--quick", action="store_true", help="smoke test: small shapes, few repeats, temp-dir output")
    args = parser.parse_args(argv)
    quick_out = Path(tempfile.gettempdir()) / "openmix_bench_collate_quick.md"
    args.shapes = [parse_shape(s) for s in (args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)).split(",")]
    args.repeats = args.repeats or (3 if args.quick else 15)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.out = args.out or (quick_out if args.quick else DEFAULT_OUT)
    eligible = collate_mixers()
    args.mixers = args.mixers.split(",") if args.mixers else eligible
    unknown = sorted(set(args.mixers) - set(eligible))
    if unknown:
        parser.error(f"--mixers: {unknown} cannot run in a collate_fn; these can: {eligible}")
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1 and --warmup >= 0")
    return args


def make_samples(shape: tuple[int, int, int, int], seed: int) -> list[tuple[np.ndarray, int]]:
    """B samples of uint8 (C, H, W) NumPy images with uniform random pixels and int labels in [0, 1000)."""
    batch, channels, height, width = shape
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=shape, dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, size=batch)
    return [(images[i].copy(), int(labels[i])) for i in range(batch)]  # one array per sample, as a dataset gives


def build_cases(samples: list[tuple[np.ndarray, int]], mixers: list[str], seed: int) -> tuple[list[Case], list[str]]:
    """The stack, every openmix mixer in both modes and timm's two methods in both modes; returns the cases and the
    reasons for the ones left out."""
    skipped = []
    cases = [Case("stack", STACK, "-", lambda: torch.stack([torch.from_numpy(image) for image, _ in samples]))]
    for name in mixers:
        cls = openmix.get_mixer_entry(name).cls
        for mode in MODES:
            options = {"mode": mode, **({"alpha": ALPHA} if accepts_argument(cls, "alpha") else {})}
            collate = MixCollate(name, NUM_CLASSES, seed=seed, mixer_kwargs=options)
            cases.append(Case("openmix", name, mode, lambda collate=collate: collate(samples)))
    if len(samples) % 2:
        skipped.append(f"timm FastCollateMixup: batch size {len(samples)} is odd (timm needs an even batch)")
    else:
        for method, alphas in TIMM_ALPHAS.items():
            for mode in MODES:
                collate = FastCollateMixup(**alphas, mode=mode, label_smoothing=0.0, num_classes=NUM_CLASSES)
                cases.append(Case("timm", method, mode, lambda collate=collate: collate(samples)))
    return cases, skipped


def time_rounds(cases: list[Case], repeats: int, warmup: int, seed: int) -> dict[str, list[float]]:
    """Per case key, the milliseconds of ``repeats`` rounds; each round runs every case once in a shuffled order."""
    for case in cases:
        for _ in range(warmup):
            case.run()
    order_rng = random.Random(seed)
    times: dict[str, list[float]] = {case.key: [] for case in cases}
    for _ in range(repeats):
        order = list(cases)
        order_rng.shuffle(order)
        for case in order:
            start = time.perf_counter()
            result = case.run()
            times[case.key].append((time.perf_counter() - start) * 1e3)
            del result  # freed outside the clock
    return times


def summarise(cases: list[Case], times: dict[str, list[float]]) -> list[dict[str, Any]]:
    """One row per openmix case (and the stack): median ms, timm's median for the same method and mode, ratios."""
    stack = times[f"stack|{STACK}|-"]
    rows = [{"mixer": STACK, "mode": "-", "openmix_ms": statistics.median(stack), "timm_ms": None}]
    rows[0].update(ratio_timm=None, ratio_stack=1.0)
    for case in cases:
        if case.kind != "openmix":
            continue
        own, reference = times[case.key], times.get(f"timm|{case.mixer}|{case.mode}")
        rows.append(
            {
                "mixer": case.mixer,
                "mode": case.mode,
                "openmix_ms": statistics.median(own),
                "timm_ms": None if reference is None else statistics.median(reference),
                "ratio_timm": median_ratio(own, reference),
                "ratio_stack": median_ratio(own, stack),
            }
        )
    return rows


def number_text(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}{unit}"


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| openmix mixer | mode | openmix ms | timm FastCollateMixup ms | openmix / timm | openmix / stack |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        cells = [row["mixer"], row["mode"], number_text(row["openmix_ms"], digits=3)]
        cells += [number_text(row["timm_ms"], digits=3), number_text(row["ratio_timm"], "x")]
        cells.append(number_text(row["ratio_stack"], "x"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def target_checks(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The speed target: openmix at least as fast as timm (ratio <= 1) for mixup and CutMix in batch mode; elem mode
    is reported without a target."""
    checks = []
    for result in results:
        for row in result["rows"]:
            if row["ratio_timm"] is not None and row["mode"] == "batch":
                what = f"{row['mixer']} batch on {shape_text(result['shape'])} / timm"
                checks.append({"target": what, "value": row["ratio_timm"], "limit": 1.0})
    return [{**check, "passed": check["value"] <= check["limit"]} for check in checks]


def environment(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "timm": timm.__version__},
        "openmix": openmix.__version__,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "seed": args.seed,
    }


def report(env: dict[str, Any], results: list[dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in env["versions"].items())
    lines = [
        "# openmix collate-time mixing benchmark",
        "",
        f"- command: `{env['command']}`",
        f"- date (UTC): {env['date']}",
        f"- {versions}, openmix {env['openmix']}",
        f"- CPU: {env['cpu']}; torch threads: {env['threads']}",
        f"- {env['repeats']} timed rounds after {env['warmup']} warm-up call(s) per case; seed {env['seed']}",
        "",
        "Median milliseconds per collate call. Ratios are computed per round, then medianed. " + " ".join(NOTES),
    ]
    for result in results:
        lines += ["", f"## {shape_text(result['shape'])} uint8", "", *markdown_table(result["rows"])]
        lines += [f"- skipped: {reason}" for reason in result["skipped"]]
    lines += ["", "## Targets", ""]
    lines += [
        f"- {'pass' if c['passed'] else 'FAIL'}: {c['target']} = {c['value']:.2f}x (target <= {c['limit']}x)"
        for c in checks
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    np.random.seed(args.seed)  # timm draws from NumPy's global RNG
    try:
        env = environment(args)
        results = []
        for shape in args.shapes:
            cases, skipped = build_cases(make_samples(shape, args.seed), args.mixers, args.seed)
            times = time_rounds(cases, args.repeats, args.warmup, args.seed)
            results.append({"shape": list(shape), "rows": summarise(cases, times), "times_ms": times})
            results[-1]["skipped"] = skipped
    finally:
        torch.set_num_threads(threads)  # main() may run inside another program (the tests)
    checks = target_checks(results)
    text = report(env, results, checks)
    write_outputs(args.out, text, {"environment": env, "notes": NOTES, "results": results, "targets": checks})


if __name__ == "__main__":
    main()
