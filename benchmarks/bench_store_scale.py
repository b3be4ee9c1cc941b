"""Feature-store extraction at scale: throughput and peak memory for a 1,000- and a 4,000-clip task.

Each size is a generated task (`tasks/datasets/synthetic.py`, generated beforehand and not timed) whose train
split is extracted through the run's own path (`probe.run.main.extract`: the configured sampler, views,
shard size, batch size and DataLoader workers) with the tiny random-weight OneVision, in a fresh process
per size so that its peak memory is its own:

- main peak RSS: the extracting process's high-water mark, reset just before extraction starts
  (`/proc/self/clear_refs`, after the imports, the model and the clip list);
- growth: that peak minus the resident set just before extraction;
- worker peak RSS: the largest DataLoader worker's high-water mark (`RUSAGE_CHILDREN`; a forked
  worker's RSS includes the pages it shares with the main process);
- tree peak PSS: main process plus workers, shared pages split between them, sampled every 0.1 s.

Flat memory means the 4,000-clip run peaks where the 1,000-clip run does (ratio ~1.0).

Defaults keep the 4,000-clip case to a few minutes on two CPU cores: 16-frame clips, 2 frames per
view (128 tokens), one torch thread (a shared CPU's timings stay stable; more threads than free cores
can slow the encoder several-fold).

    python benchmarks/bench_store_scale.py [--clips 1000 4000] [--quick] [--frames-equiv 2] [OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peak import children_peak_mb, peak_mb, reset_peak

from backbones import create_backbone
from probe.run.main import build_sampler, compose_config, extract
from probe.store.features import FeatureStore
from tasks import create_task


def bench_config(task_cache: str | Path, cache: str | Path, overrides: list[str]) -> dict[str, Any]:
    """The run config (defaults plus `overrides`) with the generated task in `task_cache` and the
    features in `cache`, without progress bars."""
    return compose_config(
        [f"task.args.cache_dir={task_cache}", f"cache_dir={cache}", "progress=false", *overrides]
    )


def generate_task(config: dict[str, Any]) -> None:
    """Generate the config's task now, with a progress bar, so that no measurement includes it."""
    t0 = time.perf_counter()
    create_task(config["task"]["name"], **{**config["task"]["args"], "progress": True})
    print(f"task ready in {time.perf_counter() - t0:.0f} s (not measured)", flush=True)


def prepare(config: dict[str, Any]) -> Callable[[], FeatureStore]:
    """Build what `ovprobe` builds (the task must be generated already); the returned call extracts the
    train split through the run's path."""
    backbone = create_backbone(config["backbone"]["name"], **config["backbone"]["args"])
    sampler = build_sampler(config["sampling"], backbone, config["cache_dir"])
    task = create_task(config["task"]["name"], **config["task"]["args"])
    task.clips(config["task"]["train_split"])  # the clip list is read before measuring
    return lambda: extract(config, backbone, task, config["task"]["train_split"], sampler, train=True)


def settings(config: dict[str, Any]) -> str:
    t, s, e = config["task"]["args"], config["sampling"], config["extract"]
    return (
        f"{config['backbone']['name']} (random weights), generated task {t['num_frames']} frames of "
        f"{t['size']}px, sampling {s['name']} frames_equiv={s['frames_equiv']}, "
        f"{e['train_views']} train views, shard {e['shard_size']}, batch {e['batch_size']}, "
        f"store {e['dtype']}, torch threads {torch.get_num_threads()}"
    )


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:  # the process ended between listing and reading
        pass
    return 0


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields: state, ppid, ...
            kids.append(int(stat.parent.name))
    return kids


class TreePss:
    """Samples the PSS of this process plus its children in a thread; `peak_kb` is the largest sum."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval, self.peak_kb = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, sum(_pss_kb(p) for p in [me, *_children(me)]))
            self._stop.wait(self.interval)

    def __enter__(self) -> TreePss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def child(config: dict[str, Any]) -> dict[str, Any]:
    """Extract in this (fresh) process and return throughput and memory as one JSON-able dict."""
    extract_train = prepare(config)
    before_mb = reset_peak()
    with TreePss() as tree:
        t0 = time.perf_counter()
        store = extract_train()
        wall = time.perf_counter() - t0
    stats = store.extraction
    return {
        "clips": stats.clips,
        "skipped": stats.skipped,
        "wall_s": wall,
        "tokens": stats.tokens,
        "bytes": stats.bytes_written,
        "encode_s": stats.encode_s,
        "wait_s": stats.wait_s,
        "before_mb": before_mb,
        "main_peak_mb": peak_mb(),
        "worker_peak_mb": children_peak_mb(),
        "tree_pss_mb": tree.peak_kb / 1024,
        "settings": f"{settings(config)}, num_workers={config['num_workers']}",
    }


def run_child(config: dict[str, Any], threads: int | None) -> dict[str, Any]:
    """`child(config)` in a fresh interpreter; its last stdout line is the result."""
    args = [sys.executable, __file__, "--child-config", json.dumps(config)]
    if threads:
        args += ["--threads", str(threads)]
    out = subprocess.run(args, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, nargs="+", default=[1000, 4000], help="train clips per task")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 64 and 256 clips")
    parser.add_argument("--test-clips", type=int, default=8, help="test clips per task (not extracted)")
    parser.add_argument("--frames", type=int, default=16, help="frames per generated clip")
    parser.add_argument("--frames-equiv", type=int, default=2, help="uniform sampling: frames per view")
    parser.add_argument("--task-cache", help="keep the generated tasks here (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the extracting process")
    parser.add_argument("--child-config", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="more config overrides, e.g. num_workers=0")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_config:
        print(json.dumps(child(json.loads(args.child_config))))
        return

    sizes = [64, 256] if args.quick else args.clips
    with tempfile.TemporaryDirectory(prefix="ovprobe-bench-scale-") as tmp:
        task_cache = args.task_cache or tmp
        rows = []
        for n in sizes:
            cache = Path(tmp) / f"run-{n}"  # fresh: no stored features
            task = [f"task.args.num_train={n}", f"task.args.num_test={args.test_clips}",
                    f"task.args.num_frames={args.frames}", f"sampling.frames_equiv={args.frames_equiv}"]
            config = bench_config(task_cache, cache, [*task, *args.overrides])
            generate_task(config)
            rows.append(run_child(config, args.threads))
            shutil.rmtree(cache)

    print(rows[0]["settings"])
    header = ("clips", "wall s", "encode s", "wait s", "clips/s", "tokens/s", "MB written", "before MB",
              "main peak MB", "growth MB", "worker peak MB", "tree PSS MB")
    print("".join(f"{h:>15s}" for h in header))
    for r in rows:
        cells = (r["clips"], r["wall_s"], r["encode_s"], r["wait_s"], r["clips"] / r["wall_s"],
                 r["tokens"] / r["wall_s"], r["bytes"] / 2**20, r["before_mb"], r["main_peak_mb"],
                 r["main_peak_mb"] - r["before_mb"], r["worker_peak_mb"], r["tree_pss_mb"])
        print(f"{cells[0]:15d}" + "".join(f"{c:15.1f}" for c in cells[1:]))
    first, last = rows[0], rows[-1]
    print(
        f"{last['clips']} vs {first['clips']} clips ({last['clips'] / first['clips']:g}x the clips, "
        f"{last['bytes'] / first['bytes']:.1f}x the bytes): peak memory ratio main "
        f"{last['main_peak_mb'] / first['main_peak_mb']:.2f}, workers "
        f"{last['worker_peak_mb'] / first['worker_peak_mb']:.2f}, tree PSS "
        f"{last['tree_pss_mb'] / first['tree_pss_mb']:.2f} (flat: 1.0)"
    )


if __name__ == "__main__":
    main()
