"""From run records to rows and tables."""

from __future__ import annotations

from typing import Any

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


def record_row(record: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one run record that go into tables (accuracies in %)."""
    metrics = record["metrics"]
    test = metrics["test"]
    grid_max = metrics.get("best_test_over_grid") or {}
    backbone = record["backbone"]["name"] + (" (random)" if record["backbone"]["random_weights"] else "")
    return {
        "run_id": record.get("run_id"),
        "backbone": backbone,
        "task": record["data"]["task"],
        "sampling": record["sampling"]["name"],
        "budget": record["sampling"]["budget"],
        "tokens": record["sampling"]["tokens_per_clip"],
        "top1": test["top1"],
        "top1_low": test["top1_low"],
        "top1_high": test["top1_high"],
        "top5": test["top5"],
        "mean_class": test["mean_class"],
        "grid_max": grid_max["top1"] if grid_max else None,
        "chance": 100 / record["data"]["num_classes"],
    }


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
