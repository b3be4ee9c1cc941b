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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback

from backbones import Backbone, create_backbone, list_backbones
from probe import distributed
from probe.features import FeatureStore, extract_features
from probe.record import RunSlot, check_writable, claim_run, git_commit, versions, write_record
from probe.results import format_table, record_row
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


@dataclass
class ViewSampler:
    """clip -> its stored views: the test views, or `views` seeded training draws. Picklable for workers.

    A clip that cannot be decoded is fatal under `on_bad_clip="error"`; under `"skip"` it becomes a
    `SkippedClip` that the feature store records (with the reason) and the probe never sees.
    """

    sampler: Sampler
    train: bool
    views: int
    seed: int
    on_bad_clip: str = "error"

    def __call__(self, clip: Clip) -> list[SampledClip] | SkippedClip:
        return sample_or_skip(clip, self.on_bad_clip, lambda: self._sample(clip))

    def _sample(self, clip: Clip) -> list[SampledClip]:
        reader = open_video(clip.path)
        if not self.train:
            return self.sampler(clip, reader, None, False)
        draws = []
        for view in range(self.views):
            rng = np.random.default_rng([self.seed, view, zlib.crc32(clip.clip_id.encode())])
            (sampled,) = self.sampler(clip, reader, rng, True)
            sampled.view = view
            draws.append(sampled)
        return draws


def extract(
    config: dict[str, Any], backbone: Backbone, task: Task, split: str, sampler: Sampler, train: bool
) -> FeatureStore:
    extract_cfg = config["extract"]
    views = extract_cfg["train_views"] if train else sampler.num_views
    sampling = {k: v for k, v in config["sampling"].items()}
    return extract_features(
        backbone,
        task.clips(split),
        ViewSampler(sampler, train, views, config["seed"], config["on_bad_clip"]),
        root=Path(config["cache_dir"]).expanduser() / "features",
        task=task.name,
        split=split,
        sampling={**sampling, "mode": "train" if train else "eval"},
        seed=config["seed"],
        views=views,
        dtype=extract_cfg["dtype"],
        shard_size=extract_cfg["shard_size"],
        batch_size=extract_cfg["batch_size"],
        num_workers=config["num_workers"],
        verify=extract_cfg["verify"],
        progress=config["progress"],
    )


def head_config(config: dict[str, Any], backbone: Backbone, store: FeatureStore) -> HeadConfig:
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
    grid = backbone.preprocess.size // backbone.patch_size

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    train_store = extract(config, backbone, task, config["task"]["train_split"], sampler, train=True)
    timings["extract_train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    eval_store = extract(config, backbone, task, config["task"]["eval_split"], sampler, train=False)
    timings["extract_eval_s"] = time.perf_counter() - t0
    for split, store in (("train", train_store), ("eval", eval_store)):  # this process's share; 0: reused
        timings[f"extract_{split}_encode_s"] = store.extraction.encode_s
        timings[f"extract_{split}_loader_wait_s"] = store.extraction.wait_s

    recipe = Recipe(**{**config["probe"]["recipe"], "seed": config["seed"]})
    checkpoint = Path(config["cache_dir"]).expanduser() / "probes" / slot.run_id / "grid.pt"
    result: GridResult = train_probe_grid(
        train_store,
        eval_store,
        task.num_classes,
        head_config(config, backbone, train_store),
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
            "sparse_mode": backbone.sparse_mode,
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
            "train_features": str(train_store.path),
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
        # Per clip, from the extraction that wrote each store (kept in its manifest, so reused stores
        # report the cost of making them): frames/tokens encoded, tokens kept, FLOPs, encode seconds.
        "cost": {"train": train_store.cost, "eval": eval_store.cost},
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

    def finish() -> dict[str, Any]:
        written = write_record(slot, record, kept=kept)
        checkpoint.unlink(missing_ok=True)
        log.info("run record written to %s", slot.path)
        return written

    return distributed.on_main(finish)


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
    from probe.features import NonFiniteTokensError
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
        NonFiniteTokensError,
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
