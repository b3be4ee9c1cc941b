"""Samplers: `Clip` -> views (`SampledClip`s) with frames and token positions, and their registry.

Every sampler is built from the same arguments (`num_frames`, `size`, `patch_size`, `temporal_slots`,
`num_clips`, `num_crops`, plus its own) and called as `sampler(clip, reader, rng, train)`:
`uniform` (all patches of a few frames) and `codec` (a patch budget over many frames).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from tasks.clip import Clip, SampledClip
from tasks.codec import CodecConfig, crop_box, patch_scores
from tasks.codec_cache import MapCache, cached_analyse
from tasks.selection import (
    SelectionConfig,
    check_packed_budget,
    pack,
    per_frame_sparse,
    resolve_budget,
    select_patches,
)
from tasks.video import VideoDecodeError, VideoReader, crop_square, open_video, resize_shorter_side

log = logging.getLogger(__name__)


class Sampler(Protocol):
    def __call__(self, clip: Clip, reader: VideoReader | None = None,
                 rng: np.random.Generator | None = None, train: bool = False) -> list[SampledClip]:
        """All views of `clip` (one in training); opens the video itself when `reader` is None."""
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


def clip_span(clip: Clip, num_frames: int) -> tuple[int, int]:
    """The clip's `[start, stop)` in decoded frames, clamped to the stream (at least one frame).

    A span running past the end is cut there; one starting past it (annotation and video disagree)
    becomes the last frame, with a warning, as the original protocol's clamped frame indices do.
    """
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


@register_sampler("uniform")
@dataclass
class UniformSampler(SamplerConfig):
    """Chunk-wise uniform sampling: `num_frames` frames, one per equal chunk of the clip's span.

    Test time: `num_clips` temporal views (view k takes fraction (k + 0.5) / num_clips of every chunk,
    so one view takes the chunk centres) x `num_crops` spatial views; views are numbered
    `clip * num_crops + crop`. Training: one view, a random offset in every chunk, centre crop.
    Frames are resized (shorter side, bicubic) and cropped once, after decoding the sampled frames only.
    """

    def __call__(self, clip: Clip, reader: VideoReader | None = None,
                 rng: np.random.Generator | None = None, train: bool = False) -> list[SampledClip]:
        if train and rng is None:
            raise ValueError("training samples need an rng (np.random.Generator) for the chunk offsets")
        reader = reader or open_video(clip.path, self.backend)
        start, stop = clip_span(clip, reader.num_frames)
        if train:
            offsets = [rng.random(self.num_frames)]
            crops = [0.5]
        else:
            offsets = [np.full(self.num_frames, (k + 0.5) / self.num_clips) for k in range(self.num_clips)]
            crops = crop_positions(self.num_crops)
        indices = np.concatenate([chunk_indices(start, stop, self.num_frames, o) for o in offsets])
        # one decode pass for all temporal views; each distinct frame decoded and resized once
        distinct, inverse = reader.get_distinct(indices)
        frames = resize_shorter_side(distinct, self.size)[inverse]
        indices = np.minimum(indices, reader.num_frames - 1)  # the reader may have learned a shorter stream
        positions = dense_positions(self.frame_slots, self.grid)
        views = []
        for k in range(len(offsets)):
            part = slice(k * self.num_frames, (k + 1) * self.num_frames)
            resized = frames[part]
            views += [
                SampledClip(clip_id=clip.clip_id, label=clip.label,
                            frames=crop_square(resized, self.size, pos).contiguous(), positions=positions,
                            source_frames=indices[part].tolist(), view=k * len(crops) + c)
                for c, pos in enumerate(crops)
            ]
        return views


@register_sampler("codec")
@dataclass
class CodecSampler(SamplerConfig):
    """Codec patch-budget sampling: the `budget` patches richest in new information among all patches of
    `num_frames` frames at linspace over the clip (64 for OneVision), scored from the codec's motion
    vectors and residuals (`tasks.codec`), selected by `tasks.selection`.

    The budget is `budget` patches or `frames_equiv` frames' worth. Every backbone gets the same K
    patches at the same (t, h, w), laid out for how it takes them:
    - `native_sparse` (OneVision): layout "packed", frames are the K / grid**2 pseudo-frames holding the
      patches in ascending (t, h, w) order, positions their true (t, h, w) with t on the
      `temporal_slots` grid;
    - otherwise (image encoders): layout "sparse", frames are the `num_frames` sampled frames (zeros
      where a frame holds no selected patch, so clips batch with one shape), positions the K kept
      tokens with t indexing those frames (`tasks.selection.per_frame_sparse`); the backbone encodes
      the frames positions point to and keeps those tokens.
    `num_crops` spatial views each select their own patches from the same maps; the selection is
    deterministic, so training draws the centre view. Maps are cached under `cache_dir` (if set) per
    video, span and codec settings, so other budgets and options reuse them.
    """

    budget: int | None = None
    frames_equiv: float | None = None
    native_sparse: bool = False
    keep_first_frame: bool = True
    static_fallback: bool = True
    static_frames: int = 4
    center_prior: float = 0.0
    time_buckets: int = 1
    camera: str = "similarity"
    fusion: str = "mean"
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_clips != 1:
            raise ValueError("the codec sampler scores the whole clip at once; set num_clips=1")
        self.k = resolve_budget(self.grid**2, self.budget, self.frames_equiv)
        if self.native_sparse:
            check_packed_budget(self.k, self.grid**2)
        self.codec = CodecConfig(num_frames=self.num_frames, camera=self.camera, fusion=self.fusion)
        self.selection = SelectionConfig(self.keep_first_frame, self.static_fallback, self.static_frames,
                                         self.center_prior, time_buckets=self.time_buckets)
        self.cache = MapCache(Path(self.cache_dir)) if self.cache_dir else None

    def __call__(self, clip: Clip, reader: VideoReader | None = None,
                 rng: np.random.Generator | None = None, train: bool = False) -> list[SampledClip]:
        def resized(frame) -> torch.Tensor:
            return resize_shorter_side(frame.to_ndarray(format="rgb24")[None], self.size)[0]

        start, end = clip.start_frame, clip.end_frame
        if start:  # an annotated span: one starting past the end is the last frame, as in uniform sampling
            reader = reader or open_video(clip.path, self.backend)
            if start >= reader.num_frames:
                start, end = clip_span(clip, reader.num_frames)
        maps, pixels = cached_analyse(clip.path, self.codec, start, end, self.cache, keep=resized)
        if len(maps.slots) * self.grid**2 < self.k:  # too short for the budget: a bad clip, not a crash
            raise VideoDecodeError(clip.path, f"clip {clip.clip_id} has {len(maps.slots)} frames, fewer "
                                   f"patches than the budget of {self.k}; lower sampling.budget")
        crops = [0.5] if train else crop_positions(self.num_crops)
        selections = []
        for pos in crops:
            box = crop_box(maps.frame_size, self.size, pos)
            scores = patch_scores(maps, (self.grid, self.grid), box)
            selections.append(select_patches(scores, self.k, self.selection, static=maps.static))
        rows = np.flatnonzero(np.isin(maps.slots, np.unique(np.concatenate([s.slots for s in selections]))))
        if pixels is None:  # cached maps: decode only the frames holding selected patches
            reader = reader or open_video(clip.path, self.backend)
            frames = resize_shorter_side(reader.get_frames(maps.frame_indices[rows]), self.size)
        else:
            frames = torch.stack([pixels[r] for r in rows])
        views = []
        for c, (pos, selection) in enumerate(zip(crops, selections, strict=True)):
            cropped = crop_square(frames, self.size, pos).numpy()
            if self.native_sparse:
                out = pack(selection, cropped, maps.slots[rows], self.patch_size)
                positions = selection.positions
                positions[:, 0] = self.frame_slots[positions[:, 0]]
                layout = "packed"
            else:
                out = np.zeros((self.num_frames, self.size, self.size, 3), np.uint8)
                out[maps.slots[rows]] = cropped
                positions = per_frame_sparse(selection, t="slot")[1]
                layout = "sparse"
            used = np.isin(maps.slots, selection.slots)
            views.append(SampledClip(clip_id=clip.clip_id, label=clip.label, frames=torch.from_numpy(out),
                                     positions=torch.from_numpy(positions), layout=layout,
                                     source_frames=maps.frame_indices[used].tolist(), view=c))
        return views
