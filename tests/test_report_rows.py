"""Reports that never mix runs: only repeats (same config and weights, seeds aside) share a table cell;
two weight sets, two epoch counts or two protocols are rows of their own, named by what differs; records
of `probe.from_run` and of protocol=original read like any other."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import fixtures_dir
from safetensors.torch import load_file, save_file
from test_run import small

from probe.report import main as report
from probe.report.results import (
    ORIGINAL_NUMBER,
    VAL_NUMBER,
    apply_filters,
    format_table,
    record_row,
    repeat_spec,
    runs_frame,
)
from probe.run.main import compose_config, run

REFERENCE = "onevision_reference/ov_tiny_layernorm_head"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """Real runs of one backbone: a seed repeat, another epoch count, new weights saved over the old
    ones (same path), a protocol=original run and a `probe.from_run` evaluation."""
    tmp = tmp_path_factory.mktemp("rows")
    folder = tmp / "ckpt"
    shutil.copytree(fixtures_dir() / REFERENCE, folder)
    weights = "backbone=onevision_large", f"backbone.args.checkpoint={folder}", "backbone.args.input_size=56"
    records = {
        "base": run(small(tmp, *weights)),
        "repeat": run(small(tmp, *weights, "seed=1")),
        "epochs": run(small(tmp, *weights, "probe.recipe.epochs=3")),
        "original": run(small(tmp, *weights, "protocol=original", "probe.recipe.val_fraction=0.0",
                             "probe.recipe.batch_size=8")),
    }
    records["from_run"] = run(small(tmp, *weights, f"probe.from_run={records['base']['run_id']}"))
    state = load_file(str(folder / "model.safetensors"))
    state["encoder.layers.0.mlp.fc1.weight"] = state["encoder.layers.0.mlp.fc1.weight"] * 1.5
    save_file(state, str(folder / "model.safetensors"))  # new weights, same folder, same command
    records["new_weights"] = run(small(tmp, *weights))
    return tmp / "results", records


def _by_run(frame: pd.DataFrame) -> dict[str, pd.Series]:
    return {row.run_id: row for _, row in frame.iterrows()}


def test_only_repeats_share_a_row(runs) -> None:
    results, records = runs
    rows = _by_run(runs_frame([results]))
    base, repeat = rows[records["base"]["run_id"]], rows[records["repeat"]["run_id"]]
    assert base["repeat_key"] == repeat["repeat_key"] and base["row"] == repeat["row"]
    others = [rows[records[k]["run_id"]] for k in ("epochs", "original", "from_run", "new_weights")]
    assert len({base["row"], *(r["row"] for r in others)}) == 5  # every non-repeat has a row of its own
    assert "probe.recipe.epochs=3" in rows[records["epochs"]["run_id"]]["row"]
    new = rows[records["new_weights"]["run_id"]]
    assert f"weights={records['new_weights']['backbone']['fingerprint']}" in new["row"]
    assert "epochs" not in new["row"] and "weights" in rows[records["epochs"]["run_id"]]["row"]
    assert rows[records["original"]["run_id"]]["row_label"].startswith(
        "OneVision-Encoder large [protocol.name=original, ")
    assert new["weights"] == records["new_weights"]["backbone"]["fingerprint"] != base["weights"]


def test_report_over_two_weight_sets_shows_two_rows_and_filters_by_weights(runs, tmp_path) -> None:
    results, records = runs
    markdown = report.write_report([results], tmp_path, [], draw=False)
    tables = [p.read_text() for p in sorted(tmp_path.glob("budgets_synthetic_onevision_large_*.md"))]
    assert len(tables) == 5  # one per row: base and its seed repeat, epochs, original, from_run, new weights
    assert sum("(n=2)" in t for t in tables) == 1  # the seed repeat, averaged
    base_top1 = runs_frame([results]).query("run_id == @records['base']['run_id']")["top1"].item()
    new_top1 = records["new_weights"]["metrics"]["test"]["top1"]
    assert f"{new_top1:.1f} [" in markdown and f"{(base_top1 + new_top1) / 2:.1f} (n=" not in markdown
    csv = pd.read_csv(tmp_path / "runs.csv")
    assert {"weights", "checkpoint", "protocol", "variant", "repeat_key"} <= set(csv.columns)
    assert "spec" not in csv.columns
    new = records["new_weights"]["backbone"]["fingerprint"]
    kept = apply_filters(runs_frame([results]), [f"weights={new}"])
    assert kept["run_id"].tolist() == [records["new_weights"]["run_id"]]
    report.write_report([results], tmp_path / "one", [f"weights={new}"], draw=False)
    assert "[weights=" not in (tmp_path / "one" / "report.md").read_text()  # nothing left to tell apart


def test_original_protocol_is_labelled_and_its_coverage_shown(runs, tmp_path) -> None:
    results, records = runs
    original = records["original"]
    row = record_row(original)
    assert row["number"] == ORIGINAL_NUMBER and row["protocol"] == "original"
    alone = format_table([row])
    assert f"| {ORIGINAL_NUMBER} |" in alone.splitlines()[0] and VAL_NUMBER not in alone
    mixed = format_table([record_row(records["base"]), row])
    assert "| top-1 | top-1 is |" in mixed and f"| {ORIGINAL_NUMBER} |" in mixed and VAL_NUMBER in mixed
    # The coverage block as developer `original` adds it to the record (metrics["original_coverage"]).
    copy = tmp_path / "with_coverage" / original["run_id"]
    shutil.copytree(results / original["run_id"], copy)
    stored = json.loads((copy / "record.json").read_text())
    stored["metrics"]["original_coverage"] = {"top1": 71.25, "epoch": 2, "full_set_top1": 68.75, "ranks": 8,
                                              "clips_read": 11, "reads": 16}
    (copy / "record.json").write_text(json.dumps(stored))
    printed = format_table([record_row(stored)])
    assert "8-rank test loader reads 71.2 at epoch 2 (full set at that epoch: 68.8)" in printed
    markdown = report.write_report([copy.parent], tmp_path / "out", [], draw=False)
    assert "Test coverage under protocol=original" in markdown and "| 71.2 | 68.8 |" in markdown
    assert f"top-1 (%), {ORIGINAL_NUMBER}" in markdown


def test_report_reads_a_folder_with_a_from_run_record(runs, tmp_path) -> None:
    results, records = runs
    folder = tmp_path / "only"
    shutil.copytree(results / records["from_run"]["run_id"], folder / records["from_run"]["run_id"])
    report.main([str(folder), "--out", str(tmp_path / "out"), "--no-figures"])
    csv = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert csv["protocol"].tolist() == ["stored probe"]
    assert csv["selection"].tolist() == ["stored probe, evaluated without training"]


def test_every_key_that_follows_the_seed_is_left_out_of_a_repeat() -> None:
    """The seed reaches the generated task's data and the random sampler's test draws (`${seed}` in their
    configs): runs differing only there are repeats; any other key makes another row."""
    def spec(*overrides: str) -> dict:
        return repeat_spec({"config": compose_config(["sampling=random", *overrides]),
                            "backbone": {"fingerprint": "w"}, "protocol": {"name": "honest"}})

    assert spec("seed=0") == spec("seed=3")
    assert spec("seed=3", "probe.recipe.epochs=5") != spec("seed=3")
    assert spec("backbone.args.seed=1") != spec()  # the seed of random weights is another model
