"""From run records to rows and tables: one pandas frame of runs, paper-style pivots, Markdown/CSV/LaTeX.

Every record found is a row; nothing is dropped. Runs that share a configuration (the semantic config
hash, see `probe.record.config_hash`) are listed by `repeated_runs` as duplicates (same numbers) or
conflicts (different numbers), and pivot cells that average several runs say how many.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from probe.record import RECORD_FILE, config_hash

COLUMNS = (
    ("backbone", "backbone"),
    ("task", "task"),
    ("sampling", "sampling"),
    ("budget", "budget"),
    ("tokens", "tokens/clip"),
    ("top1", "top-1 (val-selected)"),
    ("top5", "top-5"),
    ("mean_class", "mean class"),
    ("grid_max", "max test top-1 over grid*"),
)
# The numbers a pivot can show, with their titles.
METRICS = {
    "top1": "top-1 (%)",
    "top5": "top-5 (%)",
    "mean_class": "mean-class accuracy (%)",
    "grid_max": "max test top-1 over the grid (%), chosen on test",
}
# Columns whose values must agree for two runs with one configuration to be duplicates, not conflicts.
RESULT_COLUMNS = ("top1", "top5", "mean_class", "grid_max", "tokens")


class RecordError(ValueError):
    """A record file that cannot be read as a run record."""


def _selection(record: dict[str, Any], val_fraction: float | None) -> str:
    """How the reported probe was chosen: the record's protocol says so (older records: on validation)."""
    rule = record.get("protocol", {}).get("selection", "val")
    if rule == "val" and val_fraction is not None:
        return f"val ({val_fraction:.0%} of train)"
    return rule


def record_row(record: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one run record that go into tables (accuracies in %, cost per test clip)."""
    metrics = record["metrics"]
    test = metrics["test"]
    grid_max = metrics.get("best_test_over_grid") or {}
    backbone = record["backbone"]["name"] + (" (random)" if record["backbone"]["random_weights"] else "")
    config = record.get("config", {})
    eval_clips = record["data"].get("eval_clips") or 0
    extract_eval_s = record.get("timings", {}).get("extract_eval_s")
    seconds = extract_eval_s / eval_clips if extract_eval_s is not None and eval_clips else None
    sampling = record["sampling"]
    val_fraction = config.get("probe", {}).get("recipe", {}).get("val_fraction")
    return {
        "run_id": record.get("run_id"),
        "config_hash": config_hash(config) if config else None,
        "backbone": backbone,
        "task": record["data"]["task"],
        "sampling": sampling["name"],
        "budget": sampling["budget"],
        "frames_equiv": sampling.get("frames_equiv"),
        "setting": _setting(sampling),
        "tokens": sampling["tokens_per_clip"],
        "probe": config.get("probe", {}).get("name"),
        "seed": config.get("seed"),
        "selection": _selection(record, val_fraction),
        "selected_probe": metrics.get("selected", {}).get("probe"),
        "top1": test["top1"],
        "top1_low": test["top1_low"],
        "top1_high": test["top1_high"],
        "top5": test["top5"],
        "mean_class": test["mean_class"],
        "grid_max": grid_max["top1"] if grid_max else None,
        "chance": 100 / record["data"]["num_classes"],
        "num_test": metrics.get("num_test"),
        # Measured encoding time of the test split per clip (all views); tiny when features were reused.
        "seconds_per_clip": seconds,
        "written_at": record.get("written_at"),
    }


def _setting(sampling: dict[str, Any]) -> str:
    """What backbones are compared at: uniform runs by frames (patches per frame differ between
    backbones), the others by patch budget."""
    if sampling["name"] == "uniform" and sampling.get("frames_equiv"):
        return f"uniform_{sampling['frames_equiv']:g}f"
    return f"{sampling['name']}_{sampling['budget']}p"


def _cell(row: dict[str, Any], key: str) -> str:
    value = row[key]
    if key == "top1":
        return f"{value:.1f} [{row['top1_low']:.1f}, {row['top1_high']:.1f}]"
    if isinstance(value, float):
        return f"{value:.1f}"
    return "-" if value is None else str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of runs (top-1 with its bootstrap 95% interval)."""
    header = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    lines = [header, rule] + ["| " + " | ".join(_cell(r, k) for k, _ in COLUMNS) + " |" for r in rows]
    chance = sorted({f"{r['chance']:.1f}" for r in rows})
    lines.append(
        f"\nchance: {', '.join(chance)}%. *The original protocol's number: the best test top-1 over all "
        "epochs and probes, chosen on the test set (optimistic); the top-1 column selects on validation."
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- collecting records


def find_records(folders: Iterable[str | Path]) -> list[Path]:
    """Every `record.json` under the folders (sorted; Hydra's own `.hydra` folders are not runs)."""
    found: dict[Path, None] = {}  # in order, each file once even when folders overlap
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder {folder}; pass folders holding <run-id>/{RECORD_FILE}")
        runs = sorted(p.resolve() for p in folder.rglob(RECORD_FILE) if ".hydra" not in p.parts)
        found.update(dict.fromkeys(runs))
    return list(found)


def load_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
        record_row(record)
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise RecordError(f"{path} is not a complete run record ({type(err).__name__}: {err}); "
                          "move it out of the results folder or rerun it") from err
    return record


def runs_frame(folders: Iterable[str | Path]) -> pd.DataFrame:
    """One row per run record found under `folders`, with the record's folder (see `record_row`)."""
    folders = list(folders)
    rows = [{**record_row(load_record(p)), "path": str(p.parent)} for p in find_records(folders)]
    if not rows:
        raise FileNotFoundError(f"no {RECORD_FILE} under {', '.join(map(str, folders))}; run `ovprobe` first")
    frame = pd.DataFrame(rows)
    return frame.sort_values(["task", "backbone", "sampling", "budget", "run_id"], ignore_index=True)


def apply_filters(frame: pd.DataFrame, filters: Iterable[str]) -> pd.DataFrame:
    """Keep rows matching every `column=value[,value...]` (or `column!=value[,...]`) filter."""
    for text in filters:
        negate = "!=" in text
        column, sep, values = text.partition("!=" if negate else "=")
        if not sep or column not in frame.columns:
            raise ValueError(
                f"filter {text!r}: use COLUMN=VALUE[,VALUE]; columns: {', '.join(frame.columns)}"
            )
        match = frame[column].map(_as_text).isin({v.strip() for v in values.split(",")})
        frame = frame[~match if negate else match]
    return frame.reset_index(drop=True)


def _as_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def repeated_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs sharing a configuration, with `status` "duplicate" (same results) or "conflict" (different)."""
    shared = frame[frame.duplicated("config_hash", keep=False) & frame["config_hash"].notna()]
    if shared.empty:
        return shared.assign(status=pd.Series(dtype=str))
    results = shared.groupby("config_hash")[list(RESULT_COLUMNS)]
    differs = results.transform(lambda c: c.nunique(dropna=False) > 1).any(axis=1)
    status = differs.map({True: "conflict", False: "duplicate"})
    columns = ["status", "config_hash", "run_id", "backbone", "task", "sampling", "budget", *RESULT_COLUMNS]
    shown = shared.assign(status=status)[[*columns, "path"]]
    return shown.sort_values(["config_hash", "run_id"], ignore_index=True)


# ----------------------------------------------------------------------------- pivots


@dataclass
class Table:
    """A pivot: mean values, how many runs each cell averages, and a title."""

    title: str
    values: pd.DataFrame
    counts: pd.DataFrame


def pivot(frame: pd.DataFrame, index: str | list[str], columns: str | list[str], metric: str = "top1",
          title: str = "", average: bool = False) -> Table:
    """`metric` averaged over the runs of each (index, columns) cell; `average` adds a mean column."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of: {', '.join(METRICS)}")
    values = frame.pivot_table(index=index, columns=columns, values=metric, aggfunc="mean")
    counts = frame.pivot_table(index=index, columns=columns, values=metric, aggfunc="count")
    counts = counts.reindex_like(values).fillna(0).astype(int)
    if average:
        values["average"] = values.mean(axis=1, skipna=False)
        counts["average"] = 1
    return Table(title or METRICS[metric], values, counts)


def paper_tables(frame: pd.DataFrame, metric: str = "top1") -> dict[str, Table]:
    """The paper's tables: backbones x tasks (+ average) per setting (uniform: N frames, codec: N
    patches), and budgets x sampling per backbone and task. Keys are file stems."""
    tables: dict[str, Table] = {}
    for setting, runs in frame.groupby("setting", sort=True):
        sampling, amount = setting.rsplit("_", 1)
        count, unit = amount[:-1], "frame" if amount.endswith("f") else "patch"
        amount = f"{count} {unit}" + ("" if count == "1" else "es" if unit == "patch" else "s")
        tables[f"backbones_tasks_{setting}"] = pivot(
            runs, "backbone", "task", metric, average=True,
            title=f"{METRICS[metric]}: backbones x tasks, {sampling} sampling, {amount}",
        )
    for (task, backbone), runs in frame.groupby(["task", "backbone"], sort=True):
        tables[f"budgets_{task}_{_slug(backbone)}"] = pivot(
            runs, ["budget", "frames_equiv"], "sampling", metric,
            title=f"{METRICS[metric]}: {backbone} on {task}, budget (patches, frames) x sampling",
        )
    return tables


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text).strip("_")


def _best(table: Table) -> pd.DataFrame:
    """True where a cell holds its column's best value."""
    return table.values.eq(table.values.max(), axis=1) & table.values.notna()


def _labels(index: pd.Index) -> list[str]:
    return [" / ".join(_fmt(v) for v in (i if isinstance(i, tuple) else (i,))) for i in index]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _cells(table: Table, bold: str) -> list[list[str]]:
    best = _best(table)
    rows = []
    for r in range(len(table.values)):
        cells = []
        for c in range(table.values.shape[1]):
            value, count = table.values.iat[r, c], table.counts.iat[r, c]
            if pd.isna(value):
                cells.append("-")
                continue
            text = bold.format(f"{value:.1f}") if best.iat[r, c] else f"{value:.1f}"
            cells.append(text + (f" (n={count})" if count > 1 else ""))
        rows.append(cells)
    return rows


def to_markdown(table: Table) -> str:
    """The table in Markdown, best per column in bold, with its title above."""
    head = [" / ".join(_names(table.values.index)), *_labels(table.values.columns)]
    lines = [f"**{table.title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, cells in zip(_labels(table.values.index), _cells(table, "**{}**"), strict=True):
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def to_latex(table: Table) -> str:
    """A booktabs tabular, best per column in bold (needs `\\usepackage{booktabs}`)."""
    head = [" / ".join(_names(table.values.index)), *_labels(table.values.columns)]
    lines = [
        f"% {table.title}",
        "\\begin{tabular}{l" + "r" * table.values.shape[1] + "}",
        "\\toprule",
        " & ".join(_tex(h) for h in head) + " \\\\",
        "\\midrule",
    ]
    for label, cells in zip(_labels(table.values.index), _cells(table, "\\textbf{{{}}}"), strict=True):
        lines.append(" & ".join([_tex(label), *cells]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """Plain numbers (no bold, no counts) for spreadsheets; column names joined with '/'."""
    values = table.values.copy()
    values.columns = _labels(values.columns)
    return values.to_csv(float_format="%.2f")


def _names(index: pd.Index) -> list[str]:
    return [str(n) for n in index.names]


def _tex(text: str) -> str:
    for char in "\\&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text


def frame_to_markdown(frame: pd.DataFrame) -> str:
    """A plain Markdown listing of a frame's rows (floats to one decimal)."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join("-" if pd.isna(v) else f"{v:.1f}" if isinstance(v, float) else str(v)
                                       for v in row) + " |")
    return "\n".join(lines)
