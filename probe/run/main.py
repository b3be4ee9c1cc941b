"""`ovprobe`: a frozen backbone over a task, attentive probes on stored features, one run record.

One run = backbone x task x sampling x probe (Hydra config groups in `probe/conf/`). Work is done
once and kept: features live in a store keyed by everything that determines them, probe training
checkpoints every epoch, and the record is written atomically to `results/<run-id>/`. Launched by
torchrun or srun, the processes share the work (`probe.distributed`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback

from backbones import Backbone, create_backbone, list_backbones
from probe import distributed
from probe.files import atomic_write_text, exclusive
from probe.record import (
    ResultsDirError,
    RunSlot,
    check_writable,
    claim_run,
    git_commit,
    read_record,
    run_id,
    versions,
    write_record,
)
from probe.report.results import format_table, record_row
from probe.run.schema import ConfigError, check_run_config
from probe.run.stream import StreamingFeatures
from probe.store.features import FeatureStore, clips_digest, extract_features
from probe.training.evaluate import classification_metrics, clip_outcomes, per_view_top1, predict
from probe.training.kept import load_probe, probe_files
from probe.training.train import GridResult, HeadConfig, Recipe, split_train_val, train_probe_grid
from tasks import (
    Clip,
    SampledClip,
    Sampler,
    SkippedClip,
    Task,
    create_sampler,
    create_task,
    list_samplers,
    list_tasks,
    open_video,
)
from tasks.loader import sample_or_skip
from tasks.sampling.augment import ColorJitter, summarise

log = logging.getLogger("ovprobe")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is visible; use device=cpu or device=auto")
    return device


def compose_config(overrides: list[str] | None = None) -> dict[str, Any]:
    """The resolved run config for these overrides, as `ovprobe` builds it (for tests and scripts)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("probe.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides or [])
    return OmegaConf.to_container(cfg, resolve=True)


def resolve_dtype(args: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The backbone's arguments with `dtype=auto` (every backbone's default) resolved: bfloat16 on CUDA,
    where the original suite also encodes in bf16 and SDPA can take its flash kernels, float32 on CPUs
    (bf16 there is slow). The dtype that ran is part of the run's identity, the store key (feature
    identity) and the record."""
    if args.get("dtype") != "auto":
        return args
    return {**args, "dtype": "bfloat16" if device.type == "cuda" else "float32"}


def check_config(config: dict[str, Any]) -> None:
    """The whole config against `probe.run.schema` and the registries, before any work."""
    check_run_config(
        config,
        {"backbone.name": list_backbones(), "task.name": list_tasks(), "sampling.name": list_samplers()},
    )
    try:
        Recipe(**config["probe"]["recipe"])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"probe.recipe: {err}") from err


def patch_budget(sampling: dict[str, Any], backbone: Backbone) -> tuple[int, int]:
    """(budget in patches, patches per frame) from `sampling.budget` or `sampling.frames_equiv`."""
    per_frame = (backbone.preprocess.size // backbone.patch_size) ** 2
    budget = sampling.get("budget") or sampling["frames_equiv"] * per_frame
    if budget < 1:
        raise ConfigError(f"sampling.budget={budget} must be a positive number of patches")
    return int(budget), per_frame


def tokens_per_view(sampling: dict[str, Any], backbone: Backbone) -> int:
    """The tokens a view stores: its patch budget, plus the class/register tokens of each frame the
    budget fills where the backbone keeps them (whole frames only), once per probed block (`layers`)."""
    budget, per_frame = patch_budget(sampling, backbone)
    return (budget + backbone.prefix_kept * -(-budget // per_frame)) * backbone.layer_count


def build_sampler(sampling: dict[str, Any], backbone: Backbone, cache_dir: str) -> Sampler:
    """The configured sampler at the backbone's size, patch and temporal grid, with the patch budget."""
    budget, per_frame = patch_budget(sampling, backbone)
    common = dict(
        size=backbone.preprocess.size,
        patch_size=backbone.patch_size,
        temporal_slots=backbone.temporal_slots,
        num_clips=sampling["num_clips"],
        num_crops=sampling["num_crops"],
        interpolation=backbone.preprocess.interpolation,
    )
    if sampling["name"] == "uniform":  # all patches of budget / per_frame frames
        if budget % per_frame:
            raise ConfigError(
                f"sampling.budget={budget} is not a whole number of frames of {per_frame} patches "
                f"for {backbone.name}; use a multiple of {per_frame} or sampling.frames_equiv"
            )
        specific = dict(num_frames=budget // per_frame)
    else:
        specific = dict(
            budget=budget,
            native_sparse=backbone.native_sparse,
            cache_dir=str(Path(cache_dir).expanduser() / "codec"),
        )
    try:
        return create_sampler(sampling["name"], **common, **specific, **sampling["args"])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"sampling={sampling['name']} with {backbone.name}: {err}") from err


def view_rng(seed: int, view: int, clip_id: str, stream: int = 0) -> np.random.Generator:
    """The generator of one training view of one clip: stream 0 draws its frames, stream 1 its jitter."""
    key = [seed, view, zlib.crc32(clip_id.encode())]
    return np.random.default_rng(key + [stream] if stream else key)


@dataclass
class ViewSampler:
    """clip -> its stored views: the test views, or `views` seeded training draws. Picklable for workers.

    Training view v of a clip draws its own frames (the sampler's offsets) and its own colour jitter,
    each from a generator seeded by (seed, v, clip) (`view_rng`), so views differ from each other and a
    seed reproduces them. A clip that cannot be decoded is fatal under `on_bad_clip="error"`; under
    `"skip"` it becomes a `SkippedClip` that the feature store records (with the reason) and the probe
    never sees.
    """

    sampler: Sampler
    train: bool
    views: int
    seed: int
    on_bad_clip: str = "error"
    jitter: ColorJitter | None = None

    def __call__(self, clip: Clip) -> list[SampledClip] | SkippedClip:
        return sample_or_skip(clip, self.on_bad_clip, lambda: self._sample(clip, range(self.views)))

    def draw(self, clip: Clip, view: int) -> SampledClip | SkippedClip:
        """Training view number `view` of `clip` alone (streaming mode: view = epoch)."""
        out = sample_or_skip(clip, self.on_bad_clip, lambda: self._sample(clip, [view]))
        return out if isinstance(out, SkippedClip) else out[0]

    def _sample(self, clip: Clip, views: Iterable[int]) -> list[SampledClip]:
        reader = open_video(clip.path)
        if not self.train:
            return self.sampler(clip, reader, None, False)
        draws = []
        for view in views:
            (sampled,) = self.sampler(clip, reader, view_rng(self.seed, view, clip.clip_id), True)
            sampled.view = view
            if self.jitter is not None:
                params = self.jitter.draw(view_rng(self.seed, view, clip.clip_id, stream=1))
                sampled.frames = self.jitter.apply(sampled.frames, params)
            draws.append(sampled)
        return draws


def color_jitter(config: dict[str, Any]) -> ColorJitter:
    try:
        return ColorJitter.from_config(config["augment"]["color_jitter"])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"augment.color_jitter: {err}") from err


AUGMENT_SUMMARY_CLIPS = 5000  # the record's jitter summary covers at most this many clips (all their views)


def augmentation_record(config: dict[str, Any], clips: list[Clip], views: int) -> dict[str, Any]:
    """How training views were augmented: the rule for frames, the jitter settings and what was drawn."""
    jitter = color_jitter(config)
    seed = config["seed"]
    pairs = [(c, v) for c in clips[:AUGMENT_SUMMARY_CLIPS] for v in range(views)]
    draws = [jitter.draw(view_rng(seed, v, c.clip_id, stream=1)) for c, v in pairs]
    return {
        "frames": "uniform: a random offset in every chunk; codec: each of the dense run's frames at a "
        "random offset in its chunk; centre crop; seeded by (seed, view, clip)",
        "views_per_clip": views,
        "views": "stored once (extract.mode=store)" if config["extract"]["mode"] == "store"
        else "drawn afresh every epoch (extract.mode=stream)",
        "color_jitter": jitter.to_dict(),
        "color_jitter_drawn": summarise(draws),
    }


def store_request(
    config: dict[str, Any], task: Task, split: str, sampler: Sampler, train: bool
) -> dict[str, Any]:
    """What `extract` asks the feature store for, besides the backbone and the clips (the store key's
    other fields): `ovprobe-plan` looks stores up with the same."""
    views = config["extract"]["train_views"] if train else sampler.num_views
    # What the training views are (frame rule, jitter settings): a change keys a new store.
    augment = {"views": "own-offsets-v2", "color_jitter": color_jitter(config).to_dict()} if train else None
    sampling = {**config["sampling"], "mode": "train" if train else "eval", "augment": augment}
    return dict(task=task.name, split=split, sampling=sampling, seed=config["seed"], views=views,
                dtype=config["extract"]["dtype"])


def extract(
    config: dict[str, Any], backbone: Backbone, task: Task, split: str, sampler: Sampler, train: bool
) -> FeatureStore:
    extract_cfg = config["extract"]
    request = store_request(config, task, split, sampler, train)
    jitter = color_jitter(config) if train else None
    return extract_features(
        backbone,
        task.clips(split),
        ViewSampler(sampler, train, request["views"], config["seed"], config["on_bad_clip"], jitter),
        root=Path(config["cache_dir"]).expanduser() / "features",
        **request,
        shard_size=extract_cfg["shard_size"],
        batch_size=extract_cfg["batch_size"],
        num_workers=config["num_workers"],
        verify=extract_cfg["verify"],
        progress=config["progress"],
        tokens_per_view=tokens_per_view(config["sampling"], backbone),
    )


def run_identity(
    config: dict[str, Any], backbone: Backbone, task: Task, digest: Callable[[list[Clip]], str] = clips_digest
) -> dict[str, str]:
    """What a run ran on beyond its config: the weights' fingerprint and compute dtype (`dtype=auto`
    differs by device) and each split's clips and labels (`digest`: `ovprobe-plan` passes a memo)."""
    return {
        "weights": backbone.fingerprint(),
        "dtype": backbone.feature_identity()["dtype"],
        **{
            f"{role}_clips": digest(task.clips(config["task"][f"{role}_split"]))
            for role in ("train", "eval")
        },
    }


def check_task(config: dict[str, Any], task: Task) -> None:
    """What the task's clips would make fail after extraction: checked before any work starts."""
    splits = (config["task"]["train_split"], config["task"]["eval_split"])
    clips = {split: task.clips(split) for split in splits}
    for split in splits:
        missing = task.missing.get(split, [])
        if missing and config["on_bad_clip"] == "error":
            raise ConfigError(
                f"{task.name}/{split}: {len(missing)} listed videos are missing, e.g. {missing[0]}; "
                "set on_bad_clip=skip to skip them (listed in the record)"
            )
    fraction = config["probe"]["recipe"]["val_fraction"]
    try:
        split_train_val(np.array([c.label for c in clips[splits[0]]]), fraction, config["seed"])
    except ValueError as err:
        raise ConfigError(
            f"probe.recipe.val_fraction={fraction} carves no validation clip out of the "
            f"{len(clips[splits[0]])} {splits[0]} clips (each class gives round(fraction x its clips)); "
            "raise probe.recipe.val_fraction"
        ) from err



def training_features(
    config: dict[str, Any], backbone: Backbone, task: Task, sampler: Sampler
) -> FeatureStore | StreamingFeatures:
    """The training split as the trainer reads it: a store of `extract.train_views` views per clip
    (`extract.mode=store`), or views drawn and encoded afresh every epoch (`stream`)."""
    split = config["task"]["train_split"]
    if config["extract"]["mode"] == "store":
        return extract(config, backbone, task, split, sampler, train=True)
    jitter = color_jitter(config)
    views = ViewSampler(sampler, True, 1, config["seed"], config["on_bad_clip"], jitter)
    key = {"task": task.name, "split": split, "sampling": config["sampling"], "seed": config["seed"],
           "augment": jitter.to_dict()}
    extract_cfg = config["extract"]
    return StreamingFeatures(backbone, task.clips(split), views.draw, key, sampler.num_frames,
                             config["num_workers"], extract_cfg["batch_size"], extract_cfg["dtype"])


def protocol_record(config: dict[str, Any], result: GridResult) -> dict[str, Any]:
    """Which protocol ran and the settings that make its number what it is (README, "Comparing with
    published numbers")."""
    recipe = config["probe"]["recipe"]
    return {
        "name": config["protocol"]["name"],
        "selection": result.selected.rule,
        "train_fraction": 1.0 - recipe["val_fraction"],
        "global_batch": recipe["batch_size"],
        "epochs": recipe["epochs"],
        "lrs": recipe["lrs"],
        "wds": recipe["wds"],
        "head": config["probe"]["head"]["kind"],
        "extract_mode": config["extract"]["mode"],
    }


def head_config(
    config: dict[str, Any], backbone: Backbone, store: FeatureStore | StreamingFeatures
) -> HeadConfig:
    head = dict(config["probe"]["head"])
    if head.get("temporal_pos", "auto") == "auto":
        # OneVision's RoPE already encodes t; image backbones see frames separately.
        head["temporal_pos"] = "none" if backbone.native_sparse else "sinusoidal"
    return HeadConfig(**head, temporal_slots=backbone.temporal_slots or store.temporal_extent)


def _readable_again(record: dict[str, Any]) -> list[str]:
    """Clips the run skipped as missing or unreadable that are files now."""
    paths = [p for split in record.get("unreadable_clips", {}).values() for p in split.values()]
    return [p for p in paths if Path(p).is_file()]


def _claim(config: dict[str, Any], identity: dict[str, str]) -> RunSlot:
    """`claim_run`, except that a finished run that skipped clips as missing or unreadable, some of which
    can be read now, is not reused: it runs again under a new id (or the last such rerun is reused)."""
    slot = claim_run(config["results_dir"], config, config["on_existing"], identity)
    if slot.existing is None or not (back := _readable_again(slot.existing)):
        return slot
    fresh = claim_run(config["results_dir"], config, "new", identity)
    last = fresh.path.with_name(re.sub(r"-r(\d+)$", lambda m: f"-r{int(m[1]) - 1}", fresh.run_id))
    previous = read_record(last)
    if previous is not None and not _readable_again(previous):
        return RunSlot(last.name, last, previous)
    log.warning("%s skipped %d clips as missing or unreadable that can be read now (e.g. %s); running "
                "again as %s", slot.path, len(back), back[0], fresh.run_id)
    return fresh


def run(config: dict[str, Any], log_file: str | Path | None = None) -> dict[str, Any]:
    """Run one configuration end to end and return its record (stored or reused); `log_file` (where
    this run's log goes) is named in the record.

    Under torchrun or srun every process calls this (see `probe.distributed`): they share the feature
    extraction and the probe training, and process 0 alone claims the run id and writes the record,
    holding the run's lock meanwhile: a second run of the same configuration is refused while it runs.
    """
    with ExitStack() as held:
        return _run(config, held, log_file)


def _run(config: dict[str, Any], held: ExitStack, log_file: str | Path | None) -> dict[str, Any]:
    started = time.perf_counter()
    check_config(config)
    device = distributed.init(resolve_device(config["device"]))
    distributed.on_main(lambda: check_writable(config["results_dir"]))
    check_writable(Path(config["cache_dir"]).expanduser(), "cache folder", "cache_dir")  # every node's view
    lock = Path(config["cache_dir"]).expanduser() / "probes" / f"{run_id(config)}.lock"  # by its checkpoints
    distributed.on_main(lambda: held.enter_context(exclusive(lock, f"run {run_id(config)}", wait=False)))
    with distributed.main_first():  # a generated task is generated once; a missing data root fails here
        task = create_task(
            config["task"]["name"], **{"on_bad_record": config["on_bad_record"], **config["task"]["args"]}
        )
    check_task(config, task)
    backbone_args = resolve_dtype(config["backbone"]["args"], device)
    backbone = create_backbone(config["backbone"]["name"], **backbone_args).to(device)
    identity = run_identity(config, backbone, task)
    slot: RunSlot = distributed.on_main(lambda: _claim(config, identity))
    if slot.existing is not None:
        log.info("reusing the finished run %s (on_existing=reuse)", slot.path)
        return slot.existing

    random_weights = backbone.fingerprint().startswith("random-")
    if random_weights and distributed.is_main():
        log.warning(
            "%s has RANDOM weights: numbers measure the pipeline, not a pretrained model", backbone.name
        )
    sampler = build_sampler(config["sampling"], backbone, config["cache_dir"])
    budget, _ = patch_budget(config["sampling"], backbone)
    grid = backbone.preprocess.size // backbone.patch_size
    if config["probe"].get("from_run"):
        return evaluate_stored_probe(config, backbone, task, sampler, slot, device, budget)

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    train_store = training_features(config, backbone, task, sampler)
    timings["extract_train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    eval_store = extract(config, backbone, task, config["task"]["eval_split"], sampler, train=False)
    timings["extract_eval_s"] = time.perf_counter() - t0
    for split, store in (("train", train_store), ("eval", eval_store)):  # this process's share; 0: reused
        timings[f"extract_{split}_encode_s"] = store.extraction.encode_s
        timings[f"extract_{split}_loader_wait_s"] = store.extraction.wait_s

    recipe = Recipe(**{**config["probe"]["recipe"], "seed": config["seed"]})
    checkpoint = Path(config["cache_dir"]).expanduser() / "probes" / slot.run_id / "grid.pt"
    head = head_config(config, backbone, train_store)
    result: GridResult = train_probe_grid(
        train_store,
        eval_store,
        task.num_classes,
        head,
        recipe,
        checkpoint=checkpoint,
        device=device,
        progress=config["progress"],
    )
    timings["train_s"] = result.train_seconds
    timings["total_s"] = time.perf_counter() - started
    residual_only = {"train": len(train_store.residual_only), "eval": len(eval_store.residual_only)}
    if any(residual_only.values()) and distributed.is_main():
        log.warning(
            "%d clips (train %d, eval %d) are in codecs that export no motion vectors (VP9, ...): their "
            "patches were scored by residual energy alone (counted in the record)",
            sum(residual_only.values()), residual_only["train"], residual_only["eval"],
        )
    for split, store in (("train", train_store), ("eval", eval_store)):
        if store.skipped:
            log.warning("%s split: skipped %d unreadable clips (see the record)", split, len(store.skipped))

    record = {
        "config": config,
        "identity": identity,
        "versions": versions(),
        "git_commit": git_commit(),
        "backbone": {
            "name": backbone.name,
            "fingerprint": backbone.fingerprint(),
            "random_weights": random_weights,
            "embed_dim": backbone.embed_dim,
            "native_sparse": backbone.native_sparse,
            # How a sparse patch set is encoded (natively, or whole frames then gathered): compute differs.
            "sparse_mode": backbone.sparse_mode,
            # The tokens probed, and whether they are the original suite's (`reference`) or ovprobe's
            # equal-patch setting (one token per patch position).
            "tokens": backbone.tokens,
            "reference": backbone.reference,
            "prefix_kept": backbone.prefix_kept,  # class/register tokens a frame (`keep_prefix`, `reference`)
            "layers": list(backbone.layers),  # blocks probed, concatenated as tokens ([]: the output)
            # Everything that changes the tokens; the feature stores are keyed on it.
            "feature_identity": backbone.feature_identity(),
        },
        "data": {
            "task": task.name,
            "num_classes": task.num_classes,
            "train_split": config["task"]["train_split"],
            "eval_split": config["task"]["eval_split"],
            "train_clips": train_store.num_clips,
            "eval_clips": eval_store.num_clips,
            "train_features": str(train_store.path or "streamed: encoded every epoch, not stored"),
            "eval_features": str(eval_store.path),
            "train_fingerprint": train_store.fingerprint,
            "eval_fingerprint": eval_store.fingerprint,
        },
        "sampling": {
            "name": config["sampling"]["name"],
            "budget": budget,
            "frames_equiv": budget / grid**2,
            "tokens_per_clip": eval_store.num_tokens,
            # Budgets are patches of this grid: the same budget is the same frame regions only for
            # backbones with the same grid (the report keeps other grids apart). area_fraction: the part
            # of the sampled frames' area the kept patches cover.
            "grid": [grid, grid],
            "area_fraction": budget / (grid**2 * sampler.num_frames),
        },
        "protocol": protocol_record(config, result),
        "augmentation": augmentation_record(
            config,
            task.clips(config["task"]["train_split"]),
            config["extract"]["train_views"] if config["extract"]["mode"] == "store" else recipe.epochs,
        ),
        # Per clip, from the extraction that wrote each store (kept in its manifest, so reused stores
        # report the cost of making them): frames/tokens encoded, tokens kept, FLOPs, encode seconds.
        "cost": {"train": train_store.cost, "eval": eval_store.cost},
        "skipped_clips": {"train": train_store.skipped, "eval": eval_store.skipped},
        # Clips whose codec exports no motion vectors (codec sampling scored them by residuals alone).
        "residual_only_clips": residual_only,
        # Clips an earlier run skipped as missing or unreadable and this one tried again (those still
        # unreadable stay in skipped_clips).
        "retried_clips": {"train": train_store.retried, "eval": eval_store.retried},
        # Skipped clips that were missing or unreadable (not damaged), by path: while any is readable
        # again, this record is not reused (on_existing=reuse runs again under a new id).
        "unreadable_clips": {
            name: {c.clip_id: str(c.path) for c in task.clips(split) if c.clip_id in store.unreadable}
            for name, split, store in (
                ("train", config["task"]["train_split"], train_store),
                ("eval", config["task"]["eval_split"], eval_store),
            )
        },
        # Annotation records dropped under on_bad_record=skip, with the file, line and reason of each.
        "skipped_records": {
            "train": task.skipped.get(config["task"]["train_split"], []),
            "eval": task.skipped.get(config["task"]["eval_split"], []),
        },
        # Doubts about the annotations that did not stop the run (e.g. videos in both splits, with counts).
        "task_warnings": task.warnings,
        "metrics": result.to_dict(),
        # Per test clip, whether the selected probe was right (packed bits, with a hash of the clip ids):
        # what paired comparisons between runs (codec minus random in `ovprobe-report`) resample.
        "test_clips": clip_outcomes(eval_store.clip_ids, result.test_view_logits, eval_store.labels,
                                    recipe.view_space),
        "timings": timings,
        "log_file": None if log_file is None else str(log_file),
        "processes": {"world_size": distributed.world_size(), "backend": distributed.backend()},
    }
    kept = f"The trained probes are kept in {checkpoint}: the next run evaluates them and writes the record."

    about = {"backbone": {"name": backbone.name, "fingerprint": backbone.fingerprint()}, "task": task.name,
             "sampling": config["sampling"], "selected": record["metrics"]["selected"]}
    probe = probe_files(head, train_store.embed_dim, task.num_classes, result.selected_state, about)

    def finish() -> dict[str, Any]:
        written = write_record(slot, record, extra_files=probe, kept=kept)
        checkpoint.unlink(missing_ok=True)
        log.info("run record written to %s", slot.path)
        return written

    return distributed.on_main(finish)


# `ovprobe` with no arguments: the embedded default, a comparison of samplers on the generated task.
# Two learning rates, not the generated task's three: 1e-4 was never selected for any of the three
# samplers, and the default must finish in 10 minutes on 2 CPU cores (README "What ./dev ovprobe does").
EMBEDDED_DEFAULT = ("--multirun", "sampling=uniform,codec,random", "probe.recipe.lrs=[1.0e-3,3.0e-4]")

class CheckResultsDir(Callback):
    """Hydra callback: a results_dir that cannot be written or is full stops the invocation with ovprobe's
    message before Hydra writes its own files there (and fails with an OSError of its own)."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        if distributed.launch_from_env().rank == 0:
            try:
                check_writable(config.results_dir)
            except ResultsDirError as err:
                raise SystemExit(f"ovprobe: {err}") from err

    on_multirun_start = on_run_start


def evaluate_stored_probe(
    config: dict[str, Any], backbone: Backbone, task: Task, sampler: Sampler, slot: RunSlot,
    device: torch.device, budget: int,
) -> dict[str, Any]:
    """`probe.from_run=<run-id>`: the probe kept by that run, evaluated on this config's eval split
    (any task with as many classes, same backbone weights) without training; its own record."""
    started = time.perf_counter()
    try:
        stored = load_probe(config["results_dir"], config["probe"]["from_run"])
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from err
    if stored.meta["backbone"]["fingerprint"] != backbone.fingerprint():
        raise ConfigError(
            f"probe.from_run={config['probe']['from_run']} was trained on {stored.meta['backbone']['name']} "
            f"({stored.meta['backbone']['fingerprint']}), not on {backbone.name} ({backbone.fingerprint()}); "
            "pick the backbone it was trained on"
        )
    if stored.num_classes != task.num_classes:
        raise ConfigError(
            f"probe.from_run={config['probe']['from_run']} has {stored.num_classes} classes, task "
            f"{task.name} {task.num_classes}; evaluate it on a task with the same classes"
        )
    eval_store = extract(config, backbone, task, config["task"]["eval_split"], sampler, train=False)
    recipe = Recipe(**{**config["probe"]["recipe"], "seed": config["seed"]})
    model = stored.build().to(device)
    logits = predict([model], eval_store, np.arange(eval_store.num_clips), device, recipe.eval_batch_size)[0]
    labels = eval_store.labels
    metrics = classification_metrics(logits, labels, recipe.view_space, recipe.bootstrap, recipe.seed)
    record = {
        "config": config,
        "versions": versions(),
        "git_commit": git_commit(),
        "protocol": "stored probe, evaluated without training",
        "probe_from": {"run_dir": str(stored.run_dir), **stored.meta},
        "backbone": {"name": backbone.name, "fingerprint": backbone.fingerprint(),
                     "random_weights": backbone.fingerprint().startswith("random-")},
        "data": {"task": task.name, "num_classes": task.num_classes,
                 "eval_split": config["task"]["eval_split"], "eval_clips": eval_store.num_clips,
                 "eval_features": str(eval_store.path),
                 "eval_fingerprint": eval_store.fingerprint},
        "sampling": {"name": config["sampling"]["name"], "budget": budget,
                     "frames_equiv": budget / (backbone.preprocess.size // backbone.patch_size) ** 2,
                     "tokens_per_clip": eval_store.num_tokens},
        "skipped_clips": {"eval": eval_store.skipped},
        "metrics": {"test": asdict(metrics), "test_per_view_top1": per_view_top1(logits, labels),
                    "selected": stored.meta.get("selected"), "num_test": eval_store.num_clips},
        "timings": {"total_s": time.perf_counter() - started},
    }
    return distributed.on_main(lambda: write_record(slot, record))


class PrintSummary(Callback):
    """Hydra callback: print one table of the runs of an invocation (a sweep or a single run), and the
    runs of a sweep that failed, each with its one-line reason."""

    HANDOVER = "summary.json"  # a launcher job's line of the summary, in its log folder, for the sender

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.failed: list[tuple[list[str], str]] = []  # (the job's overrides, why it failed)
        self.overrides: list[list[str]] = []  # every job's, to name a failed job by what varies
        self.pid = os.getpid()  # the sending process; submitit's launchers run each job in another

    def on_job_end(self, config: Any, job_return: JobReturn, **kwargs: Any) -> None:
        overrides = list(job_return.overrides or [])
        value = job_return.return_value if job_return.status == JobStatus.COMPLETED else None
        failed = value.reason if isinstance(value, JobFailure) else None
        row = record_row(value) if value is not None and failed is None else None
        if os.getpid() != self.pid:  # a launcher's job process: hand the line over to the sender
            if distributed.launch_from_env().rank == 0:
                folder = Path(config.hydra.runtime.output_dir)
                folder.mkdir(parents=True, exist_ok=True)
                text = json.dumps({"overrides": overrides, "row": row, "failed": failed}, default=str)
                atomic_write_text(folder / self.HANDOVER, text)
            return
        self._add(overrides, row, failed)

    def _add(self, overrides: list[str], row: dict[str, Any] | None, failed: str | None) -> None:
        self.overrides.append(overrides)
        if failed is not None:
            self.failed.append((overrides, failed))
        elif row is not None:
            self.rows.append(row)

    def _collect_handovers(self, sweep_dir: Path) -> None:
        """The lines the sweep's job processes handed over (submitit launchers), in job order."""
        found = [p for p in sweep_dir.glob(f"*/{self.HANDOVER}") if p.parent.name.isdigit()]
        for path in sorted(found, key=lambda p: int(p.parent.name)):
            line = json.loads(path.read_text())
            self._add(line["overrides"], line["row"], line["failed"])
            path.unlink()
            _remove_if_empty(path.parent, keep=set())

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        if distributed.launch_from_env().rank != 0:
            return
        if self.rows:
            print("\n" + format_table(self.rows))
        if self.failed:
            shared = set.intersection(*(set(o) for o in self.overrides))
            lines = [f"{' '.join(o for o in job if o not in shared)}: {why}" for job, why in self.failed]
            print(f"\n{len(lines)} run(s) failed:\n" + "\n".join(f"  {line}" for line in lines))
            FAILED.extend(lines)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        self._collect_handovers(Path(config.hydra.sweep.dir))
        self.on_run_end(config)
        _remove_if_empty(Path(config.hydra.sweep.dir), keep={"multirun.yaml"})


@dataclass
class JobFailure:
    """A sweep's job that stopped on a user error: the sweep goes on and lists it at the end."""

    reason: str


FAILED: list[str] = []  # the invocation's failed sweep jobs, for the exit status


def _remove_if_empty(folder: Path, keep: set[str]) -> None:
    """Drop a log folder that holds nothing but Hydra's own bookkeeping (`keep`, `.hydra`)."""
    if folder.is_dir() and {p.name for p in folder.iterdir()} <= keep | {".hydra"}:
        shutil.rmtree(folder, ignore_errors=True)


# Errors that mean "fix your input": reported as one clear line instead of a traceback.
def _user_errors() -> tuple[type[BaseException], ...]:
    from backbones.registry import UnknownBackboneError
    from backbones.weights import CheckpointError
    from probe.files import DiskFullError, InUseError
    from probe.record import ResultsDirError, RunExistsError
    from probe.store.features import NonFiniteTokensError, StoreTooLargeError
    from probe.training.train import NonFiniteLossError
    from tasks import AnnotationError, VideoDecodeError

    return (
        ConfigError,
        UnknownBackboneError,
        CheckpointError,
        ResultsDirError,
        RunExistsError,
        AnnotationError,
        VideoDecodeError,
        DiskFullError,
        NonFiniteLossError,
        InUseError,
        NonFiniteTokensError,
        StoreTooLargeError,
    )


def _quiet_secondary_process(rank: int) -> None:
    """Processes other than 0 keep Hydra's files in a scratch folder of their own (one per user and
    rank, reused, so killed jobs leave nothing behind), never in results_dir, and leave announcing the
    jobs to process 0."""
    scratch = Path(tempfile.gettempdir()) / f"ovprobe-hydra-{os.getuid()}-rank{rank}"
    sys.argv += [f"hydra.run.dir={scratch}", f"hydra.sweep.dir={scratch}", "hydra/hydra_logging=disabled"]


def main() -> None:
    """`ovprobe [overrides]`: one run; `ovprobe -m ...`: a sweep; no arguments: the embedded default."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig, OmegaConf

    launch = distributed.launch_from_env()
    if len(sys.argv) == 1:
        sys.argv += EMBEDDED_DEFAULT
    if launch.rank > 0:
        _quiet_secondary_process(launch.rank)

    @hydra.main(config_path="../conf", config_name="config", version_base="1.3")
    def app(cfg: DictConfig) -> dict[str, Any] | JobFailure:
        # Read in the job's own process: a submitit job (hydra/launcher=slurm) is started by srun, not by
        # the command that sent the sweep, and only there does SLURM say which task this is.
        if distributed.launch_from_env().rank > 0:  # process 0 tells the story; the others only warn
            logging.getLogger().setLevel(logging.WARNING)
        hydra_cfg = HydraConfig.get()
        job_dir = Path(hydra_cfg.runtime.output_dir)
        config = OmegaConf.to_container(cfg, resolve=True)
        try:
            record = run(config, log_file=job_dir / f"{hydra_cfg.job.name}.log")
        except _user_errors() as err:
            if hydra_cfg.mode == RunMode.MULTIRUN:  # the sweep goes on; the summary lists this job
                log.error("ovprobe: %s", err)
                return JobFailure(str(err))
            raise SystemExit(f"ovprobe: {err}") from err
        if record.get("log_file") != str(job_dir / f"{hydra_cfg.job.name}.log"):  # reused: no new log
            _remove_if_empty(job_dir, keep={f"{hydra_cfg.job.name}.log"})
        return record

    app()
    if FAILED:
        raise SystemExit(1)

