"""`ovprobe-plan`: what a run or a sweep would do and cost, before anything is decoded or encoded.

    ovprobe-plan -m backbone=onevision_large,siglip2_large16_256 task=ssv2,kinetics400 sampling=codec \\
        sampling.budget=2048 plan.tflops=400

takes `ovprobe`'s overrides (`-m` and its sweep syntax; `hydra...` overrides such as the launcher are
ignored) and prints, per run: its id, whether it is finished (its record would be reused), each feature
store (exists, partial or new) with the bytes still to write, the clips and views, and the encode cost
still to pay: the backbone's declared FLOPs per view (`Backbone.encode_cost`) x views, and hours at
`plan.tflops` (effective, not peak, TFLOP/s of one device). Then totals, and totals per backbone.

It reads annotation files, the cache's store layouts and the records in `results_dir`, nothing else:
videos may be absent (counted as missing), and backbones are built on torch's meta device with their
declared architecture (no weights are read). Where a run would load weights, their fingerprint is only
known once they are hashed by the run: such a run's id ends in `?`, and stores and records are matched on
everything else (weights and the release's preprocessing unchecked; the run itself checks them).
Its own keys: `plan.tflops=400`, `plan.device=cuda` (the device the runs will use: it sets `dtype=auto`,
which enters the store keys).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from backbones import Backbone, create_backbone
from probe.record import RECORD_FILE, config_hash, run_id
from probe.run.main import (
    build_sampler,
    check_config,
    check_task,
    fingerprint_cache,
    patch_budget,
    resolve_dtype,
    run_identity,
    store_request,
    tokens_per_view,
)
from probe.run.schema import ConfigError
from probe.store.features import LAYOUT, MANIFEST, StoreKey, clips_digest, store_bytes, store_key
from probe.store.features import _size as size_text
from tasks import Clip, Task, create_task

log = logging.getLogger("ovprobe-plan")
# The key fields a run that loads weights can only know once it has read them.
FROM_WEIGHTS = ("weights", "preprocess")


@dataclass(frozen=True)
class PlanSettings:
    """`plan.*` keys: the throughput that turns FLOPs into hours, and the device the runs will use."""

    tflops: float = 400.0
    device: str = "cuda"

    @classmethod
    def from_overrides(cls, overrides: list[str]) -> PlanSettings:
        """The `plan.*` keys among `overrides` (the last value of each)."""
        mine = dict(o.removeprefix("plan.").split("=", 1) for o in overrides if o.startswith("plan."))
        unknown = set(mine) - {"tflops", "device"}
        if unknown:
            raise ConfigError(f"plan.{sorted(unknown)[0]} is not a plan key; use plan.tflops or plan.device")
        try:
            settings = cls(float(mine.get("tflops", cls.tflops)), mine.get("device", cls.device))
        except ValueError as err:
            raise ConfigError(f"plan.tflops={mine['tflops']}: {err}") from err
        if settings.tflops <= 0 or settings.device not in ("cuda", "cpu"):
            raise ConfigError("plan.tflops must be > 0 and plan.device cuda or cpu")
        return settings


def sweep_jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """Each job's overrides, as Hydra's basic sweeper expands `-m` (the cartesian product of sweeps)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    kept = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    parsed = OverridesParser.create().parse_overrides(kept)
    choices = []
    for override in parsed:
        if override.is_sweep_override():
            if not multirun:
                raise ConfigError(f"{override.input_line} is a sweep: plan it with -m, as ovprobe -m runs it")
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(job) for job in itertools.product(*choices)]


@dataclass
class StorePlan:
    """One feature store a run reads: where it stands and what is left to write and encode."""

    role: str  # train | eval
    clips: int
    views: int
    state: str  # exists | partial k/n | new | streamed
    bytes_left: int
    flops_left: float | None

    def line(self) -> str:
        return f"{self.role} {self.state}"


@dataclass
class RunPlan:
    run_id: str
    backbone: str
    finished: bool
    missing_videos: list[str]  # listed in the annotations, absent on disk
    stores: list[StorePlan] = field(default_factory=list)
    problem: str = ""  # what would stop the run before any work

    @property
    def bytes_left(self) -> int:
        return 0 if self.finished else sum(s.bytes_left for s in self.stores)

    @property
    def flops_left(self) -> float | None:
        if self.finished:
            return 0.0
        flops = [s.flops_left for s in self.stores]
        return None if None in flops else sum(flops)


class StoreIndex:
    """The stores under one cache's `features/` by key (read once): complete, or shards written."""

    def __init__(self, root: Path) -> None:
        self.stores: list[tuple[dict[str, Any], Path]] = []
        for layout in sorted(root.glob(f"*/{LAYOUT}")):
            try:
                self.stores.append((json.loads(layout.read_text())["key"], layout.parent))
            except (OSError, json.JSONDecodeError, KeyError):
                log.warning("%s is unreadable; its store is planned as new", layout)

    def find(self, key: StoreKey, weights_known: bool) -> Path | None:
        wanted = _comparable(json.loads(json.dumps(asdict(key), default=str)), weights_known)
        matches = (path for found, path in self.stores if _comparable(found, weights_known) == wanted)
        return next(matches, None)


def _comparable(key: dict[str, Any], weights_known: bool) -> dict[str, Any]:
    if weights_known:
        return key
    identity = {k: v for k, v in key["backbone_identity"].items() if k not in FROM_WEIGHTS}
    return {**key, "backbone_identity": identity}


def store_state(path: Path | None) -> tuple[str, float]:
    """('exists' | 'partial k/n' | 'new', the fraction of its clips still to write)."""
    if path is None:
        return "new", 1.0
    if (path / MANIFEST).is_file():
        return "exists", 0.0
    layout = json.loads((path / LAYOUT).read_text())
    shards = -(-int(layout["num_clips"]) // int(layout["shard_size"]))
    done = min(len(list(path.glob("shard_*.json"))), shards)
    return f"partial {done}/{shards}", 1.0 - done / shards


def view_positions(backbone: Backbone, sampling: dict[str, Any], num_frames: int) -> torch.Tensor:
    """Positions `[N, 3]` of one view at the run's budget: whole frames for uniform sampling, else the
    budget spread over every frame of the sampler's dense run (the most frames a selection touches)."""
    grid = backbone.preprocess.size // backbone.patch_size
    budget, per_frame = patch_budget(sampling, backbone)
    frames = budget // per_frame if sampling["name"] == "uniform" else num_frames
    t = torch.arange(budget) % frames
    place = torch.arange(budget) // frames
    return torch.stack([t, place // grid, place % grid], dim=-1)


class Planner:
    """Plans runs, building each task and (meta) backbone once and reading each results/cache folder once."""

    def __init__(self, settings: PlanSettings) -> None:
        self.settings = settings
        self.device = torch.device(settings.device)
        self.tasks: dict[str, Task] = {}
        self.backbones: dict[str, tuple[Backbone, bool]] = {}
        self.indexes: dict[Path, StoreIndex] = {}
        self.records: dict[Path, dict[str, list[dict[str, Any]]]] = {}
        self.digests: dict[int, tuple[list[Clip], str]] = {}

    def digest(self, clips: list[Clip], cache: Path) -> str:
        """`clips_digest`, once per clip list (each task's `clips` is memoised to return the same list):
        hashing 240k clips takes a second, and a sweep asks for each split's digest many times. `cache`:
        the videos' fingerprints as runs remember them (`fingerprint_cache`)."""
        if id(clips) not in self.digests:
            self.digests[id(clips)] = (clips, clips_digest(clips, cache))  # kept: its id stays unique
        return self.digests[id(clips)][1]

    def task(self, config: dict[str, Any]) -> Task:
        args = {"on_bad_record": config["on_bad_record"], **config["task"]["args"]}
        key = json.dumps([config["task"]["name"], args], sort_keys=True, default=str)
        if key not in self.tasks:
            task = create_task(config["task"]["name"], **args)
            task.require_videos = False
            task.clips = functools.cache(task.clips)  # one list per split, for `digest`
            self.tasks[key] = task
        return self.tasks[key]

    def backbone(self, config: dict[str, Any]) -> tuple[Backbone, bool]:
        """The backbone's declared architecture on the meta device, and whether its weights are known
        (random weights: their fingerprint is the architecture's and the seed's)."""
        args = resolve_dtype(config["backbone"]["args"], self.device)
        key = json.dumps([config["backbone"]["name"], args], sort_keys=True, default=str)
        if key not in self.backbones:
            with torch.device("meta"):
                built = create_backbone(config["backbone"]["name"], **{**args, "random_init": True})
            self.backbones[key] = (built, args.get("random_init") is True)
        return self.backbones[key]

    def finished(self, config: dict[str, Any], identity: dict[str, str], weights_known: bool) -> str | None:
        """The id of the finished run this config would reuse, or None."""
        folder = Path(config["results_dir"])
        if weights_known:
            found = run_id(config, identity)
            return found if (folder / found / RECORD_FILE).is_file() else None
        if folder not in self.records:
            by_hash: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for path in folder.glob(f"*/{RECORD_FILE}"):
                record = json.loads(path.read_text())
                if "config" in record and "identity" in record:
                    by_hash[config_hash(record["config"])].append(record)
            self.records[folder] = by_hash
        rest = {k: v for k, v in identity.items() if k != "weights"}
        for record in self.records[folder].get(config_hash(config), []):
            if {k: v for k, v in record["identity"].items() if k != "weights"} == rest:
                return record["run_id"]
        return None

    def plan(self, config: dict[str, Any]) -> RunPlan:
        check_config(config)
        task = self.task(config)
        backbone, weights_known = self.backbone(config)
        cache = fingerprint_cache(config)
        sampler = build_sampler(config["sampling"], backbone, config["cache_dir"])
        identity = run_identity(config, backbone, task, sampler, lambda clips: self.digest(clips, cache))
        name = run_id(config, identity) if weights_known else run_id(config).rsplit("-", 1)[0] + "-?"
        finished = self.finished(config, identity, weights_known)
        splits = {"train": config["task"]["train_split"], "eval": config["task"]["eval_split"]}
        missing = [video for split in splits.values() for video in task.missing.get(split, [])]
        plan = RunPlan(finished or name, backbone.name, finished is not None, missing)
        try:
            check_task(config, task)
        except ConfigError as err:
            plan.problem = str(err)
        positions = view_positions(backbone, config["sampling"], sampler.num_frames)
        view_flops = backbone.encode_cost(positions).flops
        tokens = tokens_per_view(config["sampling"], backbone)
        root = Path(config["cache_dir"]).expanduser() / "features"
        if root not in self.indexes:
            self.indexes[root] = StoreIndex(root)
        for role, split in splits.items():
            clips = task.clips(split)
            train = role == "train"
            if train and config["extract"]["mode"] == "stream":
                views = config["probe"]["recipe"]["epochs"]
                state, left, size = "streamed", 1.0, 0
            else:
                request = store_request(config, task, split, sampler, train)
                views = request["views"]
                key = store_key(backbone, clips, **request, clips_key=self.digest(clips, cache))
                state, left = store_state(self.indexes[root].find(key, weights_known))
                size = store_bytes(len(clips), views, tokens, backbone.embed_dim, request["dtype"])
            flops = None if view_flops is None else view_flops * len(clips) * views * left
            plan.stores.append(StorePlan(role, len(clips), views, state, int(size * left), flops))
        return plan


def _cost(flops: float | None, tflops: float) -> tuple[str, str]:
    if flops is None:
        return "?", "?"
    return f"{flops / 1e15:.4g}", f"{flops / (tflops * 1e12) / 3600:.4g}"


def format_plan(plans: list[RunPlan], settings: PlanSettings) -> str:
    """The runs, their totals and totals per backbone, as plain text tables."""
    rows = [["run", "status", "clips train/eval", "views train/eval", "stores", "to write", "PFLOP",
             "hours"]]
    for p in plans:
        train, test = p.stores
        status = "finished" if p.finished else "to run"
        if p.problem:
            status += " (would stop)"
        rows.append([p.run_id, status, f"{train.clips}/{test.clips}", f"{train.views}/{test.views}",
                     ", ".join(s.line() for s in p.stores),
                     size_text(p.bytes_left), *_cost(p.flops_left, settings.tflops)])
    by_backbone: dict[str, list[RunPlan]] = defaultdict(list)
    for p in plans:
        by_backbone[p.backbone].append(p)
    totals = [["backbone", "runs", "finished", "to write", "PFLOP", "hours"]]
    for name, group in [*sorted(by_backbone.items()), ("total", plans)]:
        flops = [p.flops_left for p in group]
        totals.append([name, str(len(group)), str(sum(p.finished for p in group)),
                       size_text(sum(p.bytes_left for p in group)),
                       *_cost(None if None in flops else sum(flops), settings.tflops)])
    notes = [f"hours: encoding only, at {settings.tflops:g} effective TFLOP/s per device (plan.tflops); "
             f"dtype=auto as on {settings.device} (plan.device)"]
    if any(p.run_id.endswith("-?") for p in plans):
        notes.append("id ...-?: set when the run hashes its weights; stores and records matched on all else")
    if missing := {video for p in plans for video in p.missing_videos}:
        notes.append(f"{len(missing)} listed videos are missing (skipped by on_bad_clip=skip, fatal under "
                     "on_bad_clip=error)")
    notes += [f"would stop: {p.run_id}: {p.problem}" for p in plans if p.problem]
    return "\n\n".join([_table(rows), _table(totals), "\n".join(notes)])


def _table(rows: Iterable[list[str]]) -> str:
    rows = list(rows)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def plan_sweep(overrides: list[str], multirun: bool) -> tuple[list[RunPlan], PlanSettings]:
    """The plans of one `ovprobe [-m] overrides` invocation."""
    return plan_invocations([(overrides, multirun)])


def plan_invocations(invocations: list[tuple[list[str], bool]]) -> tuple[list[RunPlan], PlanSettings]:
    """The plans of several invocations together (each `(overrides, multirun)`), as one bill: the eval
    scripts plan one invocation per dataset. `plan.*` keys may be given in any of them."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    settings = PlanSettings.from_overrides([o for overrides, _ in invocations for o in overrides])
    planner = Planner(settings)
    plans = []
    with initialize_config_module("probe.conf", version_base="1.3"):
        for overrides, multirun in invocations:
            for job in sweep_jobs([o for o in overrides if not o.startswith("plan.")], multirun):
                config = OmegaConf.to_container(compose("config", overrides=job), resolve=True)
                plans.append(planner.plan(config))
    return plans, settings


AND = "--and"  # separates invocations planned together


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="ovprobe-plan", usage=f"ovprobe-plan [-m] OVERRIDE... [{AND} [-m] OVERRIDE...]...",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--multirun", action="store_true", help="a sweep, as `ovprobe -m`")
    parser.add_argument("overrides", nargs="*", help="ovprobe's overrides, plan.tflops, plan.device")
    argv = sys.argv[1:] if argv is None else argv
    groups: list[list[str]] = [[]]
    for arg in argv:
        if arg == AND:
            groups.append([])
        else:
            groups[-1].append(arg)
    invocations = [(args.overrides, args.multirun) for args in map(parser.parse_args, groups)]
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    started = time.perf_counter()
    from backbones.registry import UnknownBackboneError
    from tasks import AnnotationError

    try:
        plans, settings = plan_invocations(invocations)
    except (ConfigError, UnknownBackboneError, AnnotationError, ValueError, FileNotFoundError) as err:
        raise SystemExit(f"ovprobe-plan: {err}") from err
    print(format_plan(plans, settings))
    print(f"\nplanned {len(plans)} runs in {time.perf_counter() - started:.1f} s")
    sys.exit(0)


if __name__ == "__main__":
    main()
