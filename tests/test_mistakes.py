"""Every config mistake is refused by `ovprobe` in one line before any file is written, and the logs:
one folder per invocation even within one second, no empty run.log, a `--help` that says what runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, fixtures_dir
from test_run import small_overrides

from probe.run.schema import ConfigError, check_overrides

REFERENCE = "onevision_reference/ov_tiny_layernorm_head"


def _ovprobe(tmp: Path, *args: str, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    command = [sys.executable, "-m", "probe.run", *args]
    # CI=true as on CI machines, where transformers hands its log records on to Hydra's console as well
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), "CI": "true"}
    env.pop("HYDRA_FULL_ERROR", None)
    if not wait:
        return subprocess.Popen(command, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(command, cwd=tmp, capture_output=True, text=True, timeout=600, env=env)


def _overrides(tmp: Path, *extra: str) -> list[str]:
    """`small_overrides`, without its frame count where `extra` sets a patch budget (they would conflict)."""
    budget = any(e.startswith("sampling.budget=") for e in extra)
    return [o for o in small_overrides(tmp, *extra) if not (budget and o == "sampling.frames_equiv=4")]


def _mistakes() -> list[tuple[list[str], str]]:
    weights = fixtures_dir() / REFERENCE
    return [
        (["backbone.args.dtype=fp32"], "backbone.args.dtype='fp32': expected one of: auto, float32"),
        (["sampling.budget=512", "sampling.frames_equiv=4"],
         "sampling.budget=512 and sampling.frames_equiv=4 conflict"),
        (["backbone.args.checkpoint=/no/such/folder"], "checkpoint folder /no/such/folder does not exist"),
        ([f"backbone.args.checkpoint={weights / 'model.safetensors'}"],
         f"is a file; pass the folder that holds it with its config.json: backbone.args.checkpoint={weights}"
         ),
        (["sampling=codec", "sampling.budget=8192"], "budget=8192 is more than the 4096 patches of the"),
        (["backbone=dinov3_tiny", "backbone.args.keep_prefix=true", "sampling=codec", "sampling.budget=128"],
         "needs whole frames, but sampling=codec spends a patch budget; use sampling=uniform"),
        (["backbone=dinov3_tiny", "backbone.args.reference=true", "sampling=random", "sampling.budget=128"],
         "needs whole frames, but sampling=random spends a patch budget"),
        (["backbone=siglip2_tiny", f"backbone.args.checkpoint={weights}"],
         f"backbone.args.checkpoint={weights} does not load into siglip2_tiny"),
        (["backbone=dinov3_tiny", f"backbone.args.checkpoint={weights}"],
         "does not match DINOv3ViTModel built from its config.json: {'missing_keys': ['embeddings."),
        (["probe.head.kind=pooled"], "probe.head.kind='pooled': expected one of: attentive, original"),
        (["augment.color_jitter.brightness_mode=scale"],
         "augment.color_jitter.brightness_mode='scale': expected one of: shift, multiplier"),
        (["probe.recipe.selection=best"], "probe.recipe.selection='best': expected one of: val, test_max"),
    ]


def test_each_mistake_is_one_line_before_any_file_is_written(tmp_path: Path) -> None:
    for i, (overrides, message) in enumerate(_mistakes()):
        tmp = tmp_path / str(i)
        tmp.mkdir()
        conflict = "sampling.frames_equiv=4" in overrides
        done = _ovprobe(tmp, *(small_overrides if conflict else _overrides)(tmp, *overrides))
        # (the weights' progress bar, where a backbone is built, is not part of the message)
        lines = [line for line in done.stderr.splitlines() if line and not line.startswith("Loading weights")]
        assert done.returncode == 1 and len(lines) == 1 and not done.stdout, (overrides, done.stderr[-2000:])
        assert lines[0].startswith("ovprobe: ") and message in lines[0], (overrides, lines[0])
        assert len(lines[0]) < 500, lines[0]  # a list of weight names is cut short
        made = list(tmp.rglob("*"))
        assert made == [], (overrides, made)  # no task generated, no log, no lock, no empty folder


def test_overrides_that_conflict_name_both_keys() -> None:
    with pytest.raises(ConfigError, match="sampling.budget=256 and sampling.frames_equiv=2 conflict"):
        check_overrides(["sampling=codec", "sampling.frames_equiv=2", "sampling.budget=256"])
    check_overrides(["sampling.budget=256", "sampling.frames_equiv=null"])  # one of them: fine
    check_overrides(["sampling.frames_equiv=2"])


def test_two_runs_started_in_one_second_log_apart_and_refusals_leave_no_log(tmp_path: Path) -> None:
    first, second = (_ovprobe(tmp_path, *small_overrides(tmp_path, "sampling.frames_equiv=1", f"seed={s}"),
                              wait=False) for s in (0, 1))
    for process in (first, second):
        process.communicate(timeout=600)
        assert process.returncode == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("*/record.json")]
    logs = {Path(r["log_file"]) for r in records}
    assert len(records) == 2 and len(logs) == 2
    assert all("run record written" in log.read_text() for log in logs)
    folders = sorted(p.name for p in (tmp_path / "results" / "logs").iterdir())
    assert len(folders) == 2 and all("_pid" in name for name in folders)
    failed = _ovprobe(tmp_path, *small_overrides(tmp_path, "backbone.args.dtype=fp32"))
    assert failed.returncode == 1
    assert sorted(p.name for p in (tmp_path / "results" / "logs").iterdir()) == folders  # no new folder
    assert not [p for p in (tmp_path / "results").rglob("run.log") if p.stat().st_size == 0]


def test_help_says_what_the_default_runs_and_the_main_keys(tmp_path: Path) -> None:
    done = _ovprobe(tmp_path, "--help")
    assert done.returncode == 0
    for text in ("With no arguments, `ovprobe` runs the embedded default: a sweep of "
                 "sampling=uniform,codec,random", "backbone=NAME", "sampling.frames_equiv=N",
                 "protocol=honest|original", "task: charades_ego, diving48", "HYDRA_FULL_ERROR=1"):
        assert text in done.stdout, text
    assert "Powered by Hydra" not in done.stdout


def test_the_command_line_entry_does_not_import_torch() -> None:
    """What makes a mistyped key fast to refuse (timed by benchmarks/bench_refusal.py): Hydra parses the
    command line and the schema checks values before torch, the backbones or the tasks are imported."""
    heavy = "('torch', 'backbones', 'tasks', 'pandas')"
    code = f"import sys, probe.run.cli; sys.exit(' '.join(m for m in {heavy} if m in sys.modules) or None)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stderr
