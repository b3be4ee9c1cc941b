"""An eval script runs every dataset even when one fails, and lists the failed ones at the end (exit 1)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "shells_eval_ap" / "eval_ov_encoder_large_8frames.sh"
# Stands in for `ovprobe` on PATH: notes each run's task and fails the ones named in $FAIL.
STUB = """#!/usr/bin/env bash
for arg in "$@"; do [[ $arg == task=* ]] && task=${arg#task=}; done
echo "$task" >> "$RUNS"
[[ " $FAIL " == *" $task "* ]] && { echo "ovprobe: $task: no data root" >&2; exit 1; }
exit 0
"""


def _script(tmp: Path, fail: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    stub = tmp / "bin" / "ovprobe"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text(STUB)
    stub.chmod(0o755)
    runs = tmp / f"runs-{fail or 'none'}.txt"
    env = {k: v for k, v in os.environ.items() if k not in ("DRY_RUN", "NPROC", "NNODES", "DATASETS")}
    env |= {"PATH": f"{stub.parent}:{env['PATH']}", "RUNS": str(runs), "FAIL": fail,
            "DATASETS": "ssv2 diving48 hmdb51 kinetics400"}
    done = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    return done, runs.read_text().split()


def test_a_failing_dataset_does_not_stop_the_others(tmp_path: Path) -> None:
    done, ran = _script(tmp_path, "diving48 kinetics400")
    assert ran == ["ssv2", "diving48", "hmdb51", "kinetics400"]  # every dataset ran
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "run_eval: 2 dataset(s) failed (their messages are above): diving48 kinetics400")
    assert "ovprobe: diving48: no data root" in done.stderr


def test_all_datasets_passing_exit_zero(tmp_path: Path) -> None:
    done, ran = _script(tmp_path, "")
    assert done.returncode == 0 and ran == ["ssv2", "diving48", "hmdb51", "kinetics400"]
    assert "failed" not in done.stderr
