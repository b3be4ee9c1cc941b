"""How long `ovprobe` takes to refuse a config mistake, beside the time to import torch (what every
refusal paid before the Hydra entry moved to `probe.run.cli`), measured side by side.

    python benchmarks/bench_refusal.py [--repeats 3] [--other-checkout /path/to/another/ovprobe]

Each command is a fresh interpreter (as a user's shell starts it), with its results folder in a temporary
directory; the best and the median of `--repeats` runs are printed. `--other-checkout` times the same
commands in another checkout (e.g. `main` before this change) in the same session; a mistake that
checkout does not refuse within `LIMIT_S` (it starts the run) is stopped and shown as "not refused".
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MISTAKES = {
    "mistyped key (Hydra refuses)": ["sampling.typo=1"],
    "bad value (extract.dtype=fp16)": ["extract.dtype=fp16"],
    "bad value (backbone.args.dtype)": ["backbone.args.dtype=fp32"],
    "conflicting keys": ["sampling.budget=512", "sampling.frames_equiv=4"],
    "checkpoint folder that does not exist": ["backbone.args.checkpoint=/nonexistent/checkpoint"],
}
LIMIT_S = 30.0


def _seconds(command: list[str], checkout: Path, expect_failure: bool = True) -> float | None:
    """Wall seconds to the command's exit; None when a mistake was not refused within `LIMIT_S`."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True,
                              timeout=LIMIT_S if expect_failure else None)
    except subprocess.TimeoutExpired:
        return None
    elapsed = time.perf_counter() - start
    if expect_failure != (done.returncode != 0):
        return None if expect_failure else elapsed
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--other-checkout", type=Path, default=None)
    args = parser.parse_args()
    checkouts = [REPO] + ([args.other_checkout.resolve()] if args.other_checkout else [])
    with tempfile.TemporaryDirectory() as tmp:
        rows = {"import torch (reference)": ([sys.executable, "-c", "import torch"], False)}
        for name, overrides in MISTAKES.items():
            rows[name] = ([sys.executable, "-m", "probe.run", *overrides, f"results_dir={tmp}/results",
                           f"cache_dir={tmp}/cache"], True)
        print(f"{'command':34s} " + " ".join(f"{c.name:>24s}" for c in checkouts) + "   (best / median s)")
        for name, (command, fails) in rows.items():
            cells = []
            for checkout in checkouts:
                times = []
                while len(times) < args.repeats and None not in times:
                    times.append(_seconds(command, checkout, fails))
                if None in times:
                    cells.append("not refused")
                    continue
                cells.append(f"{min(times):10.2f} / {statistics.median(times):5.2f}")
            print(f"{name:34s} " + " ".join(f"{c:>24s}" for c in cells))


if __name__ == "__main__":
    main()
