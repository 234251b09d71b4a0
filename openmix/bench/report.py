"""Turn a folder of runs into comparison tables (markdown, CSV) and plots.

One row per method (the runs' labels except ``seed``):

- top-1 as mean ± std over seeds of the final epoch, and of the median of the last N epochs (OpenMixup's
  convention);
- top-5, NLL and ECE of the final epoch (mean ± std);
- wall time, images/s (training, mean over epochs) and peak memory, over the whole run across resumes: the training
  process logs its cumulative wall time and its peak memory every epoch (``train/wall_time_s``,
  ``train/peak_rss_mb``); ``run.json``'s totals over the runner's processes serve for logs without them;
- the difference from the baseline row (vanilla) in top-1, with a Welch t-test marker: ``*`` p < 0.05,
  ``**`` p < 0.01 (``n/a`` with fewer than 2 seeds on either side).

Plots: validation top-1 per epoch for each method (mean over seeds, band = std), a bar chart of top-1 with std
error bars, and top-1 against cost (training images/s).

Evaluation beyond top-1 (:mod:`openmix.evaluation`), when the runs have it: a second table with the mean corruption
accuracy and one column per corruption, OOD AUROC and FPR at 95 % TPR of the max-softmax and energy scores, and the
ECE of the evaluated checkpoint (mean ± std over seeds), and a reliability diagram per method (bins pooled over
seeds). A run's values come from its newest ``openmix test`` beside it (``<run>/test/version_N/metrics.csv``), else
its newest ``openmix validate`` (``<run>/validate/version_N``), else its final validation epoch (a fit with
``evaluation.during_fit``).
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openmix.bench.run_folder import (
    ENVIRONMENT_FILE,
    METRICS_FILE,
    RUN_JSON,
    VERSION_PATTERN,
    metrics_files,
    read_record,  # noqa: F401 (re-exported: the runner read run.json through this module)
    read_run_json,
    run_json_path,
)


@dataclass
class RunResult:
    """Metrics of one finished run."""

    name: str
    labels: dict[str, str]
    epochs: list[int]
    curves: dict[str, list[float]]  # per-epoch validation metrics and training images/s
    wall_time_s: float
    peak_rss_mb: float
    grid: str = ""  # the grid the run belongs to (run.json's "grid", else its parent folder's name)
    evaluation: dict[str, float] = field(default_factory=dict)  # read_evaluation's values, without the stage prefix
    training: dict[str, dict[int, float]] = field(default_factory=dict)  # TRAINING_CURVES: epoch -> value

    def final(self, key: str) -> float:
        values = self.curves.get(key) or [math.nan]
        return values[-1]

    def median_last(self, key: str, last: int) -> float:
        values = self.curves.get(key) or [math.nan]
        return statistics.median(values[-last:])


@dataclass
class MethodSummary:
    """All seeds of one method."""

    method: str
    labels: dict[str, str]
    runs: list[RunResult] = field(default_factory=list)


def _float(text: str) -> float | None:
    return float(text) if text not in ("", None) else None


RUN_KEYS = ("train/images_per_sec", "train/wall_time_s", "train/peak_rss_mb")  # per-epoch training statistics


metric_logs = metrics_files  # a run's CSV logs in order (the name this module gave them)


def read_metrics(*paths: Path) -> tuple[list[int], dict[str, list[float]]]:
    """Per-epoch values of the validation metrics (at the validated epochs, which it returns) and of the training
    statistics of :data:`RUN_KEYS` (at every epoch) from Lightning CSV logs (later files override earlier ones for
    the same epoch: a resumed run repeats the epoch it was interrupted in)."""
    per_epoch: dict[int, dict[str, float]] = defaultdict(dict)
    rows = []
    for path in paths:
        with open(path, newline="") as stream:
            rows += list(csv.DictReader(stream))
    for row in rows:
        if not row.get("epoch"):
            continue
        epoch = int(float(row["epoch"]))
        for key, text in row.items():
            if key.startswith("val/") or key in RUN_KEYS:
                value = _float(text)
                if value is not None:
                    per_epoch[epoch][key] = value
    epochs = sorted(e for e in per_epoch if "val/top1" in per_epoch[e])
    keys = sorted({key for e in epochs for key in per_epoch[e]} - set(RUN_KEYS))
    curves = {key: [per_epoch[e][key] for e in epochs if key in per_epoch[e]] for key in keys}
    # the training statistics of every epoch, validated or not (check_val_every_n_epoch > 1)
    every = sorted(per_epoch) if epochs else []
    curves.update({key: [per_epoch[e][key] for e in every if key in per_epoch[e]] for key in RUN_KEYS})
    return epochs, {key: values for key, values in curves.items() if values}


TRAINING_CURVES = ("train/top1_epoch", "train/loss_epoch")  # logged every epoch, validated or not


def read_training_curves(*paths: Path) -> dict[str, dict[int, float]]:
    """The per-epoch training top-1 and loss (``epoch -> value`` per key of :data:`TRAINING_CURVES`) of Lightning
    CSV logs, later files overriding earlier ones. A mixer's values are measured on the batches it trains on
    (mixed; top-1 against the larger-weight label)."""
    curves: dict[str, dict[int, float]] = {key: {} for key in TRAINING_CURVES}
    for path in paths:
        with open(path, newline="") as stream:
            for row in csv.DictReader(stream):
                if row.get("epoch"):
                    for key in TRAINING_CURVES:
                        if (value := _float(row.get(key, ""))) is not None:
                            curves[key][int(float(row["epoch"]))] = value
    return {key: values for key, values in curves.items() if values}


# Evaluations of a run's checkpoint, in order of preference: (folder beside the run, prefix of its metrics).
EVALUATION_LOGS = (("test", "test/"), ("validate", "val/"))
EVALUATION_HEADLINES = ("corruption_mean", "ood_auroc_msp", "ood_fpr95_msp", "ood_auroc_energy", "ood_fpr95_energy")
RELIABILITY_KEY = re.compile(r"reliability/(confidence|accuracy|count)_(\d+)")


def is_evaluation_key(name: str) -> bool:
    """Whether a metric (without its stage prefix) is one of :mod:`openmix.evaluation`'s."""
    return name.startswith(("corruption", "ood_", "reliability/"))


def read_evaluation(run_folder: Path, curves: dict[str, list[float]] | None = None) -> dict[str, float]:
    """The evaluation values of a run (keys without the stage prefix: ``corruption_mean``, ``corruption/<name>``,
    ``ood_auroc_msp``, ``reliability/count_03``, ``ece``, ...): those of its newest ``openmix test`` log
    (``<run>/test/version_N/metrics.csv``), else of its newest ``openmix validate`` log, else the final epoch's of
    ``curves`` (its own validation, with ``evaluation.during_fit``); empty when it has none."""
    for folder_name, prefix in EVALUATION_LOGS:
        folder = Path(run_folder) / folder_name
        versions = (
            [m for entry in folder.iterdir() if (m := VERSION_PATTERN.fullmatch(entry.name))] if folder.is_dir() else []
        )
        for match in sorted(versions, key=lambda m: int(m.group(1)), reverse=True):
            values = _last_values(folder / match.group(0) / METRICS_FILE, prefix)
            if any(is_evaluation_key(name) for name in values):
                return values
    finals = {key.removeprefix("val/"): values[-1] for key, values in (curves or {}).items() if values}
    return finals if any(is_evaluation_key(name) for name in finals) else {}


def _last_values(path: Path, prefix: str) -> dict[str, float]:
    """The last value logged for each metric starting with ``prefix`` in a CSV log (prefix removed)."""
    if not path.is_file():
        return {}
    values: dict[str, float] = {}
    with open(path, newline="") as stream:
        for row in csv.DictReader(stream):
            for key, text in row.items():
                if key and key.startswith(prefix) and (value := _float(text)) is not None:
                    values[key.removeprefix(prefix)] = value
    return values


def load_runs(runs_dir: str | Path, directories: list[Path] | None = None) -> list[RunResult]:
    """Every finished run (``run.json`` with status ``done``) under ``runs_dir``, at any depth, or only those of
    ``directories`` when given (a grid's runs)."""
    results = []
    paths = sorted(Path(runs_dir).rglob(RUN_JSON)) if directories is None else [run_json_path(d) for d in directories]
    for record_path in paths:
        if not record_path.is_file():
            continue
        record = read_record(record_path)
        logs = metrics_files(record_path.parent)
        if record.get("status") != "done" or not logs:
            continue
        epochs, curves = read_metrics(*logs)
        if not epochs:
            continue
        labels = record.get("labels") or {"run": record_path.parent.name}
        wall_time = (curves.get("train/wall_time_s") or [record["wall_time_s"]])[-1]  # cumulative: the last epoch's
        peak_memory = max([record["peak_rss_mb"], *(curves.get("train/peak_rss_mb") or [])])
        grid = str(record_path.parent.parent)  # a grid is its folder: two grids of one name in two runs-dirs differ
        evaluation = read_evaluation(record_path.parent, curves)
        training = read_training_curves(*logs)
        results.append(
            RunResult(
                record_path.parent.name, labels, epochs, curves, wall_time, peak_memory, grid, evaluation, training
            )
        )
    return results


def group_methods(results: list[RunResult]) -> list[MethodSummary]:
    """Runs grouped by their labels without ``seed``, in first-seen order."""
    groups: dict[str, MethodSummary] = {}
    for result in results:
        labels = {k: v for k, v in result.labels.items() if k != "seed"}
        method = ",".join(f"{k}={v}" for k, v in labels.items()) if len(labels) > 1 else next(iter(labels.values()))
        groups.setdefault(method, MethodSummary(method, labels)).runs.append(result)
    return list(groups.values())


def mean_std(values: list[float]) -> tuple[float, float]:
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return math.nan, math.nan
    return statistics.fmean(clean), (statistics.stdev(clean) if len(clean) > 1 else 0.0)


def welch_marker(values: list[float], baseline: list[float]) -> tuple[float, str]:
    """Welch t-test p-value and its marker (``**`` < 0.01, ``*`` < 0.05, ``n/a`` without 2 seeds per side)."""
    if len(values) < 2 or len(baseline) < 2:
        return math.nan, "n/a"
    if statistics.pstdev(values) == 0 and statistics.pstdev(baseline) == 0:
        return (0.0 if values[0] != baseline[0] else 1.0), ("**" if values[0] != baseline[0] else "")
    from scipy import stats  # imported here: `openmix report --help` and the runner need no SciPy

    p_value = float(stats.ttest_ind(values, baseline, equal_var=False).pvalue)
    return p_value, "**" if p_value < 0.01 else "*" if p_value < 0.05 else ""


def summarise(results: list[RunResult], baseline: dict[str, str] | None = None, last: int = 10) -> list[dict]:
    """One dict per method with every column of the table (numbers, not text)."""
    methods = group_methods(results)
    base = next((m for m in methods if baseline and all(m.labels.get(k) == v for k, v in baseline.items())), None)
    if baseline and base is None:
        known = sorted({f"{k}={v}" for m in methods for k, v in m.labels.items()})
        wanted = ",".join(f"{k}={v}" for k, v in baseline.items())
        raise ValueError(f"baseline {wanted} matches no runs; the runs' labels are {', '.join(known)}")
    if base is None:
        base = next((m for m in methods if "vanilla" in m.labels.values()), None)
    base_top1 = [run.final("val/top1") * 100 for run in base.runs] if base else []
    if base is not None:  # the baseline row first, then the methods in the order their runs were found
        methods = [base] + [m for m in methods if m is not base]
    evaluation_keys = evaluation_keys_of(results)  # the same columns in every row (one CSV header)
    rows = []
    for method in methods:
        top1 = [run.final("val/top1") * 100 for run in method.runs]
        row: dict[str, Any] = {"method": method.method, "seeds": len(method.runs)}
        row["top1"], row["top1_std"] = mean_std(top1)
        median_last = [run.median_last("val/top1", last) * 100 for run in method.runs]
        row["top1_median_last"], row["top1_median_last_std"] = mean_std(median_last)
        for key, scale in (("top5", 100), ("nll", 1), ("ece", 100)):
            row[key], row[f"{key}_std"] = mean_std([run.final(f"val/{key}") * scale for run in method.runs])
        row["wall_time_s"], _ = mean_std([run.wall_time_s for run in method.runs])
        row["images_per_sec"], _ = mean_std(
            [statistics.fmean(run.curves.get("train/images_per_sec") or [math.nan]) for run in method.runs]
        )
        row["peak_rss_mb"] = max(run.peak_rss_mb for run in method.runs)
        is_base = method is base
        row["delta_top1"] = math.nan if base is None or is_base else row["top1"] - mean_std(base_top1)[0]
        row["p_value"], row["marker"] = (math.nan, "") if is_base or base is None else welch_marker(top1, base_top1)
        row["baseline"] = is_base
        row["epochs"] = max(len(run.epochs) for run in method.runs)
        row.update(evaluation_columns(method.runs, evaluation_keys))
        rows.append(row)
    return rows


def evaluation_keys_of(results: list[RunResult]) -> list[str]:
    """The evaluation columns that any run has, in a fixed order: the corruption mean, each corruption (by
    name), the OOD metrics, the evaluated checkpoint's ECE."""
    seen = [key for result in results for key in result.evaluation]
    corruptions = sorted({k for k in seen if k.startswith("corruption/") and k.count("/") == 1})
    wanted = ["corruption_mean", *corruptions, *EVALUATION_HEADLINES[1:]]
    keys = [key for key in wanted if key in seen]
    return keys + ["ece"] if keys else []


def evaluation_columns(runs: list[RunResult], keys: list[str]) -> dict[str, float]:
    """Mean and std over seeds, in %, of each evaluation value (column ``eval/<key>`` and ``eval/<key>_std``)."""
    columns: dict[str, float] = {}
    for key in keys:
        mean, std = mean_std([run.evaluation.get(key, math.nan) * 100 for run in runs])
        columns[f"eval/{key}"], columns[f"eval/{key}_std"] = mean, std
    return columns


def _pm(mean: float, std: float, digits: int = 2, seeds: int = 2) -> str:
    """``mean ± std``; the mean alone for a single seed (no spread to report)."""
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if seeds < 2 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(rows: list[dict], last: int = 10) -> str:
    # a run shorter than `last` epochs takes the median of all of them: the header says how many were used
    epochs = max((row.get("epochs", last) for row in rows), default=last)
    used = min(last, epochs)
    label = f"median of last {used} epochs" if used > 1 else "median of the last epoch (1 epoch)"
    header = (
        f"| method | seeds | top-1 (%) | top-1, {label} (%) | top-5 (%) | NLL | ECE (%) | "
        "Δ top-1 vs baseline | wall time (s) | images/s | peak memory (MB) |"
    )
    lines = [header, "|" + "---|" * 11]
    for row in rows:
        delta = (
            "baseline"
            if row["baseline"]
            else ("-" if math.isnan(row["delta_top1"]) else f"{row['delta_top1']:+.2f} {row['marker']}".strip())
        )
        n = row["seeds"]
        lines.append(
            f"| {row['method']} | {n} | {_pm(row['top1'], row['top1_std'], 2, n)} | "
            f"{_pm(row['top1_median_last'], row['top1_median_last_std'], 2, n)} | "
            f"{_pm(row['top5'], row['top5_std'], 2, n)} | {_pm(row['nll'], row['nll_std'], 3, n)} | "
            f"{_pm(row['ece'], row['ece_std'], 2, n)} | {delta} | "
            f"{row['wall_time_s']:.0f} | {row['images_per_sec']:.0f} | {row['peak_rss_mb']:.0f} |"
        )
    lines.append("")
    lines.append(
        "Δ: difference of the mean final top-1 from the baseline row; Welch t-test over seeds: ** p < 0.01, "
        "* p < 0.05, n/a with fewer than 2 seeds. ECE: 15 equal-width bins."
    )
    return "\n".join(lines) + "\n"


EVALUATION_HEADERS = {
    "corruption_mean": "corruption acc., mean (%)",
    "ood_auroc_msp": "OOD AUROC, MSP (%)",
    "ood_fpr95_msp": "OOD FPR95, MSP (%)",
    "ood_auroc_energy": "OOD AUROC, energy (%)",
    "ood_fpr95_energy": "OOD FPR95, energy (%)",
    "ece": "ECE, evaluated checkpoint (%)",
}


def evaluation_table(rows: list[dict]) -> str:
    """The markdown table of the evaluation columns (:func:`evaluation_columns`); empty when no run has them."""
    keys = [name.removeprefix("eval/") for name in (rows[0] if rows else {}) if name.startswith("eval/")]
    keys = [key for key in keys if not key.endswith("_std")]
    if not keys:
        return ""
    headers = [EVALUATION_HEADERS.get(key, key.removeprefix("corruption/") + " (%)") for key in keys]
    lines = ["| method | " + " | ".join(headers) + " |", "|" + "---|" * (len(keys) + 1)]
    for row in rows:
        cells = [_pm(row[f"eval/{key}"], row[f"eval/{key}_std"], 2, row["seeds"]) for key in keys]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Evaluation of each run's checkpoint by `openmix test` (else `validate`, else its last validation epoch); "
        "mean ± std over seeds. Corruption accuracy: per corruption the mean over its severities, and their mean; "
        "OOD: the test split against the configured OOD set, AUROC and the FPR at 95 % TPR of the maximum softmax "
        "probability (MSP) and of the energy score; lower FPR95 and ECE are better. A method without a value has no "
        "evaluated run.",
    ]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(results: list[RunResult], rows: list[dict], out_dir: Path) -> list[Path]:
    """The three figures; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    methods = group_methods(results)
    # one colour per method in every figure, in the table's row order
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(rows) > len(palette):  # more methods than the default cycle: distinct colours from tab20 and tab20b
        palette = [plt.get_cmap(name)(i) for name in ("tab20", "tab20b") for i in range(20)]
    colours = {row["method"]: palette[number % len(palette)] for number, row in enumerate(rows)}
    paths = [out_dir / "curves.png", out_dir / "top1_bars.png", out_dir / "top1_vs_cost.png"]
    training = any("train/top1_epoch" in run.training for run in results)
    figure, axes = plt.subplots(1, 2 if training else 1, figsize=(11 if training else 6, 4), layout="constrained",
                                squeeze=False)  # fmt: skip
    for method in methods:
        colour = colours.get(method.method)
        length = min(len(run.curves["val/top1"]) for run in method.runs)
        per_epoch = [[run.curves["val/top1"][e] * 100 for run in method.runs] for e in range(length)]
        epochs = [epoch + 1 for epoch in method.runs[0].epochs[:length]]  # the validated epochs, counted from 1
        _mean_band(axes[0, 0], epochs, per_epoch, method.method, colour)
        if training:
            common = sorted(set.intersection(*(set(run.training.get("train/top1_epoch", {})) for run in method.runs)))
            values = [[run.training["train/top1_epoch"][e] * 100 for run in method.runs] for e in common]
            _mean_band(axes[0, 1], [e + 1 for e in common], values, method.method, colour)
    axes[0, 0].set(xlabel="epoch", ylabel="validation top-1 (%)", title="validation accuracy (mean ± std over seeds)")
    if training:
        title = "training accuracy on the batches trained on\n(mixed for a mixer: the larger-weight label)"
        axes[0, 1].set(xlabel="epoch", ylabel="training top-1 (%)", title=title)
    for axis in axes.flat:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.title.set_fontsize(9)
    axes[0, 0].legend(fontsize=7, ncol=2 if len(methods) > 8 else 1)
    figure.savefig(paths[0], dpi=120)
    plt.close(figure)
    figure, axis = plt.subplots(figsize=(6, 4), layout="constrained")
    names = [row["method"] for row in rows]
    heights, errors = [row["top1"] for row in rows], [row["top1_std"] for row in rows]
    axis.bar(names, heights, yerr=errors, capsize=4, color=[colours[name] for name in names])
    for name, height in zip(names, heights):  # the values, since the axis starts at 0 and small gaps look alike
        axis.annotate(f"{height:.2f}", (name, height), ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                      textcoords="offset points")  # fmt: skip
    axis.set(ylabel="final top-1 (%)", title="final top-1 (error bars: std over seeds)", ylim=(0, None))
    axis.tick_params(axis="x", rotation=30)
    figure.savefig(paths[1], dpi=120)
    plt.close(figure)
    figure, axis = plt.subplots(figsize=(6, 4), layout="constrained")
    for row in rows:
        colour = colours[row["method"]]
        axis.errorbar(row["images_per_sec"], row["top1"], yerr=row["top1_std"], fmt="o", capsize=3, color=colour)
        axis.annotate(
            row["method"], (row["images_per_sec"], row["top1"]), fontsize=8, xytext=(4, 4), textcoords="offset points"
        )
    axis.set(xlabel="training throughput (images/s)", ylabel="final top-1 (%)", title="accuracy against cost")
    figure.savefig(paths[2], dpi=120)
    plt.close(figure)
    diagrams = {m.method: bins for m in methods if (bins := pooled_reliability(m.runs)) is not None}
    if diagrams:
        paths.append(out_dir / "reliability.png")
        plot_reliability(diagrams, colours, paths[-1])
    corruptions = sorted({k for r in results for k in r.evaluation if re.fullmatch(r"corruption/[^/]+", k)})
    if corruptions:
        paths.append(out_dir / "corruptions.png")
        plot_corruptions(methods, corruptions, colours, paths[-1])
    return paths


def _mean_band(axis: Any, epochs: list[int], per_epoch: list[list[float]], label: str, colour: Any) -> None:
    """A method's mean over seeds per epoch, with a band of one standard deviation."""
    means = [statistics.fmean(v) for v in per_epoch]
    stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_epoch]
    axis.plot(epochs, means, marker="o", markersize=3, label=label, color=colour)
    axis.fill_between(epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], alpha=0.2,
                      color=colour)  # fmt: skip


def plot_corruptions(methods: list[MethodSummary], corruptions: list[str], colours: dict, path: Path) -> None:
    """Per corruption (mean over its severities), each method's top-1 under it as a bar (mean over seeds, error
    bar: std), beside its clean top-1."""
    import matplotlib.pyplot as plt

    groups = ["clean", *(key.removeprefix("corruption/") for key in corruptions)]
    width = 0.8 / max(1, len(methods))
    figure, axis = plt.subplots(figsize=(min(16.0, max(6.0, 0.12 * len(groups) * len(methods))), 4),
                                layout="constrained")  # fmt: skip
    for number, method in enumerate(methods):
        means, stds = [], []
        for key in ["top1", *corruptions]:
            if key == "top1":  # the test's own top-1 when it has one, else the last validation's
                values = [run.evaluation.get("top1", run.final("val/top1")) * 100 for run in method.runs]
            else:
                values = [run.evaluation.get(key, math.nan) * 100 for run in method.runs]
            mean, std = mean_std(values)
            means.append(mean)
            stds.append(std)
        positions = [g + (number - (len(methods) - 1) / 2) * width for g in range(len(groups))]
        axis.bar(positions, means, width=width, yerr=stds, capsize=1, label=method.method,
                 color=colours.get(method.method))  # fmt: skip
    axis.set_xticks(range(len(groups)), groups)
    axis.set(ylabel="top-1 (%)", ylim=(0, 100), title="top-1 under each corruption (mean over severities and seeds)")
    axis.legend(fontsize=6, ncol=max(1, math.ceil(len(methods) / 8)), loc="lower left")
    figure.savefig(path, dpi=120)
    plt.close(figure)


def pooled_reliability(runs: list[RunResult]) -> tuple[list[float], list[float], list[float]] | None:
    """The reliability bins of a method's runs pooled over seeds: per bin the (confidence, accuracy, count), means
    weighted by the counts; ``None`` when no run has bins."""
    totals: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # bin -> confidence sum, correct, count
    for run in runs:
        bins: dict[int, dict[str, float]] = defaultdict(dict)
        for key, value in run.evaluation.items():
            if match := RELIABILITY_KEY.fullmatch(key):
                bins[int(match.group(2))][match.group(1)] = value
        for index, values in bins.items():
            count = values.get("count", 0.0)
            totals[index][0] += values.get("confidence", 0.0) * count
            totals[index][1] += values.get("accuracy", 0.0) * count
            totals[index][2] += count
    if not totals:
        return None
    count = [totals[j][2] for j in range(max(totals) + 1)]
    confidence = [totals[j][0] / c if c else 0.0 for j, c in enumerate(count)]
    accuracy = [totals[j][1] / c if c else 0.0 for j, c in enumerate(count)]
    return confidence, accuracy, count


def plot_reliability(
    diagrams: dict[str, tuple[list[float], list[float], list[float]]], colours: dict, path: Path
) -> None:
    """One reliability diagram per method: accuracy per confidence bin (bars), the bin's mean confidence (dots) and
    the diagonal of perfect calibration; the title gives the ECE of the pooled bins."""
    import matplotlib.pyplot as plt

    columns = min(4, len(diagrams))
    rows = math.ceil(len(diagrams) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False, layout="constrained")
    for axis, (method, (confidence, accuracy, count)) in zip(axes.flat, diagrams.items()):
        width = 1 / len(count)
        lefts = [j * width for j in range(len(count))]
        filled = [j for j, c in enumerate(count) if c > 0]
        axis.bar([lefts[j] for j in filled], [accuracy[j] for j in filled], width=width, align="edge",
                 color=colours.get(method), alpha=0.7, edgecolor="black", linewidth=0.5)  # fmt: skip
        axis.plot([confidence[j] for j in filled], [accuracy[j] for j in filled], "k.", markersize=3)
        axis.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
        total = sum(count)
        ece = sum(c / total * abs(a - p) for p, a, c in zip(confidence, accuracy, count)) if total else math.nan
        axis.set(xlim=(0, 1), ylim=(0, 1), title=f"{method}\nECE {ece * 100:.2f} %", xlabel="confidence")
        axis.title.set_fontsize(8)
    for axis in axes.flat[len(diagrams) :]:
        axis.axis("off")
    for axis in axes[:, 0]:
        axis.set_ylabel("accuracy")
    figure.suptitle("reliability diagrams (bins pooled over seeds)", fontsize=9)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def missing_runs(directories: list[Path]) -> list[str]:
    """``name (status: reason)`` for each run of a grid that has no finished result."""
    missing = []
    for directory in directories:
        record = read_run_json(directory)
        if record is None:
            record = {"status": "not run"}
        if record.get("status") != "done":
            reason = f": {record['reason']}" if record.get("reason") else ""
            missing.append(f"{directory.name} ({record.get('status', '?')}{reason})")
    return missing


def report(
    runs_dir: str | Path,
    out_dir: str | Path | None = None,
    last: int = 10,
    baseline: dict[str, str] | None = None,
    directories: list[Path] | None = None,
) -> str:
    """Write ``results.md``, ``results.csv`` and the plots into ``out_dir`` (default: ``runs_dir``).

    With ``directories`` (the run folders of one grid, as ``openmix bench`` passes them) only those runs are
    reported, and those without a finished result are listed under the table. Without it every finished run under
    ``runs_dir`` is read; runs of different grids are never merged: each grid gets its own report, in
    ``out_dir/<grid>`` (default: the grid's own folder)."""
    if not Path(runs_dir).is_dir():
        raise FileNotFoundError(f"no such directory: {runs_dir}")
    results = load_runs(runs_dir, directories)
    if not results:
        raise FileNotFoundError(f"no finished runs (run.json with status 'done') under {runs_dir}")
    grids = sorted({result.grid for result in results})
    if directories is None and len(grids) > 1:
        texts = []
        for grid in grids:  # each grid folder gets its own report, in itself or under out_dir at the same path
            folder = Path(grid)
            members = sorted(record.parent for record in folder.glob(f"*/{RUN_JSON}"))
            target = Path(out_dir) / folder.relative_to(runs_dir) if out_dir is not None else folder
            name = _grid_name(folder)
            texts.append(f"## grid {name} ({folder})\n\n" + report(folder, target, last, baseline, members))
        return "\n".join(texts)
    out = Path(out_dir or runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarise(results, baseline, last)
    table = markdown_table(rows, last)
    robustness = evaluation_table(rows)
    if robustness:
        table += "\n" + robustness
    missing = missing_runs(directories) if directories is not None else []
    if missing:
        table += "\nNot in the table (no finished result): " + "; ".join(missing) + ".\n"
    environment_file = Path(runs_dir) / ENVIRONMENT_FILE
    if environment_file.is_file():  # written by `openmix bench`: how the table was made
        env = json.loads(environment_file.read_text())
        table += (
            f"\nMade by `{env['command']}` on {env['date_utc']}: torch {env['torch']}, lightning {env['lightning']}, "
            f"timm {env['timm']}, Python {env['python']}; {env['cpu']} ({env['cpu_count']} cores"
            f"{', GPU ' + env['gpu'] if env.get('gpu') else ''}), {env['parallel_runs']} run(s) at a time.\n"
        )
    (out / "results.md").write_text(table)
    write_csv(rows, out / "results.csv")
    plot(results, rows, out)
    return table


def _grid_name(folder: Path) -> str:
    """The grid's name as its runs recorded it (``run.json``'s ``grid``), else its folder's name."""
    for record_path in sorted(folder.glob(f"*/{RUN_JSON}")):
        name = read_record(record_path).get("grid")
        if name:
            return str(name)
    return folder.name
