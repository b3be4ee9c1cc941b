"""Top-K patch selection on score grids, budgets, and the packed and per-frame layouts of one selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.clip import Clip
from tasks.sampling.samplers import create_sampler
from tasks.sampling.selection import (
    SelectionConfig,
    pack,
    per_frame_sparse,
    resolve_budget,
    select_patches,
)

T, HP, WP, PATCH = 8, 4, 4, 2
PER_FRAME = HP * WP
NO_FORCING = SelectionConfig(keep_first_frame=False)


def random_scores(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((T, HP, WP))


def numbered_frames(n: int) -> np.ndarray:
    """Frames whose every patch is filled with its own id (frame * 100 + patch), to track where it goes."""
    ids = (np.arange(n)[:, None, None] * 100 + np.arange(PER_FRAME).reshape(HP, WP)).astype(np.int64)
    return np.repeat(np.repeat(ids, PATCH, axis=1), PATCH, axis=2)[..., None].repeat(3, axis=3)


def test_budget_in_patches_or_frames():
    assert resolve_budget(256, budget=2048) == 2048
    assert resolve_budget(256, frames_equiv=8) == 2048
    assert resolve_budget(256, frames_equiv=0.5) == 128
    with pytest.raises(ValueError, match="exactly one"):
        resolve_budget(256, budget=2048, frames_equiv=8)
    with pytest.raises(ValueError, match="exactly one"):
        resolve_budget(256)
    with pytest.raises(ValueError, match="not a positive whole number"):
        resolve_budget(256, frames_equiv=0.3)
    with pytest.raises(ValueError, match="must be a positive"):
        resolve_budget(256, budget=0)


def test_global_top_k_in_ascending_order():
    scores = random_scores()
    selection = select_patches(scores, 20, NO_FORCING)
    expected = np.sort(np.argsort(-scores.ravel())[:20])
    np.testing.assert_array_equal(selection.indices, expected)
    assert (np.diff(selection.indices) > 0).all()
    t, h, w = selection.positions.T
    np.testing.assert_array_equal(t * PER_FRAME + h * WP + w, selection.visible_indices)
    assert selection.positions.dtype == np.int64


def test_first_frame_is_kept_whole_and_counts_against_the_budget():
    scores = random_scores()
    scores[0] = 0.0  # the first frame would never win on its scores
    selection = select_patches(scores, PER_FRAME + 5)
    assert selection.forced_slots == (0,)
    assert (selection.positions[:, 0] == 0).sum() == PER_FRAME
    best_rest = np.sort(np.argsort(-scores[1:].ravel())[:5]) + PER_FRAME
    np.testing.assert_array_equal(selection.indices[PER_FRAME:], best_rest)
    # a budget below one frame cannot keep it whole: scores decide everything
    assert select_patches(scores, 5).forced_slots == ()


def test_empty_slots_are_never_selected_and_budgets_beyond_them_fail():
    scores = random_scores()
    scores[[0, 3, 5]] = np.nan  # slots without a frame (a short clip)
    selection = select_patches(scores, 5 * PER_FRAME)
    assert set(selection.slots.tolist()) == {1, 2, 4, 6, 7} and selection.forced_slots == (1,)
    with pytest.raises(ValueError, match=r"budget 81 exceeds the 80 patches available \(5 frames of 16\)"):
        select_patches(scores, 5 * PER_FRAME + 1)
    with pytest.raises(ValueError, match=">= 1"):
        select_patches(scores, 0)


def test_static_fallback_keeps_uniform_frames_whole_then_fills_by_score():
    scores = random_scores()
    selection = select_patches(scores, 4 * PER_FRAME + 3, static=True)
    assert selection.static and selection.forced_slots == (0, 2, 5, 7)
    assert len(selection.indices) == 4 * PER_FRAME + 3
    free = [s for s in range(T) if s not in selection.forced_slots]
    best = np.sort(scores[free].ravel())[-3:]
    chosen = selection.positions[~np.isin(selection.positions[:, 0], selection.forced_slots)]
    assert np.sort(scores[tuple(chosen.T)]).tolist() == best.tolist()
    # a budget of two frames keeps two of them whole; the flag alone does nothing when the option is off
    assert select_patches(scores, 2 * PER_FRAME, static=True).forced_slots == (0, 7)
    off = select_patches(scores, 2 * PER_FRAME, SelectionConfig(static_fallback=False), static=True)
    assert off.forced_slots == (0,) and not off.static


def test_centre_prior_pulls_ties_to_the_middle():
    flat = np.ones((T, HP, WP))
    selection = select_patches(flat, 4 * T, SelectionConfig(keep_first_frame=False, center_prior=1.0))
    assert set(map(tuple, selection.positions[:, 1:].tolist())) == {(1, 1), (1, 2), (2, 1), (2, 2)}
    with pytest.raises(ValueError, match="center_prior"):
        SelectionConfig(center_prior=1.5)


def test_time_buckets_share_the_budget_across_time():
    scores = random_scores() * 0.1
    scores[:2] += 1.0  # everything interesting happens at the start
    selection = select_patches(scores, 32, NO_FORCING)
    assert set(selection.slots.tolist()) == {0, 1}
    buckets = select_patches(scores, 32, SelectionConfig(keep_first_frame=False, time_buckets=4))
    per_bucket = np.bincount(buckets.positions[:, 0] // 2, minlength=4)
    assert per_bucket.tolist() == [8, 8, 8, 8]
    # a bucket that cannot hold its share gives the rest back to the global top-K
    scores[2:4] = np.nan
    uneven = select_patches(scores, 70, SelectionConfig(keep_first_frame=False, time_buckets=4))
    assert len(uneven.indices) == 70 and not np.isin(uneven.positions[:, 0], [2, 3]).any()


def test_packed_and_per_frame_layouts_carry_the_same_patches():
    scores = random_scores()
    selection = select_patches(scores, 3 * PER_FRAME)
    frames = numbered_frames(T)  # frame i holds slot i
    packed = pack(selection, frames, np.arange(T), PATCH)
    assert packed.shape == (3, HP * PATCH, WP * PATCH, 3)
    packed_ids = packed[:, ::PATCH, ::PATCH, 0].reshape(-1)
    t, h, w = selection.positions.T
    np.testing.assert_array_equal(packed_ids, t * 100 + h * WP + w)  # ascending (t, h, w), raster-filled

    slots, positions = per_frame_sparse(selection)
    assert len(positions) == len(selection.indices) == packed_ids.size  # identical token counts
    np.testing.assert_array_equal(slots, np.unique(t))
    per_frame = frames[slots]  # the image backbone encodes these whole frames and keeps these tokens
    sparse_ids = per_frame[positions[:, 0], positions[:, 1] * PATCH, positions[:, 2] * PATCH, 0]
    np.testing.assert_array_equal(sparse_ids, packed_ids)
    slot_t = per_frame_sparse(selection, t="slot")[1]
    np.testing.assert_array_equal(slot_t, selection.positions)


def test_pack_takes_frames_for_the_selected_slots_only():
    selection = select_patches(random_scores(), 2 * PER_FRAME)
    slots = selection.slots
    packed = pack(selection, numbered_frames(T)[slots], slots, PATCH)
    t, h, w = selection.positions.T
    np.testing.assert_array_equal(packed[:, ::PATCH, ::PATCH, 0].reshape(-1), t * 100 + h * WP + w)
    with pytest.raises(ValueError, match="no frame given for selected slots"):
        pack(selection, numbered_frames(1), slots[:1], PATCH)


def test_pack_rejects_budgets_that_are_not_whole_frames():
    selection = select_patches(random_scores(), PER_FRAME + 3)
    with pytest.raises(ValueError, match="budget 19 is not a multiple of 16 patches per frame; use 16 or 32"):
        pack(selection, numbered_frames(T), np.arange(T), PATCH)
    slots, positions = per_frame_sparse(selection)  # the per-frame layout takes any budget
    assert len(positions) == PER_FRAME + 3
    with pytest.raises(ValueError, match="grid of 2-pixel patches needs 8x8"):
        pack(select_patches(random_scores(), PER_FRAME), numbered_frames(T)[:, :6], np.arange(T), PATCH)


def test_codec_sampler_feeds_packed_and_per_frame_backbones_the_same_patches(fixtures, tmp_path):
    clip = Clip("cup", fixtures / "videos" / "cup.mp4", label=3)
    common = dict(num_frames=64, size=112, patch_size=14, budget=256, cache_dir=str(tmp_path))
    packed = create_sampler("codec", temporal_slots=64, native_sparse=True, **common)(clip)[0]
    sparse = create_sampler("codec", **common)(clip)[0]  # maps from the cache, frames from the reader
    assert packed.layout == "packed" and tuple(packed.frames.shape) == (4, 112, 112, 3)
    assert sparse.layout == "sparse" and tuple(sparse.frames.shape) == (64, 112, 112, 3)
    assert packed.n_tokens == sparse.n_tokens == 256
    torch.testing.assert_close(packed.positions, sparse.positions)  # t on the 64-frame grid either way
    p = 14
    from_packed = packed.frames.reshape(4, 8, p, 8, p, 3).permute(0, 1, 3, 2, 4, 5).reshape(-1, p, p, 3)
    from_frames = torch.stack([sparse.frames[t, h * p:(h + 1) * p, w * p:(w + 1) * p]
                               for t, h, w in sparse.positions.tolist()])
    assert torch.equal(from_packed, from_frames)
    assert packed.source_frames == sparse.source_frames and len(packed.source_frames) > 4
    with pytest.raises(ValueError, match="budget 100 is not a multiple of 64 patches per frame"):
        create_sampler("codec", temporal_slots=64, native_sparse=True, **{**common, "budget": 100})
    by_frames = {k: v for k, v in common.items() if k != "budget"}
    assert create_sampler("codec", frames_equiv=2, **by_frames).k == 128
