"""Step time of a probe grid: one stacked module (`probe.training.grid`) vs one probe after the other.

A training step of the reference head (no positions, depth 0) on one batch of stored tokens, measured
side by side for a grid of 1 and of `--probes` probes, with each trainer (`probe.recipe.grid`). The
shape defaults to ViT-L at 8 frames (1,024 channels, 2,048 tokens is the 2k-patch budget; 512 keeps a
CPU run short). The grid's cost is printed over two baselines, each with its seconds: one probe in the
stacked module (the grid's own single probe, the fair baseline) and one probe in the loop trainer.

    python benchmarks/bench_grid.py [--dim 1024] [--tokens 512] [--batch 32] [--probes 20]
"""

from __future__ import annotations

import argparse
import time

import torch

from probe.store.features import FeatureBatch
from probe.training.train import HeadConfig, ProbeSpec, Recipe, make_grid


def step_seconds(trainer: str, probes: int, batch: FeatureBatch, dim: int, classes: int, steps: int) -> float:
    """Median seconds per optimiser step of a grid of `probes` (after one warm-up step)."""
    specs = [ProbeSpec(f"p{i}", 1e-4 * (1 + i), 0.01 * (i % 2)) for i in range(probes)]
    recipe = Recipe(lrs=tuple(s.lr for s in specs), grid=trainer)
    grid = make_grid(specs, dim, classes, HeadConfig(), recipe, 1000, torch.device("cpu"))
    grid.step(batch, len(batch.labels))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        grid.step(batch, len(batch.labels))
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--classes", type=int, default=400)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting (median)")
    args = parser.parse_args()
    torch.manual_seed(0)
    batch = FeatureBatch(
        torch.randn(args.batch, args.tokens, args.dim),
        torch.zeros(args.batch, args.tokens, 3, dtype=torch.int64),
        torch.ones(args.batch, args.tokens, dtype=torch.bool),
        torch.randint(args.classes, (args.batch,)),
    )
    print(
        f"reference head, {args.batch} clips x {args.tokens} tokens x {args.dim} channels, {args.classes} "
        f"classes, torch threads {torch.get_num_threads()}; median of {args.steps} steps"
    )
    print(f"| trainer | 1 probe (s/step) | {args.probes} probes (s/step) | {args.probes} / 1 |")
    print("|---|---|---|---|")
    results = {}
    for trainer in ("stacked", "loop"):
        one = step_seconds(trainer, 1, batch, args.dim, args.classes, args.steps)
        many = step_seconds(trainer, args.probes, batch, args.dim, args.classes, args.steps)
        results[trainer] = (one, many)
        print(f"| {trainer} | {one:.3f} | {many:.3f} | {many / one:.2f}x |", flush=True)
    (one_stacked, many_stacked), (one_loop, many_loop) = results["stacked"], results["loop"]
    print(
        f"\n{args.probes} probes stacked ({many_stacked:.3f} s/step) over one probe stacked "
        f"({one_stacked:.3f} s): {many_stacked / one_stacked:.2f}x"
    )
    print(
        f"{args.probes} probes stacked ({many_stacked:.3f} s/step) over one probe in the loop trainer "
        f"({one_loop:.3f} s): {many_stacked / one_loop:.2f}x"
    )
    print(
        f"{args.probes} probes: the stacked grid ({many_stacked:.3f} s) is {many_loop / many_stacked:.1f}x "
        f"faster than the loop ({many_loop:.3f} s)"
    )

if __name__ == "__main__":
    main()
