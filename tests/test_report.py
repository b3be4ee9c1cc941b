"""The report from real run records: a multirun over 4 budgets x 2 samplings x 2 backbones on the
generated task, then `python -m probe.report`: tables, repeated runs, filters and figures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_run import small

from probe.report import figures
from probe.report import main as report
from probe.report.results import (
    PAPER_AVERAGE,
    PAPER_TASKS,
    Table,
    _setting_order,
    _tex,
    apply_filters,
    paper_tables,
    pivot,
    repeated_runs,
    runs_frame,
    to_latex,
    to_markdown,
)
from probe.run.main import run

BACKBONES = {
    "onevision_tiny": [],
    # a second registered backbone, shallow enough for the suite, at the same 64 patches per frame
    "onevision_small": ["backbone.args.input_size=112", "+backbone.args.num_hidden_layers=1"],
}
FRAMES = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def multirun(tmp_path_factory) -> tuple[Path, list[dict]]:
    """Records of the 16 runs, one rerun (a duplicate) and one copy with another result (a conflict)."""
    tmp = tmp_path_factory.mktemp("multirun")
    records = []
    for backbone, extra in BACKBONES.items():
        for sampling in ("uniform", "codec"):
            for frames in FRAMES:
                config = small(tmp, f"backbone={backbone}", *extra, f"sampling={sampling}",
                               f"sampling.frames_equiv={frames}", "probe.recipe.bootstrap=20")
                records.append(run(config))
    rerun = run({**config, "on_existing": "new"})  # same config and features: same numbers
    results = tmp / "results"
    copy = results / "elsewhere" / (records[0]["run_id"] + "-copy")
    shutil.copytree(results / records[0]["run_id"], copy)
    edited = json.loads((copy / "record.json").read_text())
    edited["metrics"]["test"]["top1"] += 10.0
    (copy / "record.json").write_text(json.dumps(edited))
    return results, [*records, rerun, edited]


def test_frame_has_one_row_per_record_with_its_numbers(multirun):
    results, records = multirun
    frame = runs_frame([results])
    assert len(frame) == 18
    assert set(frame["backbone"]) == {"onevision_tiny", "onevision_small"}  # the config keys
    assert frame["random_weights"].all()
    assert set(frame["backbone_label"]) == {"OneVision-Encoder tiny (random weights)",
                                            "OneVision-Encoder small (random weights)"}
    by_path = frame.set_index("path")
    for record in records[:16]:
        row = by_path.loc[str(results / record["run_id"])]
        test = record["metrics"]["test"]
        assert (row["top1"], row["top1_low"], row["top1_high"], row["top5"]) == (
            test["top1"], test["top1_low"], test["top1_high"], test["top5"]
        )
        assert row["budget"] == record["sampling"]["budget"] == 64 * row["frames_equiv"]
        assert row["tokens"] == record["sampling"]["tokens_per_clip"]
        assert row["seconds_per_clip"] == record["cost"]["eval"]["encode_s_per_clip"] > 0  # when stored
        assert row["flops_per_clip"] == record["cost"]["eval"]["flops_per_clip"] > 0
        assert row["grid_max"] == record["metrics"]["best_test_over_grid"]["top1"]


def test_repeated_runs_are_shown_as_duplicates_or_conflicts(multirun):
    results, records = multirun
    repeated = repeated_runs(runs_frame([results]))
    rerun, edited = records[-2:]
    status = dict(zip(repeated["run_id"], repeated["status"], strict=True))
    assert status == {
        rerun["run_id"]: "duplicate",
        rerun["run_id"].removesuffix("-r2"): "duplicate",
        edited["run_id"]: "conflict",  # the copy keeps its record's run id: two rows, one id
    } and len(repeated) == 4
    assert sorted(repeated[repeated["status"] == "conflict"]["top1"]) == [
        records[0]["metrics"]["test"]["top1"], edited["metrics"]["test"]["top1"]
    ]


def test_filters_keep_matching_rows_and_name_the_columns(multirun):
    frame = runs_frame([multirun[0]])
    codec = apply_filters(frame, ["sampling=codec", "budget=64,128"])
    assert len(codec) == 4 and set(codec["sampling"]) == {"codec"} and set(codec["budget"]) == {64, 128}
    assert len(apply_filters(frame, ["backbone!=onevision_tiny"])) == 9  # 8 runs and the rerun
    assert len(apply_filters(frame, ["backbone=onevision_tiny"])) == 9  # 8 runs and the conflicting copy
    with pytest.raises(ValueError, match="columns: run_id"):
        apply_filters(frame, ["colour=red"])
    with pytest.raises(ValueError, match="matches no run; backbone holds: onevision_small, onevision_tiny"):
        apply_filters(frame, ["backbone=onevision_tiny (random)"])


def test_pivots_hold_the_records_values_and_intervals(multirun):
    frame = runs_frame([multirun[0]])
    frame = frame[~frame["path"].str.contains("elsewhere")]  # without the conflicting copy
    tables = paper_tables(frame)
    assert list(tables) == [  # settings in numeric order, not as text
        *(f"backbones_tasks_codec_{64 * f}p" for f in FRAMES),
        *(f"backbones_tasks_uniform_{f}f" for f in FRAMES),
        "budgets_synthetic_onevision_small", "budgets_synthetic_onevision_tiny",
    ]
    budgets = tables["budgets_synthetic_onevision_small"]
    small_runs = frame[frame["backbone"] == "onevision_small"]
    markdown, latex = to_markdown(budgets), to_latex(budgets)
    for run_row in small_runs.itertuples():
        assert budgets.values.loc[(run_row.budget, run_row.frames_equiv), run_row.sampling] == run_row.top1
        if run_row.run_id != multirun[1][-2]["run_id"]:  # the rerun's cell averages two runs
            cell = f"{run_row.top1:.1f} [{run_row.top1_low:.1f}, {run_row.top1_high:.1f}]"
            assert cell in markdown and cell in latex
    assert "OneVision-Encoder small (random weights) on synthetic" in markdown
    assert latex.count("\\toprule") == 1 and "\\bottomrule" in latex and "\\caption{" in latex

    wide = tables["backbones_tasks_uniform_1f"]
    assert list(wide.values.columns) == ["synthetic", "average"]
    tiny = frame[(frame["backbone"] == "onevision_tiny") & (frame["budget"] == 64)]
    (uniform_tiny,) = tiny[tiny["sampling"] == "uniform"]["top1"]
    assert wide.values.loc["onevision_tiny", "synthetic"] == uniform_tiny
    assert wide.values.loc["onevision_tiny", "average"] == uniform_tiny
    assert "| OneVision-Encoder tiny (random weights) |" in to_markdown(wide)
    # the rerun repeats the last config (onevision_small, codec, 256 patches): that cell averages 2 runs
    cell = tables["backbones_tasks_codec_256p"].counts.loc["onevision_small", "synthetic"]
    assert cell == 2 and "(n=2)" in to_markdown(tables["backbones_tasks_codec_256p"])


def test_report_command_writes_tables_and_figures(multirun, tmp_path):
    results, records = multirun
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "probe.report", str(results), "--out", str(out), "--where", "task=synthetic"],
        capture_output=True, text=True, check=True,
    )
    assert "**top-1 (%): backbones x tasks, uniform sampling, 1 frame**" in done.stdout
    assert "conflict" in done.stdout and "duplicate" in done.stdout

    written = pd.read_csv(out / "runs.csv")
    assert len(written) == 18 and set(written["run_id"]) == {r["run_id"] for r in records}
    table = pd.read_csv(out / "budgets_synthetic_onevision_tiny.csv", index_col=[0, 1])
    for i, record in enumerate(records[:8]):  # onevision_tiny
        budget, frames = record["sampling"]["budget"], record["sampling"]["frames_equiv"]
        expected = record["metrics"]["test"]["top1"] + (5.0 if i == 0 else 0.0)  # averaged with the copy
        assert table.loc[(budget, frames), record["sampling"]["name"]] == pytest.approx(expected, abs=0.005)
    tex = (out / "budgets_synthetic_onevision_tiny.tex").read_text()
    assert tex.startswith("\\begin{table}") and "\\caption{top-1 (\\%): OneVision-Encoder tiny" in tex
    assert len(pd.read_csv(out / "repeated_runs.csv")) == 4

    for name in ("top1_vs_budget_synthetic", "top1_vs_tokens_synthetic", "top1_vs_time_synthetic"):
        with Image.open(out / f"{name}.png") as image:
            width, height = image.size  # column-wide; taller by the legend's lines
            assert width == round(figures.COLUMN_WIDTH * figures.DPI)
            assert height > round(figures.FIGURE_HEIGHT * figures.DPI)
            pixels = np.asarray(image.convert("RGB"))
        palette = figures.backbone_colours(["onevision_tiny", "onevision_small"]).values()
        colours = {tuple(round(255 * c) for c in colour[:3]) for colour in palette}
        drawn = {tuple(p) for p in pixels.reshape(-1, 3)}
        assert colours <= drawn, f"{name}: each backbone's colour is drawn"
        pdf = (out / f"{name}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and b"/FontFile2" in pdf and b"/Type3" not in pdf  # TrueType, embedded


def test_report_draws_the_codec_picture_of_chosen_clips(multirun, fixtures, tmp_path):
    clip = fixtures / "videos" / "tree.avi"
    report.write_report([multirun[0]], tmp_path, ["budget=64"], codec_clips=[clip], codec_budget=256)
    with Image.open(tmp_path / "codec_tree.png") as image:
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.shape[0] > 300 and pixels.std() > 10
    assert (tmp_path / "top1_vs_budget_synthetic.pdf").exists()


def test_report_refuses_empty_or_missing_folders(tmp_path, capsys):
    with pytest.raises(SystemExit, match="no record.json under"):
        report.main([str(tmp_path)])
    with pytest.raises(SystemExit, match="no folder"):
        report.main([str(tmp_path / "missing")])
    (tmp_path / "half-written").mkdir()
    (tmp_path / "half-written" / "record.json").write_text('{"config": {}}')
    with pytest.raises(SystemExit, match="half-written/record.json is not a complete run record"):
        report.main([str(tmp_path)])


def test_overlapping_folders_list_each_record_once(multirun):
    results = multirun[0]
    assert len(runs_frame([results, results / "elsewhere"])) == len(runs_frame([results])) == 18


def test_frontier_keeps_only_runs_nothing_cheaper_beats():
    cost = np.array([64, 128, 128, 256, 512])
    accuracy = np.array([20.0, 30.0, 25.0, 28.0, 40.0])
    assert figures.pareto_front(cost, accuracy).tolist() == [0, 1, 4]


def test_colours_are_distinct_per_backbone_entry():
    """DINOv3 base and large (one family) and any 20 entries of a report get distinct colours."""
    pairs = ["dinov3_base", "dinov3_large", "siglip2_base16_224", "siglip2_large16_256", "clip_base16",
             "clip_large14", "onevision_large", "onevision_large [weights=...b]"]
    for n in (2, len(pairs)):
        assert len(set(figures.backbone_colours(pairs[:n]).values())) == n
    many = [f"backbone_{i}" for i in range(25)]
    assert len(set(figures.backbone_colours(many[:20]).values())) == 20
    assert len(set(figures.backbone_colours(many).values())) == 25
    assert figures.backbone_colours(pairs) == figures.backbone_colours(pairs[::-1])  # by name, not order


def _points(rows: dict[str, str]) -> pd.DataFrame:
    """Runs of long-named backbone entries at two budgets under two samplers."""
    return pd.DataFrame([
        {"row": row, "row_label": label, "sampling": sampling, "budget": budget, "task": "synthetic",
         "top1": 40.0 + i, "top1_low": 35.0 + i, "top1_high": 45.0 + i, "chance": 12.5, "tokens": budget,
         "flops_per_clip": 1e9 * budget, "seconds_per_clip": 0.01 * budget, "random_weights": False}
        for i, (row, label) in enumerate(rows.items()) for sampling in ("codec", "uniform")
        for budget in (64, 128)])


def test_legends_sit_inside_the_canvas_and_time_has_no_frontier(monkeypatch, tmp_path):
    rows = {f"dinov3_large [backbone.args.checkpoint=...{i}]": "DINOv3 large [protocol.name=original, "
            f"weights=...{i:024d}, backbone.args.checkpoint=.../checkpoints/run{i}]" for i in range(3)}
    drawn = {}
    save = figures._save

    def check(fig, stem):
        fig.canvas.draw()
        box, canvas = fig.legends[0].get_window_extent(), fig.bbox
        inside = box.x0 >= 0 and box.y0 >= 0 and box.x1 <= canvas.x1 and box.y1 <= canvas.y1
        texts = [t.get_text() for t in fig.legends[0].get_texts()]
        drawn[stem.name] = (inside, texts, fig.axes[0].get_xlabel(), len(fig.axes[0].lines))
        return save(fig, stem)

    monkeypatch.setattr(figures, "_save", check)
    figures.report_figures(_points(rows), tmp_path)
    assert list(drawn) == ["top1_vs_budget_synthetic", "top1_vs_tokens_synthetic", "top1_vs_flops_synthetic",
                           "top1_vs_time_synthetic"]
    assert all(inside for inside, *_ in drawn.values())
    for name in ("top1_vs_tokens_synthetic", "top1_vs_flops_synthetic"):
        assert "efficiency frontier" in drawn[name][1]
    inside, texts, xlabel, lines = drawn["top1_vs_time_synthetic"]
    assert "efficiency frontier" not in texts and lines < drawn["top1_vs_flops_synthetic"][3]
    assert xlabel.startswith("measured encode wall time per clip (s)")
    assert sum(t.startswith("DINOv3 large [") for t in texts) == 3  # one entry per backbone entry


def _table(values, low, high, compare="row") -> Table:
    index = pd.MultiIndex.from_tuples([(64, 1.0), (128, 2.0), (256, 4.0), (512, 8.0)][: len(values)],
                                      names=["budget", "frames_equiv"])
    frames = [pd.DataFrame(v, index=index, columns=["codec", "uniform"]) for v in (values, low, high)]
    counts = pd.DataFrame(1, index=index, columns=["codec", "uniform"])
    return Table("top-1 (%)", frames[0], counts, frames[1], frames[2], compare)


def test_bold_only_where_the_best_interval_clears_the_others():
    table = _table(values=[[50.0, 40.0], [50.0, 45.0]], low=[[46.0, 36.0], [44.0, 41.0]],
                   high=[[54.0, 44.0], [56.0, 49.0]])
    markdown = to_markdown(table)
    assert "| 64 / 1 | **50.0 [46.0, 54.0]** | 40.0 [36.0, 44.0] |" in markdown  # 46 > 44: apart
    assert "| 128 / 2 | 50.0 [44.0, 56.0] | 45.0 [41.0, 49.0] |" in markdown  # overlapping: no bold
    assert "Brackets: 95% bootstrap interval" in markdown
    by_column = _table(values=[[50.0, 40.0], [30.0, 45.0]], low=[[46.0, 36.0], [26.0, 41.0]],
                       high=[[54.0, 44.0], [34.0, 49.0]], compare="column")
    assert "**50.0 [46.0, 54.0]**" in to_markdown(by_column) and "**45.0" not in to_markdown(by_column)


def test_budget_rows_and_settings_sort_as_numbers():
    assert sorted(["uniform_2f", "uniform_16f", "codec_2048p", "codec_256p"], key=_setting_order) == [
        "codec_256p", "codec_2048p", "uniform_2f", "uniform_16f"]
    rows = pd.DataFrame({"budget": [512, 64, 128, 256], "frames_equiv": [8.0, 1.0, 2.0, 4.0],
                         "sampling": "codec", "top1": 1.0, "top1_low": 0.0, "top1_high": 2.0})
    from probe.report.results import pivot

    lines = [line for line in to_markdown(pivot(rows, ["budget", "frames_equiv"], "sampling")).splitlines()
             if line.startswith("| ") and line[2].isdigit()]
    assert [line.split(" / ")[0] for line in lines] == ["| 64", "| 128", "| 256", "| 512"]


def test_latex_escapes_what_it_prints_literally():
    assert _tex("a~b^c\\d_e&50%{x}") == (
        "a\\textasciitilde{}b\\textasciicircum{}c\\textbackslash{}d\\_e\\&50\\%\\{x\\}")
    latex = to_latex(_table(values=[[50.0, 40.0]], low=[[46.0, 36.0]], high=[[54.0, 44.0]]))
    assert "\\caption{top-1 (\\%). Brackets: 95\\% bootstrap" in latex


def test_paper_average_over_the_original_suites_eight_tasks() -> None:
    """"Avg (8 sets)" averages exactly the original suite's eight tasks (not the extra ones), and only
    appears when all eight are present."""
    rows = []
    for b, backbone in enumerate(("clip_large14", "onevision_large")):
        for t, task in enumerate((*PAPER_TASKS, "ucf101")):
            top1 = 10.0 * t + b
            rows.append({"backbone": backbone, "task": task, "top1": top1, "top1_low": top1 - 1,
                         "top1_high": top1 + 1})
    frame = pd.DataFrame(rows)
    table = pivot(frame, "backbone", "task", average=True)
    assert table.values.loc["onevision_large", PAPER_AVERAGE] == pytest.approx(10.0 * 3.5 + 1)
    assert table.values.loc["onevision_large", "average"] == pytest.approx(10.0 * 4 + 1)  # ucf101 too
    assert PAPER_AVERAGE in to_markdown(table) and np.isnan(table.low.loc["clip_large14", PAPER_AVERAGE])
    seven = pivot(frame[frame["task"] != "charades_ego"], "backbone", "task", average=True)
    assert PAPER_AVERAGE not in seven.values.columns
