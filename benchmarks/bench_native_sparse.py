"""Cost per clip of a codec budget (2,048 patches of 64 frames) per backbone: native sparse input vs whole
frames, side by side, relative to OneVision.

The patches are the codec sampler's on a real video (the fixture `Megamind.avi` unless `--video`); every
backbone with a 16 x 16 grid gets the same ones. Analytic FLOPs (`Backbone.encode_cost`, checked against
torch's FLOP counter in tests/test_cost.py) for the released sizes, built on the meta device (no weights,
no memory); measured seconds per clip for the `--time` backbones (random weights, this machine).
Usage: python benchmarks/bench_native_sparse.py [--budget 2048] [--time dinov3_tiny ...] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from backbones import Backbone, create_backbone
from tasks import Clip, create_sampler

RELEASED = ["onevision_large", "dinov3_large", "dinov3_7b", "siglip2_so400m16_naflex", "qwen3vit_8b"]
TINY = ["onevision_tiny", "dinov3_tiny", "siglip2_tiny", "qwen3vit_tiny"]


def modes(name: str) -> list[str | None]:
    """The sparse modes a backbone offers (None: its only one)."""
    family = type(create_backbone_on_meta(name))
    return list(getattr(family, "sparse_modes", [None]))


def create_backbone_on_meta(name: str, **kwargs) -> Backbone:
    with torch.device("meta"):
        return create_backbone(name, random_init=True, **kwargs)


def view_for(backbone: Backbone, clip: Clip, budget: int, cache: str):
    sampler = create_sampler("codec", num_frames=64, size=backbone.preprocess.size,
                             patch_size=backbone.patch_size, temporal_slots=backbone.temporal_slots,
                             budget=budget, native_sparse=backbone.native_sparse, cache_dir=cache)
    return sampler(clip)[0]


def seconds_per_clip(backbone: Backbone, view, device: torch.device, repeats: int) -> float:
    frames, positions = view.frames[None].to(device), view.positions[None].to(device)
    backbone.encode(frames, positions)  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        backbone.encode(frames, positions)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    default_fixtures = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
    fixtures = Path(os.environ.get("OVPROBE_FIXTURES", default_fixtures))
    parser.add_argument("--video", type=Path, default=fixtures / "videos" / "Megamind.avi")
    parser.add_argument("--budget", type=int, default=2048)
    parser.add_argument("--names", nargs="+", default=RELEASED, help="backbones for analytic FLOPs")
    parser.add_argument("--time", nargs="*", default=TINY, help="backbones to time (random weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", default="/tmp/ovprobe-bench-codec")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    clip = Clip(args.video.stem, args.video, label=0)

    print(f"codec budget {args.budget} patches of 64 frames, {args.video.name}\n")
    print("| backbone | sparse mode | grid | frames encoded | tokens encoded | GFLOPs/clip | x OneVision |")
    print("|---|---|---|---|---|---|---|")
    reference: float | None = None
    for name in args.names:
        for mode in modes(name):
            backbone = create_backbone_on_meta(name, **({"sparse_mode": mode} if mode else {}))
            cost = backbone.encode_cost(view_for(backbone, clip, args.budget, args.cache).positions)
            reference = reference or cost.flops  # the first row (OneVision) is the reference
            grid = backbone.preprocess.size // backbone.patch_size
            print(f"| {name} | {backbone.sparse_mode} | {grid}x{grid} | {cost.frames} | {cost.tokens} | "
                  f"{cost.flops / 1e9:,.0f} | {cost.flops / reference:.2f} |")

    if not args.time:
        return
    device = torch.device(args.device)
    print(f"\nmeasured on {device} (random weights), median of {args.repeats}\n")
    print("| backbone | sparse mode | s/clip | x whole frames |")
    print("|---|---|---|---|")
    for name in args.time:
        whole: float | None = None
        for mode in reversed(modes(name)):  # whole frames first, then native
            backbone = create_backbone(name, **({"sparse_mode": mode} if mode else {})).to(device)
            seconds = seconds_per_clip(backbone, view_for(backbone, clip, args.budget, args.cache), device,
                                       args.repeats)
            whole = whole or seconds
            print(f"| {name} | {backbone.sparse_mode} | {seconds:.3f} | {seconds / whole:.2f} |")


if __name__ == "__main__":
    main()
