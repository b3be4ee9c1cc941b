"""Samplers: `Clip` -> views (`SampledClip`s) with frames and token positions, and their registry.

Every sampler is built from the same arguments (`num_frames`, `size`, `patch_size`, `temporal_slots`,
`num_clips`, `num_crops`, plus its own) and called as `sampler(clip, reader, rng, train)`:
`uniform` (all patches of a few frames), and a patch budget over many frames chosen by the codec's
motion and residuals (`codec`), at random (`random`) or by decoded-pixel change (`pixel_diff`).
"""

from __future__ import annotations

import fnmatch
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from tasks.clip import Clip, SampledClip
from tasks.decode.codec import (
    CELL,
    FIXED_FRAME_RULES,
    Box,
    CodecConfig,
    CodecMaps,
    crop_box,
    patch_scores,
    plan_slots,
)
from tasks.decode.codec_cache import CACHE_VERSION, MapCache, cached_analyse
from tasks.decode.video import VideoDecodeError, VideoReader, crop_square, open_video, resize_shorter_side
from tasks.sampling.selection import (
    Selection,
    SelectionConfig,
    check_packed_budget,
    flat_patch_means,
    on_slots,
    pack,
    per_frame_sparse,
    pixel_change,
    resolve_budget,
    select_patches,
)

log = logging.getLogger(__name__)


class Sampler(Protocol):
    def __call__(self, clip: Clip, reader: VideoReader | None = None,
                 rng: np.random.Generator | None = None, train: bool = False) -> list[SampledClip]:
        """All views of `clip` (one in training); opens the video itself when `reader` is None."""
        ...

    @property
    def store_identity(self) -> dict[str, Any]:
        """What the feature store's key takes from the sampler beyond its config (`SamplerConfig`)."""
        ...


_SAMPLERS: dict[str, Callable[..., Sampler]] = {}


def register_sampler(name: str):
    """Register a sampler class or factory under `name`."""

    def wrap(f: Callable[..., Sampler]) -> Callable[..., Sampler]:
        if name in _SAMPLERS:
            raise ValueError(f"sampler {name!r} is registered twice")
        _SAMPLERS[name] = f
        return f

    return wrap


def list_samplers(pattern: str = "*") -> list[str]:
    return sorted(n for n in _SAMPLERS if fnmatch.fnmatch(n, pattern))


def create_sampler(name: str, **config: Any) -> Sampler:
    if name not in _SAMPLERS:
        raise KeyError(f"unknown sampler {name!r}; registered: {', '.join(sorted(_SAMPLERS))}")
    return _SAMPLERS[name](**config)


def temporal_positions(num_frames: int, temporal_slots: int | None) -> np.ndarray:
    """Each sampled frame's slot on the backbone's temporal grid.

    With `temporal_slots` S the frames spread over the whole grid, t_i = round(i * (S - 1) / (T - 1))
    (halves round up); image backbones (`None`) number frames 0..T-1.
    """
    if temporal_slots is None or num_frames == 1:
        return np.arange(num_frames, dtype=np.int64)
    if num_frames > temporal_slots:
        raise ValueError(f"{num_frames} frames do not fit on a temporal grid of {temporal_slots} slots")
    return np.floor(np.arange(num_frames) * (temporal_slots - 1) / (num_frames - 1) + 0.5).astype(np.int64)


def decoded_slots(indices: np.ndarray, start: int, stop: int, temporal_slots: int) -> np.ndarray:
    """Each decoded frame's slot on the backbone's temporal grid from its own index, as the original
    suite places OneVision's frames: t = round((idx - start) / (stop - 1 - start) * (S - 1)), halves to
    even (torch.round), so a frame keeps its place in time whatever offset drew it."""
    span = max(stop - 1 - start, 1)
    return np.clip(np.rint((np.asarray(indices) - start) / span * (temporal_slots - 1)), 0,
                   temporal_slots - 1).astype(np.int64)


TEMPORAL_POSITIONS = ("decoded", "spread")


def dense_positions(t: np.ndarray, grid: int) -> torch.Tensor:
    """`(t, h, w)` of every patch of every frame, frame-major raster order: `[len(t) * grid**2, 3]`."""
    tt, hh, ww = np.meshgrid(t, np.arange(grid), np.arange(grid), indexing="ij")
    return torch.from_numpy(np.stack([tt, hh, ww], axis=-1).reshape(-1, 3).astype(np.int64))


def chunk_indices(start: int, stop: int, num_frames: int, offsets: np.ndarray) -> np.ndarray:
    """One frame per chunk: `[start, stop)` is cut into `num_frames` equal chunks and chunk i gives
    the frame at fraction `offsets[i]` (in [0, 1)) of it. Spans shorter than `num_frames` repeat frames.
    """
    length = stop - start
    idx = start + np.floor((np.arange(num_frames) + offsets) * length / num_frames).astype(np.int64)
    return np.clip(idx, start, stop - 1)


def original_indices(start: int, stop: int, num_frames: int, offsets: np.ndarray) -> np.ndarray:
    """The original suite's frame rule (`_get_frame_indices` of its `dataloader/ap_dataloader_dali.py`):
    chunks of `seg = (n - 1) / T` over the span's n frames, chunk i giving `int(seg * i + seg * offsets[i])`
    (its test frame: offset 1/2; its training frame: a uniform offset, so never frame n - 1). A span
    shorter than T is read whole, then its last frame repeated."""
    length = stop - start
    if length < num_frames:
        return start + np.minimum(np.arange(num_frames), length - 1)
    seg = (length - 1) / num_frames
    return start + (seg * np.arange(num_frames) + seg * np.asarray(offsets)).astype(np.int64)


# How a uniform sampler turns chunk offsets into frame indices (`sampling.args.index_rule`).
INDEX_RULES: dict[str, Callable[[int, int, int, np.ndarray], np.ndarray]] = {
    "centred": chunk_indices,
    "original": original_indices,
}


def frame_span(clip: Clip, reader: VideoReader) -> Clip:
    """`clip` with its span in seconds (`start_time`/`end_time`) turned into decoded frames by the video's
    own frame timestamps (`VideoReader.frames_between`); every sampler places a time span through here.
    A clip spanned in frames (or not at all) is returned as it is."""
    if clip.start_time is None and clip.end_time is None:
        return clip
    start, stop = reader.frames_between(clip.start_time or 0.0, clip.end_time)
    return replace(clip, start_frame=start, end_frame=stop, start_time=None, end_time=None)


def clip_span(clip: Clip, num_frames: int) -> tuple[int, int]:
    """The clip's `[start, stop)` in decoded frames, clamped to the stream (at least one frame).

    A span running past the end is cut there; one starting past it (annotation and video disagree)
    becomes the last frame, with a warning, as the original protocol's clamped frame indices do.
    A span in seconds must be placed first (`frame_span`).
    """
    if clip.start_time is not None or clip.end_time is not None:
        raise ValueError(f"clip {clip.clip_id} is spanned in seconds; place it with frame_span(clip, reader)")
    if (clip.start_frame or 0) >= num_frames:
        log.warning("%s: clip %s starts at frame %d but the video has %d frames; sampling its last frame",
                    clip.path, clip.clip_id, clip.start_frame, num_frames)
    stop = min(clip.end_frame if clip.end_frame is not None else num_frames, num_frames)
    start = min(clip.start_frame or 0, num_frames - 1)
    return start, max(stop, start + 1)


def crop_positions(num_crops: int) -> list[float]:
    """Spatial views along the longer side: 1 -> centre; 3 -> left, centre, right (as V-JEPA, SlowFast)."""
    return [0.5] if num_crops == 1 else np.linspace(0.0, 1.0, num_crops).tolist()


@dataclass
class SamplerConfig:
    """The arguments every sampler takes, checked once; samplers subclass it."""

    num_frames: int
    size: int
    patch_size: int
    temporal_slots: int | None = None
    num_clips: int = 1
    num_crops: int = 1
    backend: str = "auto"
    interpolation: str = "bicubic"  # how frames are resized: the backbone's `PreprocessSpec.interpolation`

    def __post_init__(self) -> None:
        if self.size % self.patch_size:
            raise ValueError(f"size {self.size} is not a multiple of patch_size {self.patch_size}")
        if min(self.num_frames, self.num_clips, self.num_crops) < 1:
            raise ValueError("num_frames, num_clips and num_crops must be >= 1")
        self.frame_slots = temporal_positions(self.num_frames, self.temporal_slots)

    @property
    def grid(self) -> int:
        return self.size // self.patch_size

    @property
    def num_views(self) -> int:
        return self.num_clips * self.num_crops

    @property
    def store_identity(self) -> dict[str, Any]:
        """Versions of what the sampler computes that its code can change without its config changing
        (none here): they enter the feature store's key, so changed selections are never reused."""
        return {}


@register_sampler("uniform")
@dataclass
class UniformSampler(SamplerConfig):
    """Chunk-wise uniform sampling: `num_frames` frames, one per equal chunk of the clip's span.

    Test time: `num_clips` temporal views (view k takes fraction (k + 0.5) / num_clips of every chunk,
    so one view takes the chunk centres) x `num_crops` spatial views; views are numbered
    `clip * num_crops + crop`. Training: one view, a random offset in every chunk, centre crop.
    Frames are resized (shorter side, bicubic) and cropped once, after decoding the sampled frames only.
    On a temporal grid (OneVision) `temporal_positions="decoded"` puts each frame at the slot of its own
    decoded index (`decoded_slots`, the original suite's rule); `"spread"` at fixed slots
    (`temporal_positions`) whatever frame was decoded. `index_rule` places the frame in its chunk:
    `"centred"` (ours: chunks of n / T, `chunk_indices`) or `"original"` (the original suite's chunks of
    (n - 1) / T and its short-clip rule, `original_indices`).
    """

    temporal_positions: str = "decoded"
    index_rule: str = "centred"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temporal_positions not in TEMPORAL_POSITIONS:
            raise ValueError(f"temporal_positions={self.temporal_positions!r}; choose one of "
                             f"{', '.join(TEMPORAL_POSITIONS)}")
        if self.index_rule not in INDEX_RULES:
            raise ValueError(f"index_rule={self.index_rule!r}; choose one of {', '.join(INDEX_RULES)}")

    def _slots(self, indices: np.ndarray, start: int, stop: int) -> np.ndarray:
        if self.temporal_slots is None or self.temporal_positions == "spread":
            return self.frame_slots
        return decoded_slots(indices, start, stop, self.temporal_slots)

    def __call__(self, clip: Clip, reader: VideoReader | None = None,
                 rng: np.random.Generator | None = None, train: bool = False) -> list[SampledClip]:
        if train and rng is None:
            raise ValueError("training samples need an rng (np.random.Generator) for the chunk offsets")
        reader = reader or open_video(clip.path, self.backend)
        start, stop = clip_span(frame_span(clip, reader), reader.num_frames)
        if train:
            offsets = [rng.random(self.num_frames)]
            crops = [0.5]
        else:
            offsets = [np.full(self.num_frames, (k + 0.5) / self.num_clips) for k in range(self.num_clips)]
            crops = crop_positions(self.num_crops)
        rule = INDEX_RULES[self.index_rule]
        indices = np.concatenate([rule(start, stop, self.num_frames, o) for o in offsets])
        # one decode pass for all temporal views; each distinct frame decoded and resized once
        distinct, inverse = reader.get_distinct(indices)
        frames = resize_shorter_side(distinct, self.size, self.interpolation)[inverse]
        indices = np.minimum(indices, reader.num_frames - 1)  # the reader may have learned a shorter stream
        views = []
        for k in range(len(offsets)):
            part = slice(k * self.num_frames, (k + 1) * self.num_frames)
            positions = dense_positions(self._slots(indices[part], start, stop), self.grid)
            resized = frames[part]
            views += [
                SampledClip(clip_id=clip.clip_id, label=clip.label,
                            frames=crop_square(resized, self.size, pos).contiguous(), positions=positions,
                            source_frames=indices[part].tolist(), view=k * len(crops) + c)
                for c, pos in enumerate(crops)
            ]
        return views


@dataclass
class FramePlan:
    """The dense run a patch budget is spent over: decoded frame `frame_indices[i]` (absolute in the
    file) at temporal slot `slots[i]` of `num_slots` (as `tasks.decode.codec.CodecMaps` carries them)."""

    frame_indices: np.ndarray
    slots: np.ndarray
    num_slots: int


@dataclass
class Chosen:
    """What a budget sampler's `select` returns: the dense run (a `FramePlan` or the codec's maps), one
    selection per spatial crop, the run's frames (row order) resized to the backbone's size when the
    sampler already decoded them (else they are decoded for the layout), and its open reader, if any."""

    run: FramePlan | CodecMaps
    selections: list[Selection]
    pixels: list[torch.Tensor] | torch.Tensor | None = None
    reader: VideoReader | None = None


@dataclass
class BudgetSampler(SamplerConfig):
    """A patch budget spent over a dense run of `num_frames` frames at linspace over the clip: the
    shared part of the `codec`, `random` and `pixel_diff` samplers, which differ only in which K patches
    they choose (`select`). The budget is `budget` patches or `frames_equiv` frames' worth, with the
    first frame kept whole if `keep_first_frame`; the K patches are laid out for the backbone as
    `CodecSampler` describes (packed for `native_sparse`, per frame otherwise), so every sampler feeds
    the same token count and layout at a budget. `cache_dir`: where a sampler keeps budget-independent
    scores (the codec maps); samplers whose scores cost no more than decoding keep none.
    """

    budget: int | None = None
    frames_equiv: float | None = None
    native_sparse: bool = False
    keep_first_frame: bool = True
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_clips != 1:
            raise ValueError("a patch-budget sampler scores the whole clip at once; set num_clips=1")
        self.k = resolve_budget(self.grid**2, self.budget, self.frames_equiv)
        if self.k > self.num_frames * self.grid**2:
            raise ValueError(
                f"sampling.budget={self.k} is more than the {self.num_frames * self.grid**2} patches of the "
                f"dense run ({self.num_frames} frames of {self.grid**2}); lower it or raise "
                "sampling.args.num_frames"
            )
        if self.native_sparse:
            check_packed_budget(self.k, self.grid**2)
        self.selection = SelectionConfig(keep_first_frame=self.keep_first_frame, static_fallback=False)

    def select(self, clip: Clip, reader: VideoReader | None, rng: np.random.Generator | None,
               crops: list[float]) -> Chosen:
        """The dense run and the K patches of each crop in `crops` (positions along the longer side)."""
        raise NotImplementedError

    def check_length(self, clip: Clip, frames: int) -> None:
        """A clip too short for the budget is a bad clip (skipped or fatal by policy), not a crash."""
        if frames * self.grid**2 < self.k:
            raise VideoDecodeError(clip.path, f"clip {clip.clip_id} has {frames} frames, fewer "
                                   f"patches than the budget of {self.k}; lower sampling.budget")

    def frame_plan(self, clip: Clip, reader: VideoReader, rng: np.random.Generator | None) -> FramePlan:
        """The codec dense run (`tasks.decode.codec.plan_slots` over the clip's span) for a reader; a
        training view (`rng`) draws its own frame in each chunk, as the codec sampler's do."""
        start, stop = clip_span(frame_span(clip, reader), reader.num_frames)
        jitter = rng.random(self.num_frames) if rng is not None else None
        offsets, slots = plan_slots(stop - start, self.num_frames, jitter)
        self.check_length(clip, len(slots))
        return FramePlan(start + offsets, slots, self.num_frames)

    def __call__(self, clip: Clip, reader: VideoReader | None = None,
                 rng: np.random.Generator | None = None, train: bool = False) -> list[SampledClip]:
        crops = [0.5] if train else crop_positions(self.num_crops)
        chosen = self.select(clip, reader, rng, crops)
        run, selections = chosen.run, chosen.selections
        rows = np.flatnonzero(np.isin(run.slots, np.unique(np.concatenate([s.slots for s in selections]))))
        if chosen.pixels is None:  # not decoded yet: decode only the frames holding selected patches
            reader = chosen.reader or open_video(clip.path, self.backend)
            frames = resize_shorter_side(reader.get_frames(run.frame_indices[rows]), self.size,
                                         self.interpolation)
        else:
            frames = torch.stack([chosen.pixels[r] for r in rows])
        views = []
        for c, (pos, selection) in enumerate(zip(crops, selections, strict=True)):
            cropped = crop_square(frames, self.size, pos).numpy()
            if self.native_sparse:
                out = pack(selection, cropped, run.slots[rows], self.patch_size)
                positions = selection.positions
                positions[:, 0] = self.frame_slots[positions[:, 0]]
                layout = "packed"
            else:
                out = np.zeros((self.num_frames, self.size, self.size, 3), np.uint8)
                out[run.slots[rows]] = cropped
                positions = per_frame_sparse(selection, t="slot")[1]
                layout = "sparse"
            used = np.isin(run.slots, selection.slots)
            views.append(SampledClip(clip_id=clip.clip_id, label=clip.label, frames=torch.from_numpy(out),
                                     positions=torch.from_numpy(positions), layout=layout,
                                     source_frames=run.frame_indices[used].tolist(), view=c,
                                     signals=getattr(run, "signals", None)))
        return views


@register_sampler("codec")
@dataclass
class CodecSampler(BudgetSampler):
    """Codec patch-budget sampling: the `budget` patches richest in new information among all patches of
    `num_frames` frames at linspace over the clip (64 for OneVision), scored from the codec's motion
    vectors and residuals (`tasks.decode.codec`), selected by `tasks.sampling.selection`.

    The budget is `budget` patches or `frames_equiv` frames' worth. Every backbone gets the same K
    patches at the same (t, h, w), laid out for how it takes them:
    - `native_sparse` (OneVision): layout "packed", frames are the K / grid**2 pseudo-frames holding the
      patches in ascending (t, h, w) order, positions their true (t, h, w) with t on the
      `temporal_slots` grid;
    - otherwise (image encoders): layout "sparse", frames are the `num_frames` sampled frames (zeros
      where a frame holds no selected patch, so clips batch with one shape), positions the K kept
      tokens with t indexing those frames (`tasks.sampling.selection.per_frame_sparse`); the backbone encodes
      the frames positions point to and keeps those tokens.
    `num_crops` spatial views each select their own patches from the same maps. A training view takes
    the centre crop and, given an rng, its own frames: each of the `num_frames` at a random fraction of
    its chunk of the clip (`tasks.decode.codec.plan_slots`) instead of at linspace (`frame_rule="round"`;
    "floor" takes the test frames). Maps are cached under `cache_dir` (if set) per video, span, codec
    settings and frame jitter, so other budgets and options reuse them.

    The original suite's rules are options (`probe/conf/sampling/codec.yaml` lists both sets; README
    "Comparing with published numbers"): `frame_rule`, `keyframes`, `motion_score`, `norm_scope` and the
    floors (`tasks.decode.codec.CodecConfig`); `center_rule` "patch" applies `center_prior` to patch
    scores (`SelectionConfig`), "map" to the fused map as the original does (`CodecConfig`);
    `static_rule` "activity" calls a clip static from its cells above the noise floors
    (`CodecMaps.static`), "patch_percentile" from the percentiles of its patch means, as the original
    does (`tasks.sampling.selection.flat_patch_means`, thresholds `static_abs` and `static_rel`).
    """

    static_fallback: bool = True
    static_frames: int = 4
    static_rule: str = "activity"
    static_abs: float = 116.0
    static_rel: float = 0.55
    center_rule: str = "patch"
    center_prior: float = 0.0
    center_sigma: float = 0.5
    time_buckets: int = 1
    flat_std: float = 2.0
    camera: str = "similarity"
    fusion: str = "mean"
    frame_rule: str = "round"
    keyframes: str = "scored"
    motion_score: str = "magnitude"
    norm_scope: str = "clip"
    motion_floor: float = 1.0
    residual_floor: float = 6.0
    residual_baseline: float = 1.0
    # Saliency is scored on the crop that a 224 px input (OneVision's) keeps, whatever the backbone's size:
    # the crop then differs by under a pixel between sizes, the scores not at all, so backbones with the
    # same patch grid (224/14, 256/16) get the same patches. Pixels are cropped at the backbone's size.
    SCORE_SIZE: ClassVar[int] = 224

    @property
    def store_identity(self) -> dict[str, Any]:
        """The codec maps' version: an analysis that changes the maps keys new stores."""
        return {"codec_maps": CACHE_VERSION}

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, table in (("center_rule", CENTER_RULES), ("static_rule", STATIC_RULES)):
            if getattr(self, key) not in table:
                raise ValueError(f"{key}={getattr(self, key)!r}; choose one of {', '.join(sorted(table))}")
        on_map = self.center_rule == "map"  # the prior applies in one place only
        self.codec = CodecConfig(
            num_frames=self.num_frames, camera=self.camera, fusion=self.fusion, frame_rule=self.frame_rule,
            keyframes=self.keyframes, motion_score=self.motion_score, norm_scope=self.norm_scope,
            motion_floor=self.motion_floor, residual_floor=self.residual_floor,
            residual_baseline=self.residual_baseline, center_prior=self.center_prior if on_map else 0.0,
            center_sigma=self.center_sigma)
        self.selection = SelectionConfig(self.keep_first_frame, self.static_fallback, self.static_frames,
                                         0.0 if on_map else self.center_prior, self.center_sigma,
                                         self.time_buckets, self.flat_std)
        self.cache = MapCache(Path(self.cache_dir)) if self.cache_dir else None

    def maps_key(self, clip: Clip, reader: VideoReader | None, rng: np.random.Generator | None
                 ) -> tuple[int | None, int | None, np.ndarray | None, VideoReader | None]:
        """What a view's maps depend on besides the video and `codec`: the clip's span (an annotated
        span starting past the end is the last frame, as in uniform sampling) and a training view's own
        frames (`rng`: jitter within each chunk; None for test views). Also the reader, if it opened one.
        A span in seconds is placed in frames first (`frame_span`)."""
        if clip.start_time is not None or clip.end_time is not None:
            reader = reader or open_video(clip.path, self.backend)
            clip = frame_span(clip, reader)
        start, end = clip.start_frame, clip.end_frame
        if start:
            reader = reader or open_video(clip.path, self.backend)
            if start >= reader.num_frames:
                start, end = clip_span(clip, reader.num_frames)
        jitter = rng.random(self.num_frames) if rng is not None else None
        return start, end, None if self.frame_rule in FIXED_FRAME_RULES else jitter, reader

    def select(self, clip: Clip, reader: VideoReader | None, rng: np.random.Generator | None,
               crops: list[float]) -> Chosen:
        scaler = VideoReformatter()  # one swscale context per clip: `frame.to_ndarray` builds one per frame

        def resized(frame) -> torch.Tensor:
            rgb = scaler.reformat(frame, format="rgb24").to_ndarray()[None]
            return resize_shorter_side(rgb, self.size, self.interpolation)[0]

        start, end, jitter, reader = self.maps_key(clip, reader, rng)
        maps, pixels = cached_analyse(clip.path, self.codec, start, end, self.cache, keep=resized,
                                      jitter=jitter)
        self.check_length(clip, len(maps.slots))
        selections = []
        for pos in crops:
            box = crop_box(maps.frame_size, self.SCORE_SIZE, pos)
            scores = patch_scores(maps, (self.grid, self.grid), box)
            static = STATIC_RULES[self.static_rule](self, maps, scores, box)
            selections.append(select_patches(scores, self.k, self.selection, static=static,
                                             contrast=maps.slot_contrast))
        return Chosen(maps, selections, pixels, reader)

    def patch_means(self, scores: np.ndarray, box: Box) -> np.ndarray:
        """`patch_scores` as each patch's mean fused level (0..255), as the original's uint8 map gives."""
        cells = (box[2] / CELL / self.grid) * (box[3] / CELL / self.grid)
        return scores * (255.0 / cells)


# `CodecSampler.center_rule`: where `center_prior` applies (patch scores: ovprobe's; the fused map: the
# original's)
CENTER_RULES = ("patch", "map")
# `CodecSampler.static_rule`: (sampler, maps, patch scores, crop box) -> whether the clip is static
STATIC_RULES: dict[str, Callable[[CodecSampler, CodecMaps, np.ndarray, Box], bool]] = {
    "activity": lambda s, maps, scores, box: maps.static,
    "patch_percentile": lambda s, maps, scores, box: flat_patch_means(s.patch_means(scores, box),
                                                                      s.static_abs, s.static_rel),
}


@register_sampler("random")
@dataclass
class RandomSampler(BudgetSampler):
    """The control for codec selection: K patches drawn uniformly at random from the codec sampler's
    dense run (same frames, crop, budget, whole first frame and layouts), so the only difference from
    `codec` is which patches. Training draws use the rng they are given (`probe.run.main.ViewSampler` seeds
    one per seed, view and clip); test views draw from their own generator seeded by (`seed`, view,
    clip id), so test features are the same in every run with that seed.
    """

    seed: int = 0

    def select(self, clip: Clip, reader: VideoReader | None, rng: np.random.Generator | None,
               crops: list[float]) -> Chosen:
        reader = reader or open_video(clip.path, self.backend)
        run = self.frame_plan(clip, reader, rng)
        clip_key = zlib.crc32(clip.clip_id.encode())
        rngs = [rng] if rng is not None else [
            np.random.default_rng([self.seed, view, clip_key, _TEST_STREAM]) for view in range(len(crops))
        ]
        if len(rngs) != len(crops):
            raise ValueError("one rng draws one training view; test views (rng=None) draw their own")
        selections = []
        for draw in rngs:
            scores = on_slots(draw.random((len(run.slots), self.grid, self.grid)), run.slots, run.num_slots)
            selections.append(select_patches(scores, self.k, self.selection))
        return Chosen(run, selections, reader=reader)


_TEST_STREAM = 1  # keeps test views' generators apart from the training draws' (seed, view, clip)


@register_sampler("pixel_diff")
@dataclass
class PixelDiffSampler(BudgetSampler):
    """The plain-frame-difference baseline: the K patches of the codec sampler's dense run whose decoded
    pixels changed most since the previous frame of the run (`tasks.sampling.selection.pixel_change`), with no
    codec information; same budget, whole first frame and layouts as `codec`. Scoring needs every frame
    of the run decoded (as uniform sampling of that many frames would), so there is nothing worth caching.
    """

    def select(self, clip: Clip, reader: VideoReader | None, rng: np.random.Generator | None,
               crops: list[float]) -> Chosen:
        reader = reader or open_video(clip.path, self.backend)
        run = self.frame_plan(clip, reader, rng)
        frames = resize_shorter_side(reader.get_frames(run.frame_indices), self.size, self.interpolation)
        selections = []
        for pos in crops:
            change = pixel_change(crop_square(frames, self.size, pos).numpy(), self.patch_size)
            scores = on_slots(change, run.slots, run.num_slots)
            selections.append(select_patches(scores, self.k, self.selection))
        return Chosen(run, selections, frames, reader)
