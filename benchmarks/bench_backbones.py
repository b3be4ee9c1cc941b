"""Encoding throughput of the registered backbones at one patch budget (2,048 patches), side by side.

Two layouts per backbone, as the samplers produce them:
- uniform: budget / patches-per-frame whole frames, every patch a token;
- codec: the budget scattered over a dense run of 64 frames (seeded random choice, first frame whole, as the
  codec sampler's I-frame). OneVision takes the patches packed into budget / grid**2 pseudo-frames; the
  per-frame image encoders encode every frame a kept patch falls in and keep those tokens, so their
  compute grows with the frames touched, not with the budget.
tokens/s counts the budget's tokens (what the probe receives). Weights are random (the architecture decides
the speed). Usage: python benchmarks/bench_backbones.py [--names onevision_base dinov3_base ...]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from tqdm import tqdm

from backbones import Backbone, create_backbone
from tasks.sampling.samplers import dense_positions, temporal_positions

TINY = ["onevision_tiny", "siglip2_tiny", "dinov3_tiny", "qwen3vit_tiny", "clip_tiny", "metaclip2_tiny",
        "dinov2reg_tiny", "dinov2_tiny", "aimv2_tiny", "vjepa2_tiny"]


def uniform_input(backbone: Backbone, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    grid = backbone.preprocess.size // backbone.patch_size
    if budget % grid**2:
        raise SystemExit(f"--budget {budget} is not a whole number of {grid}x{grid} frames ({backbone.name})")
    frames = budget // grid**2
    positions = dense_positions(temporal_positions(frames, backbone.temporal_slots), grid)
    return random_pixels(backbone, frames), positions


def codec_input(backbone: Backbone, budget: int, dense_frames: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    grid = backbone.preprocess.size // backbone.patch_size
    rng = np.random.default_rng(0)
    rest = rng.choice(np.arange(grid**2, dense_frames * grid**2), budget - grid**2, replace=False)
    keep = np.sort(np.concatenate([np.arange(grid**2), rest]))
    chosen = dense_positions(np.arange(dense_frames), grid)[keep]
    if backbone.native_sparse:  # packed pseudo-frames, positions on the temporal grid
        slots = torch.from_numpy(temporal_positions(dense_frames, backbone.temporal_slots))
        chosen[:, 0] = slots[chosen[:, 0]]
        return random_pixels(backbone, budget // grid**2), chosen
    return random_pixels(backbone, dense_frames), chosen


def random_pixels(backbone: Backbone, frames: int) -> torch.Tensor:
    size = backbone.preprocess.size
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (frames, size, size, 3), dtype=torch.uint8, generator=generator)


def tokens_per_second(backbone: Backbone, frames: torch.Tensor, positions: torch.Tensor, batch: int,
                      repeats: int, device: torch.device) -> float:
    frames = frames[None].expand(batch, *frames.shape).to(device)
    positions = positions[None].expand(batch, *positions.shape).to(device)

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        backbone.encode(frames, positions)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with torch.inference_mode():
        once()  # warm-up
        seconds = statistics.median(once() for _ in range(repeats))
    return batch * positions.shape[1] / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", nargs="+", default=TINY, help="registered backbones (random weights)")
    parser.add_argument("--budget", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    device = torch.device(args.device)

    rows = []
    for name in tqdm(args.names, desc="backbones"):
        backbone = create_backbone(name, random_init=True, dtype=args.dtype).to(device)
        grid = backbone.preprocess.size // backbone.patch_size
        rates = {
            layout: tokens_per_second(backbone, *make(backbone, args.budget), args.batch, args.repeats,
                                      device)
            for layout, make in (("uniform", uniform_input), ("codec", codec_input))
        }
        params = sum(p.numel() for p in backbone.parameters()) / 1e6
        sparse = "native" if backbone.native_sparse else getattr(backbone, "sparse_mode", "per frame")
        rows.append((name, params, backbone.preprocess.size, backbone.patch_size, grid, sparse, rates))
        del backbone

    print(f"\n{args.budget} patches per clip, batch {args.batch}, {args.device}/{args.dtype}, random weights")
    print(f"{'backbone':26s} {'params':>8s} {'size':>5s} {'patch':>5s} {'grid':>5s} "
          f"{'uniform tok/s':>14s} {'codec tok/s':>12s}  sparse patch sets")
    for name, params, size, patch, grid, sparse, rates in rows:
        print(f"{name:26s} {params:7.1f}M {size:5d} {patch:5d} {grid:5d} "
              f"{rates['uniform']:14.0f} {rates['codec']:12.0f}  {sparse}")


if __name__ == "__main__":
    main()
