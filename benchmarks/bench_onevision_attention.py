"""Forward throughput of OneVision-Encoder with SDPA vs a plain eager attention, same weights.

Large-model width (1024, 16 heads, MLP 4096) at 2048 tokens (8 frames x 256 patches at 224 px);
depth reduced so the CPU finishes in seconds. Usage: python benchmarks/bench_onevision_attention.py
"""

from __future__ import annotations

import argparse
import time

import torch

from backbones.onevision import OneVisionConfig, OneVisionEncoder


def tokens_per_second(model: OneVisionEncoder, video: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        model(video)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            model(video)
        elapsed = time.perf_counter() - start
    return repeats * video.shape[2] * 256 / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8, help="8 frames x 256 patches = 2048 tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    config = OneVisionConfig(num_hidden_layers=args.layers)
    torch.manual_seed(0)
    sdpa = OneVisionEncoder(config).eval().to(args.device, dtype)
    eager = OneVisionEncoder(OneVisionConfig(num_hidden_layers=args.layers, attn_implementation="eager"))
    eager.load_state_dict(sdpa.state_dict())
    eager = eager.eval().to(args.device, dtype)
    video = torch.randn(1, 3, args.frames, 224, 224, device=args.device, dtype=dtype)

    with torch.inference_mode():
        diff = (sdpa(video).last_hidden_state - eager(video).last_hidden_state).abs().max().item()
    models = {"eager": eager, "sdpa": sdpa}
    rates = {name: tokens_per_second(m, video, args.repeats) for name, m in models.items()}
    tokens = args.frames * 256
    print(f"OneVision forward, width 1024, {args.layers} layers, {tokens} tokens, {args.device}/{args.dtype}")
    for name, rate in rates.items():
        print(f"  {name:6s} {rate:10.0f} tokens/s")
    print(f"  sdpa / eager = {rates['sdpa'] / rates['eager']:.2f}x   (max |difference| {diff:.1e})")


if __name__ == "__main__":
    main()
