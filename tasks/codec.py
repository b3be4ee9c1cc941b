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
Codecs that export no vectors (Cinepak, MJPEG, ...) fall back to residual-only scores, logged once per
file and recorded in `CodecMaps.signals`.

`python -m tasks.codec show VIDEO --budget 2048 --out fig.png` draws sampled frames, their fused maps and
the kept patches.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from tasks.selection import Selection, SelectionConfig, select_patches

log = logging.getLogger(__name__)

CELL = 4  # pixels per side of a motion-map cell (the smallest H.264 partition)
Box = tuple[float, float, float, float]  # top, left, height, width in source pixels
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

    def __post_init__(self) -> None:
        for key, table in (("camera", CAMERA_MODELS), ("fusion", FUSIONS), ("norm_scope", _NORM_GROUPS)):
            if getattr(self, key) not in table:
                raise ValueError(f"codec {key}={getattr(self, key)!r}; choose one of {sorted(table)}")
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
    the cache keeps them out (None) to stay small.
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

    @property
    def saliency(self) -> np.ndarray:
        """`fused` as float32 in [0, 1]."""
        return self.fused.astype(np.float32) / 255.0


# ----------------------------------------------------------------------------- motion vectors


def motion_vectors(frame: av.VideoFrame) -> np.ndarray | None:
    """The frame's exported motion vectors as a structured array, or None (I-frames, codecs without)."""
    side = frame.side_data.get("MOTION_VECTORS")
    return None if side is None else side.to_ndarray()


@dataclass
class MotionField:
    """A frame's block vectors, and which block covers each 4x4 cell per reference direction.

    Per block: ``src - dst`` in integer pixels (`dx`, `dy`), the block centre relative to the frame
    centre, its area and direction (0: reference in the past, 1: in the future). `owner[d]` maps each
    cell to the block of direction d covering it, -1 where none does (intra blocks, I-frames).
    Per-block work is then done once per block and spread to cells by one gather.
    """

    dx: np.ndarray
    dy: np.ndarray
    centres: np.ndarray  # [n, 2] (x, y)
    area: np.ndarray
    direction: np.ndarray
    owner: np.ndarray  # [2, h, w]

    def cell_map(self, values: np.ndarray, direction: int) -> np.ndarray:
        """Per-block `values` spread over the cells of `direction`, NaN where no block covers a cell."""
        return np.append(values.astype(np.float32), np.float32(np.nan))[self.owner[direction]]

    def past_pointing(self) -> tuple[np.ndarray, np.ndarray]:
        """Block vectors with future-pointing ones negated, so both mean "where the content was"."""
        sign = np.where(self.direction == 1, -1.0, 1.0).astype(np.float32)
        return self.dx * sign, self.dy * sign


def rasterise(mvs: np.ndarray, frame_size: tuple[int, int]) -> MotionField:
    """Map each exported block onto the 4x4-pixel cells it covers.

    Blocks of one direction partition the frame, so plain assignment suffices; blocks are grouped by
    size (a handful of partition shapes) so each group is one vectorised write. The grid is padded for
    blocks that overhang the bottom/right edge (a partial last macroblock) and cropped afterwards.
    """
    height, width = frame_size
    h, w = -(-height // CELL), -(-width // CELL)
    bw = mvs["w"].astype(np.intp)
    bh = mvs["h"].astype(np.intp)
    x0 = (mvs["dst_x"] - bw // 2) // CELL
    y0 = (mvs["dst_y"] - bh // 2) // CELL
    ok = (x0 >= 0) & (y0 >= 0) & (x0 < w) & (y0 < h)
    if not ok.all():
        mvs, bw, bh, x0, y0 = mvs[ok], bw[ok], bh[ok], x0[ok], y0[ok]
    direction = (mvs["source"] > 0).astype(np.intp)
    nx = np.maximum(bw // CELL, 1)
    ny = np.maximum(bh // CELL, 1)
    pad_h = max(int((y0 + ny).max(initial=h)), h)
    pad_w = max(int((x0 + nx).max(initial=w)), w)
    owner = np.full(2 * pad_h * pad_w, -1, np.int32)
    base = direction * (pad_h * pad_w) + y0 * pad_w + x0
    shape_key = ny * 1024 + nx
    for key in np.unique(shape_key):
        sel = np.flatnonzero(shape_key == key)
        oy, ox = np.divmod(np.arange(int(key // 1024) * int(key % 1024)), int(key % 1024))
        owner[base[sel, None] + (oy * pad_w + ox)] = sel[:, None]
    centres = np.stack([mvs["dst_x"] - width / 2, mvs["dst_y"] - height / 2], 1).astype(np.float32)
    return MotionField(
        dx=(mvs["src_x"] - mvs["dst_x"]).astype(np.float32),
        dy=(mvs["src_y"] - mvs["dst_y"]).astype(np.float32),
        centres=centres, area=(bw * bh).astype(np.float32), direction=direction,
        owner=owner.reshape(2, pad_h, pad_w)[:, :h, :w],
    )


# ----------------------------------------------------------------------------- camera motion


@dataclass(frozen=True)
class CameraMotion:
    """Similarity transform mapping a point to where it came from: ``src = s R(rot) p + t``."""

    tx: float = 0.0
    ty: float = 0.0
    scale: float = 1.0
    rotation: float = 0.0

    def displacement(self, points: np.ndarray) -> np.ndarray:
        """``src - dst`` the camera alone explains at `points` [N, 2] (x, y from the frame centre)."""
        a = self.scale * math.cos(self.rotation) - 1.0
        b = self.scale * math.sin(self.rotation)
        x, y = points[:, 0], points[:, 1]
        return np.stack([a * x - b * y + self.tx, b * x + a * y + self.ty], axis=1)


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, cum[-1] / 2)])


def _camera_none(points: np.ndarray, disp: np.ndarray, weights: np.ndarray, trim: float) -> CameraMotion:
    return CameraMotion()


def _camera_median(points: np.ndarray, disp: np.ndarray, weights: np.ndarray, trim: float) -> CameraMotion:
    return CameraMotion(_weighted_median(disp[:, 0], weights), _weighted_median(disp[:, 1], weights))


def _camera_similarity(points: np.ndarray, disp: np.ndarray, weights: np.ndarray, trim: float,
                       iters: int = 3) -> CameraMotion:
    """Closed-form weighted least-squares similarity, refitted each round on the `1 - trim` fraction of
    vectors it explains best, so a moving object does not drag the camera estimate."""
    if len(points) < 3:
        return _camera_median(points, disp, weights, trim)
    src = points + disp
    keep = np.arange(len(points))
    n_keep = max(3, int(round(len(points) * (1.0 - trim))))
    for _ in range(iters):
        p, q, wt = points[keep], src[keep], weights[keep, None]
        total = float(wt.sum())
        p_mean, q_mean = (wt * p).sum(0) / total, (wt * q).sum(0) / total
        pc, qc = p - p_mean, q - q_mean
        norm = max(float((wt * pc * pc).sum()), 1e-9)
        a = float((wt * pc * qc).sum()) / norm
        b = float((wt[:, 0] * (pc[:, 0] * qc[:, 1] - pc[:, 1] * qc[:, 0])).sum()) / norm
        tx = float(q_mean[0] - (a * p_mean[0] - b * p_mean[1]))
        ty = float(q_mean[1] - (b * p_mean[0] + a * p_mean[1]))
        err = np.hypot(a * points[:, 0] - b * points[:, 1] + tx - src[:, 0],
                       b * points[:, 0] + a * points[:, 1] + ty - src[:, 1])
        if n_keep >= len(points):
            break
        keep = np.argpartition(err, n_keep - 1)[:n_keep]
    return CameraMotion(tx, ty, math.hypot(a, b), math.atan2(b, a))


CAMERA_MODELS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray, float], CameraMotion]] = {
    "none": _camera_none,
    "median": _camera_median,
    "similarity": _camera_similarity,
}


def object_motion(field: MotionField, method: str, trim: float, max_fit: int = 192) -> np.ndarray:
    """Per cell, |motion - camera motion| in pixels (mean over directions), NaN where no vector exists.

    The camera model is fitted, area-weighted, on at most `max_fit` blocks taken at a fixed stride: a
    global fit needs few vectors, and this runs for every sampled frame.
    """
    dx, dy = field.past_pointing()
    disp = np.stack([dx, dy], 1).astype(np.float64)
    stride = max(1, -(-len(dx) // max_fit))
    camera = CAMERA_MODELS[method](field.centres[::stride].astype(np.float64), disp[::stride],
                                   field.area[::stride].astype(np.float64), trim)
    cam = camera.displacement(field.centres)
    magnitude = np.hypot(dx - cam[:, 0], dy - cam[:, 1]).astype(np.float32)
    past = field.cell_map(magnitude, 0)
    if not field.direction.any():
        return past
    future = field.cell_map(magnitude, 1)
    both = np.where(np.isnan(past), future, 0.5 * (past + future))  # NaN + x = NaN: one side only
    return np.where(np.isnan(future), past, both)


# ----------------------------------------------------------------------------- residuals


class _Luma:
    """A decoded frame whose reduced luma is computed only if a residual needs it, then kept padded."""

    def __init__(self, frame: av.VideoFrame, geo: _Geometry, scaler: VideoReformatter):
        self.frame = frame
        self.geo = geo
        self.scaler = scaler  # shared, so swscale's context is built once per pass
        self._luma: np.ndarray | None = None
        self._padded: np.ndarray | None = None

    @property
    def luma(self) -> np.ndarray:
        if self._luma is None:
            h, w = self.geo.shape
            small = self.scaler.reformat(self.frame, width=w, height=h, format="gray", interpolation="AREA")
            self._luma = small.to_ndarray().astype(np.float32)
            self.frame = None  # the full-size pixels are no longer needed
        return self._luma

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


class _Geometry:
    """Index arithmetic between the cell grid and the reduced luma grid, built once per pass.

    Reduced luma pixels are viewed as `[h, k, w, k]` (cell row, row within, cell column, column within)
    so per-cell shifts broadcast over their k x k pixels. References are edge-padded by `pad` pixels and
    shifts clamped to it, so a motion-compensated read is one gather with no clipping.
    """

    def __init__(self, frame_size: tuple[int, int], scale: int, max_shift_px: int = 64):
        height, width = frame_size
        self.cells = h, w = -(-height // CELL), -(-width // CELL)
        self.scale = scale
        self.k = k = CELL // scale
        self.shape = (h * k, w * k)
        self.pad = max_shift_px // scale
        stride = self.shape[1] + 2 * self.pad
        self.stride = stride
        rows = np.arange(self.shape[0], dtype=np.int32).reshape(h, k, 1, 1) + self.pad
        cols = np.arange(self.shape[1], dtype=np.int32).reshape(1, 1, w, k) + self.pad
        self.base = rows * stride + cols  # [h, k, w, k] index of each pixel in a padded reference

    def view(self, luma: np.ndarray) -> np.ndarray:
        h, w = self.cells
        return luma.reshape(h, self.k, w, self.k)

    def cell_offsets(self, field: MotionField, direction: int) -> np.ndarray:
        """Per cell, the flat offset of its block's ``src - dst`` in a padded reference (rounded, clamped);
        0 (no shift) where no block of `direction` covers the cell. Shape `[h, 1, w, 1]`."""
        sx = np.clip(np.rint(field.dx / self.scale), -self.pad, self.pad).astype(np.int32)
        sy = np.clip(np.rint(field.dy / self.scale), -self.pad, self.pad).astype(np.int32)
        offsets = np.append(sy * self.stride + sx, np.int32(0))  # owner -1 reads the last entry
        h, w = self.cells
        return offsets[field.owner[direction]].reshape(h, 1, w, 1)

    def residual(self, cur: _Luma, field: MotionField | None, past: _Luma | None,
                 future: _Luma | None) -> np.ndarray:
        """Mean |current - prediction| per cell.

        The prediction is the past reference read where each block's vector points, unshifted where no
        vector covers a cell (a plain frame difference); B-frame cells with a future vector read the
        future reference instead, or the average of both where they have two.
        """
        h, w = self.cells
        if past is None:
            return np.zeros(self.cells, np.float32)  # the stream's first frame: nothing to differ from
        if field is None:
            pred = self.view(past.luma)
        else:
            pred = past.padded[self.base + self.cell_offsets(field, 0)]
            if future is not None and field.direction.any():
                ahead = future.padded[self.base + self.cell_offsets(field, 1)]
                has_past = (field.owner[0] >= 0).reshape(h, 1, w, 1)
                has_future = (field.owner[1] >= 0).reshape(h, 1, w, 1)
                pred = np.where(has_future, np.where(has_past, 0.5 * (pred + ahead), ahead), pred)
        diff = np.abs(self.view(cur.luma) - pred)
        return diff.reshape(h, w) if self.k == 1 else diff.sum(axis=(1, 3)) / (self.k * self.k)


# ----------------------------------------------------------------------------- normalisation and fusion


def _fuse_mean(m: np.ndarray, r: np.ndarray, wm: float, wr: float) -> np.ndarray:
    return (wm * m + wr * r) / (wm + wr)


def _fuse_max(m: np.ndarray, r: np.ndarray, wm: float, wr: float) -> np.ndarray:
    return np.maximum(m, r)


def _fuse_geomean(m: np.ndarray, r: np.ndarray, wm: float, wr: float) -> np.ndarray:
    return m ** (wm / (wm + wr)) * r ** (wr / (wm + wr))


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
    return np.clip(maps / scale, 0.0, 1.0)


def fuse(motion: np.ndarray, residual: np.ndarray, cfg: CodecConfig) -> np.ndarray:
    """Fused saliency in [0, 1].

    Where the clip has vectors, a cell without one (I-frame, intra block) counts as still: an I-frame's
    difference to the previous frame is mostly the requantisation of a fresh start. A clip without any
    vector is scored by its residual alone.
    """
    r = normalise(residual, cfg.percentile, cfg.residual_floor, cfg.norm_scope)
    if np.isnan(motion).all():
        return r.astype(np.float32, copy=False)
    m = np.nan_to_num(normalise(motion, cfg.percentile, cfg.motion_floor, cfg.norm_scope))
    return FUSIONS[cfg.fusion](m, r, cfg.motion_weight, cfg.residual_weight).astype(np.float32, copy=False)


def active_cells(motion: np.ndarray, residual: np.ndarray, cfg: CodecConfig) -> int:
    """Cells where motion or residual exceeds its noise floor (NaN motion counts as still)."""
    return int(np.count_nonzero((motion >= cfg.motion_floor) | (residual >= cfg.residual_floor)))


# ----------------------------------------------------------------------------- frame plan and decoding


def plan_slots(n_frames: int, num_slots: int) -> tuple[np.ndarray, np.ndarray]:
    """(frame offsets within the clip, temporal slots) for `num_slots` frames at linspace.

    A clip of at least `num_slots` frames gives one distinct frame per slot. A shorter clip keeps every
    frame once, spread over the slot grid at linspace so that t keeps meaning "fraction of the clip";
    the slots in between stay empty (no patch can be selected there).
    """
    if n_frames < 1:
        raise ValueError("the clip has no decodable frame")
    if n_frames >= num_slots:
        frames = np.rint(np.linspace(0, n_frames - 1, num_slots)).astype(np.int64)
        return frames, np.arange(num_slots, dtype=np.int64)
    slots = np.rint(np.linspace(0, num_slots - 1, n_frames)).astype(np.int64)
    return np.arange(n_frames, dtype=np.int64), slots


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
    decoded: int = 0
    active: int = 0  # cells above a noise floor, over the sampled frames that have a reference
    compared: int = 0  # cells of those frames
    any_vectors: bool = False
    size: tuple[int, int] = (0, 0)


class _DecodePass:
    """One sequential decode filling the maps of the `wanted` frames (frame index -> row).

    B-frames are shown before the later anchor (I/P frame) they also predict from, so a sampled B-frame
    with future vectors waits in `pending` until that anchor is decoded; memory stays bounded by the
    few frames between anchors.
    """

    def __init__(self, wanted: dict[int, int], cfg: CodecConfig,
                 keep: Callable[[av.VideoFrame], np.ndarray] | None):
        self.wanted, self.cfg, self.keep = wanted, cfg, keep
        self.out = _PassResult(pixels=[None] * len(wanted))
        self.geo: _Geometry | None = None
        self.anchor: _Luma | None = None  # the last non-B frame: the past reference
        self.pending: list[tuple[int, _Luma, MotionField, _Luma | None]] = []
        self.scaler = VideoReformatter()

    def run(self, path: Path, stop: int) -> _PassResult:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.options = {"flags2": "+export_mvs"}
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if self.out.decoded >= stop:
                    break
                self._frame(frame, self.out.decoded)
                self.out.decoded += 1
        for row, cur, field, past in self.pending:  # the stream ended before their future anchor
            self._residual(row, cur, field, past, None)
        return self.out

    def _frame(self, frame: av.VideoFrame, index: int) -> None:
        out = self.out
        if self.geo is None:
            out.size = (frame.height, frame.width)
            self.geo = _Geometry(out.size, self.cfg.residual_scale)
            out.motion = np.full((len(self.wanted), *self.geo.cells), np.nan, np.float32)
            out.residual = np.zeros((len(self.wanted), *self.geo.cells), np.float32)
        current = _Luma(frame, self.geo, self.scaler)
        is_anchor = frame.pict_type != PictureType.B
        if is_anchor:
            for row, cur, field, past in self.pending:
                self._residual(row, cur, field, past, current)
            self.pending.clear()
        row = self.wanted.get(index)
        if row is not None:
            if self.keep is not None:
                out.pixels[row] = self.keep(frame)
            mvs = motion_vectors(frame)
            field = None
            if mvs is not None and len(mvs):
                out.any_vectors = True
                field = rasterise(mvs, out.size)
                out.motion[row] = object_motion(field, self.cfg.camera, self.cfg.camera_trim)
            if not is_anchor and field is not None and (field.owner[1] >= 0).any():
                self.pending.append((row, current, field, self.anchor))
            else:
                self._residual(row, current, field, self.anchor, None)
        if is_anchor:
            self.anchor = current

    def _residual(self, row: int, cur: _Luma, field: MotionField | None, past: _Luma | None,
                  future: _Luma | None) -> None:
        out = self.out
        residual = self.geo.residual(cur, field, past, future)
        if self.cfg.residual_baseline > 0:
            floor = self.cfg.residual_baseline * float(np.median(residual.ravel()[::7]))
            residual = np.maximum(residual - floor, 0.0)
        out.residual[row] = residual
        if past is not None:
            out.active += active_cells(out.motion[row], out.residual[row], self.cfg)
            out.compared += out.residual[row].size


def analyse(path: str | Path, cfg: CodecConfig | None = None, start_frame: int | None = None,
            end_frame: int | None = None, keep: Callable[[av.VideoFrame], np.ndarray] | None = None,
            ) -> tuple[CodecMaps, list[np.ndarray] | None]:
    """Codec saliency maps of the clip ``[start_frame, end_frame)`` of `path`, in one decode pass.

    `keep`, if given, converts each sampled frame (e.g. to resized RGB) so callers need not decode
    again; its outputs come back in row order. The pass decodes from the start of the file (motion
    vectors need every frame in order) and stops at `end_frame`. If the file holds fewer (or, without
    `end_frame`, more) frames than its packets promised, the frames are re-planned and decoded again.
    """
    path, cfg = Path(path), cfg or CodecConfig()
    start = start_frame or 0
    n = (end_frame if end_frame is not None else count_frames(path)) - start
    if n < 1:
        raise ValueError(f"{path}: the clip [{start}, {end_frame}) holds no frame")
    stop = end_frame if end_frame is not None else 1 << 62
    for _attempt in range(2):
        offsets, slots = plan_slots(n, cfg.num_frames)
        wanted = {start + int(o): i for i, o in enumerate(offsets)}
        result = _DecodePass(wanted, cfg, keep).run(path, stop)
        available = result.decoded - start
        if available == n:
            break
        if available < 1:
            raise ValueError(f"{path}: no frame decodes in [{start}, {end_frame}); the file may be damaged")
        log.warning("%s: expected %d frames in [%d, %s), decoded %d; re-planning the sampled frames",
                    path, n, start, end_frame, max(available, 0))
        n = available
    else:
        raise RuntimeError(f"{path}: frame count unstable across two decodes; the file may be damaged")
    if not result.any_vectors and str(path) not in _warned_no_vectors:
        _warned_no_vectors.add(str(path))
        log.warning("%s: the codec exports no motion vectors; scoring patches by residual energy only", path)
    level = result.active / max(result.compared, 1)
    maps = CodecMaps(
        fused=np.rint(fuse(result.motion, result.residual, cfg) * 255).astype(np.uint8),
        frame_indices=start + offsets, slots=slots, num_slots=cfg.num_frames, frame_size=result.size,
        signals="motion+residual" if result.any_vectors else "residual",
        activity=level, static=level < cfg.static_activity, motion=result.motion, residual=result.residual,
    )
    return maps, (result.pixels if keep is not None else None)


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
    scores = np.full((maps.num_slots, *grid), np.nan)
    scores[maps.slots] = rows @ maps.saliency.astype(np.float64) @ cols.T
    return scores


def crop_box(frame_size: tuple[int, int], size: int, position: float = 0.5) -> Box:
    """(top, left, height, width) in source pixels of the square `tasks.video.resize_shorter_side` then
    `crop_square(size, position)` keep, so maps are cropped exactly like the pixels."""
    height, width = frame_size
    scale = size / min(height, width)
    out_h, out_w = max(size, round(height * scale)), max(size, round(width * scale))
    top = round((out_h - size) * (position if out_h > out_w else 0.5))
    left = round((out_w - size) * (position if out_w >= out_h else 0.5))
    sy, sx = height / out_h, width / out_w
    return top * sy, left * sx, size * sy, size * sx


# ----------------------------------------------------------------------------- the picture


def show(video: str | Path, out: str | Path, budget: int = 2048, size: int = 224, patch: int = 14,
         columns: int = 8, cfg: CodecConfig | None = None, selection_cfg: SelectionConfig | None = None,
         ) -> tuple[Path, CodecMaps, np.ndarray, Selection]:
    """Draw `columns` sampled frames, their fused saliency and the kept patches (others dimmed) to `out`.

    Returns (png path, maps, patch scores, selection) so callers can check what the picture shows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.video import crop_square, resize_shorter_side

    cfg = cfg or CodecConfig()
    video, out = Path(video), Path(out)
    grid = size // patch
    maps, pixels = analyse(video, cfg, keep=lambda f: crop_square(
        resize_shorter_side(f.to_ndarray(format="rgb24")[None], size), size)[0].numpy())
    box = crop_box(maps.frame_size, size)
    scores = patch_scores(maps, (grid, grid), box)
    selection = select_patches(scores, budget, selection_cfg or SelectionConfig(), static=maps.static)
    kept = np.zeros(scores.size, bool)
    kept[selection.indices] = True
    kept = kept.reshape(scores.shape)

    rows = np.unique(np.rint(np.linspace(0, len(maps.slots) - 1, columns)).astype(int))
    top, left, height, width = (v / CELL for v in box)
    fig, axes = plt.subplots(3, len(rows), figsize=(2.2 * len(rows), 7.2), squeeze=False)
    for col, row in enumerate(rows):
        slot = int(maps.slots[row])
        frame = pixels[row].astype(np.float32) / 255
        mask = np.kron(kept[slot], np.ones((patch, patch)))[..., None]
        edge = (mask[..., 0] > 0) & ~_eroded(mask[..., 0] > 0)
        overlay = frame * (0.25 + 0.75 * mask)
        overlay[edge] = (1.0, 0.85, 0.0)
        saliency = maps.saliency[row][int(top):math.ceil(top + height), int(left):math.ceil(left + width)]
        panels = (frame, saliency, overlay)
        titles = (f"t={slot}  frame {maps.frame_indices[row]}", "fused saliency",
                  f"kept {int(kept[slot].sum())}/{grid * grid}")
        for ax, image, title in zip(axes[:, col], panels, titles, strict=True):
            ax.imshow(image, cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
    total = scores.shape[0] * grid * grid
    fig.suptitle(f"{video.name}: {selection.budget} of {total} patches ({selection.budget / total:.1%}) "
                 f"from {len(maps.slots)} frames; signals: {maps.signals}"
                 f"{'; static fallback' if selection.static else ''}", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out, maps, scores, selection


def _eroded(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 4 neighbours are all in `mask` (the complement marks its outline)."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.codec", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    draw = commands.add_parser("show", help="draw sampled frames, fused saliency and kept patches to a PNG")
    draw.add_argument("video", type=Path)
    draw.add_argument("--budget", type=int, default=2048, help="patches to keep (default 2048)")
    draw.add_argument("--size", type=int, default=224)
    draw.add_argument("--patch", type=int, default=14)
    draw.add_argument("--frames", type=int, default=64, help="frames sampled at linspace")
    draw.add_argument("--columns", type=int, default=8, help="frames shown")
    draw.add_argument("--camera", default="similarity", choices=sorted(CAMERA_MODELS))
    draw.add_argument("--out", type=Path, default=None, help="PNG path (default: VIDEO_codec.png here)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = args.out or Path(f"{args.video.stem}_codec.png")
    path, maps, _, selection = show(args.video, out, args.budget, args.size, args.patch, args.columns,
                                    CodecConfig(num_frames=args.frames, camera=args.camera))
    print(f"wrote {path}: {selection.budget} patches from {len(selection.slots)} of {len(maps.slots)} frames "
          f"(signals {maps.signals}, activity {maps.activity:.3f}{', static' if maps.static else ''})")


if __name__ == "__main__":
    main()
