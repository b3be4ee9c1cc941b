"""How many stored training views, against fresh views every epoch, on the generated task, several seeds.

The honest protocol encodes `extract.train_views` augmented views per training clip once and trains the
probes on them; streaming (`extract.mode=stream`) draws and encodes a fresh view of every clip every
epoch, as the original protocol does. Everything else is the same (sampling, jitter, probe grid,
validation selection), so the rows measure what fixed views cost and how many are worth storing (the
experiment behind `extract.train_views`' default):

    python benchmarks/bench_views.py --views 1 2 4 --seeds 0 1 2 --out /tmp/bench_views
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from probe.run.main import compose_config, run


def one(out: Path, seed: int, mode: str, views: int, args: argparse.Namespace) -> tuple[float, float]:
    overrides = [
        f"seed={seed}",
        f"sampling={args.sampling}",
        f"extract.mode={mode}",
        f"extract.train_views={views}",
        f"task.args.num_train={args.num_train}",
        f"task.args.num_test={args.num_test}",
        f"probe.recipe.epochs={args.epochs}",
        "progress=false",
        f"results_dir={out / 'results'}",
        f"cache_dir={out / 'cache'}",
    ]
    t0 = time.perf_counter()
    record = run(compose_config(overrides))
    return record["metrics"]["test"]["top1"], time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sampling", default="uniform")
    parser.add_argument("--views", type=int, nargs="+", default=[1, 2, 4], help="stored views to compare")
    parser.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train on fresh views every epoch (one backbone pass per clip and epoch: the slow row)",
    )
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--num-test", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("/tmp/ovprobe_bench_views"))
    args = parser.parse_args()
    modes = [(f"stored ({v} view{'s' * (v > 1)})", "store", v) for v in args.views]
    if args.stream:
        modes.append(("fresh every epoch", "stream", 1))
    rows = {}
    for label, mode, views in modes:
        rows[label] = [one(args.out, seed, mode, views, args) for seed in args.seeds]
        print(f"{label}: top-1 per seed {[round(r[0], 1) for r in rows[label]]}", flush=True)
    print(
        f"\n{args.sampling} sampling, {args.num_train} train / {args.num_test} test clips, "
        f"{args.epochs} epochs, seeds {args.seeds}"
    )
    print("| training views | top-1 mean | spread (sd) | min | max | time per run (s) |")
    print("|---|---|---|---|---|---|")
    for label, results in rows.items():
        top1 = [r[0] for r in results]
        sd = statistics.stdev(top1) if len(top1) > 1 else 0.0
        secs = statistics.mean(r[1] for r in results)
        mean = statistics.mean(top1)
        print(f"| {label} | {mean:.1f} | {sd:.1f} | {min(top1):.1f} | {max(top1):.1f} | {secs:.0f} |")


if __name__ == "__main__":
    main()
