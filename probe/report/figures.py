"""Paper figures from the runs frame (`probe.report.results.runs_frame`): PDF and PNG, two-column-paper sizes.

Colours belong to backbone entries (a table row: the backbone key and what sets its runs apart), one
distinct colour each across a report's figures; line styles and markers belong to samplers. Legends sit
inside the canvas, below the axes (the figure grows to hold them). Fonts are embedded as TrueType
(`pdf.fonttype` 42), as publishers ask.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

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
SAMPLING_STYLE = {
    "uniform": ("-", "o"), "codec": ("--", "s"), "random": ("-.", "D"), "pixel_diff": (":", "v"),
}
METRIC_LABELS = {"top1": "top-1 (%)", "top5": "top-5 (%)", "mean_class": "mean-class acc. (%)"}
COST_LABELS = {
    "tokens": "tokens kept per clip",
    "flops_per_clip": "encoder FLOPs per clip",
    "seconds_per_clip": "measured encode wall time per clip (s),\non its run's machine and load",
}
# Costs that do not depend on the machine or its load: only these get an efficiency frontier (a frontier
# over wall time would rank the machine's load at the time of each run, not the samplers).
LOAD_FREE_COSTS = ("tokens", "flops_per_clip")
LEGEND_WIDTH = 62  # characters of a legend line at 6 pt within COLUMN_WIDTH; longer labels wrap
LEGEND_LINE = 0.11  # inches per legend line


def backbone_colours(rows: list[str]) -> dict[str, tuple[float, ...]]:
    """One distinct colour per backbone entry (sorted, so a report's figures agree): tab10 up to 10
    entries, tab20 up to 20, evenly spaced hues beyond."""
    names = sorted(set(rows))
    if len(names) <= 10:
        palette = plt.get_cmap("tab10").colors
    elif len(names) <= 20:
        palette = plt.get_cmap("tab20").colors
    else:
        palette = [plt.get_cmap("hsv")(i / len(names)) for i in range(len(names))]
    return {name: tuple(palette[i]) for i, name in enumerate(names)}


def _sampling_style(name: str) -> tuple[str, str]:
    return SAMPLING_STYLE.get(name, (":", "^"))


def _save(fig: plt.Figure, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".pdf"), stem.with_suffix(".png")]
    for path in paths:
        fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return paths


def _legend_entries(runs: pd.DataFrame, colours: dict[str, tuple[float, ...]],
                    frontier: bool = False) -> list[Line2D]:
    """The legend: a colour per backbone entry, a line style and marker per sampler, chance, frontier."""
    entries = []
    for row, label in sorted(dict(zip(runs["row"], runs["row_label"], strict=True)).items()):
        text = textwrap.fill(label.replace(" (random weights)", ""), LEGEND_WIDTH, subsequent_indent="  ")
        entries.append(Line2D([], [], color=colours[row], linewidth=2.0, label=text))
    for sampling in sorted(runs["sampling"].unique()):
        line, marker = _sampling_style(sampling)
        style = Line2D([], [], color="0.3", linestyle=line, marker=marker, label=f"{sampling} sampling")
        entries.append(style)
    if len(runs["chance"].unique()) == 1:
        entries.append(Line2D([], [], color="0.5", linewidth=0.6, linestyle=":", label="chance"))
    if frontier:
        entries.append(Line2D([], [], color="black", linewidth=0.8, label="efficiency frontier"))
    return entries


def _figure(entries: list[Line2D]) -> tuple[plt.Figure, plt.Axes]:
    """A column-wide figure, taller by the legend's lines so the legend fits inside the canvas."""
    lines = sum(e.get_label().count("\n") + 1 for e in entries)
    height = FIGURE_HEIGHT + LEGEND_LINE * lines
    return plt.subplots(figsize=(COLUMN_WIDTH, height), layout="constrained")


def _legend(fig: plt.Figure, entries: list[Line2D]) -> None:
    fig.legend(handles=entries, loc="outside lower center", ncol=1, frameon=False)


def _chance(ax: plt.Axes, runs: pd.DataFrame) -> None:
    chance = runs["chance"].unique()
    if len(chance) == 1:
        ax.axhline(chance[0], color="0.5", linewidth=0.6, linestyle=":")


def accuracy_vs_budget(runs: pd.DataFrame, stem: str | Path, metric: str = "top1",
                       colours: dict[str, tuple[float, ...]] | None = None) -> list[Path]:
    """Accuracy vs patch budget (log2 axis) for one task: a line per backbone entry x sampling, with the
    bootstrap 95% intervals as error bars (top-1 only). Repeats sharing a point are averaged."""
    _one_task(runs)
    colours = colours or backbone_colours(runs["row"])
    with plt.rc_context(STYLE):
        entries = _legend_entries(runs, colours)
        fig, ax = _figure(entries)
        lines = runs.groupby(["row", "sampling"], sort=True)
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
            ax.errorbar(points.index * dodge, points[metric], yerr=errors, color=colours[backbone],
                        linestyle=line, marker=marker, capsize=1.5, elinewidth=0.6)
        _chance(ax, runs)
        ax.set_xscale("log", base=2)
        budgets = sorted(runs["budget"].unique())
        ax.set_xticks(budgets, [str(int(b)) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("patch budget per clip" + ("\n(error bars: 95% bootstrap interval over test clips)"
                                                  if metric == "top1" else ""))
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.set_title(_title(runs, f"{METRIC_LABELS.get(metric, metric)} vs patch budget"))
        _legend(fig, entries)
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


def accuracy_vs_cost(runs: pd.DataFrame, stem: str | Path, cost: str = "tokens", metric: str = "top1",
                     colours: dict[str, tuple[float, ...]] | None = None) -> list[Path]:
    """Accuracy vs cost per clip (tokens, FLOPs or measured encode seconds, log axis) for one task:
    every run a point; for load-free costs (`LOAD_FREE_COSTS`) the efficiency frontier (runs nothing
    cheaper beats) as a step line."""
    _one_task(runs)
    runs = runs.dropna(subset=[cost, metric])
    colours = colours or backbone_colours(runs["row"])
    frontier = cost in LOAD_FREE_COSTS
    with plt.rc_context(STYLE):
        entries = _legend_entries(runs, colours, frontier)
        fig, ax = _figure(entries)
        for (backbone, sampling), group in runs.groupby(["row", "sampling"], sort=True):
            _, marker = _sampling_style(sampling)
            errors = None
            if metric == "top1":
                errors = np.stack([group[metric] - group["top1_low"], group["top1_high"] - group[metric]])
                errors = errors.clip(min=0.0)
            ax.errorbar(group[cost], group[metric], yerr=errors, color=colours[backbone],
                        marker=marker, linestyle="none", capsize=1.5, elinewidth=0.6, zorder=3)
        if frontier:
            front = runs.iloc[pareto_front(runs[cost].to_numpy(float), runs[metric].to_numpy(float))]
            ax.step(front[cost], front[metric], where="post", color="black", linewidth=0.8)
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
        _legend(fig, entries)
        return _save(fig, Path(stem))


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
    colours = backbone_colours(runs["row"])  # one colour per entry in every figure of the report
    for task, group in runs.groupby("task", sort=True):
        paths += accuracy_vs_budget(group, out / f"{metric}_vs_budget_{task}", metric, colours)
        paths += accuracy_vs_cost(group, out / f"{metric}_vs_tokens_{task}", "tokens", metric, colours)
        for cost, name in (("flops_per_clip", "flops"), ("seconds_per_clip", "time")):
            if cost in group and group[cost].notna().any():
                paths += accuracy_vs_cost(group, out / f"{metric}_vs_{name}_{task}", cost, metric, colours)
    return paths
