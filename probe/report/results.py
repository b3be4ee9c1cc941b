"""From run records to rows and tables: one pandas frame of runs, paper-style pivots, Markdown/CSV/LaTeX.

Every record found is a row; nothing is dropped. Runs that share a configuration (the semantic config
hash, see `probe.record.config_hash`) are listed by `repeated_runs` as duplicates (same numbers) or
conflicts (different numbers). A table cell averages only repeats: runs whose whole resolved config and
weights agree, seeds aside (`repeat_key`); runs of one backbone that differ in anything else (weights,
epochs, protocol, ...) are rows of their own, named by the keys that differ (`name_rows`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from probe.record import RECORD_FILE, canonical_json, config_hash, semantic_config
from probe.training.evaluate import paired_bootstrap, read_outcomes

COLUMNS = (
    ("backbone", "backbone"),
    ("task", "task"),
    ("sampling", "sampling"),
    ("budget", "budget"),
    ("tokens", "tokens/clip"),
    ("top1", "top-1"),
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


# What the top-1 of a run is, by the protocol's selection rule (the record's `protocol.selection`).
ORIGINAL_NUMBER = "max over test epochs (original protocol)"
VAL_NUMBER = "top-1 (val-selected)"


def _protocol(record: dict[str, Any]) -> dict[str, Any]:
    """The record's protocol block; records of `probe.from_run` hold a sentence instead of a block."""
    protocol = record.get("protocol", {})
    return protocol if isinstance(protocol, dict) else {"name": "stored probe", "selection": protocol}


def _selection(record: dict[str, Any], val_fraction: float | None) -> str:
    """How the reported probe was chosen: the record's protocol says so (older records: on validation)."""
    rule = _protocol(record).get("selection", "val")
    if rule == "val" and val_fraction is not None:
        return f"val ({val_fraction:.0%} of train)"
    return rule


def _number(selection: str) -> str:
    """What a run's top-1 is: the original protocol's maximum over test epochs, or val-selected."""
    if selection.startswith("max over test epochs"):
        return ORIGINAL_NUMBER
    return VAL_NUMBER if selection.startswith("val") else selection


def _flat(node: Any, where: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{where}{key}.").items()}
    return {where[:-1]: node}


# Keys that differ between repeats of one configuration: the seed and the keys that follow it (a generated
# task's data, the random sampler's test draws).
SEED_KEYS = ("seed", "task.args.seed", "sampling.args.seed")


def repeat_spec(record: dict[str, Any]) -> dict[str, Any]:
    """Everything that makes a run's number what it is except its seed, flat (`probe.recipe.epochs`):
    the semantic config and what it ran on (`weights` fingerprint, compute `dtype`, the clips' digests
    unless the task is generated from the seed). Runs with equal specs are repeats."""
    config = semantic_config(record.get("config", {}))
    identity = dict(record.get("identity") or {})
    identity.setdefault("weights", record["backbone"].get("fingerprint"))
    if "seed" in config.get("task", {}).get("args", {}):
        identity = {k: v for k, v in identity.items() if not k.endswith("_clips")}
    spec = {k: v for k, v in _flat(config).items() if k not in SEED_KEYS}
    spec["protocol.name"] = _protocol(record).get("name")
    return {**spec, **{k: v for k, v in identity.items() if v is not None}}


def record_row(record: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one run record that go into tables (accuracies in %, cost per test clip)."""
    metrics = record["metrics"]
    test = metrics["test"]
    grid_max = metrics.get("best_test_over_grid") or {}
    random_weights = bool(record["backbone"]["random_weights"])
    config = record.get("config", {})
    eval_clips = record["data"].get("eval_clips") or 0
    extract_eval_s = record.get("timings", {}).get("extract_eval_s")
    seconds = extract_eval_s / eval_clips if extract_eval_s is not None and eval_clips else None
    cost = (record.get("cost") or {}).get("eval") or {}
    if cost.get("encode_s_per_clip") is not None:
        seconds = cost["encode_s_per_clip"]
    sampling = record["sampling"]
    # Other tokens of one model get a row of their own: the original suite's settings
    # (`backbone.args.reference`), kept class/register tokens (`keep_prefix`) and multi-layer features
    # (`backbone.args.layers`).
    kind = record["backbone"]
    tokens = REFERENCE if kind.get("reference") else PREFIX if kind.get("prefix_kept") else ""
    layers = kind.get("layers")
    backbone = kind["name"] + tokens + (f"{BLOCKS}{','.join(map(str, layers))}" if layers else "")
    val_fraction = config.get("probe", {}).get("recipe", {}).get("val_fraction")
    selection = _selection(record, val_fraction)
    coverage = metrics.get("original_coverage") or {}
    spec = repeat_spec(record)
    return {
        "run_id": record.get("run_id"),
        "config_hash": config_hash(config, record.get("identity")) if config else None,
        # Equal for repeats (same config and weights, seeds aside): what a table cell may average.
        "repeat_key": hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:10],
        "spec": canonical_json(spec),  # dropped from runs.csv; `name_rows` reads it
        "backbone": backbone,  # the config key: what --where and the CSV use
        "weights": record["backbone"].get("fingerprint"),
        "checkpoint": config.get("backbone", {}).get("args", {}).get("checkpoint"),
        "protocol": _protocol(record).get("name"),
        "epochs": config.get("probe", {}).get("recipe", {}).get("epochs"),
        "random_weights": random_weights,
        "backbone_label": backbone_label(backbone, random_weights),
        "task": record["data"]["task"],
        "sampling": sampling["name"],
        "budget": sampling["budget"],
        "frames_equiv": sampling.get("frames_equiv"),
        "setting": _setting(sampling),
        "grid": "x".join(map(str, sampling["grid"])) if sampling.get("grid") else None,
        "area_fraction": sampling.get("area_fraction"),
        "tokens": sampling["tokens_per_clip"],
        "probe": config.get("probe", {}).get("name"),
        "seed": config.get("seed"),
        "selection": selection,
        "number": _number(selection),  # what top1 is: val-selected, or the original's max over epochs
        "selected_probe": (metrics.get("selected") or {}).get("probe"),
        "top1": test["top1"],
        "top1_low": test["top1_low"],
        "top1_high": test["top1_high"],
        "top5": test["top5"],
        "mean_class": test["mean_class"],
        "grid_max": grid_max["top1"] if grid_max else None,
        # protocol=original: the number its 8-rank test loader would read (a permuted ~65% of the clips
        # per epoch), and the full-set top-1 at that epoch.
        "original_coverage_top1": coverage.get("top1"),
        "full_set_top1": coverage.get("full_set_top1"),
        "coverage_epoch": coverage.get("epoch"),
        "chance": 100 / record["data"]["num_classes"],
        "num_test": metrics.get("num_test"),
        # Encode time of a test clip (all views), measured when its feature store was written (records
        # without a store cost: this run's extraction time, tiny when features were reused).
        "seconds_per_clip": seconds,
        "frames_per_clip": cost.get("frames_encoded_per_clip"),
        "tokens_encoded": cost.get("tokens_encoded_per_clip"),
        "flops_per_clip": cost.get("flops_per_clip"),
        "written_at": record.get("written_at"),
    }


# Human names of the backbone families, by config-key prefix (tables and figures; CSVs keep the keys).
FAMILY_NAMES = {
    "onevision": "OneVision-Encoder",
    "siglip2": "SigLIP2",
    "siglip": "SigLIP",
    "dinov3": "DINOv3",
    "dinov2": "DINOv2",
    "dinov2reg": "DINOv2 with registers",
    "qwen3vit": "Qwen3-VL ViT",
    "clip": "CLIP",
    "metaclip": "MetaCLIP",
    "metaclip2": "MetaCLIP 2",
    "aimv2": "AIMv2",
    "vjepa2": "V-JEPA 2",
    "timm": "timm",
    "openclip": "open_clip",
}


# Appended to the backbone key of runs at the original suite's settings (`backbone.args.reference=true`),
# of runs keeping class/register tokens otherwise (`keep_prefix=true`) and of multi-layer runs
# (`backbone.args.layers=[17,19]` -> `@blocks17,19`).
REFERENCE = "@reference"
PREFIX = "@prefix"
BLOCKS = "@blocks"


def backbone_label(name: str, random_weights: bool = False) -> str:
    """`onevision_large` -> "OneVision-Encoder large"; " (original suite's tokens)" for a `@reference`
    key, " (class/register tokens kept)" for `@prefix`, " (blocks 17, 19)" for `@blocks17,19`,
    " (random weights)" where they are."""
    name, _, blocks = name.partition(BLOCKS)
    name, reference, _ = name.partition(REFERENCE)
    name, prefix, _ = name.partition(PREFIX)
    family, _, size = name.partition("_")
    label = f"{FAMILY_NAMES[family]} {size.replace('_', ' ')}".strip() if family in FAMILY_NAMES else name
    return (label + (" (original suite's tokens)" if reference else "")
            + (" (class/register tokens kept)" if prefix else "")
            + (f" (blocks {blocks.replace(',', ', ')})" if blocks else "")
            + (" (random weights)" if random_weights else ""))


def _setting(sampling: dict[str, Any]) -> str:
    """What backbones are compared at: uniform runs by frames (patches per frame differ between
    backbones), the others by patch budget."""
    if sampling["name"] == "uniform" and sampling.get("frames_equiv"):
        return f"uniform_{sampling['frames_equiv']:g}f"
    return f"{sampling['name']}_{sampling['budget']}p"


def _cell(row: dict[str, Any], key: str) -> str:
    value = row["backbone_label"] if key == "backbone" else row[key]
    if key == "top1":
        return f"{value:.1f} [{row['top1_low']:.1f}, {row['top1_high']:.1f}]"
    if isinstance(value, float):
        return f"{value:.1f}"
    return "-" if value is None else str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of runs (top-1 with its bootstrap 95% interval), its top-1 column titled by what
    the number is (val-selected, or the original protocol's maximum over test epochs)."""
    numbers = sorted({r["number"] for r in rows})
    columns = [(k, numbers[0] if k == "top1" and len(numbers) == 1 else t) for k, t in COLUMNS]
    if len(numbers) > 1:
        columns.insert(columns.index(("top1", "top-1")) + 1, ("number", "top-1 is"))
    header = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    lines = [header, rule] + ["| " + " | ".join(_cell(r, k) for k, _ in columns) + " |" for r in rows]
    chance = sorted({f"{r['chance']:.1f}" for r in rows})
    lines.append(
        f"\nchance: {', '.join(chance)}%. *The best test top-1 over all epochs and probes, chosen on the "
        "test set (optimistic)."
        + (" A val-selected top-1 selects probe and epoch on validation." if VAL_NUMBER in numbers else "")
    )
    for r in rows:
        if r.get("original_coverage_top1") is not None:
            lines.append(
                f"{r['run_id']}: {ORIGINAL_NUMBER} {r['top1']:.1f} on the full test set; the original's "
                f"8-rank test loader reads {r['original_coverage_top1']:.1f} at epoch {r['coverage_epoch']} "
                f"(full set at that epoch: {r['full_set_top1']:.1f})"
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
    """One row per run record found under `folders`, with the record's folder (see `record_row`), and
    its table row (`name_rows`)."""
    folders = list(folders)
    rows = [{**record_row(load_record(p)), "path": str(p.parent)} for p in find_records(folders)]
    if not rows:
        raise FileNotFoundError(f"no {RECORD_FILE} under {', '.join(map(str, folders))}; run `ovprobe` first")
    order = ["task", "backbone", "sampling", "budget", "run_id"]
    return name_rows(pd.DataFrame(rows).sort_values(order, ignore_index=True))


# The coordinates of a table cell: runs that share them and differ in anything else are not repeats.
CELL = ["backbone", "task", "sampling", "budget", "frames_equiv"]


def name_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with each run's table row. Among the runs of a backbone, the keys that differ within a
    cell set rows apart; a run's `variant` names the protocol and the weights where they differ, and
    every other such key where its value is not the backbone's most common one ("" when runs never
    differ). `row` is the backbone key plus the variant, `row_label` its display name (at most
    `SHOWN_KEYS` keys, then how many more). Repeats (equal `repeat_key`) always share a row; runs that
    are not never do."""
    specs = [{k: canonical_json(v) for k, v in json.loads(s).items()} for s in frame["spec"]]
    differing: dict[str, set[str]] = {}
    for cell, index in frame.groupby(CELL, dropna=False, sort=False).groups.items():
        members = [specs[i] for i in index]
        keys = set().union(*members)
        differing.setdefault(cell[0], set()).update(k for k in keys if len({m.get(k) for m in members}) > 1)
    usual = {}  # per backbone and differing key, its most common value
    for backbone, index in frame.groupby("backbone", sort=False).groups.items():
        counts = {k: Counter(specs[i].get(k) for i in index) for k in differing[backbone]}
        usual[backbone] = {k: count.most_common(1)[0][0] for k, count in counts.items()}
    variants, shown = [], []
    for spec, backbone in zip(specs, frame["backbone"], strict=True):
        keys = [k for k in differing[backbone] if k in FIRST_KEYS or spec.get(k) != usual[backbone][k]]
        keys.sort(key=lambda k: (FIRST_KEYS.index(k) if k in FIRST_KEYS else len(FIRST_KEYS), k))
        named = [f"{k}={_short(spec.get(k))}" for k in keys]
        variants.append(", ".join(named))
        more = f", +{len(named) - SHOWN_KEYS} more keys" if len(named) > SHOWN_KEYS else ""
        shown.append(", ".join(named[:SHOWN_KEYS]) + more)
    return frame.assign(
        variant=variants,
        row=[b + (f" [{v}]" if v else "") for b, v in zip(frame["backbone"], variants, strict=True)],
        row_label=[b + (f" [{v}]" if v else "") for b, v in zip(frame["backbone_label"], shown, strict=True)],
    )


# Differing keys a row names first, and how many keys a row label shows (`variant` holds them all).
FIRST_KEYS = ("protocol.name", "weights", "backbone.args.checkpoint")
SHOWN_KEYS = 4


def _short(value: str | None) -> str:
    """A config value (canonical JSON) as a row names it: long ones (paths) by their last 24 characters."""
    text = "null" if value is None else value.strip('"')
    return text if len(text) <= 24 else "..." + text[-24:]


def apply_filters(frame: pd.DataFrame, filters: Iterable[str]) -> pd.DataFrame:
    """Keep rows matching every `column=value[,value...]` (or `column!=value[,...]`) filter."""
    for text in filters:
        negate = "!=" in text
        column, sep, values = text.partition("!=" if negate else "=")
        if not sep or column not in frame.columns:
            raise ValueError(
                f"filter {text!r}: use COLUMN=VALUE[,VALUE]; columns: {', '.join(frame.columns)}"
            )
        wanted = {v.strip() for v in values.split(",")}
        present = frame[column].map(_as_text)
        if not negate and not present.isin(wanted).any():
            raise ValueError(
                f"filter {text!r} matches no run; {column} holds: {', '.join(sorted(set(present)))}"
            )
        match = present.isin(wanted)
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
    """A pivot: mean values, how many runs each cell averages, and a title; for top-1 the cells' 95%
    bootstrap intervals (`low`, `high`: the runs' bounds, averaged where a cell averages runs).
    `compare` says which cells compete for bold: along each "column" (backbones on a task) or "row"
    (samplings at a budget); a cell is bold only when its interval lies above every competitor's.
    Optionally a difference between two of its columns per row (`difference`, `paired_difference`),
    shown after them. `labels`: display names for index values (config keys stay in the CSV)."""

    title: str
    values: pd.DataFrame
    counts: pd.DataFrame
    low: pd.DataFrame | None = None
    high: pd.DataFrame | None = None
    compare: str = "column"
    difference: pd.DataFrame | None = None
    difference_label: str = ""
    labels: dict[Any, str] = field(default_factory=dict)


# The original suite's "Avg (8 sets)" column: the mean over its eight tasks (our task names), shown beside
# the average of all tasks when a backbones x tasks table holds all eight.
PAPER_TASKS = (
    "ssv2", "diving48", "perception_test", "epic_verb", "epic_noun", "hmdb51", "kinetics400", "charades_ego"
)
PAPER_AVERAGE = "Avg (8 sets)"


def pivot(frame: pd.DataFrame, index: str | list[str], columns: str | list[str], metric: str = "top1",
          title: str = "", average: bool = False, compare: str = "column") -> Table:
    """`metric` averaged over the runs of each (index, columns) cell; `average` adds a mean column (and
    the original suite's "Avg (8 sets)" when its eight tasks are columns)."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of: {', '.join(METRICS)}")

    def table(values: str, how: str = "mean") -> pd.DataFrame:
        return frame.pivot_table(index=index, columns=columns, values=values, aggfunc=how)

    values = table(metric)
    counts = table(metric, "count").reindex_like(values).fillna(0).astype(int)
    low = high = None
    if metric == "top1":
        low, high = (table(k).reindex_like(values) for k in ("top1_low", "top1_high"))
    if average:
        means = {"average": list(values.columns)}
        if set(PAPER_TASKS) <= set(values.columns):
            means[PAPER_AVERAGE] = list(PAPER_TASKS)
        for name, tasks in means.items():
            values[name] = values[tasks].mean(axis=1, skipna=False)
            counts[name] = 1
            if low is not None:  # no interval for an average of tasks: it is never bold
                low[name], high[name] = np.nan, np.nan
    return Table(title or METRICS[metric], values, counts, low, high, compare)


def paper_tables(frame: pd.DataFrame, metric: str = "top1") -> dict[str, Table]:
    """The paper's tables: backbones x tasks (+ average) per setting (uniform: N frames, codec: N
    patches), and budgets x sampling per backbone and task. Keys are file stems."""
    tables: dict[str, Table] = {}
    labels = dict(zip(frame["row"], frame["row_label"], strict=True))
    order = sorted(frame["setting"].unique(), key=_setting_order)
    for setting in order:
        runs = frame[frame["setting"] == setting]
        sampling, amount = setting.rsplit("_", 1)
        count, unit = amount[:-1], "frame" if amount.endswith("f") else "patch"
        amount = f"{count} {unit}" + ("" if count == "1" else "es" if unit == "patch" else "s")
        for grid, group in _by_grid(runs, unit):
            name = f"backbones_tasks_{setting}" + (f"_{grid}grid" if grid else "")
            rows = group.drop(columns="backbone").rename(columns={"row": "backbone"})  # one row per entry
            tables[name] = pivot(
                rows, "backbone", "task", metric, average=True,
                title=f"{_metric_title(group, metric)}: backbones x tasks, {sampling} sampling, {amount}"
                + (f" of a {grid} patch grid" if grid else ""),
            )
            tables[name].labels = labels
    for (task, backbone), runs in frame.groupby(["task", "row"], sort=True):
        table = pivot(
            runs, ["budget", "frames_equiv"], "sampling", metric, compare="row",
            title=f"{_metric_title(runs, metric)}: {labels[backbone]} on {task}, budget (patches, frames) "
            "x sampling",
        )
        if metric == "top1" and set(CONTROL) <= set(runs["sampling"]):
            table.difference = paired_difference(runs, *CONTROL, ["budget", "frames_equiv"])
            table.difference_label = " - ".join(CONTROL)
        variant = runs["variant"].iloc[0]  # a row of its own: its file stem ends in the variant's hash
        suffix = f"_{hashlib.sha256(variant.encode()).hexdigest()[:8]}" if variant else ""
        tables[f"budgets_{task}_{_slug(runs['backbone'].iloc[0])}{suffix}"] = table
    return tables


def _metric_title(runs: pd.DataFrame, metric: str) -> str:
    """What a table's numbers are; top-1 under protocol=original is its maximum over test epochs."""
    if metric != "top1" or ORIGINAL_NUMBER not in set(runs["number"]):
        return METRICS[metric]
    if set(runs["number"]) == {ORIGINAL_NUMBER}:
        return f"top-1 (%), {ORIGINAL_NUMBER}"
    return f"top-1 (%): val-selected, or {ORIGINAL_NUMBER} in rows of protocol.name=original"


def coverage_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The protocol=original runs that carry the original loader's test coverage: its number beside the
    full-set top-1 at the same epoch."""
    if "original_coverage_top1" not in frame or frame["original_coverage_top1"].isna().all():
        return frame.iloc[:0]
    runs = frame[frame["original_coverage_top1"].notna()]
    return runs[["run_id", "row", "task", "setting", "top1", "coverage_epoch", "original_coverage_top1",
                 "full_set_top1"]].rename(columns={
        "top1": ORIGINAL_NUMBER, "coverage_epoch": "epoch",
        "original_coverage_top1": "as the original's 8-rank test loader reads it",
        "full_set_top1": "full test set at that epoch"})


# The comparison the budgets tables carry: does codec selection beat random patches at the same budget?
CONTROL = ("codec", "random")
DIFFERENCE_RESAMPLES = 1000


def paired_difference(frame: pd.DataFrame, a: str, b: str, index: list[str],
                      resamples: int = DIFFERENCE_RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """Top-1 of sampling `a` minus sampling `b` per `index` row, with a 95% paired bootstrap interval
    over the test clips (both runs resampled on the same clips, from the records' `test_clips`).

    Rows where either sampling is missing are left out. Several runs of one sampling in a row are
    averaged per clip. Where the records cannot be paired (older records without per-clip outcomes, or
    runs on different clips), the difference of the table's numbers is given and `low`/`high` are NaN
    with `paired` False.
    """
    rows = {}
    for key, runs in frame[frame["sampling"].isin([a, b])].groupby(index, sort=True):
        sides = [runs[runs["sampling"] == name] for name in (a, b)]
        if any(side.empty for side in sides):
            continue
        outcomes = [[_outcomes(path) for path in side["path"]] for side in sides]
        entries = [o for side in outcomes for o in side]
        paired = all(o is not None for o in entries) and len({o[0] for o in entries}) == 1
        if paired:
            per_clip = [np.mean([o[1] for o in side], axis=0) for side in outcomes]
            change = per_clip[0] - per_clip[1]
            low, high = paired_bootstrap(change, resamples, seed)
            rows[key] = (100.0 * float(change.mean()), low, high, True)
        else:
            rows[key] = (sides[0]["top1"].mean() - sides[1]["top1"].mean(), np.nan, np.nan, False)
    return pd.DataFrame(list(rows.values()), index=pd.MultiIndex.from_tuples(list(rows), names=index),
                        columns=["difference", "low", "high", "paired"])


def _outcomes(folder: str | Path) -> tuple[str, np.ndarray] | None:
    """(clip-id hash, per-clip correct) from a run's record, or None for records without them."""
    entry = json.loads((Path(folder) / RECORD_FILE).read_text()).get("test_clips")
    return None if entry is None else (entry["ids_sha256"], read_outcomes(entry))


def _setting_order(setting: str) -> tuple[str, float, str]:
    """"uniform_2f" before "uniform_16f", "codec_256p" before "codec_2048p": by sampling, then number."""
    sampling, amount = setting.rsplit("_", 1)
    return sampling, float(amount[:-1]), amount[-1]


def _by_grid(runs: pd.DataFrame, unit: str) -> list[tuple[str | None, pd.DataFrame]]:
    """A patch budget covers the same frame regions only on the same patch grid: runs of one budget on
    several grids are split by grid (named); frame settings and single-grid budgets stay whole."""
    grids = runs["grid"].dropna().unique() if "grid" in runs else []
    if unit == "frame" or len(grids) < 2:
        return [(None, runs)]
    return [(str(grid), group) for grid, group in runs.groupby(runs["grid"].fillna("unknown"), sort=True)]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text).strip("_")


def _best(table: Table) -> pd.DataFrame:
    """True where a cell is the best of its competitors (`table.compare`) beyond its interval: its lower
    bound is above every competitor's upper bound. Without intervals nothing is bold."""
    best = pd.DataFrame(False, index=table.values.index, columns=table.values.columns)
    if table.low is None:
        return best
    axis = 0 if table.compare == "column" else 1
    values, low, high = (t.to_numpy(float) for t in (table.values, table.low, table.high))
    if axis == 1:
        values, low, high = values.T, low.T, high.T
    flags = np.zeros(values.shape, bool)
    for j in range(values.shape[1]):
        present = np.flatnonzero(~np.isnan(values[:, j]) & ~np.isnan(low[:, j]))
        if len(present) < 2:
            continue
        top = present[np.argmax(values[present, j])]
        others = present[present != top]
        flags[top, j] = bool(np.all(low[top, j] > high[others, j]))
    best.iloc[:, :] = flags if axis == 0 else flags.T
    return best


def _labels(index: pd.Index, names: dict[Any, str] | None = None) -> list[str]:
    names = names or {}
    return [names.get(i, " / ".join(_fmt(v) for v in (i if isinstance(i, tuple) else (i,)))) for i in index]


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
            text = f"{value:.1f}"
            if table.low is not None and not pd.isna(table.low.iat[r, c]):
                text += f" [{table.low.iat[r, c]:.1f}, {table.high.iat[r, c]:.1f}]"
            text = bold.format(text) if best.iat[r, c] else text
            cells.append(text + (f" (n={count})" if count > 1 else ""))
        rows.append(cells)
    return rows


def _difference_cells(table: Table) -> tuple[list[str], list[list[str]]]:
    """The difference column's header and cells ("+2.5 [0.6, 4.4]"), or nothing without one."""
    diff = table.difference
    if diff is None or diff.empty:
        return [], [[] for _ in range(len(table.values))]
    cells = []
    for key in table.values.index:
        if key not in diff.index:
            cells.append(["-"])
            continue
        row = diff.loc[key]
        interval = f" [{row['low']:+.1f}, {row['high']:+.1f}]" if row["paired"] else " (unpaired)"
        cells.append([f"{row['difference']:+.1f}{interval}"])
    return [f"{table.difference_label} (95% paired bootstrap)"], cells


def caption(table: Table) -> str:
    """What the numbers and the bold mean, for the note under a table."""
    text = table.title + "."
    if table.low is not None:
        best = "the best of its column" if table.compare == "column" else "the best sampling at its budget"
        text += (f" Brackets: 95% bootstrap interval over the test clips. Bold: {best}, with an interval "
                 "above all others' (none where intervals overlap).")
    return text


def to_markdown(table: Table) -> str:
    """The table in Markdown, with its title above and what the brackets and bold mean below."""
    extra_head, extra = _difference_cells(table)
    head = [" / ".join(_names(table.values.index)), *_labels(table.values.columns), *extra_head]
    lines = [f"**{table.title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = zip(_labels(table.values.index, table.labels), _cells(table, "**{}**"), extra, strict=True)
    for label, cells, more in rows:
        lines.append("| " + " | ".join([label, *cells, *more]) + " |")
    lines += ["", caption(table)]
    return "\n".join(lines)


def to_latex(table: Table) -> str:
    """A booktabs table with its caption (needs `\\usepackage{booktabs}`); every text cell escaped."""
    extra_head, extra = _difference_cells(table)
    head = [" / ".join(_names(table.values.index)), *_labels(table.values.columns), *extra_head]
    lines = [
        "\\begin{table}",
        "\\centering",
        f"\\caption{{{_tex(caption(table))}}}",
        "\\begin{tabular}{l" + "r" * (len(head) - 1) + "}",
        "\\toprule",
        " & ".join(_tex(h) for h in head) + " \\\\",
        "\\midrule",
    ]
    cells = _cells(table, "\\textbf{{{}}}")
    for label, row, more in zip(_labels(table.values.index, table.labels), cells, extra, strict=True):
        lines.append(" & ".join([_tex(label), *row, *map(_tex, more)]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """Plain numbers (no bold, no counts) for spreadsheets; column names joined with '/'."""
    values = table.values.copy()
    values.columns = _labels(values.columns)
    if table.difference is not None and not table.difference.empty:
        for column in ("difference", "low", "high"):
            name = table.difference_label + ("" if column == "difference" else f" {column}")
            values[name] = table.difference[column].reindex(values.index)
    return values.to_csv(float_format="%.2f")


def _names(index: pd.Index) -> list[str]:
    return [str(n) for n in index.names]


_TEX = {"\\": r"\textbackslash{}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        **{c: "\\" + c for c in "&%$#_{}"}}


def _tex(text: str) -> str:
    """`text` as LaTeX prints it literally."""
    return "".join(_TEX.get(c, c) for c in str(text))


def frame_to_markdown(frame: pd.DataFrame) -> str:
    """A plain Markdown listing of a frame's rows (floats to one decimal)."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join("-" if pd.isna(v) else f"{v:.1f}" if isinstance(v, float) else str(v)
                                       for v in row) + " |")
    return "\n".join(lines)
