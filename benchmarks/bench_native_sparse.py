"""Cost per clip of a codec budget (2,048 patches of 64 frames, the first frame whole) per backbone: native
sparse input vs whole frames, side by side, relative to OneVision.

The patches are the codec sampler's on a real video (the fixture `Megamind.avi` unless `--video`); every
backbone with the same grid gets the same ones. Two tables:
- released sizes, **analytic** FLOPs only (`Backbone.encode_cost` from the architecture's config, built on
  the meta device: no weights, no memory; a forward at these sizes is out of reach of a test machine);
- the `--time` backbones (random weights, on `--grid` patches a side: 16, the released entries' grid, by
  default): **counted** FLOPs (torch's FLOP counter over `encode`, eager attention as matrix products)
  beside the analytic ones, and measured seconds per clip (the backbone as a run builds it), each mode's
  counted FLOPs and seconds also as a ratio to its whole-frame mode.
Usage: python benchmarks/bench_native_sparse.py [--budget 2048] [--time dinov3_tiny ...] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from backbones import Backbone, create_backbone
from tasks import Clip, SampledClip, create_sampler

RELEASED = ["onevision_large", "dinov3_large", "dinov3_7b", "siglip2_so400m16_naflex", "qwen3vit_8b"]
TINY = ["onevision_tiny", "dinov3_tiny", "siglip2_tiny", "qwen3vit_tiny"]


def modes(name: str) -> list[str | None]:
    """The sparse modes a backbone offers, whole frames first (None: its only one)."""
    family = type(create_backbone_on_meta(name))
    return sorted(getattr(family, "sparse_modes", [None]), key=lambda mode: mode == "native")


def create_backbone_on_meta(name: str, **kwargs) -> Backbone:
    with torch.device("meta"):
        return create_backbone(name, random_init=True, **kwargs)


def view_for(backbone: Backbone, clip: Clip, budget: int, cache: str) -> SampledClip:
    sampler = create_sampler("codec", num_frames=64, size=backbone.preprocess.size,
                             patch_size=backbone.patch_size, temporal_slots=backbone.temporal_slots,
                             budget=budget, native_sparse=backbone.native_sparse, cache_dir=cache)
    return sampler(clip)[0]


def counted_flops(backbone: Backbone, view: SampledClip, device: torch.device) -> int:
    """torch's FLOP counter over one `encode` of `view` (attention in the math kernel: matrix products)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        backbone.encode(view.frames[None].to(device), view.positions[None].to(device))
    return counter.get_total_flops()


def seconds_per_clip(backbone: Backbone, view: SampledClip, device: torch.device, repeats: int) -> float:
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
    parser.add_argument("--names", nargs="*", default=RELEASED, help="released backbones (analytic FLOPs)")
    parser.add_argument("--time", nargs="*", default=TINY,
                        help="backbones to count and time (random weights)")
    parser.add_argument("--grid", type=int, default=16, help="patches a side for the --time backbones")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", default="/tmp/ovprobe-bench-codec")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    clip = Clip(args.video.stem, args.video, label=0)
    print(f"codec budget {args.budget} patches of 64 frames (first frame whole), {args.video.name}")

    if args.names:
        print("\nreleased sizes: analytic FLOPs (encode_cost from the config), not run\n")
        print("| backbone | sparse mode | grid | frames encoded | tokens encoded | analytic GFLOPs/clip "
              "| x OneVision |")
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
    print(f"\n{args.grid}x{args.grid} grid, random weights, on {device}: counted FLOPs (torch's FLOP "
          f"counter, eager attention) and seconds (median of {args.repeats}) per clip\n")
    print("| backbone | sparse mode | frames | tokens | analytic GFLOPs | counted GFLOPs "
          "| counted / analytic | counted x whole | s/clip | s x whole |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.time:
        size = args.grid * create_backbone_on_meta(name).patch_size
        whole: tuple[float, float] | None = None
        for mode in modes(name):
            kwargs = {"sparse_mode": mode} if mode else {}
            backbone = create_backbone(name, random_init=True, input_size=size, **kwargs).to(device)
            view = view_for(backbone, clip, args.budget, args.cache)
            eager = create_backbone(name, random_init=True, input_size=size, attn_implementation="eager",
                                    **kwargs).to(device)
            counted = counted_flops(eager, view, device)
            seconds = seconds_per_clip(backbone, view, device, args.repeats)
            cost = backbone.encode_cost(view.positions)
            whole = whole or (counted, seconds)
            print(f"| {name} | {backbone.sparse_mode} | {cost.frames} | {cost.tokens} "
                  f"| {cost.flops / 1e9:.3f} | {counted / 1e9:.3f} | {counted / cost.flops:.3f} "
                  f"| {counted / whole[0]:.2f} "
                  f"| {seconds:.3f} | {seconds / whole[1]:.2f} |")


if __name__ == "__main__":
    main()
