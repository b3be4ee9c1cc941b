"""`ovprobe`: a frozen backbone over a task, attentive probes on stored features, one run record.

One run = backbone x task x sampling x probe (Hydra config groups in `probe/conf/`). Work is done
once and kept: features live in a store keyed by everything that determines them, probe training
checkpoints every epoch, and the record is written atomically to `results/<run-id>/`. Launched by
torchrun or srun, the processes share the work (`probe.distributed`).
"""

from __future__ import annotations

import logging
import logging.handlers
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backbones import Backbone, create_backbone, list_backbones
from backbones.weights import CheckpointError
from probe import distributed
from probe.files import exclusive
from probe.record import (
    RunSlot,
    check_writable,
    claim_run,
    git_commit,
    read_record,
    run_id,
    versions,
    write_record,
)

# `ovprobe` itself lives in `probe.run.cli` (no torch at import: config mistakes are refused fast); its
# entry and its list of user errors stay importable from here.
from probe.run.cli import _user_errors, main  # noqa: F401
from probe.run.schema import ConfigError, check_checkpoint, check_run_config
from probe.run.stream import StreamingFeatures
from probe.store.features import FINGERPRINT_CACHE, FeatureStore, clips_digest, extract_features
from probe.training.evaluate import (
    ORIGINAL_TEST_SEED,
    classification_metrics,
    clip_outcomes,
    per_view_top1,
    predict,
)
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
from tasks.datasets.registry import task_is_generated
from tasks.loader import sample_or_skip
from tasks.sampling.augment import ColorJitter, summarise
from tasks.sampling.samplers import BudgetSampler

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
    """The whole config against `probe.run.schema` and the registries, and a checkpoint folder on disk
    (a file, or a path that does not exist), before any work."""
    check_run_config(
        config,
        {"backbone.name": list_backbones(), "task.name": list_tasks(), "sampling.name": list_samplers()},
    )
    try:
        Recipe(**config["probe"]["recipe"])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"probe.recipe: {err}") from err
    check_checkpoint(config)


@contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' loading report (a page of weight names) is held back while a backbone loads:
    replayed when the weights load, dropped when they fail (`build_backbone` says why in one line)."""
    library = logging.getLogger("transformers")
    held = logging.handlers.BufferingHandler(capacity=100_000)
    saved = list(library.handlers)
    for handler in saved:
        library.removeHandler(handler)
    library.addHandler(held)
    # transformers hands its records on to the root logger (Hydra's console) too where CI=true: not here
    propagate, library.propagate = library.propagate, False
    loaded = False
    try:
        yield
        loaded = True
    finally:
        added = [h for h in library.handlers if h is not held]  # a handler transformers' import adds
        library.removeHandler(held)
        for handler in saved + added:
            library.addHandler(handler)
        if not added:  # else transformers was imported in the block and set `propagate` itself
            library.propagate = propagate
        for record in held.buffer if loaded else []:
            library.handle(record)


def build_backbone(config: dict[str, Any], device: torch.device) -> Backbone:
    """The configured backbone on `device`; weights that do not load into it (another architecture's
    checkpoint) are one line naming the checkpoint, not the library's loading report."""
    name, args = config["backbone"]["name"], resolve_dtype(config["backbone"]["args"], device)
    try:
        with quiet_loading():
            backbone = create_backbone(name, **args)
    except CheckpointError as err:  # ovprobe's own message; a list of weight names cut short
        why = str(err).splitlines()[0]
        raise ConfigError(f"backbone.args.checkpoint: {why[:300]}{'...' if len(why) > 300 else ''}") from err
    except RuntimeError as err:  # the library's: another architecture's weights
        if args.get("checkpoint") is None:
            raise
        raise ConfigError(
            f"backbone.args.checkpoint={args['checkpoint']} does not load into {name} (its weights' names "
            "or shapes differ from the model's); is it a checkpoint of another architecture? pick the "
            "backbone it belongs to"
        ) from err
    return backbone.to(device)


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
        sampler = create_sampler(sampling["name"], **common, **specific, **sampling["args"])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"sampling={sampling['name']} with {backbone.name}: {err}") from err
    if backbone.prefix_kept and isinstance(sampler, BudgetSampler):
        raise ConfigError(
            f"backbone.args.keep_prefix (also set by backbone.args.reference=true, which protocol=original "
            f"implies) keeps each frame's class/register tokens and needs whole frames, but "
            f"sampling={sampling['name']} spends a patch budget; use sampling=uniform, or "
            "backbone.args.reference=false backbone.args.keep_prefix=false for patch budgets"
        )
    return sampler


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
    sampling = {**config["sampling"], **sampler.store_identity, "mode": "train" if train else "eval",
                "augment": augment}
    return dict(task=task.name, split=split, sampling=sampling, seed=config["seed"], views=views,
                dtype=config["extract"]["dtype"])


def extract(
    config: dict[str, Any], backbone: Backbone, task: Task, split: str, sampler: Sampler, train: bool,
    clips_key: str | None = None,
) -> FeatureStore:
    """The split's store; `clips_key`: the split's digest as the run's identity took it (else taken now)."""
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
        clips_key=clips_key,
    )


def fingerprint_cache(config: dict[str, Any]) -> Path:
    """Where the videos' fingerprints are remembered (`probe.store.features.video_fingerprints`)."""
    return Path(config["cache_dir"]).expanduser() / FINGERPRINT_CACHE


def run_identity(
    config: dict[str, Any], backbone: Backbone, task: Task, sampler: Sampler,
    digest: Callable[[list[Clip]], str] | None = None,
) -> dict[str, Any]:
    """What a run ran on beyond its config: the weights' fingerprint and compute dtype (`dtype=auto`
    differs by device), what the sampler's code adds (`store_identity`: the codec maps' version) and each
    split's `clips_digest` (clips, labels, spans, video fingerprints), which also keys the split's feature
    store (`digest`: `ovprobe-plan` passes a memo)."""
    if digest is None:
        cache = fingerprint_cache(config)
        digest = lambda clips: clips_digest(clips, cache)  # noqa: E731
    return {
        "weights": backbone.fingerprint(),
        "dtype": backbone.feature_identity()["dtype"],
        "sampler": sampler.store_identity,
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



def make_task(config: dict[str, Any]) -> Task:
    """The configured task (generated once, by process 0 first), checked against the config."""
    with distributed.main_first():  # a generated task is generated once; a missing data root fails here
        task = create_task(
            config["task"]["name"], **{"on_bad_record": config["on_bad_record"], **config["task"]["args"]}
        )
    check_task(config, task)
    return task


def training_features(
    config: dict[str, Any], backbone: Backbone, task: Task, sampler: Sampler, clips_key: str | None = None
) -> FeatureStore | StreamingFeatures:
    """The training split as the trainer reads it: a store of `extract.train_views` views per clip
    (`extract.mode=store`), or views drawn and encoded afresh every epoch (`stream`)."""
    split = config["task"]["train_split"]
    if config["extract"]["mode"] == "store":
        return extract(config, backbone, task, split, sampler, train=True, clips_key=clips_key)
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
    out = {
        "name": config["protocol"]["name"],
        "selection": result.selected.rule,
        "train_fraction": 1.0 - recipe["val_fraction"],
        "global_batch": recipe["batch_size"],
        "epochs": recipe["epochs"],
        "lrs": recipe["lrs"],
        "wds": recipe["wds"],
        "head": config["probe"]["head"]["kind"],
        "extract_mode": config["extract"]["mode"],
        "drop_last": recipe["drop_last"],
        # how uniform frames were placed in their chunks (`sampling.args.index_rule`; None: other samplers)
        "index_rule": config["sampling"]["args"].get("index_rule"),
        # the image backbones' original input size and tokens (`backbone.args.reference`, implied by
        # protocol=original); None: the backbone has no such setting
        "backbone_reference": config["backbone"]["args"].get("reference"),
    }
    if recipe["coverage_ranks"]:
        out["original_coverage"] = (
            "metrics.original_coverage.top1: max over test epochs of the top-1 over the test clips the "
            f"original's test loader reads on {recipe['coverage_ranks']} ranks (a per-rank permutation "
            f"seeded {ORIGINAL_TEST_SEED} + rank + epoch, about 66% of the clips, some several times); "
            "full_set_top1: every test clip once, same epoch"
        )
    return out


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
    # A task read from disk first (a missing data root fails before any backbone is built); a generated
    # one after the backbone and sampler are checked (nothing is written for a config that would fail).
    generated = task_is_generated(config["task"]["name"])
    task = None if generated else make_task(config)
    backbone = build_backbone(config, device)
    sampler = build_sampler(config["sampling"], backbone, config["cache_dir"])
    task = task or make_task(config)
    lock = Path(config["cache_dir"]).expanduser() / "probes" / f"{run_id(config)}.lock"  # by its checkpoints
    distributed.on_main(lambda: held.enter_context(exclusive(lock, f"run {run_id(config)}", wait=False)))
    # Process 0 fingerprints the videos once; every process keys its stores on the same digests.
    identity = distributed.on_main(lambda: run_identity(config, backbone, task, sampler))
    slot: RunSlot = distributed.on_main(lambda: _claim(config, identity))
    if slot.existing is not None:
        log.info("reusing the finished run %s (on_existing=reuse)", slot.path)
        return slot.existing

    random_weights = backbone.fingerprint().startswith("random-")
    if random_weights and distributed.is_main():
        log.warning(
            "%s has RANDOM weights: numbers measure the pipeline, not a pretrained model", backbone.name
        )
    budget, _ = patch_budget(config["sampling"], backbone)
    grid = backbone.preprocess.size // backbone.patch_size
    if config["probe"].get("from_run"):
        return evaluate_stored_probe(config, backbone, task, sampler, slot, device, budget)

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    train_store = training_features(config, backbone, task, sampler, identity["train_clips"])
    timings["extract_train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    eval_store = extract(config, backbone, task, config["task"]["eval_split"], sampler, train=False,
                         clips_key=identity["eval_clips"])
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
