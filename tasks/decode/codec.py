"""Saliency maps from what the video codec already knows: motion vectors and residual energy.

One sequential PyAV pass over a clip (motion vectors only exist while decoding in order) keeps, for
each of the `num_frames` frames sampled at linspace over the clip, two maps on a grid of 4x4-pixel
cells of the source frame:

- **motion**: the magnitude of the bitstream's motion vectors (`flags2=+export_mvs`, side data
  `MOTION_VECTORS`) after subtracting a global camera-motion estimate. Cells no vector covers (I-frames,
  intra blocks) are unknown (NaN) in the map and count as still when fused.
- **residual**: ``|Y_t - warp(Y_ref, MV)|`` on the luma plane at reduced resolution, i.e. what motion
  compensation fails to predict; a plain difference to the past reference where no vector exists. Each
  frame's median residual is subtracted, as camera motion is from the vectors. The original system read
  true HEVC residuals from a patched decoder; this is their decoded-domain equivalent, available for any
  codec PyAV decodes, at the price of one gather per sampled frame.

Each map is divided by its 95th percentile over the clip (with a floor, so noise in a static clip is not
blown up to full scale), clipped to [0, 1] and fused (weighted mean by default; max and geometric mean).
Codecs that export no vectors (VP9, Cinepak, MJPEG, ...) fall back to residual-only scores, recorded in
`CodecMaps.signals` (and `SampledClip.signals`): the run counts them and warns once, with the count.

`python -m tasks.sampling.show VIDEO` draws what the codec sampler keeps from these maps.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import av
import numpy as np
from av.sidedata.sidedata import SideDataContainer
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from tasks.decode.video import VideoDecodeError

log = logging.getLogger(__name__)

CELL = 4  # pixels per side of a motion-map cell (the smallest H.264 partition)
Box = tuple[float, float, float, float]  # top, left, height, width in source pixels
_T = TypeVar("_T")
_warned_no_vectors: set[str] = set()


@dataclass(frozen=True)
class CodecConfig:
    """How saliency maps are computed; everything here is part of the cache key.

    `residual_scale` is the luma downsampling factor for residuals (1, 2 or 4 = one value per cell: as
    good as 2 on the tests, at a quarter of the cost).
    `residual_baseline` times each frame's median residual is subtracted from it: the change that is
    everywhere (requantisation when an I-frame restarts prediction, sub-pixel pans at reduced
    resolution) is to residuals what camera motion is to vectors. `motion_floor` (pixels) and
    `residual_floor` (luma levels) bound the normalising percentile from below. A clip is static when
    fewer than `static_activity` of its cells exceed either floor.

    The original suite's rules, each an option (`protocol=original` selects them all, docs/protocols.md
    "The original's codec selection"):
    - `frame_rule`: "round" takes frame ``rint(linspace(0, n-1, T))`` at test and a random frame of each
      of T chunks in training (`plan_slots`); "floor" takes ``int(linspace(0, n-1, T))`` at train and
      test alike, repeating frames in clips under T frames, where a repeated frame is scored at its last
      slot only and the others score zero (the original maps each frame to its last position).
    - `keyframes`: "zero" scores the first `KEYFRAMES_ZEROED` sampled keyframes zero everywhere (the
      original's I-frames); "scored" scores them like any frame.
    - `motion_score`: "local_variance" replaces each cell's motion by the variance of the motion
      magnitude over its 3x3 neighbourhood of cells, edge-padded, cells without a vector counting as 0
      (the original's "inconsistency"), "magnitude" keeps the magnitude.
    - `center_prior` c > 0 multiplies the fused map by ``1 + c * w`` and clips it to [0, 1], with w a
      Gaussian of each cell centre's distance to the frame centre in pixels, sigma `center_sigma` times
      the frame's shorter side, divided by its maximum (the original's prior; the selection's own
      `center_prior` is ovprobe's, on patch scores).
    """

    num_frames: int = 64
    camera: str = "similarity"  # none | median | similarity
    camera_trim: float = 0.3
    fusion: str = "mean"  # mean | max | geomean
    motion_weight: float = 1.0
    residual_weight: float = 1.0
    percentile: float = 95.0
    norm_scope: str = "clip"  # clip | frame
    motion_floor: float = 1.0
    residual_floor: float = 6.0
    residual_scale: int = 4
    residual_baseline: float = 1.0
    static_activity: float = 0.005
    frame_rule: str = "round"  # round | floor
    keyframes: str = "scored"  # scored | zero
    motion_score: str = "magnitude"  # magnitude | local_variance
    center_prior: float = 0.0
    center_sigma: float = 0.35

    def __post_init__(self) -> None:
        for key, table in (("camera", CAMERA_MODELS), ("fusion", FUSIONS), ("norm_scope", _NORM_GROUPS),
                           ("frame_rule", FRAME_RULES), ("keyframes", KEYFRAME_RULES),
                           ("motion_score", MOTION_SCORES)):
            if getattr(self, key) not in table:
                raise ValueError(f"codec {key}={getattr(self, key)!r}; choose one of {sorted(table)}")
        if not 0.0 <= self.center_prior <= 1.0 or self.center_sigma <= 0:
            raise ValueError(f"codec center_prior={self.center_prior} must lie in [0, 1] and center_sigma="
                             f"{self.center_sigma} be > 0")
        if self.residual_scale not in (1, 2, 4):
            raise ValueError(f"codec residual_scale={self.residual_scale}; choose 1, 2 or 4")
        if self.num_frames < 1:
            raise ValueError(f"codec num_frames={self.num_frames} must be >= 1")


@dataclass
class CodecMaps:
    """Per-sampled-frame maps of one clip on the cell grid of the source frame.

    Row i holds decoded frame `frame_indices[i]` (absolute in the file), placed at temporal slot
    `slots[i]` of a grid of `num_slots`. `fused` is the saliency in [0, 1] quantised to uint8 (x 255):
    what the cache stores, so a cached run selects exactly what a fresh one does. The raw maps,
    `motion` (pixels, NaN = no vector) and `residual` (luma levels), come with a fresh analysis only;
    the cache keeps them out (None) to stay small. `contrast` is each row's luma standard deviation
    (levels, on the reduced luma): near 0 for a flat frame (black, a fade), which
    `SelectionConfig.keep_first_frame` passes over.
    """

    fused: np.ndarray
    frame_indices: np.ndarray
    slots: np.ndarray
    num_slots: int
    frame_size: tuple[int, int]
    signals: str  # "motion+residual" or "residual"
    activity: float  # fraction of cells above a noise floor
    static: bool  # activity below `CodecConfig.static_activity`
    motion: np.ndarray | None = None
    residual: np.ndarray | None = None
    contrast: np.ndarray | None = None

    @property
    def slot_contrast(self) -> np.ndarray | None:
        """`contrast` on the slot grid `[num_slots]`, NaN on slots without a frame."""
        if self.contrast is None:
            return None
        out = np.full(self.num_slots, np.nan, np.float32)
        out[self.slots] = self.contrast
        return out

    @property
    def saliency(self) -> np.ndarray:
        """`fused` as float32 in [0, 1]."""
        return self.fused.astype(np.float32) / 255.0


# ----------------------------------------------------------------------------- motion vectors


def motion_vectors(frame: av.VideoFrame) -> np.ndarray | None:
    """The frame's exported motion vectors as a structured array, or None (I-frames, codecs without).

    Read through a container of our own: `frame.side_data` caches one on the frame that points back at
    it, a reference cycle that keeps the frame and its decoder buffer alive until the garbage collector
    runs (the decoder then allocates fresh buffers: +40% decode time). The array is a copy for the same
    reason, a view would pin the frame; copied as bytes, ten times faster than field by field.
    """
    side = SideDataContainer(frame).get("MOTION_VECTORS")
    if side is None:
        return None
    view = side.to_ndarray()
    return view.view(np.uint8).copy().view(view.dtype)


@dataclass
class MotionField:
    """The block vectors of a batch of frames, and which block covers each 4x4 cell per reference
    direction.

    Per block: its frame (row of the batch), ``src - dst`` in integer pixels (`dx`, `dy`), the block
    centre relative to the frame centre, its area and direction (0: reference in the past, 1: in the
    future). `owner[i, d]` maps each cell of frame i to the block of direction d covering it, -1 where
    none does (intra blocks, I-frames). Per-block work is then done once per block, for the whole batch
    at once, and spread to cells by one gather.
    """

    frame: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    centres: np.ndarray  # [n, 2] (x, y)
    area: np.ndarray
    direction: np.ndarray
    owner: np.ndarray  # [frames, directions (1, or 2 with a future vector), h, w] intp: no index conversion

    @property
    def frames(self) -> int:
        return len(self.owner)

    @property
    def has_future(self) -> bool:
        """Some block refers to a future frame (a B-frame's second direction)."""
        return self.owner.shape[1] == 2

    def cell_map(self, values: np.ndarray, direction: int) -> np.ndarray:
        """Per-block `values` spread over the cells of `direction`, `[frames, h, w]`, NaN where no block
        covers a cell."""
        table = np.empty(len(values) + 1, np.float32)
        table[:-1] = values
        table[-1] = np.nan  # owner -1 wraps to it
        return np.take(table, self.owner[:, direction], mode="wrap")

    def past_pointing(self) -> tuple[np.ndarray, np.ndarray]:
        """Block vectors with future-pointing ones negated, so both mean "where the content was"."""
        if not self.has_future:
            return self.dx, self.dy
        sign = (1 - 2 * self.direction).astype(np.float32)
        return self.dx * sign, self.dy * sign


_SHAPE_BASE = 64  # > any block side in cells (PyAV block sides are uint8 pixels)


def rasterise(vectors: Sequence[np.ndarray | None], frame_size: tuple[int, int]) -> MotionField:
    """Map each exported block of each frame (None: a frame without vectors) onto the 4x4-pixel cells it
    covers.

    Blocks of one frame and direction partition the frame, so plain assignment suffices; blocks are
    grouped by size (a handful of partition shapes) so each group is one vectorised write for the whole
    batch. The grid is padded for blocks that overhang the bottom/right edge (a partial last macroblock)
    and cropped afterwards.
    """
    height, width = frame_size
    h, w = -(-height // CELL), -(-width // CELL)
    present = [v for v in vectors if v is not None]  # some frame of the batch has vectors
    # joined as bytes: concatenating structured arrays goes field by field, ten times slower
    mvs = np.concatenate([v.view(np.uint8) for v in present]).view(present[0].dtype)
    frame = np.repeat(np.arange(len(vectors)), [0 if v is None else len(v) for v in vectors])
    bw = mvs["w"].astype(np.intp)
    bh = mvs["h"].astype(np.intp)
    x0 = (mvs["dst_x"] - bw // 2) // CELL
    y0 = (mvs["dst_y"] - bh // 2) // CELL
    if min(x0.min(initial=0), y0.min(initial=0)) < 0 or x0.max(initial=0) >= w or y0.max(initial=0) >= h:
        ok = (x0 >= 0) & (y0 >= 0) & (x0 < w) & (y0 < h)
        mvs, frame, bw, bh, x0, y0 = mvs[ok], frame[ok], bw[ok], bh[ok], x0[ok], y0[ok]
    direction = (mvs["source"] > 0).astype(np.intp)
    nx = np.maximum(bw // CELL, 1)
    ny = np.maximum(bh // CELL, 1)
    pad_h = max(int((y0 + ny).max(initial=h)), h)
    pad_w = max(int((x0 + nx).max(initial=w)), w)
    directions = 2 if direction.any() else 1  # no second map to fill and read where nothing points ahead
    owner = np.full(len(vectors) * directions * pad_h * pad_w, -1, np.intp)
    base = ((frame * directions + direction) * pad_h + y0) * pad_w + x0
    shape_key = ny * _SHAPE_BASE + nx
    for key in np.flatnonzero(np.bincount(shape_key)):
        sel = np.flatnonzero(shape_key == key)
        cells = _block_offsets(int(key), pad_w)
        owner[(base[sel, None] + cells).ravel()] = np.repeat(sel, len(cells))  # flat: faster than broadcast
    centres = np.empty((len(mvs), 2), np.float32)  # whole and half pixels: exact in float32
    centres[:, 0] = mvs["dst_x"]
    centres[:, 1] = mvs["dst_y"]
    centres -= (width / 2, height / 2)
    return MotionField(
        frame=frame, dx=(mvs["src_x"] - mvs["dst_x"]).astype(np.float32),
        dy=(mvs["src_y"] - mvs["dst_y"]).astype(np.float32),
        centres=centres, area=(bw * bh).astype(np.float32), direction=direction,
        owner=np.ascontiguousarray(owner.reshape(len(vectors), directions, pad_h, pad_w)[:, :, :h, :w]),
    )


@functools.cache
def _block_offsets(shape_key: int, stride: int) -> np.ndarray:
    """Flat offsets of the cells of a block of `shape_key` (rows * _SHAPE_BASE + columns) from its
    top-left cell, in a grid `stride` cells wide."""
    rows, cols = divmod(shape_key, _SHAPE_BASE)
    return (np.arange(rows)[:, None] * stride + np.arange(cols)).ravel()


# ----------------------------------------------------------------------------- camera motion


@dataclass(frozen=True)
class CameraMotion:
    """Per frame of a batch (arrays, one entry a frame), the similarity transform mapping a point to
    where it came from: ``src = s R(rot) p + t``."""

    tx: np.ndarray
    ty: np.ndarray
    scale: np.ndarray
    rotation: np.ndarray

    @classmethod
    def still(cls, frames: int) -> CameraMotion:
        zero = np.zeros(frames)
        return cls(zero, zero, np.ones(frames), zero)

    def displacement(self, points: np.ndarray, frame: np.ndarray) -> np.ndarray:
        """``src - dst`` the camera alone explains at `points` [N, 2] (x, y from the frame centre) of
        frames `frame` [N]."""
        a = (self.scale * np.cos(self.rotation) - 1.0)[frame]
        b = (self.scale * np.sin(self.rotation))[frame]
        x, y = points[:, 0], points[:, 1]
        return np.stack([a * x - b * y + self.tx[frame], b * x + a * y + self.ty[frame]], axis=1)


def _sums(values: np.ndarray, frame: np.ndarray, frames: int) -> np.ndarray:
    """Per-frame sums of real or complex `values`."""
    if np.iscomplexobj(values):
        return _sums(values.real, frame, frames) + 1j * _sums(values.imag, frame, frames)
    return np.bincount(frame, values, minlength=frames)


def _ranks(values: np.ndarray, frame: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each value's rank within its frame, ascending (ties by position)."""
    order = np.lexsort((values, frame))
    ranks = np.empty(len(values), np.intp)
    ranks[order] = np.arange(len(values)) - np.repeat(np.cumsum(counts) - counts, counts)
    return ranks


def _weighted_medians(values: np.ndarray, weights: np.ndarray, frame: np.ndarray, frames: int) -> np.ndarray:
    """Per frame, the value at which the cumulated weight (values ascending) reaches half its total; 0
    for a frame without values."""
    counts = np.bincount(frame, minlength=frames)
    out = np.zeros(frames)
    if not len(values):
        return out
    order = np.lexsort((values, frame))
    cum = np.cumsum(weights[order])
    ends = np.cumsum(counts)
    starts = ends - counts
    before = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
    half = before + (cum[np.maximum(ends - 1, 0)] - before) / 2
    at = np.clip(np.searchsorted(cum, half), starts, np.maximum(ends - 1, starts))
    has = counts > 0
    out[has] = values[order][at[has]]
    return out


def _camera_none(points: np.ndarray, disp: np.ndarray, weights: np.ndarray, frame: np.ndarray, frames: int,
                 trim: float) -> CameraMotion:
    return CameraMotion.still(frames)


def _camera_median(points: np.ndarray, disp: np.ndarray, weights: np.ndarray, frame: np.ndarray, frames: int,
                   trim: float) -> CameraMotion:
    still = CameraMotion.still(frames)
    return CameraMotion(_weighted_medians(disp[:, 0], weights, frame, frames),
                        _weighted_medians(disp[:, 1], weights, frame, frames), still.scale, still.rotation)


def _camera_similarity(points: np.ndarray, disp: np.ndarray, weights: np.ndarray, frame: np.ndarray,
                       frames: int, trim: float, iters: int = 3) -> CameraMotion:
    """Closed-form weighted least-squares similarity per frame, refitted each round on the `1 - trim`
    fraction of its vectors it explains best, so a moving object does not drag the camera estimate; a
    frame with fewer than 3 vectors takes the median shift.

    In complex numbers the model is ``q = z p + t`` with ``z = s e^(i rot)``, and the fit on centred
    points is ``z = sum(w conj(pc) qc) / sum(w |pc|^2)``: per-frame sums, one `bincount` each for the
    whole batch.
    """
    counts = np.bincount(frame, minlength=frames)
    p_all = _complex(points)
    q_all = p_all + _complex(disp)
    n_keep = np.maximum(3, np.rint(counts * (1.0 - trim))).astype(np.intp)[frame]
    wt = weights
    with np.errstate(invalid="ignore", divide="ignore"):  # frames without vectors: NaN, never read
        for round_ in range(iters):
            total = _sums(wt, frame, frames)
            p_mean = _sums(wt * p_all, frame, frames) / total
            q_mean = _sums(wt * q_all, frame, frames) / total
            pc = p_all - p_mean[frame]
            weighted = np.conj(wt * pc)
            z = (_sums(weighted * (q_all - q_mean[frame]), frame, frames)
                 / np.maximum(_sums((weighted * pc).real, frame, frames), 1e-9))
            t = q_mean - z * p_mean
            if round_ == iters - 1:
                break
            wt = np.where(_ranks(np.abs(z[frame] * p_all + t[frame] - q_all), frame, counts) < n_keep,
                          weights, 0.0)
    fit = CameraMotion(t.real, t.imag, np.abs(z), np.angle(z))
    few = (counts > 0) & (counts < 3)
    if not few.any():
        return fit
    shift = _camera_median(points, disp, weights, frame, frames, trim)
    return CameraMotion(*(np.where(few, s, f) for s, f in zip(
        (shift.tx, shift.ty, shift.scale, shift.rotation), (fit.tx, fit.ty, fit.scale, fit.rotation),
        strict=True)))


def _complex(xy: np.ndarray) -> np.ndarray:
    """[N, 2] (x, y) as N complex numbers x + iy (a view when already contiguous float64)."""
    return np.ascontiguousarray(xy, np.float64).view(np.complex128)[:, 0]


# (points, displacements, weights, frame of each, frames in the batch, trim) -> the camera of each frame
CAMERA_MODELS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, float],
                                  CameraMotion]] = {
    "none": _camera_none,
    "median": _camera_median,
    "similarity": _camera_similarity,
}


def object_motion(field: MotionField, method: str, trim: float, max_fit: int = 192) -> np.ndarray:
    """Per cell of each frame, |motion - camera motion| in pixels (mean over directions), NaN where no
    vector exists: `[frames, h, w]`.

    Each frame's camera model is fitted, area-weighted, on at most `max_fit` of its blocks taken at a
    fixed stride: a global fit needs few vectors.
    """
    dx, dy = field.past_pointing()
    counts = np.bincount(field.frame, minlength=field.frames)
    stride = np.maximum(1, -(-counts // max_fit))
    position = np.arange(len(dx)) - np.repeat(np.cumsum(counts) - counts, counts)  # within its frame
    fit = np.flatnonzero(position % stride[field.frame] == 0)
    camera = CAMERA_MODELS[method](field.centres[fit].astype(np.float64),
                                   np.stack([dx[fit], dy[fit]], 1).astype(np.float64),
                                   field.area[fit].astype(np.float64), field.frame[fit], field.frames, trim)
    cam = camera.displacement(field.centres, field.frame)
    magnitude = np.hypot(dx - cam[:, 0], dy - cam[:, 1]).astype(np.float32, copy=False)
    past = field.cell_map(magnitude, 0)
    if not field.has_future:
        return past
    future = field.cell_map(magnitude, 1)
    # the mean where both sides have a vector, else the one that has: fmax and fmin skip NaN (and are
    # far cheaper than np.where, which branches per cell); a frame without future vectors keeps `past`
    both = np.fmax(past, future)
    both += np.fmin(past, future, out=past)
    both *= 0.5
    return both


# ----------------------------------------------------------------------------- residuals


class _Luma:
    """A decoded frame whose reduced luma is computed only if a residual needs it, then kept padded."""

    def __init__(self, frame: av.VideoFrame, geo: _Geometry, scaler: VideoReformatter):
        self.frame = frame
        self.geo = geo
        self.scaler = scaler  # shared, so swscale's context is built once per pass
        self._luma: np.ndarray | None = None
        self._padded: np.ndarray | None = None

    def load(self) -> _Luma:
        """Compute the luma now (while the frame is alive) and let the full-size pixels go."""
        if self._luma is None:
            h, w = self.geo.shape
            small = self.scaler.reformat(self.frame, width=w, height=h, format="gray", interpolation="AREA",
                                         threads=1)  # swscale's threads cost more than they save here
            self._luma = small.to_ndarray().astype(np.float32)
            self.frame = None
        return self

    @property
    def luma(self) -> np.ndarray:
        return self.load()._luma

    @property
    def padded(self) -> np.ndarray:
        """Flattened, edge-padded luma: a reference that shifted reads never run off."""
        if self._padded is None:
            self._padded = _pad_edge(self.luma, self.geo.pad).ravel()
        return self._padded


def _pad_edge(image: np.ndarray, pad: int) -> np.ndarray:
    """`np.pad(image, pad, mode="edge")`, several times faster for one 2-D image."""
    h, w = image.shape
    out = np.empty((h + 2 * pad, w + 2 * pad), image.dtype)
    out[pad:pad + h, pad:pad + w] = image
    out[:pad, pad:pad + w] = image[0]
    out[pad + h:, pad:pad + w] = image[-1]
    out[:, :pad] = out[:, pad:pad + 1]
    out[:, pad + w:] = out[:, pad + w - 1:pad + w]
    return out


_FUTURE_WEIGHT = np.array([0.0, 0.0, 1.0, 0.5], np.float32)  # by has_past + 2 * has_future


class _Geometry:
    """Index arithmetic between the cell grid and the reduced luma grid, built once per pass.

    Reduced luma pixels are viewed as `[h, k, w, k]` (cell row, row within, cell column, column within)
    so per-cell shifts broadcast over their k x k pixels. References are edge-padded by `pad` pixels and
    shifts clamped to it, so a motion-compensated read is one gather with no clipping.
    """

    def __init__(self, frame_size: tuple[int, int], scale: int, max_shift_px: int = 64):
        height, width = frame_size
        self.cells = h, w = -(-height // CELL), -(-width // CELL)
        self.batch = max(1, _BATCH_CELLS // (h * w))  # sampled frames analysed together
        self.scale = scale
        self.k = k = CELL // scale
        self.shape = (h * k, w * k)
        self.pad = max_shift_px // scale
        stride = self.shape[1] + 2 * self.pad
        self.stride = stride
        rows = np.arange(self.shape[0], dtype=np.intp).reshape(h, k, 1, 1) + self.pad
        cols = np.arange(self.shape[1], dtype=np.intp).reshape(1, 1, w, k) + self.pad
        self.base = rows * stride + cols  # [h, k, w, k] index of each pixel in a padded reference

    def shift_table(self, field: MotionField) -> np.ndarray:
        """Per block, the flat offset of its ``src - dst`` in a padded reference (rounded, clamped), then
        a 0 (no shift) for the cells no block covers (owner -1 wraps to it)."""
        table = np.zeros(len(field.dx) + 1, np.intp)
        sx = np.clip(np.rint(field.dx / self.scale), -self.pad, self.pad)
        sy = np.clip(np.rint(field.dy / self.scale), -self.pad, self.pad)
        table[:-1] = sy * self.stride + sx  # whole numbers: the cast is exact
        return table

    def residuals(self, samples: list[_Sampled], lumas: np.ndarray, field: MotionField | None) -> np.ndarray:
        """Mean |current - prediction| per cell of each sample (`lumas`: theirs, stacked):
        `[len(samples), h, w]`.

        The prediction is the past reference read where each block's vector points (`field`: the
        samples' vectors, None if none has any), unshifted where no vector covers a cell (a plain frame
        difference); B-frame cells with a future vector read the future reference instead, or the
        average of both where they have two. A sample without a past reference (the stream's first
        frame) has nothing to differ from: zero.
        """
        (h, w), k, n = self.cells, self.k, len(samples)
        current = lumas.reshape(n, h, k, w, k)
        if field is None:
            offsets = np.zeros((n, h, 1, w, 1), np.intp)
        else:
            shifts = self.shift_table(field)
            offsets = np.take(shifts, field.owner[:, 0], mode="wrap").reshape(n, h, 1, w, 1)
        predicted = np.empty_like(current)
        for i, sample in enumerate(samples):  # one gather a sample: the references differ
            if sample.past is None:
                predicted[i] = current[i]
                continue
            # mode "clip" (indices are in range): numpy buffers `out` under the default mode
            np.take(sample.past.padded, self.base + offsets[i], out=predicted[i], mode="clip")
            if sample.future is not None:  # a B-frame with future vectors: `field.has_future`
                # weight of the future read: 0 without a future vector, 1 with only one, 0.5 with both;
                # lumas are whole numbers, so past + weight * (future - past) is exact
                owner = field.owner[i]
                ahead_offsets = np.take(shifts, owner[1], mode="wrap").reshape(h, 1, w, 1)
                ahead = np.take(sample.future.padded, self.base + ahead_offsets, mode="clip")
                ahead -= predicted[i]
                sides = (owner[0] >= 0) + 2 * (owner[1] >= 0)
                ahead *= np.take(_FUTURE_WEIGHT, sides).reshape(h, 1, w, 1)
                predicted[i] += ahead
        diff = np.abs(np.subtract(current, predicted, out=predicted), out=predicted)
        return diff.reshape(n, h, w) if k == 1 else diff.sum(axis=(2, 4)) / (k * k)


# ----------------------------------------------------------------------------- normalisation and fusion


def _fuse_mean(m: np.ndarray, r: np.ndarray, wm: float, wr: float) -> np.ndarray:
    m *= wm
    m += np.multiply(r, wr, out=r)
    m /= wm + wr
    return m


def _fuse_max(m: np.ndarray, r: np.ndarray, wm: float, wr: float) -> np.ndarray:
    return np.maximum(m, r, out=m)


def _fuse_geomean(m: np.ndarray, r: np.ndarray, wm: float, wr: float) -> np.ndarray:
    m **= wm / (wm + wr)
    m *= np.power(r, wr / (wm + wr), out=r)
    return m


# Fusions of normalised motion `m` and residual `r` (weights `wm`, `wr`); they work in place on both.
FUSIONS: dict[str, Callable[[np.ndarray, np.ndarray, float, float], np.ndarray]] = {
    "mean": _fuse_mean,
    "max": _fuse_max,
    "geomean": _fuse_geomean,
}
_NORM_GROUPS: dict[str, Callable[[np.ndarray], int]] = {"clip": lambda maps: 1, "frame": len}


def normalise(maps: np.ndarray, percentile: float, floor: float, scope: str,
              max_samples: int = 1 << 16) -> np.ndarray:
    """Divide by the `percentile` (over the clip or per frame, NaN ignored) or `floor`; clip to [0, 1].

    The percentile is taken on a fixed-stride sample of at most `max_samples` cells per group: exact
    enough for a scale, and cheap next to decoding.
    """
    groups = maps.reshape(_NORM_GROUPS[scope](maps), -1)
    stride = max(1, -(-groups.shape[1] // max_samples))
    sample = groups[:, ::stride]
    valid = ~np.isnan(sample)
    ref = np.array([np.percentile(row[ok], percentile) if ok.any() else 0.0
                    for row, ok in zip(sample, valid, strict=True)])
    scale = np.maximum(ref, floor).astype(np.float32).reshape(-1, *([1] * (maps.ndim - 1)))
    scaled = np.divide(maps, scale)
    return np.clip(scaled, 0.0, 1.0, out=scaled)


def fuse(motion: np.ndarray, residual: np.ndarray, cfg: CodecConfig) -> np.ndarray:
    """Fused saliency in [0, 1].

    Where the clip has vectors, a cell without one (I-frame, intra block) counts as still: an I-frame's
    difference to the previous frame is mostly the requantisation of a fresh start. A clip without any
    vector is scored by its residual alone.
    """
    r = normalise(residual, cfg.percentile, cfg.residual_floor, cfg.norm_scope)
    if np.isnan(motion).all():
        return r.astype(np.float32, copy=False)
    m = normalise(motion, cfg.percentile, cfg.motion_floor, cfg.norm_scope)
    np.fmax(m, 0.0, out=m)  # NaN (no vector) -> 0: still; cheaper than np.nan_to_num
    return FUSIONS[cfg.fusion](m, r, cfg.motion_weight, cfg.residual_weight).astype(np.float32, copy=False)


def local_variance(magnitude: np.ndarray, size: int = 3) -> np.ndarray:
    """Variance of `magnitude` `[..., h, w]` over each cell's `size` x `size` neighbourhood (edge-padded),
    cells without a vector (NaN) counting as still (0): high where neighbouring blocks move differently."""
    pad = size // 2
    values = np.nan_to_num(magnitude, nan=0.0).astype(np.float64)
    values = np.pad(values, [(0, 0)] * (values.ndim - 2) + [(pad, pad)] * 2, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(values, (size, size), axis=(-2, -1))
    mean = windows.mean(axis=(-2, -1))
    return np.maximum((windows**2).mean(axis=(-2, -1)) - mean**2, 0.0).astype(np.float32)


# `CodecConfig.motion_score`: a frame's object-motion magnitude per cell (NaN: no vector) -> its score
MOTION_SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "magnitude": lambda magnitude: magnitude,
    "local_variance": local_variance,
}

KEYFRAMES_ZEROED = 8  # the original zeroes at most this many sampled keyframes (its `tokeq_target_frames`)
# `CodecConfig.keyframes`: how many sampled keyframes (the first ones) score zero
KEYFRAME_RULES: dict[str, int] = {"scored": 0, "zero": KEYFRAMES_ZEROED}


def centre_prior(fused: np.ndarray, frame_size: tuple[int, int], strength: float, sigma: float) -> np.ndarray:
    """`fused` `[T, h, w]` (cells) times ``1 + strength * w``, clipped to [0, 1], in place; w is a Gaussian
    of each cell centre's distance (pixels) to the frame centre, sigma `sigma` times the shorter side,
    scaled to a maximum of 1."""
    height, width = frame_size
    deviation = max(sigma * min(height, width), 1.0)
    y = (np.arange(fused.shape[1]) * CELL + (CELL - 1) / 2 - (height - 1) / 2) ** 2
    x = (np.arange(fused.shape[2]) * CELL + (CELL - 1) / 2 - (width - 1) / 2) ** 2
    weight = np.exp(-0.5 * (y[:, None] + x[None, :]) / deviation**2)
    fused *= (1.0 + strength * weight / weight.max()).astype(np.float32)
    return np.clip(fused, 0.0, 1.0, out=fused)


def active_cells(motion: np.ndarray, residual: np.ndarray, cfg: CodecConfig) -> int:
    """Cells where motion or residual exceeds its noise floor (NaN motion counts as still)."""
    return int(np.count_nonzero((motion >= cfg.motion_floor) | (residual >= cfg.residual_floor)))


# ----------------------------------------------------------------------------- frame plan and decoding


def _plan_round(n_frames: int, num_slots: int, jitter: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if n_frames >= num_slots:
        if jitter is not None:
            bounds = np.arange(num_slots + 1) * n_frames // num_slots  # whole-frame chunks: no repeats
            frames = bounds[:-1] + np.floor(jitter * np.diff(bounds)).astype(np.int64)
            return frames, np.arange(num_slots, dtype=np.int64)
        frames = np.rint(np.linspace(0, n_frames - 1, num_slots)).astype(np.int64)
        return frames, np.arange(num_slots, dtype=np.int64)
    slots = np.rint(np.linspace(0, num_slots - 1, n_frames)).astype(np.int64)
    return np.arange(n_frames, dtype=np.int64), slots


def _plan_floor(n_frames: int, num_slots: int, jitter: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    # the same frames at train and test (no jitter), repeated in clips shorter than the run
    return np.linspace(0, n_frames - 1, num_slots).astype(np.int64), np.arange(num_slots, dtype=np.int64)


# `CodecConfig.frame_rule`: (clip length, slots, training jitter or None) -> (frame offsets, slots)
FRAME_RULES: dict[str, Callable[[int, int, np.ndarray | None], tuple[np.ndarray, np.ndarray]]] = {
    "round": _plan_round,
    "floor": _plan_floor,
}
FIXED_FRAME_RULES = frozenset({"floor"})  # rules whose training views take the test frames (no jitter)


def plan_slots(n_frames: int, num_slots: int, jitter: np.ndarray | None = None,
               rule: str = "round") -> tuple[np.ndarray, np.ndarray]:
    """(frame offsets within the clip, temporal slots) for `num_slots` frames at linspace.

    Rule "round": a clip of at least `num_slots` frames gives one distinct frame per slot,
    ``rint(linspace(0, n - 1, num_slots))``. A shorter clip keeps every frame once, spread over the slot
    grid at linspace so that t keeps meaning "fraction of the clip"; the slots in between stay empty (no
    patch can be selected there). `jitter` (a training view: one fraction in [0, 1) per slot) moves slot
    i's frame to that fraction of the i-th of `num_slots` equal chunks of the clip instead, still one
    distinct frame per slot. Rule "floor" (the original suite's): ``int(linspace(0, n - 1, num_slots))``
    in every slot, jitter or not, repeating frames in a short clip.
    """
    if n_frames < 1:
        raise ValueError("the clip has no decodable frame")
    return FRAME_RULES[rule](n_frames, num_slots, jitter)


def frame_threads_safe(stream: av.video.stream.VideoStream) -> bool:
    """Whether frame threads may decode `stream` with motion vectors: not if it reorders frames
    (B-frames), where frame threading attaches vectors to the wrong frames or drops them (seen with x264
    B-frames)."""
    return not stream.codec_context.has_b_frames


def _ahead(items: Generator[_T, None, None], depth: int = 4, name: str = "codec-decode") -> Iterator[_T]:
    """`items`, produced up to `depth` ahead on a thread of their own: decoding (PyAV releases the GIL
    meanwhile) overlaps with what the caller does with each item. The producer stops when the caller
    does, and its errors are raised in the caller."""
    queued: queue.Queue = queue.Queue(maxsize=depth)
    halt = threading.Event()

    def produce() -> None:
        try:
            with contextlib.closing(items):
                for item in items:
                    queued.put(item)
                    if halt.is_set():
                        return
            queued.put(_END)
        except BaseException as err:  # re-raised in the consumer
            queued.put(_Raised(err))

    producer = threading.Thread(target=produce, name=name, daemon=True)
    producer.start()
    try:
        while (item := queued.get()) is not _END:
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:  # stop the producer before the caller goes on (and closes what it reads)
        halt.set()
        while producer.is_alive():
            with contextlib.suppress(queue.Empty):
                queued.get(timeout=0.01)


_END = object()


@dataclass
class _Raised:
    error: BaseException


class _Unaligned(Exception):
    """Frame timestamps after a seek do not give frame indices (variable frame rate, leading frames)."""


def _seek(container: av.container.InputContainer, stream: av.VideoStream,
          first: int) -> Callable[[av.VideoFrame], int] | None:
    """Seek to the last keyframe before frame `first`; returns a frame's index from its timestamp, or
    None (no seek) where the stream gives no constant frame rate to count with."""
    if not stream.average_rate or not stream.time_base:
        return None
    origin = stream.start_time or 0
    per_frame = 1 / (stream.average_rate * stream.time_base)  # timestamp units per frame
    try:
        container.seek(origin + int((first - 1) * per_frame), backward=True, any_frame=False, stream=stream)
    except av.FFmpegError:  # not seekable: the position is unchanged, decode from the start
        return None
    return lambda frame: -1 if frame.pts is None else round((frame.pts - origin) / per_frame)


def count_frames(path: Path) -> int:
    """Video packets in the file: cheap (no decoding) and, unlike header counts, right for broken files."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)


@dataclass
class _PassResult:
    pixels: list[np.ndarray | None]
    motion: np.ndarray | None = None
    residual: np.ndarray | None = None
    contrast: np.ndarray | None = None
    keyframe: np.ndarray | None = None
    decoded: int = 0
    tail_row: int | None = None  # the row the last decoded frame filled in for a frame past the end
    active: int = 0  # cells above a noise floor, over the sampled frames that have a reference
    compared: int = 0  # cells of those frames
    any_vectors: bool = False
    size: tuple[int, int] = (0, 0)


@dataclass
class _Sampled:
    """A sampled frame as its maps need it: reduced luma, motion vectors and references; and the frame
    itself until the caller's `keep` has converted it."""

    row: int
    luma: _Luma
    mvs: np.ndarray | None
    past: _Luma | None
    frame: av.VideoFrame | None = None
    future: _Luma | None = None


class _DecodePass:
    """One sequential decode filling the maps of the `wanted` frames (frame index -> row).

    Decoding, on a thread of its own, only collects what the maps need (vectors and reduced luma of
    each sampled frame and its references); the caller's `keep` of each sampled frame and the numpy
    work then run in the caller's thread (with its settings, torch's threads for one), a batch of
    `_BATCH_CELLS` cells at a time, vectorised over the batch, while the next batch decodes. B-frames
    are shown before the later anchor (I/P frame) they also predict from, so a sampled B-frame with
    future vectors waits until that anchor is decoded; memory stays bounded by a few batches and the
    frames between anchors. Such streams decode without frame threads (`frame_threads_safe`), ahead on
    one more thread instead (`_ahead`).
    """

    def __init__(self, wanted: dict[int, int], cfg: CodecConfig,
                 keep: Callable[[av.VideoFrame], np.ndarray] | None):
        self.wanted, self.cfg, self.keep = wanted, cfg, keep
        self.out = _PassResult(pixels=[None] * len(wanted))
        self.geo: _Geometry | None = None
        self.anchor: _Luma | None = None  # the last non-B frame: the past reference
        self.ready: list[_Sampled] = []
        self.waiting: list[_Sampled] = []  # B-frames waiting for their future anchor
        self.tail: tuple[av.VideoFrame, _Luma, _Luma | None] | None = None  # the last frame, if not sampled
        self.scaler = VideoReformatter()

    def run(self, path: Path, stop: int, first: int = 0) -> _PassResult:
        """Decode up to frame `stop`; with `first` > 0, from the last keyframe before frame `first`
        (raises `_Unaligned` where frame timestamps do not give frame indices: decode from the start).
        Decoding runs on a thread of its own and hands batches of sampled frames over, which this thread
        analyses meanwhile."""
        batches = _ahead(self._batches(path, stop, first), depth=2, name="codec-pass")
        with contextlib.closing(batches):
            for batch in batches:
                self._analyse(batch)
        return self.out

    def _batches(self, path: Path, stop: int, first: int) -> Generator[list[_Sampled], None, None]:
        """The sampled frames, a batch at a time, as decoding collects them."""
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.options = {"flags2": "+export_mvs"}
            threaded = frame_threads_safe(stream)
            stream.thread_type = "AUTO" if threaded else "SLICE"
            index = _seek(container, stream, first) if first > 1 else None
            frames = container.decode(stream)
            with contextlib.closing(frames if threaded else _ahead(frames)) as decoded:
                for frame in decoded:
                    if self.out.decoded >= stop:
                        break
                    if index is not None:  # the frame's place in the whole stream, from its timestamp
                        at = index(frame)
                        if self.geo is None:  # the first frame: it must precede frame `first`
                            self.out.decoded = at if 0 <= at < first else -1
                        if at != self.out.decoded:
                            raise _Unaligned
                    self._frame(frame, self.out.decoded)
                    self.out.decoded += 1
                    if len(self.ready) >= self.geo.batch:
                        yield self._take_ready()
        self._fill_in_tail()
        self.ready += self.waiting  # the stream ended before their future anchor
        yield self._take_ready()

    def _take_ready(self) -> list[_Sampled]:
        ready, self.ready = self.ready, []
        return ready

    def _fill_in_tail(self) -> None:
        """A stream that ends before frames its packets promised: the last decoded frame stands in for
        the first sampled frame past the end (so the run still reaches the end of the clip, in this one
        pass); sampled frames after that one stay unfilled."""
        missing = [row for index, row in self.wanted.items() if index >= self.out.decoded]
        if missing and self.tail is not None:
            frame, current, past = self.tail
            self.out.tail_row = min(missing)
            self._sample(frame, current, past, self.out.tail_row, frame.pict_type != PictureType.B)

    def _frame(self, frame: av.VideoFrame, index: int) -> None:
        out = self.out
        if self.geo is None:
            out.size = (frame.height, frame.width)
            self.geo = _Geometry(out.size, self.cfg.residual_scale)
            out.motion = np.full((len(self.wanted), *self.geo.cells), np.nan, np.float32)
            out.residual = np.zeros((len(self.wanted), *self.geo.cells), np.float32)
            out.contrast = np.zeros(len(self.wanted), np.float32)
            out.keyframe = np.zeros(len(self.wanted), bool)
        current = _Luma(frame, self.geo, self.scaler)
        is_anchor = frame.pict_type != PictureType.B
        if is_anchor and self.waiting:
            for sample in self.waiting:
                sample.future = current.load()
            self.ready += self.waiting
            self.waiting = []
        row = self.wanted.get(index)
        if row is not None:
            self._sample(frame, current, self.anchor, row, is_anchor)
        self.tail = (frame, current, self.anchor) if row is None else None
        if is_anchor:
            self.anchor = current

    def _sample(self, frame: av.VideoFrame, current: _Luma, past: _Luma | None, row: int,
                is_anchor: bool) -> None:
        """Collect what row `row`'s maps need from `frame` (its past reference: `past`)."""
        out = self.out
        mvs = motion_vectors(frame)
        mvs = mvs if mvs is not None and len(mvs) else None
        sample = _Sampled(row, current.load(), mvs, past and past.load(), frame if self.keep else None)
        out.keyframe[row] = frame.key_frame
        future = not is_anchor and mvs is not None and bool((mvs["source"] > 0).any())
        (self.waiting if future else self.ready).append(sample)

    def _analyse(self, samples: list[_Sampled]) -> None:
        """The caller's `keep` of a batch of sampled frames, then their motion and residual maps, all at
        once."""
        if not samples:
            return
        out, cfg = self.out, self.cfg
        if self.keep is not None:
            for sample in samples:
                out.pixels[sample.row], sample.frame = self.keep(sample.frame), None
        rows = np.array([sample.row for sample in samples])
        vectors = [sample.mvs for sample in samples]
        has_vectors = np.array([v is not None for v in vectors])
        field = None
        if not has_vectors.any():
            magnitude = np.full((len(samples), *self.geo.cells), np.nan, np.float32)  # NaN: no vector
        else:
            out.any_vectors = True
            field = rasterise(vectors, out.size)
            magnitude = object_motion(field, cfg.camera, cfg.camera_trim)
            out.motion[rows[has_vectors]] = MOTION_SCORES[cfg.motion_score](magnitude[has_vectors])
        lumas = np.stack([sample.luma.luma for sample in samples])
        residual = self.geo.residuals(samples, lumas, field)
        if cfg.residual_baseline > 0:
            floor = cfg.residual_baseline * _medians(residual.reshape(len(samples), -1)[:, ::7]).astype(float)
            residual = np.maximum(residual - floor.astype(np.float32)[:, None, None], 0.0)
        out.residual[rows] = residual
        out.contrast[rows] = lumas.reshape(len(samples), -1).std(axis=1)
        compared = np.array([sample.past is not None for sample in samples])
        out.active += active_cells(magnitude[compared], residual[compared], cfg)
        out.compared += residual[compared].size


# cells analysed together: 13 frames at 640 x 480, 83 at 224 x 224 (numpy's per-call cost, paid per batch,
# is then small next to the work), a few MB of maps
_BATCH_CELLS = 1 << 18


def _medians(values: np.ndarray) -> np.ndarray:
    """`np.median` of each row of a 2-D float array without NaN; numpy's vectorised sort beats its
    partition here (residuals hold few distinct values)."""
    ordered = np.sort(values, axis=1)
    k = ordered.shape[1] // 2
    return ordered[:, k] if ordered.shape[1] % 2 else (ordered[:, k - 1] + ordered[:, k]) / 2


def _names_the_file(analysis: Callable[..., _T]) -> Callable[..., _T]:
    """Errors of the decoder (raised here or on the decode-ahead thread) and of a stream the analysis cannot
    make sense of become `VideoDecodeError`s naming the file, so the bad-clip policy applies to codec
    sampling as to any other decode."""

    @functools.wraps(analysis)
    def wrapped(path: str | Path, *args, **kwargs) -> _T:
        try:
            return analysis(path, *args, **kwargs)
        except VideoDecodeError:
            raise
        except (av.FFmpegError, OSError, EOFError, IndexError, ValueError, RuntimeError) as err:
            raise VideoDecodeError(path, f"codec analysis failed ({type(err).__name__}: {err}); the file may "
                                   "be damaged: re-encode it") from err

    return wrapped


@_names_the_file
def analyse(path: str | Path, cfg: CodecConfig | None = None, start_frame: int | None = None,
            end_frame: int | None = None, keep: Callable[[av.VideoFrame], np.ndarray] | None = None,
            jitter: np.ndarray | None = None, seek: bool = True) -> tuple[CodecMaps, list[np.ndarray] | None]:
    """Codec saliency maps of the clip ``[start_frame, end_frame)`` of `path`, in one decode pass.

    `keep`, if given, converts each sampled frame (e.g. to resized RGB) so callers need not decode
    again; its outputs come back in row order. The pass decodes every frame in order (motion vectors
    need them) from the last keyframe before `start_frame` (`seek`; from the start of the file where
    timestamps do not number the frames) and stops after the last frame the plan samples: a segment of a
    long video costs the segment, not the video. The maps are the same either way. The plan is made
    once, from `end_frame` or the file's packet count (`count_frames`); if fewer frames decode, the last
    one that does stands in for the first sampled frame past the end and later ones are left out (one
    warning), and frames past the packet count are never read. Nothing is decoded twice.
    `jitter` moves the sampled frames within their chunks (`plan_slots`: training views).
    """
    path, cfg = Path(path), cfg or CodecConfig()
    start = start_frame or 0
    n = (end_frame if end_frame is not None else count_frames(path)) - start
    if n < 1:
        raise ValueError(f"{path}: the clip [{start}, {end_frame}) holds no frame")
    offsets, slots = plan_slots(n, cfg.num_frames, jitter, cfg.frame_rule)
    distinct, row_of = np.unique(start + offsets, return_inverse=True)  # a frame in several slots: once
    wanted = {int(f): r for r, f in enumerate(distinct)}
    try:  # a segment of a long video: decode from the keyframe before it, not from the start
        result = _DecodePass(wanted, cfg, keep).run(path, start + n, start if seek else 0)
    except _Unaligned:
        result = _DecodePass(wanted, cfg, keep).run(path, start + n)
    if result.decoded <= start:
        raise ValueError(f"{path}: no frame decodes in [{start}, {end_frame}); the file may be damaged")
    if result.decoded < start + n:
        if result.tail_row is not None:
            distinct[result.tail_row] = result.decoded - 1
        present = distinct < result.decoded
        log.warning("%s: its packets promise %d frames in [%d, %s), %d decode; frame %d stands in for the "
                    "first sampled frame past the end and %d sampled frames are left out", path, n, start,
                    end_frame, result.decoded - start, result.decoded - 1, int((~present[row_of]).sum()))
        rows = np.flatnonzero(present)
        kept = present[row_of]
        slots, row_of = slots[kept], np.searchsorted(rows, row_of[kept])
        distinct = distinct[rows]
        for name in ("motion", "residual", "contrast", "keyframe"):
            setattr(result, name, getattr(result, name)[rows])
        result.pixels = [result.pixels[r] for r in rows]
    if not result.any_vectors:  # counted per run by the caller (`SampledClip.signals`), not warned per file
        log.debug("%s: the codec exports no motion vectors; scoring patches by residual energy only", path)
    level = result.active / max(result.compared, 1)
    fused = fuse(result.motion, result.residual, cfg)
    if cfg.center_prior > 0:
        centre_prior(fused, result.size, cfg.center_prior, cfg.center_sigma)
    fused = fused[row_of]
    frames = distinct[row_of]
    last = np.zeros(len(frames), bool)  # each frame's last slot: a repeated frame scores there only
    last[len(frames) - 1 - np.unique(frames[::-1], return_index=True)[1]] = True
    fused[~last] = 0.0
    fused[np.flatnonzero(result.keyframe[row_of] & last)[:KEYFRAME_RULES[cfg.keyframes]]] = 0.0
    fused *= 255
    maps = CodecMaps(
        fused=np.rint(fused, out=fused).astype(np.uint8),
        frame_indices=frames, slots=slots, num_slots=cfg.num_frames, frame_size=result.size,
        signals="motion+residual" if result.any_vectors else "residual",
        activity=level, static=level < cfg.static_activity, motion=result.motion[row_of],
        residual=result.residual[row_of], contrast=result.contrast[row_of],
    )
    return maps, ([result.pixels[r] for r in row_of] if keep is not None else None)


# ----------------------------------------------------------------------------- per-patch scores


def _overlaps(start: float, length: float, parts: int, cells: int) -> np.ndarray:
    """[parts, cells] length of each patch interval falling in each cell (cell units)."""
    edges = start + length * np.arange(parts + 1) / parts
    j = np.arange(cells)
    return np.clip(np.minimum(edges[1:, None], j + 1) - np.maximum(edges[:-1, None], j), 0.0, None)


def patch_scores(maps: CodecMaps, grid: tuple[int, int], crop: Box) -> np.ndarray:
    """`[num_slots, Hp, Wp]` integral of the fused map over each patch; NaN on slots without a frame.

    `crop` (top, left, height, width in source pixels, see `crop_box`) is the part of the frame the
    pixels keep, split into the Hp x Wp patch grid. Cells cut by a patch edge count in proportion to
    their overlap, so the map is resized and cropped exactly like the pixels.
    """
    top, left, height, width = crop
    rows = _overlaps(top / CELL, height / CELL, grid[0], maps.fused.shape[1])
    cols = _overlaps(left / CELL, width / CELL, grid[1], maps.fused.shape[2])
    (r0, r1), (c0, c1) = _support(rows), _support(cols)  # only the cells the crop touches
    saliency = (maps.fused[:, r0:r1, c0:c1] / np.float32(255)).astype(np.float64)  # `maps.saliency`
    scores = np.full((maps.num_slots, *grid), np.nan)
    # one small product per frame: a single large one would be multi-threaded by BLAS, and a busy
    # second core then stalls it for milliseconds
    scores[maps.slots] = rows[:, r0:r1] @ saliency @ cols[:, c0:c1].T
    return scores


def _support(weights: np.ndarray) -> tuple[int, int]:
    """First and one-past-last column of `weights` with a non-zero entry."""
    nonzero = np.flatnonzero(weights.any(axis=0))
    return int(nonzero[0]), int(nonzero[-1]) + 1


def crop_box(frame_size: tuple[int, int], size: int, position: float = 0.5) -> Box:
    """(top, left, height, width) in source pixels of the square `tasks.decode.video.resize_shorter_side` then
    `crop_square(size, position)` keep, so maps are cropped exactly like the pixels."""
    height, width = frame_size
    scale = size / min(height, width)
    out_h, out_w = max(size, round(height * scale)), max(size, round(width * scale))
    top = round((out_h - size) * (position if out_h > out_w else 0.5))
    left = round((out_w - size) * (position if out_w >= out_h else 0.5))
    sy, sx = height / out_h, width / out_w
    return top * sy, left * sx, size * sy, size * sx
