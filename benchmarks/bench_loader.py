"""Does data loading keep the backbone busy? Backbone time vs loader wait during feature extraction.

The embedded default's train split (the generated task, the tiny random-weight OneVision, uniform
sampling) is extracted through the run's own path (`probe.run.main.extract`) with the configured number of
DataLoader workers (`num_workers` in `probe/conf/config.yaml`) and with 0 (decoding in the main
process), each into a fresh store. The feature store's `ExtractStats` split the time: `encode` is
inside `backbone.encode`, `wait` is waiting for the next decoded and sampled clip. encode/wait well
above 1 means the workers keep up and the backbone is the bottleneck.

`--select` compares codec sampling with and without its maps computed ahead (`ovprobe-select`, timed on
its own: clips/s per core), at the configured worker count: the loader-wait fraction of extraction
with the motion-vector analysis in the loader, and with only the kept frames to decode.

    python benchmarks/bench_loader.py [--quick] [--threads 1] [--select] [OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from bench_store_scale import bench_config, generate_task, prepare, settings

from probe.run.main import compose_config
from probe.run.select import precompute


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 32 clips, 2 frames per view")
    parser.add_argument("--workers", type=int, nargs="+", help="worker counts (default: the config's, and 0)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 keeps a shared CPU's timings stable)"
    )
    parser.add_argument(
        "overrides", nargs="*", help="config overrides, e.g. task.args.num_train=200 sampling.frames_equiv=4"
    )
    parser.add_argument(
        "--select", action="store_true", help="codec sampling with and without ovprobe-select"
    )
    args = parser.parse_args()
    if args.select:
        select_arms(args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    workers = args.workers or [compose_config()["num_workers"], 0]
    # The test split is not extracted: keep its generation short.
    overrides = [
        "task.args.num_test=8",
        *(["task.args.num_train=32", "sampling.frames_equiv=2"] if args.quick else []),
        *args.overrides,
    ]

    rows = []
    with tempfile.TemporaryDirectory(prefix="ovprobe-bench-loader-") as tmp:
        for w in workers:
            config = bench_config(tmp, Path(tmp) / f"workers-{w}", [*overrides, f"num_workers={w}"])
            generate_task(config)  # once: the same task for every worker count
            stats = prepare(config)().extraction
            rows.append((w, stats))

    print(settings(config))
    header = ("workers", "clips", "wall s", "encode s", "wait s", "write s", "encode/wait", "clips/s")
    print("".join(f"{h:>12s}" for h in header))
    for w, s in rows:
        cells = (s.total_s, s.encode_s, s.wait_s, s.write_s, s.encode_s / s.wait_s, s.clips / s.total_s)
        print(f"{w:12d}{s.clips:12d}" + "".join(f"{c:12.2f}" for c in cells))
    (w0, s0), *others = rows
    for w, s in others:
        print(
            f"num_workers={w0} vs {w}: {s.total_s / s0.total_s:.2f}x faster, loader wait "
            f"{s.wait_s / s0.wait_s:.1f}x lower"
        )


def select_arms(args: argparse.Namespace) -> None:
    """Extraction under codec sampling: maps computed in the loader vs read from `ovprobe-select`'s cache."""
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [
        "task.args.num_test=8",
        "sampling=codec",
        *(["task.args.num_train=32"] if args.quick else []),
        *args.overrides,
    ]
    with tempfile.TemporaryDirectory(prefix="ovprobe-bench-select-") as tmp:
        plain = bench_config(tmp, Path(tmp) / "plain", overrides)
        generate_task(plain)
        without = prepare(plain)().extraction
        ahead = bench_config(tmp, Path(tmp) / "ahead", overrides)
        summary = precompute(ahead)
        with_select = prepare(ahead)().extraction
    workers = max(ahead["num_workers"], 1)
    print(settings(ahead))
    per_core = summary.clips / summary.seconds / workers
    print(f"ovprobe-select: {summary.line()}; {per_core:.2f} clips/s per core ({workers} worker processes)")
    print("| extraction | wall s | encode s | loader wait s | wait fraction | clips/s |")
    print("|---|---|---|---|---|---|")
    for name, s in (("maps computed in the loader", without), ("maps from ovprobe-select", with_select)):
        cells = (s.total_s, s.encode_s, s.wait_s, s.wait_s / s.total_s, s.clips / s.total_s)
        print(f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
