"""Bookkeeping at full dataset size: seconds and peak memory of each step around the encoder, for
annotation files as large as Kinetics-400's, SSv2's and EPIC-KITCHENS-100's.

The data (generated once into `--data`, not measured) is each dataset's annotation files in its official
layout at its release's size (Kinetics-400 CVDF `annotations/{train,val}.csv`: 240,000 + 20,000 clips;
SSv2 `labels/{labels,train,validation}.json`: 168,913 + 24,777; EPIC-KITCHENS-100
`EPIC_100_{train,validation}.csv`: 67,217 + 9,668 segments of 700 videos), every listed video a symlink to
one of the few real fixture videos. Each step runs the real code in a fresh process:

- parse: `create_task` and both splits' clips (parsing, record checks, one stat per video);
- check: `check_task` (missing videos, the validation clips carved out per class);
- identity: `run_identity` and `run_id` (`clips_digest` of both splits; whatever it hashes today);
- plan: a new train store's key, shard plan and size check (`probe.store.features._plan`, `_check_room`);
- write: the train store written through the real writer (`extract_features`: loader, shard writer,
  sidecars, manifest) with a stub encoder returning one 4-channel token per view, so only bookkeeping
  costs (a real extraction adds its decoding and encoding);
- reuse: the same `extract_features` call again: the complete store found, checked and opened
  (`extract.verify=false`, the default; `reuse-verify` re-hashes every shard);
- select: `ovprobe-select --shard 0/N` resubmitted with its few clips' maps cached (Kinetics only): the
  fixed cost of each CPU array job;
- report: `ovprobe-report` (tables and figures) over 300 records (Kinetics only; copies of one real record
  of a tiny run, each with its own task, backbone, sampling and budget).

Per step: wall seconds, the process's resident set before the step (imports and inputs loaded) and its
high-water mark during it (`/proc/self/clear_refs`), and the target. Run on one torch thread.

    python benchmarks/bench_bookkeeping.py [--data DIR] [--datasets kinetics400 ssv2 epic_verb] [--steps ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peak import peak_mb, reset_peak

from backbones import create_backbone
from backbones.base import Backbone, PreprocessSpec
from probe.record import run_id
from probe.report.main import write_report
from probe.run.main import build_sampler, check_task, compose_config, run, run_identity
from probe.run.select import precompute
from probe.store import features
from tasks import Clip, SampledClip, create_task

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "videos"
VIDEOS = ("cup.mp4", "tree.avi", "Megamind.avi")  # real, decodable; each listed video links to one
# The releases' sizes: (train, eval) clips.
SIZES = {"kinetics400": (240_000, 20_000), "ssv2": (168_913, 24_777), "epic_verb": (67_217, 9_668)}
STEPS = ("parse", "check", "identity", "plan", "write", "reuse", "reuse-verify", "select", "report-tables",
         "report")
ONLY_KINETICS = ("select", "report-tables", "report")
REPORT_RECORDS = 300
# What a user may wait, per step, at these sizes (docs/scale.md "Full-size datasets"): seconds before
# work starts.
TARGET_S = {"parse": 15, "check": 5, "identity": 5, "plan": 5, "write": 300, "reuse": 10, "reuse-verify": 60,
            "select": 20, "report-tables": 10, "report": 60}
TARGET_GROWTH_MB = 1024  # memory a step may add for 240k clips: far below any node's
VITL_TOKENS, VITL_DIM = 2048, 1024  # the size check is made for a ViT-L store at 2,048 tokens


# ----------------------------------------------------------------------------- the generated data


def _link(target: Path, link: Path) -> None:
    if not link.is_symlink():
        link.symlink_to(target)


def _video(i: int) -> Path:
    return FIXTURES / VIDEOS[i % len(VIDEOS)]


def make_kinetics(root: Path, sizes: tuple[int, int]) -> None:
    """CVDF layout: annotations/{train,val}.csv, videos flat in train/ and val/."""
    classes = [f"action {c:03d} (of kind {c % 7})" for c in range(400)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "val"), sizes, strict=True):
        (root / split).mkdir(exist_ok=True)
        with (root / "annotations" / f"{split}.csv").open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            for i in range(n):
                youtube_id, start = f"{split[0]}{i:010d}", 10 * (i % 30)
                out.writerow([classes[i % 400], youtube_id, start, start + 10, split])
                _link(_video(i), root / split / f"{youtube_id}_{start:06d}_{start + 10:06d}.mp4")


def make_ssv2(root: Path, sizes: tuple[int, int]) -> None:
    """20bn layout: labels/{labels,train,validation}.json, videos in 20bn-something-something-v2/."""
    templates = [f"Moving [something] {c} times towards [something]" for c in range(174)]
    labels, videos = root / "labels", root / "20bn-something-something-v2"
    labels.mkdir(parents=True, exist_ok=True)
    videos.mkdir(exist_ok=True)
    (labels / "labels.json").write_text(json.dumps({t.replace("[", "").replace("]", ""): str(c)
                                                   for c, t in enumerate(templates)}))
    first = 1
    for split, n in zip(("train", "validation"), sizes, strict=True):
        records = [{"id": str(first + i), "label": f"moving cup {i % 174} times towards box",
                    "template": templates[i % 174], "placeholders": ["cup", "box"]} for i in range(n)]
        (labels / f"{split}.json").write_text(json.dumps(records))
        for i in range(n):
            _link(_video(i), videos / f"{first + i}.webm")
        first += n


EPIC_COLUMNS = ("narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
                "stop_timestamp", "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun",
                "noun_class", "all_nouns", "all_noun_classes")


def make_epic(root: Path, sizes: tuple[int, int], videos: int = 700) -> None:
    """The official layout: epic-kitchens-100-annotations/*.csv and
    EPIC-KITCHENS/<participant>/videos/<video>.MP4."""
    ann = root / "epic-kitchens-100-annotations"
    ann.mkdir(parents=True, exist_ok=True)
    for target, n in (("verb", 97), ("noun", 300)):
        with (ann / f"EPIC_100_{target}_classes.csv").open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["id", "key", "instances", "category"])
            out.writerows([c, f"{target}{c}", f"['{target}{c}']", "misc"] for c in range(n))
    names = [(f"P{v % 37 + 1:02d}", f"P{v % 37 + 1:02d}_{v // 37 + 1:02d}") for v in range(videos)]
    for i, (participant, video) in enumerate(names):
        folder = root / "EPIC-KITCHENS" / participant / "videos"
        folder.mkdir(parents=True, exist_ok=True)
        _link(_video(i), folder / f"{video}.MP4")
    for split, n in zip(("train", "validation"), sizes, strict=True):
        with (ann / f"EPIC_100_{split}.csv").open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(EPIC_COLUMNS)
            for i in range(n):
                participant, video = names[(i * 7 + (split == "validation")) % videos]
                start = 1 + (i * 13) % 150
                out.writerow([f"{video}_{i}", participant, video, "00:00:01.00", "00:00:01.00", "00:00:02.00",
                              start, start + 60, "open cup", f"verb{i % 97}", i % 97, f"noun{i % 300}",
                              i % 300, "['cup']", "[0]"])


MAKERS = {"kinetics400": make_kinetics, "ssv2": make_ssv2, "epic_verb": make_epic}
ROOTS = {"kinetics400": "kinetics400", "ssv2": "ssv2", "epic_verb": "epic_kitchens"}


def prepare_data(data: Path, dataset: str) -> Path:
    """The dataset's generated files under `data` (made once; a marker holds the sizes they were made at)."""
    root = data / ROOTS[dataset]
    marker = root / ".generated.json"
    want = {"sizes": list(SIZES[dataset]), "videos": [str(_video(i)) for i in range(len(VIDEOS))]}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return root
    t0 = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    MAKERS[dataset](root, SIZES[dataset])
    marker.write_text(json.dumps(want))
    print(f"{dataset}: annotation files and video links made in {time.perf_counter() - t0:.0f} s "
          "(not measured)", flush=True)
    return root


# ----------------------------------------------------------------------------- the steps


class StubTokens(Backbone):
    """One 4-channel zero token per patch position, no weights: the feature store's bookkeeping alone."""

    name = "bench_stub"
    patch_size = 1
    embed_dim = 4
    preprocess = PreprocessSpec((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1)

    def encode(self, frames: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*positions.shape[:2], self.embed_dim)

    def fingerprint(self) -> str:
        return "bench-stub"


class StubViews:
    """clip -> `views` one-token views of it (nothing decoded)."""

    def __init__(self, views: int) -> None:
        self.views = views

    def __call__(self, clip: Clip) -> list[SampledClip]:
        frames, positions = torch.zeros(1, 1, 1, 3, dtype=torch.uint8), torch.zeros(1, 3, dtype=torch.int64)
        return [SampledClip(clip.clip_id, clip.label, frames, positions, view=v) for v in range(self.views)]


def config_for(dataset: str, data: Path, work: Path, *extra: str) -> dict[str, Any]:
    return compose_config([f"task={dataset}", f"task.args.root={data / ROOTS[dataset]}", "progress=false",
                           f"cache_dir={work / 'cache'}", f"results_dir={work / 'results'}", *extra])


def _task(config: dict[str, Any]):
    return create_task(config["task"]["name"], **{"on_bad_record": config["on_bad_record"],
                                                   **config["task"]["args"]})


def _store(config: dict[str, Any], clips: list[Clip], verify: bool) -> Callable[[], Any]:
    extract = config["extract"]
    root = Path(config["cache_dir"]) / "features"

    def write_or_reuse() -> str:
        store = features.extract_features(
            StubTokens(), clips, StubViews(extract["train_views"]), root=root, task=config["task"]["name"],
            split=config["task"]["train_split"], sampling={"name": "stub"}, seed=config["seed"],
            views=extract["train_views"], dtype=extract["dtype"], shard_size=extract["shard_size"],
            verify=verify, progress="off", tokens_per_view=1)
        shards = len(store.manifest["shards"])
        done = f"{store.extraction.clips} clips written" if store.extraction.clips else "reused"
        return f"{store.num_clips} clips x {store.num_views} views in {shards} shards, {done}"
    return write_or_reuse


def setup_step(step: str, dataset: str, data: Path, work: Path) -> tuple[Callable[[], Any], str]:
    """(the measured call, what it did) with its inputs built beforehand (not measured)."""
    config = config_for(dataset, data, work)
    if step == "parse":
        def parse() -> str:
            task = _task(config)
            n = [len(task.clips(config["task"][f"{r}_split"])) for r in ("train", "eval")]
            return f"{n[0]} + {n[1]} clips, {task.num_classes} classes"
        return parse, ""
    if step == "select":
        return select_step(dataset, data, work)
    if step.startswith("report"):
        return report_step(work, draw=step == "report")
    task = _task(config)
    train = task.clips(config["task"]["train_split"])
    task.clips(config["task"]["eval_split"])
    if step == "check":
        return lambda: check_task(config, task), ""
    if step == "identity":
        backbone = create_backbone(config["backbone"]["name"], **{**config["backbone"]["args"],
                                                                  "dtype": "float32"})
        sampler = build_sampler(config["sampling"], backbone, config["cache_dir"])
        return lambda: run_id(config, run_identity(config, backbone, task, sampler)), ""
    if step == "plan":
        def plan() -> str:
            key = features.StoreKey("bench_stub", StubTokens().feature_identity(), task.name, "train", {},
                                    config["seed"], 2, "float16", features.clips_digest(train))
            path = Path(config["cache_dir"]) / "features" / key.dirname()
            _, shards, todo, _, _ = features._plan(path, key, config["extract"]["shard_size"], len(train),
                                                   False, lambda c: True)
            try:
                features._check_room(path, len(train), 2, VITL_TOKENS, VITL_DIM, "float16")
                checked = "fits"
            except features.StoreTooLargeError as err:
                checked = "refused: " + str(err).split(" (")[0].split("needs ")[1]
            return f"{len(todo)} of {shards} shards to compute; a ViT-L store at 2,048 tokens {checked}"
        return plan, ""
    if step == "write":
        return _store(config, train, verify=False), ""
    if step in ("reuse", "reuse-verify"):
        _store(config, train, verify=False)()  # written if absent (the write step normally did)
        return _store(config, train, verify=step == "reuse-verify"), ""
    raise ValueError(f"unknown step {step!r}; steps: {', '.join(STEPS)}")


def select_step(dataset: str, data: Path, work: Path) -> tuple[Callable[[], Any], str]:
    """`ovprobe-select` of shard 0 of n (a few clips), run once to cache its maps; then measured again."""
    config = config_for(dataset, data, work, "sampling=codec", "num_workers=0")
    n = SIZES[dataset][0] // 4
    precompute(config, (0, n))
    return lambda: precompute(config, (0, n)).line(), f"shard 0/{n}, maps cached"


# A paper's sweep: tasks x backbones x samplers x budgets, as many records as asked.
SWEEP_TASKS = ("kinetics400", "ssv2", "epic_verb", "epic_noun", "diving48", "hmdb51", "ucf101",
               "charades_ego")
SWEEP_BACKBONES = ("onevision_large", "siglip2_so400m14_384", "dinov3_large", "dinov2_large", "clip_large14",
                   "metaclip2_large14", "aimv2_large14_224", "qwen3vit_2b", "vjepa2_large",
                   "timm_pe_core_large14_336")


def report_step(work: Path, draw: bool, records: int = REPORT_RECORDS) -> tuple[Callable[[], Any], str]:
    """`ovprobe-report` (with its figures if `draw`) over `records` copies of one real record of a tiny run,
    each another (task, backbone, sampler, budget)."""
    base = run(compose_config([
        "task.args.num_train=32", "task.args.num_test=16", "task.args.num_frames=16",
        "sampling.frames_equiv=4", "probe.recipe.epochs=2", "probe.recipe.lrs=[1e-3]",
        "probe.recipe.val_fraction=0.25", "probe.recipe.bootstrap=50", "extract.train_views=1",
        "num_workers=0", "progress=false", f"results_dir={work / 'tiny'}", f"cache_dir={work / 'cache'}"]))
    folder = work / f"records-{draw}"
    combos = [(t, b, s, f) for t in SWEEP_TASKS for b in SWEEP_BACKBONES for s in ("uniform", "codec")
              for f in (4, 8)]
    for i, (task, backbone, sampling, frames) in enumerate(combos[:records]):
        record = json.loads(json.dumps(base))
        budget = frames * 256
        record["data"]["task"] = record["config"]["task"]["name"] = task
        record["backbone"]["name"] = record["config"]["backbone"]["name"] = backbone
        record["sampling"].update(name=sampling, budget=budget, frames_equiv=frames, tokens_per_clip=budget)
        record["config"]["sampling"].update(name=sampling, budget=budget, frames_equiv=frames)
        record["metrics"]["test"]["top1"] = 20.0 + (i * 37) % 60
        record["run_id"] = f"{task}-{backbone}-{sampling}{budget}-{i:04d}"
        (folder / record["run_id"]).mkdir(parents=True)
        (folder / record["run_id"] / "record.json").write_text(json.dumps(record, indent=2))
    out = work / f"report-{draw}"
    figures = "tables and figures" if draw else "tables only"
    note = f"{records} records, {figures}"
    return lambda: f"{write_report([folder], out, [], draw=draw).count(chr(10))} lines", note


# ----------------------------------------------------------------------------- measuring


def child(step: str, dataset: str, data: Path, work: Path) -> dict[str, Any]:
    """Build the step's inputs, then run it measured: seconds and memory of this (fresh) process."""
    call, note = setup_step(step, dataset, data, work)
    before = reset_peak()
    t0 = time.perf_counter()
    said = call()
    seconds = time.perf_counter() - t0
    peak = peak_mb()
    return {"seconds": seconds, "before_mb": before, "peak_mb": peak,
            "note": "; ".join(str(x) for x in (note, said) if x)}


def run_child(step: str, dataset: str, data: Path, work: Path) -> dict[str, Any]:
    args = [sys.executable, __file__, "--child", step, dataset, "--data", str(data), "--work", str(work)]
    out = subprocess.run(args, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("~/.cache/ovprobe/bench-bookkeeping").expanduser(),
                        help="where the generated annotation files and video links are kept")
    parser.add_argument("--datasets", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.child:
        print(json.dumps(child(*args.child, args.data, args.work)))
        return
    if not FIXTURES.is_dir():
        raise SystemExit(f"bench_bookkeeping: fixture videos {FIXTURES} not found (the shared fixtures)")
    print(f"{'dataset':12s} {'step':13s} {'seconds':>8s} {'target s':>8s} {'before MB':>9s} {'peak MB':>8s} "
          f"{'growth MB':>9s}  met  what")
    missed = []
    for dataset in args.datasets:
        prepare_data(args.data, dataset)
        with tempfile.TemporaryDirectory(prefix="ovprobe-bench-bookkeeping-") as work:
            for step in args.steps:
                if step in ONLY_KINETICS and dataset != "kinetics400":
                    continue
                r = run_child(step, dataset, args.data, Path(work))
                growth = r["peak_mb"] - r["before_mb"]
                met = r["seconds"] <= TARGET_S[step] and growth <= TARGET_GROWTH_MB
                missed += [] if met else [f"{dataset}/{step}"]
                print(f"{dataset:12s} {step:13s} {r['seconds']:8.2f} {TARGET_S[step]:8d} "
                      f"{r['before_mb']:9.0f} {r['peak_mb']:8.0f} {growth:9.0f}  {'yes' if met else 'NO '}  "
                      f"{r['note']}", flush=True)
    print(f"targets: seconds as listed, growth <= {TARGET_GROWTH_MB} MB; "
          + (f"missed: {', '.join(missed)}" if missed else "all met"))


if __name__ == "__main__":
    main()
