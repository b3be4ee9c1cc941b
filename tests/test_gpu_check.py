"""`benchmarks/gpu_check.py` at tiny sizes on the CPU: every section of the GPU check runs its real path
(extraction of fixture videos, the stacked grid, protocol=original streaming, two processes, SDPA vs
eager), so the script is known to work before a GPU runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT, fixtures_dir


def test_gpu_check_runs_every_section_at_tiny_sizes_on_cpu(tmp_path: Path) -> None:
    fixtures_dir()  # skips without the fixture videos
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--size", "tiny",
         "--threads", "1", "--out", str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:]
    result = json.loads(out.read_text())
    assert result["header"]["device"].startswith("CPU") and result["header"]["size"] == "tiny"
    for sampling in ("codec", "uniform"):
        extract = result[f"extract-{sampling}"]
        # 2 frames' worth of the tiny OneVision's 8 x 8 patches, every clip of the list encoded once
        assert extract["clips"] == 4 and extract["tokens_per_clip"] == 128, extract
        assert 0 < extract["encode_s"] <= extract["wall_s"] and extract["clips_per_s"] > 0
        assert extract["worker_peak_mb"] > 0 and extract["main_peak_mb"] >= extract["main_before_mb"]
        assert extract["gpu_peak_mb"] is None
        assert extract["sdpa"] == ["aten::_scaled_dot_product_flash_attention_for_cpu"], extract
    assert result["grid"]["steps"] == 5 and result["grid"]["steps_per_s"] > 0
    stream = result["stream"]
    # 2 epochs x 1 batch of 8 (coverage_ranks=8: the original test loader reads per-rank batches of 1)
    assert stream["steps"] == 2 and 0 < stream["train_s"] < stream["wall_s"]
    assert result["two-process"]["world_size"] == 2 and result["two-process"]["backend"] == "gloo"
    attention = result["attention"]
    assert attention["max_abs_difference"] < 1e-4 and attention["sdpa_over_eager"] > 0
    assert attention["sdpa"] == ["aten::_scaled_dot_product_flash_attention_for_cpu"]
