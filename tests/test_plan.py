"""`ovprobe-plan`: the eval scripts' full sweep planned from annotation files alone (official layouts, no
video, no weights), and a planned cost that is what the run then records."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from probe.run.main import compose_config, run
from probe.run.plan import plan_sweep
from probe.run.schema import ConfigError
from tests.test_eval_scripts import BACKBONES, SCRIPTS_DIR, script_env
from tests.test_run import small_overrides
from tests.test_tasks import BRACKETED, VOCAB, _ssv2_record
from tests.test_tasks_roster import EPIC_HEADER, _epic_row
from tests.test_tasks_segments import CE_CLASSES, CE_HEADER, _ce_row, _pt_video, _segment

ROSTER = sorted(BACKBONES.values())
DATASETS = ["ssv2", "diving48", "perception_test", "epic_verb", "epic_noun", "hmdb51", "kinetics400",
            "charades_ego"]
# Clips per split in the annotation files written below (train, eval), per dataset.
# Two classes of two training clips each (three for HMDB51), so that val_fraction=0.5 carves one of each.
CLIPS = {"ssv2": (4, 2), "diving48": (4, 2), "perception_test": (4, 2), "epic_verb": (4, 2),
         "epic_noun": (4, 2), "hmdb51": (6, 3), "kinetics400": (4, 2), "charades_ego": (4, 2)}
TRAIN, EVAL = 4, 2


def _rows(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def _json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def official_annotations(data: Path) -> Path:
    """The annotation files of the original suite's eight datasets, each in its official layout under
    `data/<folder>` (the `$OVPROBE_DATA` layout), a few clips each and no video at all."""
    ssv2 = data / "ssv2" / "labels"
    _json(ssv2 / "labels.json", {k: str(i) for i, k in enumerate(BRACKETED)})
    _json(ssv2 / "train.json", [_ssv2_record(str(i), BRACKETED[i % 2]) for i in range(TRAIN)])
    _json(ssv2 / "validation.json", [_ssv2_record(str(10 + i), BRACKETED[i % 2]) for i in range(EVAL)])

    diving = data / "diving48"
    _json(diving / "Diving48_vocab.json", VOCAB)
    for name, labels in (("train", (5, 47, 5, 47)), ("test", (5, 47))):
        _json(diving / f"Diving48_V2_{name}.json", [{"vid_name": f"{name}_{i}", "label": label,
                                                     "start_frame": 0, "end_frame": 12}
                                                    for i, label in enumerate(labels)])

    pt = data / "perception_test"
    for name, split, count in (("all_train.json", "train", TRAIN), ("all_valid.json", "valid", EVAL)):
        _json(pt / name, {f"video_{split}{i}": _pt_video(f"video_{split}{i}", split,
                                                         [_segment(0, i % 2, 0, 1_000_000)])
                          for i in range(count)})

    notes = data / "epic_kitchens" / "epic-kitchens-100-annotations"
    for target, keys in (("verb", ["take", "put", "open"]), ("noun", ["tap", "plate", "fridge"])):
        _rows(notes / f"EPIC_100_{target}_classes.csv",
              [["id", "key", "instances", "category"], *([str(i), k, "[]", "x"] for i, k in enumerate(keys))])
    for name, count in (("train", TRAIN), ("validation", EVAL)):
        _rows(notes / f"EPIC_100_{name}.csv", [EPIC_HEADER, *(_epic_row(f"P01_0{i}_{name}", f"P01_0{i}", "1",
                                                                         "24", str(i % 2), str(i % 2))
                                                               for i in range(count))])

    splits = data / "hmdb51" / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    for name in ("brush_hair", "draw_sword", "fall_floor"):
        for n in (1, 2, 3):
            lines = "".join(f"{name}_{i}.avi {m} \r\n" for i, m in enumerate(("1", "1", "2", "0")))
            (splits / f"{name}_test_split{n}.txt").write_text(lines)

    header = ["label", "youtube_id", "time_start", "time_end", "split"]
    k400 = data / "kinetics400" / "annotations"
    for name, count in (("train", TRAIN), ("val", EVAL)):
        _rows(k400 / f"{name}.csv", [header, *([f"class {i % 2}", f"yt{name}{i:08d}", "10", "20", name]
                                               for i in range(count))])

    ce = data / "charades_ego" / "CharadesEgo"
    ce.mkdir(parents=True)
    (ce / "Charades_v1_classes.txt").write_text("".join(f"c{i:03d} {n}\n" for i, n in enumerate(CE_CLASSES)))
    for name, count in (("train", TRAIN), ("test", EVAL)):
        _rows(ce / f"CharadesEgo_v1_{name}.csv",
              [CE_HEADER, *(_ce_row(f"{name}{i}", f"c00{i % 2} 0.00 1.00") for i in range(count))])
    return data


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return official_annotations(tmp_path_factory.mktemp("data"))


def _plan_cli(*args: str, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-m", "probe.run.plan", *args], env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("setting", [("sampling=uniform", "sampling.frames_equiv=8"),
                                     ("sampling=codec", "sampling.budget=2048")])
def test_the_eval_scripts_full_sweep_is_planned_from_annotation_files_alone(
        data: Path, tmp_path: Path, setting: tuple[str, ...]) -> None:
    env = {**os.environ, "OVPROBE_DATA": str(data), "OVPROBE_CACHE": str(tmp_path / "cache"),
           "OVPROBE_RESULTS": str(tmp_path / "results"), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    out = _plan_cli("-m", f"backbone={','.join(ROSTER)}", f"task={','.join(DATASETS)}", *setting,
                    "probe.recipe.val_fraction=0.5", env=env)
    print(f"\n{len(ROSTER) * len(DATASETS)} runs planned in {time.perf_counter() - started:.1f} s "
          "(wall, with interpreter start; shared, loaded machine)\n" + out)
    lines = out.splitlines()
    runs = [line for line in lines if re.match(r"\S+-\S+-(uniform|codec2048)-\S+ ", line)]
    assert len(runs) == len(ROSTER) * len(DATASETS)
    for task in DATASETS:
        for backbone in ROSTER:
            (line,) = [r for r in runs if r.startswith(f"{task}-{backbone}-")]
            train, test = CLIPS[task]
            assert " to run " in line and f" {train}/{test} " in line and "train new, eval new" in line
    totals = lines[lines.index(next(x for x in lines if x.startswith("backbone "))):]
    for backbone in ROSTER:  # a row per backbone with its runs, GB to write and hours
        (row,) = [t for t in totals if t.startswith(backbone + " ")]
        assert re.match(rf"{backbone}\s+8\s+0\s+[\d.]+ [KM]iB\s+[\d.e+-]+\s+[\d.e+-]+$", row), row
    assert re.search(rf"^total\s+{len(ROSTER) * 8}\s+0\s", out, re.M)
    assert "videos are missing" in out  # none is on disk: counted, the plan still complete


def test_planned_cost_is_what_the_runs_record_and_finished_runs_show(tmp_path: Path) -> None:
    """Uniform frames and OneVision's native sparse patches: the plan's FLOPs are the record's exactly
    (each encoded view's cost, summed by the store); a frame backbone under codec sampling is planned at
    every frame of the dense run encoded, the most a selection can touch."""
    sweep = ["backbone=onevision_tiny,dinov2_tiny", "sampling=uniform,codec", "plan.device=cpu",
             *[o for o in small_overrides(tmp_path) if not o.startswith("sampling=")]]
    plans, _ = plan_sweep(sweep, multirun=True)
    assert len(plans) == 4 and not any(p.finished for p in plans)
    assert all(s.state == "new" and s.bytes_left > 0 for p in plans for s in p.stores)
    for p in plans:
        backbone, sampling = re.match(r"synthetic-(\w+?_tiny)-(\w+?)-", p.run_id).groups()
        overrides = small_overrides(tmp_path, f"backbone={backbone}", f"sampling={sampling}")
        record = run(compose_config(overrides))
        ran = sum(c["flops_per_clip"] * c["clips"] for c in record["cost"].values())
        if (backbone, sampling) == ("dinov2_tiny", "codec"):
            assert ran <= p.flops_left
        else:
            assert p.flops_left == pytest.approx(ran, rel=1e-9)
        written = sum(f.stat().st_size for split in ("train", "eval")
                      for f in Path(record["data"][f"{split}_features"]).glob("shard_*.npy"))
        assert 0.95 * p.bytes_left <= written <= p.bytes_left  # the npy headers aside

    again, _ = plan_sweep(["backbone=onevision_tiny,dinov2_tiny,onevision_small", *sweep[1:]], multirun=True)
    finished = [p for p in again if p.finished]
    assert len(finished) == 4 and all(p.flops_left == 0 and p.bytes_left == 0 for p in finished)
    assert all(s.state == "exists" for p in finished for s in p.stores)
    ran = {r.name for r in (tmp_path / "results").iterdir() if r.name != "logs"}
    assert {p.run_id for p in finished} == ran
    fresh = [p for p in again if not p.finished]
    assert len(fresh) == 2 and all(p.run_id.startswith("synthetic-onevision_small-") for p in fresh)


def test_plan_refuses_a_sweep_without_m_and_unknown_plan_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="plan it with -m"):
        plan_sweep(["backbone=onevision_tiny,dinov2_tiny"], multirun=False)
    with pytest.raises(ConfigError, match="plan.tflop is not a plan key"):
        plan_sweep(["plan.tflop=3"], multirun=False)


def test_eval_scripts_plan_with_plan_1(data: Path, tmp_path: Path) -> None:
    """PLAN=1: one plan of the script's eight runs (one per dataset), with their totals; nothing runs."""
    bin_dir = tmp_path / "bin"  # `ovprobe-plan` as installed (its console script) runs this checkout's
    bin_dir.mkdir()
    (bin_dir / "ovprobe-plan").write_text(f'#!/bin/sh\nexec {sys.executable} -m probe.run.plan "$@"\n')
    (bin_dir / "ovprobe-plan").chmod(0o755)
    script = SCRIPTS_DIR / "eval_ov_encoder_large_2kpatches_codec.sh"
    env = script_env(PLAN="1", OVPROBE_DATA=str(data), OVPROBE_CACHE=str(tmp_path / "cache"),
                     OVPROBE_RESULTS=str(tmp_path / "results"), HF_HUB_OFFLINE="1",
                     PATH=f"{bin_dir}:{os.environ['PATH']}")
    out = subprocess.run([str(script), "probe.recipe.val_fraction=0.5"], env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^total\s+8\s+0\s", out.stdout, re.M)
    for task in DATASETS:
        assert re.search(rf"^{task}-onevision_large-codec2048-\S+\s+to run ", out.stdout, re.M)
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache" / "features").exists()
