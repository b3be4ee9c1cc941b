"""Store precision vs probe accuracy: the generated task's tokens kept in float32, float16 and int8.

One uniform-sampling run extracts the task's tokens in float32; the same tokens are then re-encoded in
each store dtype (so only the precision differs) and the probe grid trains on each, for several seeds
(probe init and data order). Prints top-1 mean and spread per dtype, the difference to float32, and the
bytes per token.

    python benchmarks/bench_store_dtype.py [--seeds 0 1 2] [--epochs 15] [--num-train 400]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from backbones import create_backbone
from probe.run.main import compose_config, head_config, run
from probe.store.features import CODECS, ArrayFeatures, FeatureStore
from probe.training.train import Recipe, train_probe_grid

DTYPES = ("float32", "float16", "int8")


def as_dtype(store: FeatureStore, dtype: str) -> ArrayFeatures:
    """All of `store`'s views re-encoded in `dtype` (float32 tokens in, the same tokens at that precision)."""
    everything = store.batch(np.repeat(np.arange(store.num_clips), store.num_views),
                             np.tile(np.arange(store.num_views), store.num_clips))
    shape = (store.num_clips, store.num_views)
    tokens = CODECS[dtype].encode(everything.tokens).reshape(*shape, *everything.tokens.shape[1:-1], -1)
    positions = everything.positions.numpy().reshape(*shape, -1, 3)
    lengths = everything.mask.sum(1).numpy().reshape(shape)
    return ArrayFeatures(tokens, positions, store.labels, lengths, dtype=dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--out", type=Path, default=None, help="results/cache folder (default: a temp one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_store_dtype-"))
    config = compose_config([
        "sampling=uniform", f"task.args.num_train={args.num_train}", f"probe.recipe.epochs={args.epochs}",
        "extract.dtype=float32", "progress=off", f"results_dir={out / 'results'}",
        f"cache_dir={out / 'cache'}",
    ])
    record = run(config)
    train32, test32 = (FeatureStore(record["data"][f"{s}_features"]) for s in ("train", "eval"))
    backbone = create_backbone(config["backbone"]["name"], **config["backbone"]["args"])
    head = head_config(config, backbone, train32)
    rows = {}
    for dtype in DTYPES:
        train, test = as_dtype(train32, dtype), as_dtype(test32, dtype)
        tops = []
        for seed in args.seeds:
            recipe = Recipe(**{**config["probe"]["recipe"], "seed": seed})
            classes = record["data"]["num_classes"]
            tops.append(train_probe_grid(train, test, classes, head, recipe, progress="off").test.top1)
        codec = CODECS[dtype]
        size = (train32.embed_dim + codec.extra) * np.dtype(codec.disk_dtype).itemsize
        rows[dtype] = (np.array(tops), size)
    base = rows["float32"][0]
    print(f"\ngenerated task, {config['backbone']['name']} (random weights), uniform "
          f"{config['sampling']['frames_equiv']} frames, {args.epochs} epochs, seeds {args.seeds}")
    print("| store dtype | bytes/token | size vs float16 | top-1 mean ± sd | minus float32 (mean ± sd) |")
    print("|---|---|---|---|---|")
    for dtype, (tops, size) in rows.items():
        delta = tops - base
        print(f"| {dtype} | {size} | {size / rows['float16'][1]:.2f} | {tops.mean():.1f} ± "
              f"{tops.std(ddof=1):.1f} | {delta.mean():+.2f} ± {delta.std(ddof=1):.2f} |")


if __name__ == "__main__":
    main()
