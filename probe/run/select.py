"""`ovprobe-select`: the codec sampler's maps of every clip computed ahead of the run, on CPUs, sharded.

    ovprobe-select task=kinetics400 task.args.root=/data/k400 sampling=codec --shard 3/64

takes the same overrides as `ovprobe` and fills the map cache (`<cache_dir>/codec`) with the maps the
run will ask for: each training view's own (`extract.train_views` views, or one per epoch under
`extract.mode=stream`) and the test view's, for the clips of shard i of n (clip index modulo n, both
splits), `num_workers` processes at a time. Maps are the costly part of codec sampling (decoding every
frame of the dense run and scoring its motion vectors and residuals); the run then finds them cached,
decodes only the frames that hold selected patches, and selects its K patches from the maps (cheap, and
dependent on the budget, so left to the run). Clips already cached are skipped, so a shard can be run
again after an interruption; unreadable clips are counted and listed, and left to the run's
`on_bad_clip` policy.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from backbones import create_backbone
from probe.run.main import build_sampler, check_config, compose_config, resolve_dtype, view_rng
from probe.run.schema import ConfigError
from tasks import Clip, create_task
from tasks.decode.codec_cache import cached_analyse, fingerprint
from tasks.decode.video import VideoDecodeError
from tasks.progress import progress_bar
from tasks.sampling.samplers import CodecSampler

log = logging.getLogger("ovprobe-select")
CPU = torch.device("cpu")


@dataclass
class SelectSummary:
    """What one shard did: views whose maps were computed or found cached, and unreadable clips."""

    shard: tuple[int, int]
    clips: int = 0
    computed: int = 0
    cached: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)  # clip id -> reason
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.clips / self.seconds if self.seconds else 0.0
        i, n = self.shard
        return (
            f"shard {i}/{n}: {self.clips} clips, maps of {self.computed} views computed and "
            f"{self.cached} already cached, {len(self.unreadable)} clips unreadable, in {self.seconds:.1f} s "
            f"({rate:.2f} clips/s)"
        )


def parse_shard(text: str) -> tuple[int, int]:
    """ "i/n" -> (i, n) with 0 <= i < n."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: write it as i/n, e.g. 0/8") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: i must be in 0..n-1")
    return i, n


def _one_clip(sampler: CodecSampler, seed: int, job: tuple[Clip, list[int | None]]) -> tuple[int, int, str]:
    """(computed, cached, error) for the maps of the views of one clip (view None: the test view)."""
    clip, views = job
    computed = cached = 0
    try:
        for view in views:
            rng = None if view is None else view_rng(seed, view, clip.clip_id)
            start, end, jitter, _ = sampler.maps_key(clip, None, rng)
            key = fingerprint(clip.path, sampler.codec, start, end, jitter)
            if sampler.cache.load(key) is not None:
                cached += 1
                continue
            cached_analyse(clip.path, sampler.codec, start, end, sampler.cache, jitter=jitter)
            computed += 1
    except (VideoDecodeError, OSError) as err:
        return computed, cached, str(err)
    return computed, cached, ""


def precompute(config: dict[str, Any], shard: tuple[int, int] = (0, 1)) -> SelectSummary:
    """Fill the map cache for shard `shard` of the configured task (both splits) and sampler."""
    check_config(config)
    started = time.perf_counter()
    task = create_task(
        config["task"]["name"], **{"on_bad_record": config["on_bad_record"], **config["task"]["args"]}
    )
    # Only the sampler's sizes are needed from the backbone: built on the CPU.
    backbone = create_backbone(config["backbone"]["name"], **resolve_dtype(config["backbone"]["args"], CPU))
    sampler = build_sampler(config["sampling"], backbone, config["cache_dir"])
    if not isinstance(sampler, CodecSampler):
        raise ConfigError(
            f"sampling={config['sampling']['name']} has nothing to compute ahead: only sampling=codec "
            "keeps per-clip maps (uniform, random and pixel_diff choose from the decoded frames)"
        )
    extract = config["extract"]
    train_views = (
        config["probe"]["recipe"]["epochs"] if extract["mode"] == "stream" else extract["train_views"]
    )
    i, n = shard
    jobs = []
    for split, views in (
        (config["task"]["train_split"], list(range(train_views))),
        (config["task"]["eval_split"], [None]),
    ):
        clips = task.clips(split)
        jobs += [(clip, views) for clip in clips[i::n]]
    summary = SelectSummary(shard, clips=len(jobs))
    workers = config["num_workers"]
    bar = progress_bar(config["progress"], total=len(jobs), desc=f"codec maps, shard {i}/{n}", unit="clip")
    with bar, ExitStack() as stack:
        mapper = map if workers == 0 else stack.enter_context(ProcessPoolExecutor(workers)).map
        for clip, (computed, cached, error) in zip(
            [clip for clip, _ in jobs], mapper(partial(_one_clip, sampler, config["seed"]), jobs), strict=True
        ):
            summary.computed += computed
            summary.cached += cached
            if error:
                summary.unreadable[clip.clip_id] = error
            bar.update(1)
    summary.seconds = time.perf_counter() - started
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="ovprobe-select",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--shard", default="0/1", help="i/n: this process's share of the clips (default 0/1)")
    parser.add_argument("overrides", nargs="*", help="ovprobe's overrides (KEY=VALUE)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        shard = parse_shard(args.shard)
        summary = precompute(compose_config(args.overrides), shard)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        raise SystemExit(f"ovprobe-select: {err}") from err
    print(summary.line())
    for clip_id, reason in sorted(summary.unreadable.items()):
        print(f"  unreadable: {clip_id}: {reason}")
    sys.exit(0)


if __name__ == "__main__":
    main()
