"""`ovprobe`: until the probe lands, encode a real fixture video with a tiny OneVision model."""

from __future__ import annotations

import argparse
from pathlib import Path

import av
import numpy as np
import torch

from backbones import create_backbone
from backbones.onevision.rope import grid_positions

DEFAULT_VIDEO = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "videos" / "cup.mp4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("video", nargs="?", default=str(DEFAULT_VIDEO))
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args()

    backbone = create_backbone("onevision_tiny")
    size = backbone.preprocess.size
    with av.open(args.video) as container:
        decoded = [f.to_ndarray(format="rgb24", width=size, height=size) for f in container.decode(video=0)]
    keep = np.linspace(0, len(decoded) - 1, args.frames).round().astype(int)
    frames = torch.from_numpy(np.stack([decoded[i] for i in keep]))[None]
    hp = size // backbone.patch_size
    positions = grid_positions(args.frames, hp, hp)
    slots = backbone.temporal_slots - 1
    positions[:, 0] = (positions[:, 0] * slots / max(args.frames - 1, 1)).round().long()
    tokens = backbone.encode(frames, positions[None])
    print(f"{backbone.name} (random weights) on {args.video}: {len(decoded)} frames decoded, {args.frames} sampled")
    print(f"frames {tuple(frames.shape)} -> positions {tuple(positions.shape)} -> tokens {tuple(tokens.shape)}")


if __name__ == "__main__":
    main()
