"""Choosing K patches from a `[T, Hp, Wp]` grid of scores, and laying them out for a backbone.

Pure numpy, no decoding: the codec sampler computes the scores (`tasks.decode.codec.patch_scores`), this
module picks the patches and arranges the pixels. A selection is a sorted list of flat indices
``t * Hp * Wp + h * Wp + w`` on the temporal grid of T slots; the same selection can be laid out

- **packed** (`pack`), for backbones that take arbitrary patch sets with positions (OneVision): the K
  patches fill K / (Hp * Wp) pseudo-frames in ascending (t, h, w) order, and `Selection.positions`
  (equivalently `visible_indices`) say where each came from;
- **per frame** (`per_frame_sparse`), for image backbones: the distinct source frames are encoded
  whole and only the selected tokens are kept, each backbone at its own (h, w) patch positions.

Both carry exactly the same K patches, so backbones are compared at identical patch budgets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelectionConfig:
    """Options of the top-K selection.

    keep_first_frame: the first frame with content is kept whole, a pseudo-I-frame that gives the
        backbone the scene before the changes: the first sampled frame whose luma standard deviation
        (`contrast`, from the codec analysis) reaches `flat_std` levels, so a clip that fades in from
        black keeps its first visible frame, not the black one (the first frame if none does).
    static_fallback: when the caller says the clip is static (flat motion), keep `static_frames`
        frames whole at uniform times (the first among them) and fill the rest of the budget by score.
    center_prior: in [0, 1]; scores are multiplied by ``1 - c + c * g`` with g a Gaussian of the
        distance to the frame centre (sigma `center_sigma` times the half-extent).
    time_buckets: split the T slots into this many contiguous buckets with equal shares of the budget
        (what a bucket cannot use goes back to the global pool), so no stretch of time is starved.
    """

    keep_first_frame: bool = True
    static_fallback: bool = True
    static_frames: int = 4
    center_prior: float = 0.0
    center_sigma: float = 0.5
    time_buckets: int = 1
    flat_std: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.center_prior <= 1.0:
            raise ValueError(f"selection center_prior={self.center_prior} must lie in [0, 1]")
        if self.time_buckets < 1 or self.static_frames < 1:
            raise ValueError("selection time_buckets and static_frames must be >= 1")


@dataclass(frozen=True)
class Selection:
    """K selected patches on a `(T, Hp, Wp)` grid, as ascending flat indices."""

    indices: np.ndarray
    grid: tuple[int, int, int]
    forced_slots: tuple[int, ...] = ()  # slots kept whole (first frame, static fallback)
    static: bool = False  # the static-video fallback engaged

    @property
    def budget(self) -> int:
        return int(self.indices.size)

    @property
    def positions(self) -> np.ndarray:
        """int64 `[K, 3]` (t, h, w) of each selected patch, in ascending order."""
        t, h, w = np.unravel_index(self.indices, self.grid)
        return np.stack([t, h, w], axis=1).astype(np.int64)

    @property
    def visible_indices(self) -> np.ndarray:
        """OneVision's name for the flat indices on the T-frame grid."""
        return self.indices

    @property
    def slots(self) -> np.ndarray:
        """The distinct slots that hold at least one selected patch, ascending."""
        return np.unique(self.indices // (self.grid[1] * self.grid[2]))


def resolve_budget(patches_per_frame: int, budget: int | None = None,
                   frames_equiv: float | None = None) -> int:
    """The patch budget K from `sampling.budget` (patches) or `sampling.frames_equiv` (frames' worth)."""
    if (budget is None) == (frames_equiv is None):
        raise ValueError("give exactly one of sampling.budget (patches) and sampling.frames_equiv (frames)")
    if frames_equiv is not None:
        k = frames_equiv * patches_per_frame
        if k <= 0 or abs(k - round(k)) > 1e-6:
            raise ValueError(f"sampling.frames_equiv={frames_equiv} times {patches_per_frame} patches per "
                             f"frame is not a positive whole number of patches")
        return int(round(k))
    if budget <= 0:
        raise ValueError(f"sampling.budget={budget} must be a positive number of patches")
    return int(budget)


def centre_weights(hp: int, wp: int, sigma: float) -> np.ndarray:
    """Gaussian of the distance of each patch centre to the frame centre, in half-extent units."""
    y = (np.arange(hp) + 0.5) / hp * 2 - 1
    x = (np.arange(wp) + 0.5) / wp * 2 - 1
    return np.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest finite scores; ties go to the earlier index (deterministic)."""
    if k <= 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")
    return order[:k][np.isfinite(scores[order[:k]])]


def select_patches(scores: np.ndarray, budget: int, cfg: SelectionConfig | None = None,
                   static: bool = False, contrast: np.ndarray | None = None) -> Selection:
    """The `budget` best patches of `scores` `[T, Hp, Wp]` (NaN marks slots without a frame).

    `contrast` `[T]` (luma standard deviation per slot; None: unknown) lets `keep_first_frame` pass over
    flat frames.

    Raises ValueError when the budget exceeds the patches of the frames available. Whole frames forced
    by `keep_first_frame` or the static fallback count against the budget and are limited to
    ``budget // (Hp * Wp)`` frames, so a budget below one frame is filled by score alone.
    """
    cfg = cfg or SelectionConfig()
    t_slots, hp, wp = scores.shape
    per_frame = hp * wp
    flat = scores.reshape(t_slots, per_frame).astype(np.float64)
    filled = np.flatnonzero(np.isfinite(flat).all(axis=1))
    available = filled.size * per_frame
    if budget < 1:
        raise ValueError(f"patch budget {budget} must be >= 1")
    if budget > available:
        raise ValueError(f"patch budget {budget} exceeds the {available} patches available ({filled.size} "
                         f"frames of {per_frame}); lower sampling.budget or sample more frames")
    forced = _forced_slots(filled, budget // per_frame, cfg, static, contrast)
    chosen = np.zeros(t_slots * per_frame, bool)
    for slot in forced:
        chosen[slot * per_frame:(slot + 1) * per_frame] = True

    work = flat.copy()
    if cfg.center_prior > 0:
        prior = centre_weights(hp, wp, cfg.center_sigma).ravel()
        work *= 1.0 - cfg.center_prior + cfg.center_prior * prior
    work = work.ravel()
    work[~np.isfinite(work) | chosen] = -np.inf
    remaining = budget - len(forced) * per_frame
    if cfg.time_buckets > 1:
        for bucket, quota in zip(np.array_split(np.arange(t_slots), cfg.time_buckets),
                                 _quotas(remaining, cfg.time_buckets), strict=True):
            lo, hi = bucket[0] * per_frame, (bucket[-1] + 1) * per_frame
            picked = lo + _top(work[lo:hi], quota)
            chosen[picked] = True
            work[picked] = -np.inf
        remaining = budget - int(chosen.sum())
    chosen[_top(work, remaining)] = True
    return Selection(np.flatnonzero(chosen).astype(np.int64), (t_slots, hp, wp), tuple(forced),
                     static=bool(static and cfg.static_fallback))


def flat_patch_means(means: np.ndarray, abs_level: float, rel_contrast: float) -> bool:
    """The original suite's static-clip test on the patch means of the fused map (levels 0..255, NaN:
    no frame): static when their 95th percentile p95 is below `abs_level`, or below twice it with
    ``(p95 - p50) / p95`` below `rel_contrast` (a flat distribution)."""
    finite = means[np.isfinite(means)]
    p95, p50 = np.percentile(finite, 95.0), np.percentile(finite, 50.0)
    flat = (p95 - p50) / max(p95, 1e-6) < rel_contrast
    return bool(p95 < abs_level or (p95 < 2 * abs_level and flat))


def _quotas(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def _forced_slots(filled: np.ndarray, max_whole: int, cfg: SelectionConfig, static: bool,
                  contrast: np.ndarray | None = None) -> list[int]:
    """Slots kept whole: the first frame with content and/or `static_frames` uniform ones, at most
    `max_whole`."""
    if static and cfg.static_fallback:
        n = min(cfg.static_frames, max_whole, filled.size)
        picks = filled[np.rint(np.linspace(0, filled.size - 1, n)).astype(int)] if n else []
        if n < cfg.static_frames:
            log.info("static clip: budget holds %d whole frames of the %d asked", n, cfg.static_frames)
        return sorted({int(s) for s in picks})
    if cfg.keep_first_frame and max_whole >= 1:
        content = filled if contrast is None else filled[contrast[filled] >= cfg.flat_std]
        return [int(content[0] if content.size else filled[0])]
    return []


def check_packed_budget(budget: int, per_frame: int) -> None:
    """Packed layouts need whole pseudo-frames: raise, naming the nearest valid budgets, if not."""
    if budget % per_frame:
        lo = budget // per_frame * per_frame
        raise ValueError(f"packed layout needs whole pseudo-frames: budget {budget} is not a multiple of "
                         f"{per_frame} patches per frame; use {lo or per_frame} or {lo + per_frame}")


def pack(selection: Selection, frames: np.ndarray, frame_slots: np.ndarray, patch: int) -> np.ndarray:
    """The selected patches as pseudo-frames `[K / (Hp * Wp), Hp * patch, Wp * patch, C]`.

    `frames[i]` is the frame of slot `frame_slots[i]`, already at the backbone's size; patches are
    copied in ascending (t, h, w) order, filling each pseudo-frame in raster order.
    """
    t_slots, hp, wp = selection.grid
    per_frame = hp * wp
    check_packed_budget(selection.budget, per_frame)
    n, height, width, channels = frames.shape
    if (height, width) != (hp * patch, wp * patch):
        raise ValueError(f"frames are {height}x{width}; the {hp}x{wp} grid of {patch}-pixel patches needs "
                         f"{hp * patch}x{wp * patch}")
    row_of_slot = np.full(t_slots, -1, np.int64)
    row_of_slot[np.asarray(frame_slots)] = np.arange(n)
    pos = selection.positions
    rows = row_of_slot[pos[:, 0]]
    if (rows < 0).any():
        missing = sorted(set(pos[rows < 0, 0].tolist()))
        raise ValueError(f"no frame given for selected slots {missing[:8]}")
    patches = frames.reshape(n, hp, patch, wp, patch, channels).transpose(0, 1, 3, 2, 4, 5)
    picked = patches[rows, pos[:, 1], pos[:, 2]]  # [K, patch, patch, C]
    pseudo = picked.reshape(-1, hp, wp, patch, patch, channels).transpose(0, 1, 3, 2, 4, 5)
    return pseudo.reshape(-1, hp * patch, wp * patch, channels)


def per_frame_sparse(selection: Selection, t: str = "index") -> tuple[np.ndarray, np.ndarray]:
    """The selection as per-frame token sets for image backbones: `(slots [F], positions [K, 3])`.

    The F distinct slots holding selected patches are the frames to encode whole (ascending); each
    position's t is the index into those frames (`t="index"`) or the slot itself (`t="slot"`), and
    (h, w) are the patch coordinates on the backbone's own grid. Rows are in ascending (t, h, w) order
    and there are exactly K of them, as in the packed layout.
    """
    if t not in ("index", "slot"):
        raise ValueError(f"per_frame_sparse t={t!r}; choose 'index' or 'slot'")
    slots = selection.slots
    positions = selection.positions
    if t == "index":
        positions[:, 0] = np.searchsorted(slots, positions[:, 0])
    return slots, positions


def on_slots(values: np.ndarray, slots: np.ndarray, num_slots: int) -> np.ndarray:
    """Scores of the run's frames `[n, Hp, Wp]` placed at their `slots` of a `[num_slots, Hp, Wp]` grid,
    NaN on slots without a frame (what `select_patches` takes)."""
    scores = np.full((num_slots, *values.shape[1:]), np.nan)
    scores[slots] = values
    return scores


def pixel_change(frames: np.ndarray, patch: int) -> np.ndarray:
    """`[T, Hp, Wp]` mean absolute change of each patch's pixels (all channels) from the previous frame;
    the first frame has nothing to differ from and scores 0. `frames` is uint8 `[T, Hp * patch,
    Wp * patch, C]` at the backbone's size, as the pixels the patches will be cut from."""
    n, height, width, channels = frames.shape
    if height % patch or width % patch:
        raise ValueError(f"frames of {height}x{width} do not split into {patch}-pixel patches")
    change = np.zeros((n, height // patch, width // patch))
    if n > 1:
        diff = np.abs(np.diff(frames.astype(np.int16), axis=0)).astype(np.float32)
        change[1:] = diff.reshape(n - 1, height // patch, patch, width // patch, patch * channels).mean(
            axis=(2, 4))
    return change
