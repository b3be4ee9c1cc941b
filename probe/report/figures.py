"""Paper figures from the runs frame (`probe.report.results.runs_frame`): PDF and PNG, two-column-paper sizes.

Colours belong to backbones (the same backbone has the same colour in every figure), line styles and
markers to samplers. Fonts are embedded as TrueType (`pdf.fonttype` 42), as publishers ask.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from probe.report.results import backbone_label  # noqa: E402

COLUMN_WIDTH = 3.4  # inches: one column of a two-column paper
FIGURE_HEIGHT = 2.8
DPI = 200  # PNG pixels per inch: a figure is (3.4 x 2.8) in -> 680 x 560 px
STYLE = {
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "font.size": 7,
    "axes.titlesize": 7,
    "axes.labelsize": 7,
    "legend.fontsize": 6,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "lines.linewidth": 1.0,
    "lines.markersize": 3.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
# Families first (so "onevision_large" and "onevision_large (random)" share a colour), then a stable
# hash of the name into the remaining palette for anything else.
FAMILY_COLOURS = {
    "onevision_tiny": "#1f77b4",
    "onevision_small": "#ff7f0e",
    "onevision_base": "#2ca02c",
    "onevision_large": "#d62728",
    "onevision_huge": "#9467bd",
    "siglip2": "#8c564b",
    "dinov3": "#e377c2",
    "qwen3vit": "#17becf",
}
SPARE_COLOURS = ("#7f7f7f", "#bcbd22", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173")
SAMPLING_STYLE = {
    "uniform": ("-", "o"), "codec": ("--", "s"), "random": ("-.", "D"), "pixel_diff": (":", "v"),
}
METRIC_LABELS = {"top1": "top-1 (%)", "top5": "top-5 (%)", "mean_class": "mean-class acc. (%)"}
COST_LABELS = {
    "tokens": "tokens kept per clip",
    "flops_per_clip": "encoder FLOPs per clip",
    "seconds_per_clip": "encode time per clip (s), when stored",
}


def backbone_colour(name: str) -> str:
    """A fixed colour per backbone: by family prefix, else by a stable hash of the name."""
    base = name
    for prefix, colour in sorted(FAMILY_COLOURS.items(), key=lambda kv: -len(kv[0])):
        if base.startswith(prefix):
            return colour
    return SPARE_COLOURS[zlib.crc32(base.encode()) % len(SPARE_COLOURS)]


def _sampling_style(name: str) -> tuple[str, str]:
    return SAMPLING_STYLE.get(name, (":", "^"))


def _save(fig: plt.Figure, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".pdf"), stem.with_suffix(".png")]
    for path in paths:
        fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return paths


def _figure() -> tuple[plt.Figure, plt.Axes]:
    return plt.subplots(figsize=(COLUMN_WIDTH, FIGURE_HEIGHT), layout="constrained")


def _chance(ax: plt.Axes, runs: pd.DataFrame) -> None:
    chance = runs["chance"].unique()
    if len(chance) == 1:
        ax.axhline(chance[0], color="0.5", linewidth=0.6, linestyle=":", label="chance")


def accuracy_vs_budget(runs: pd.DataFrame, stem: str | Path, metric: str = "top1") -> list[Path]:
    """Accuracy vs patch budget (log2 axis) for one task: a line per backbone x sampling, with the
    bootstrap 95% intervals as error bars (top-1 only). Runs sharing a point are averaged."""
    _one_task(runs)
    with plt.rc_context(STYLE):
        fig, ax = _figure()
        lines = runs.groupby(["backbone", "sampling"], sort=True)
        # Lines sit side by side around each budget (a few % apart) so their error bars stay readable.
        dodges = 2.0 ** np.linspace(-0.05, 0.05, lines.ngroups) if lines.ngroups > 1 else [1.0]
        for dodge, ((backbone, sampling), group) in zip(dodges, lines, strict=True):
            points = group.groupby("budget")[[metric, "top1_low", "top1_high"]].mean().sort_index()
            line, marker = _sampling_style(sampling)
            errors = None
            if metric == "top1":
                # Averaged intervals need not bracket the averaged point (conflicting repeats): clip.
                errors = np.stack([points[metric] - points["top1_low"], points["top1_high"] - points[metric]])
                errors = errors.clip(min=0.0)
            ax.errorbar(points.index * dodge, points[metric], yerr=errors, color=backbone_colour(backbone),
                        linestyle=line, marker=marker, capsize=1.5, elinewidth=0.6,
                        label=_label(backbone, sampling))
        _chance(ax, runs)
        ax.set_xscale("log", base=2)
        budgets = sorted(runs["budget"].unique())
        ax.set_xticks(budgets, [str(int(b)) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("patch budget per clip" + ("\n(error bars: 95% bootstrap interval over test clips)"
                                                  if metric == "top1" else ""))
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.set_title(_title(runs, f"{METRIC_LABELS.get(metric, metric)} vs patch budget"))
        fig.legend(loc="outside lower center", ncol=2, frameon=False)
        return _save(fig, Path(stem))


def pareto_front(cost: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Indices of the runs no other run beats (cheaper or equal and strictly more accurate), by cost."""
    order = np.lexsort((-accuracy, cost))
    front, best = [], -np.inf
    for i in order:
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return np.asarray(front, dtype=int)


def accuracy_vs_cost(runs: pd.DataFrame, stem: str | Path, cost: str = "tokens",
                     metric: str = "top1") -> list[Path]:
    """Accuracy vs cost per clip (tokens, FLOPs or encode seconds, log axis) for one task: every run
    a point, the efficiency frontier (runs nothing cheaper beats) as a step line."""
    _one_task(runs)
    runs = runs.dropna(subset=[cost, metric])
    with plt.rc_context(STYLE):
        fig, ax = _figure()
        for (backbone, sampling), group in runs.groupby(["backbone", "sampling"], sort=True):
            _, marker = _sampling_style(sampling)
            errors = None
            if metric == "top1":
                errors = np.stack([group[metric] - group["top1_low"], group["top1_high"] - group[metric]])
                errors = errors.clip(min=0.0)
            ax.errorbar(group[cost], group[metric], yerr=errors, color=backbone_colour(backbone),
                        marker=marker, markersize=3.5, linestyle="none", capsize=1.5, elinewidth=0.6,
                        label=_label(backbone, sampling), zorder=3)
        front = runs.iloc[pareto_front(runs[cost].to_numpy(float), runs[metric].to_numpy(float))]
        ax.step(front[cost], front[metric], where="post", color="black", linewidth=0.8, label="frontier")
        _chance(ax, runs)
        ax.set_xscale("log", base=2 if cost == "tokens" else 10)
        if cost != "tokens":  # seconds span less than a decade: 1-2-5 ticks
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.minorticks_off()
        ax.set_xlabel(COST_LABELS.get(cost, cost) + ("\n(error bars: 95% bootstrap interval over test clips)"
                                                     if metric == "top1" else ""))
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.set_title(_title(runs, f"{METRIC_LABELS.get(metric, metric)} vs cost"))
        fig.legend(loc="outside lower center", ncol=2, frameon=False)
        return _save(fig, Path(stem))


def _label(backbone: str, sampling: str) -> str:
    return f"{backbone_label(backbone)}, {sampling}"


def _title(runs: pd.DataFrame, what: str) -> str:
    """`task: what`, saying so when a backbone has random weights (the legend leaves it out)."""
    random = bool(runs["random_weights"].any())
    return f"{runs['task'].iloc[0]}: {what}" + (" (random weights)" if random else "")


def _one_task(runs: pd.DataFrame) -> None:
    tasks = runs["task"].unique()
    if len(tasks) != 1:
        raise ValueError(f"a figure shows one task, got {sorted(tasks)}; filter the runs first")


def report_figures(runs: pd.DataFrame, out: str | Path, metric: str = "top1") -> list[Path]:
    """Both figures for every task in `runs`: `<out>/<metric>_vs_budget_<task>` and `..._vs_tokens_...`,
    plus `..._vs_flops_...` and `..._vs_time_...` where the records carry FLOPs and encode times."""
    out = Path(out)
    paths: list[Path] = []
    for task, group in runs.groupby("task", sort=True):
        paths += accuracy_vs_budget(group, out / f"{metric}_vs_budget_{task}", metric)
        paths += accuracy_vs_cost(group, out / f"{metric}_vs_tokens_{task}", "tokens", metric)
        for cost, name in (("flops_per_clip", "flops"), ("seconds_per_clip", "time")):
            if cost in group and group[cost].notna().any():
                paths += accuracy_vs_cost(group, out / f"{metric}_vs_{name}_{task}", cost, metric)
    return paths
