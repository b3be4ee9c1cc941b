"""Original probe protocol vs. stored features and a trained-together grid, measured side by side.

(a) original: the backbone encodes every clip again at every epoch (train, validation and test), and the
    learning rates are trained one after another;
(b) this suite: the features are extracted once into the feature store (train views and test view), and the
    learning rates train side by side over the same batches.

Both arms run the same trainer on the same split, batches and heads: with `--dtype float32` their
accuracies agree exactly; the default float16 store perturbs the features slightly, which on a run this
small can move the val-selected number by a few points either way.

The task is handwritten digits (fixtures' digits.png) moving across the frame, drawn in memory: no video
decoding is timed, which favours (a); real videos widen the gap.

    python benchmarks/bench_protocol.py [--epochs 5] [--dtype float32] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backbones.base import Backbone
from backbones.registry import create_backbone
from probe.store.features import FeatureBatch, extract_features
from probe.training.train import GridResult, HeadConfig, Recipe, train_probe_grid
from tasks.clip import Clip, SampledClip

FIXTURES = Path(
    os.environ.get("OVPROBE_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures")
)


class MovingDigits:
    """Clip i: a handwritten digit of class i % classes drifting over noise; a view is a seeded trajectory."""

    def __init__(self, backbone: Backbone, frames: int, classes: int, seed: int) -> None:
        sheet = np.asarray(Image.open(FIXTURES / "videos" / "digits.png").convert("L"))
        self.digits = sheet.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(5000, 20, 20)  # row-major
        self.size, self.frames, self.classes, self.seed = backbone.preprocess.size, frames, classes, seed
        side = self.size // backbone.patch_size
        grid = torch.stack(
            torch.meshgrid(torch.arange(frames), torch.arange(side), torch.arange(side), indexing="ij"), -1
        ).view(-1, 3)
        slots = (backbone.temporal_slots or frames) - 1
        grid[:, 0] = (grid[:, 0] * slots / max(frames - 1, 1)).round().long()
        self.positions = grid

    def clips(self, count: int, offset: int) -> list[Clip]:
        return [
            Clip(f"digit{offset + i}", Path("digits.png"), label=(offset + i) % self.classes)
            for i in range(count)
        ]

    def draw(self, clip: Clip, view: int) -> SampledClip:
        i = int(clip.clip_id.removeprefix("digit"))
        rng = np.random.default_rng([self.seed, i, view])
        digit = np.kron(self.digits[clip.label * 500 + i % 500], np.ones((4, 4), np.uint8))  # 80x80
        room = self.size - digit.shape[0]
        start, end = rng.integers(0, room, 2), rng.integers(0, room, 2)
        video = rng.integers(0, 40, (self.frames, self.size, self.size), dtype=np.uint8)
        for t in range(self.frames):
            y, x = np.round(start + (end - start) * t / max(self.frames - 1, 1)).astype(int)
            patch = video[t, y : y + digit.shape[0], x : x + digit.shape[1]]
            np.maximum(patch, digit, out=patch)
        frames = torch.from_numpy(np.repeat(video[..., None], 3, axis=-1))
        return SampledClip(clip.clip_id, clip.label, frames, self.positions, view=view)


class EncodeEveryTime:
    """`Features` that samples and encodes the clips at every access, as the original protocol does."""

    def __init__(
        self, backbone: Backbone, clips: list[Clip], task: MovingDigits, views: int, name: str
    ) -> None:
        self.backbone, self.clips, self.task = backbone, clips, task
        self.fingerprint = name
        self.num_clips, self.num_views = len(clips), views
        self.num_tokens, self.embed_dim = len(task.positions), backbone.embed_dim
        self.labels = np.array([c.label for c in clips])
        self.encoded = 0

    @torch.no_grad()  # inference tensors could not enter the probe's autograd graph
    def batch(self, clips: np.ndarray, views: np.ndarray) -> FeatureBatch:
        sampled = [self.task.draw(self.clips[c], int(v)) for c, v in zip(clips, views, strict=True)]
        positions = torch.stack([s.positions for s in sampled])
        tokens = self.backbone.encode(torch.stack([s.frames for s in sampled]), positions).float().cpu()
        self.encoded += len(sampled)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool)
        return FeatureBatch(tokens, positions, mask, torch.from_numpy(self.labels[clips]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="onevision_tiny")
    parser.add_argument("--classes", type=int, default=4, help="digit classes 0..classes-1")
    parser.add_argument("--clips-per-class", type=int, default=100, help="train clips per class (test: half)")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--train-views", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lrs", default="1e-3,3e-3,1e-2")
    parser.add_argument("--dtype", default="float16", help="feature store dtype of arm (b)")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (1 keeps timings stable on a busy CPU)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)

    backbone = create_backbone(args.backbone)
    task = MovingDigits(backbone, args.frames, args.classes, seed=0)
    train_clips = task.clips(args.classes * args.clips_per_class, offset=0)
    test_clips = task.clips(args.classes * args.clips_per_class // 2, offset=len(train_clips))
    lrs = tuple(float(x) for x in args.lrs.split(","))
    recipe = Recipe(lrs=lrs, epochs=args.epochs, batch_size=16, val_fraction=0.2, bootstrap=200)
    head = HeadConfig()

    # (a) original protocol: one lr at a time, features recomputed at every epoch.
    t0 = time.perf_counter()
    original: list[GridResult] = []
    encodes_a = 0
    for lr in lrs:
        train = EncodeEveryTime(backbone, train_clips, task, args.train_views, "train")
        test = EncodeEveryTime(backbone, test_clips, task, 1, "test")
        original.append(
            train_probe_grid(train, test, args.classes, head, replace(recipe, lrs=(lr,)), progress=False)
        )
        encodes_a += train.encoded + test.encoded
    wall_a = time.perf_counter() - t0

    # (b) features stored once, lrs trained together.
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        stores = {}
        for split, clips, views in (("train", train_clips, args.train_views), ("test", test_clips, 1)):
            stores[split] = extract_features(
                backbone,
                clips,
                lambda c, v=views: [task.draw(c, i) for i in range(v)],
                root=root,
                task="moving-digits",
                split=split,
                sampling={"frames": args.frames},
                seed=0,
                views=views,
                dtype=args.dtype,
                shard_size=64,
                batch_size=16,
                progress=False,
            )
        extract_s = time.perf_counter() - t0
        together = train_probe_grid(
            stores["train"], stores["test"], args.classes, head, recipe, progress=False
        )
        wall_b = time.perf_counter() - t0
    encodes_b = sum(store.extraction.views for store in stores.values())  # counted, as in (a)

    best_a = max(original, key=lambda r: (r.selected.val_top1, -r.selected.val_loss))
    grid_max_a = max(r.best_test_over_grid.top1 for r in original)
    print(
        f"{backbone.name}, {len(train_clips)} train clips x {args.train_views} views, "
        f"{len(test_clips)} test clips, {args.frames} frames ({len(task.positions)} tokens), lrs {lrs}, "
        f"{args.epochs} epochs, store {args.dtype}, torch threads {torch.get_num_threads()}"
    )
    header = (
        ("wall s", 9),
        ("clip encodes", 14),
        ("test top-1 (val-selected)", 27),
        ("best test over grid", 21),
    )
    print(" " * 28 + "".join(f"{h:>{w}s}" for h, w in header))
    print(
        f"{'(a) original protocol':28s}{wall_a:9.1f}{encodes_a:14d}{best_a.test.top1:27.2f}{grid_max_a:21.2f}"
    )
    print(
        f"{'(b) store once + grid':28s}{wall_b:9.1f}{encodes_b:14d}{together.test.top1:27.2f}"
        f"{together.best_test_over_grid.top1:21.2f}"
    )
    print(f"(b) split: extraction {extract_s:.1f} s, grid training {wall_b - extract_s:.1f} s")
    print(f"wall-clock a/b: {wall_a:.1f} s / {wall_b:.1f} s = {wall_a / wall_b:.1f}x (the speed-up)")
    print(f"clip encodes a/b: {encodes_a} / {encodes_b} = {encodes_a / encodes_b:.1f}x "
          "(work avoided, not the speed-up)")


if __name__ == "__main__":
    main()
