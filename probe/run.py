"""`ovprobe`: a frozen backbone over a task, attentive probes on stored features, one run record.

One run = backbone x task x sampling x probe (Hydra config groups in `probe/conf/`). Work is done
once and kept: features live in a store keyed by everything that determines them, probe training
checkpoints every epoch, and the record is written atomically to `results/<run-id>/`. Launched by
torchrun or srun, the processes share the work (`probe.distributed`).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback

from backbones import Backbone, create_backbone, list_backbones
from probe import distributed
from probe.evaluate import classification_metrics, per_view_top1, predict
from probe.features import FeatureStore, extract_features
from probe.record import RunSlot, check_writable, claim_run, git_commit, versions, write_record
from probe.results import format_table, record_row
from probe.stored import load_probe, probe_files
from probe.stream import StreamingFeatures
from probe.train import GridResult, HeadConfig, Recipe, train_probe_grid
from tasks import (
    Clip,
    SampledClip,
    Sampler,
    SkippedClip,
    Task,
    create_sampler,
    create_task,
    list_samplers,
    open_video,
)
from tasks.augment import ColorJitter, summarise
from tasks.dataset import sample_or_skip

log = logging.getLogger("ovprobe")


class ConfigError(ValueError):
    """A bad configuration, found before any work starts."""


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


def check_config(config: dict[str, Any]) -> None:
    """Names and numbers that would otherwise fail deep inside the run."""
    backbones = list_backbones()
    if config["backbone"]["name"] not in backbones:
        raise ConfigError(
            f"backbone.name={config['backbone']['name']!r} is not one of: {', '.join(backbones)}"
        )
    samplers = list_samplers()
    if config["sampling"]["name"] not in samplers:
        raise ConfigError(
            f"sampling.name={config['sampling']['name']!r} is not one of: {', '.join(samplers)}"
        )
    for key in ("on_bad_clip", "on_bad_record"):
        if config[key] not in ("skip", "error"):
            raise ConfigError(f"{key}={config[key]!r} is not one of: skip, error")
    try:
        Recipe(**config["probe"]["recipe"])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"probe.recipe: {err}") from err
    if config["extract"]["mode"] not in EXTRACT_MODES:
        mode = config["extract"]["mode"]
        raise ConfigError(f"extract.mode={mode!r} is not one of: {', '.join(EXTRACT_MODES)}")


def patch_budget(sampling: dict[str, Any], backbone: Backbone) -> tuple[int, int]:
    """(budget in patches, patches per frame) from `sampling.budget` or `sampling.frames_equiv`."""
    per_frame = (backbone.preprocess.size // backbone.patch_size) ** 2
    budget = sampling.get("budget") or sampling["frames_equiv"] * per_frame
    if budget < 1:
        raise ConfigError(f"sampling.budget={budget} must be a positive number of patches")
    return int(budget), per_frame


def build_sampler(sampling: dict[str, Any], backbone: Backbone, cache_dir: str) -> Sampler:
    """The configured sampler at the backbone's size, patch and temporal grid, with the patch budget."""
    budget, per_frame = patch_budget(sampling, backbone)
    common = dict(
        size=backbone.preprocess.size,
        patch_size=backbone.patch_size,
        temporal_slots=backbone.temporal_slots,
        num_clips=sampling["num_clips"],
        num_crops=sampling["num_crops"],
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


def extract(
    config: dict[str, Any], backbone: Backbone, task: Task, split: str, sampler: Sampler, train: bool
) -> FeatureStore:
    extract_cfg = config["extract"]
    views = extract_cfg["train_views"] if train else sampler.num_views
    sampling = {k: v for k, v in config["sampling"].items()}
    jitter = color_jitter(config) if train else None
    # What the training views are (frame rule, jitter settings): a change keys a new store.
    augment = {"views": "own-offsets-v2", "color_jitter": jitter.to_dict()} if train else None
    return extract_features(
        backbone,
        task.clips(split),
        ViewSampler(sampler, train, views, config["seed"], config["on_bad_clip"], jitter),
        root=Path(config["cache_dir"]).expanduser() / "features",
        task=task.name,
        split=split,
        sampling={**sampling, "mode": "train" if train else "eval", "augment": augment},
        seed=config["seed"],
        views=views,
        dtype=extract_cfg["dtype"],
        shard_size=extract_cfg["shard_size"],
        batch_size=extract_cfg["batch_size"],
        num_workers=config["num_workers"],
        verify=extract_cfg["verify"],
        progress=config["progress"],
    )


EXTRACT_MODES = ("store", "stream")


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


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration end to end and return its record (stored or reused).

    Under torchrun or srun every process calls this (see `probe.distributed`): they share the feature
    extraction and the probe training, and process 0 alone claims the run id and writes the record.
    """
    started = time.perf_counter()
    check_config(config)
    device = distributed.init(resolve_device(config["device"]))
    distributed.on_main(lambda: check_writable(config["results_dir"]))
    check_writable(Path(config["cache_dir"]).expanduser(), "cache folder", "cache_dir")  # every node's view
    slot: RunSlot = distributed.on_main(
        lambda: claim_run(config["results_dir"], config, config["on_existing"])
    )
    if slot.existing is not None:
        log.info("reusing the finished run %s (on_existing=reuse)", slot.path)
        return slot.existing

    backbone = create_backbone(config["backbone"]["name"], **config["backbone"]["args"]).to(device)
    random_weights = backbone.fingerprint().startswith("random-")
    if random_weights and distributed.is_main():
        log.warning(
            "%s has RANDOM weights: numbers measure the pipeline, not a pretrained model", backbone.name
        )
    sampler = build_sampler(config["sampling"], backbone, config["cache_dir"])
    with distributed.main_first():  # a generated task is generated once
        task = create_task(
            config["task"]["name"], **{"on_bad_record": config["on_bad_record"], **config["task"]["args"]}
        )
    budget, _ = patch_budget(config["sampling"], backbone)
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
    for split, store in (("train", train_store), ("eval", eval_store)):
        if store.skipped:
            log.warning("%s split: skipped %d unreadable clips (see the record)", split, len(store.skipped))

    record = {
        "config": config,
        "versions": versions(),
        "git_commit": git_commit(),
        "backbone": {
            "name": backbone.name,
            "fingerprint": backbone.fingerprint(),
            "random_weights": random_weights,
            "embed_dim": backbone.embed_dim,
            "native_sparse": backbone.native_sparse,
            # How a sparse patch set is encoded (natively, or whole frames then gathered): compute differs.
            "sparse_mode": getattr(backbone, "sparse_mode", "native" if backbone.native_sparse else "dense"),
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
            "frames_equiv": budget / (backbone.preprocess.size // backbone.patch_size) ** 2,
            "tokens_per_clip": eval_store.num_tokens,
        },
        "protocol": protocol_record(config, result),
        "augmentation": augmentation_record(
            config,
            task.clips(config["task"]["train_split"]),
            config["extract"]["train_views"] if config["extract"]["mode"] == "store" else recipe.epochs,
        ),
        "skipped_clips": {"train": train_store.skipped, "eval": eval_store.skipped},
        # Annotation records dropped under on_bad_record=skip, with the file, line and reason of each.
        "skipped_records": {
            "train": task.skipped.get(config["task"]["train_split"], []),
            "eval": task.skipped.get(config["task"]["eval_split"], []),
        },
        "metrics": result.to_dict(),
        "timings": timings,
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
    """Hydra callback: print one table of the runs of an invocation (a sweep or a single run)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_job_end(self, config: Any, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.COMPLETED:
            self.rows.append(record_row(job_return.return_value))

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        if self.rows and distributed.launch_from_env().rank == 0:
            print("\n" + format_table(self.rows))

    on_multirun_end = on_run_end


# Errors that mean "fix your input": reported as one clear line instead of a traceback.
def _user_errors() -> tuple[type[BaseException], ...]:
    from backbones.registry import UnknownBackboneError
    from backbones.weights import CheckpointError
    from probe.files import DiskFullError
    from probe.record import ResultsDirError, RunExistsError
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
    )


def _quiet_secondary_process(rank: int) -> None:
    """Processes other than 0 keep Hydra's files in a scratch folder of their own (one per user and
    rank, reused, so killed jobs leave nothing behind), never in results_dir, and leave announcing the
    jobs to process 0."""
    scratch = Path(tempfile.gettempdir()) / f"ovprobe-hydra-{os.getuid()}-rank{rank}"
    sys.argv += [f"hydra.run.dir={scratch}", f"hydra.sweep.dir={scratch}", "hydra/hydra_logging=disabled"]


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    rank = distributed.launch_from_env().rank
    if rank > 0:
        _quiet_secondary_process(rank)

    @hydra.main(config_path="conf", config_name="config", version_base="1.3")
    def app(cfg: DictConfig) -> dict[str, Any]:
        if rank > 0:  # process 0 tells the story; the others only warn
            logging.getLogger().setLevel(logging.WARNING)
        config = OmegaConf.to_container(cfg, resolve=True)
        try:
            record = run(config)
        except _user_errors() as err:
            raise SystemExit(f"ovprobe: {err}") from err
        return record

    app()


if __name__ == "__main__":
    main()
