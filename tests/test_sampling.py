"""Chunk-wise uniform sampling on real videos: which frames, which crops, which token positions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.clip import Clip
from tasks.decode.video import crop_square, open_video, resize_shorter_side
from tasks.sampling.samplers import (
    UniformSampler,
    chunk_indices,
    create_sampler,
    decoded_slots,
    list_samplers,
    temporal_positions,
)


def test_frames_spread_over_the_64_slot_grid_of_onevision() -> None:
    assert temporal_positions(8, 64).tolist() == [0, 9, 18, 27, 36, 45, 54, 63]
    sixteen = temporal_positions(16, 64)
    assert sixteen.tolist() == [round(i * 63 / 15 + 1e-9) for i in range(16)]
    assert sixteen[[0, 3, 4, -1]].tolist() == [0, 13, 17, 63]  # 12.6 -> 13, 16.8 -> 17
    assert temporal_positions(5, None).tolist() == [0, 1, 2, 3, 4]  # image backbones: frame order
    assert temporal_positions(1, 64).tolist() == [0]
    with pytest.raises(ValueError, match="do not fit"):
        temporal_positions(65, 64)


def original_slots(indices: list[int], total: int, slots: int = 64) -> torch.Tensor:
    """The original suite's OneVision temporal position: round(idx / (total - 1) * (slots - 1)), torch's
    rounding (halves to even), clamped to the grid; written from its documented formula."""
    t = torch.tensor(indices, dtype=torch.float32) / max(total - 1, 1) * (slots - 1)
    return torch.round(t).long().clamp(0, slots - 1)


def test_onevision_positions_follow_the_decoded_frame_indices(fixtures: Path) -> None:
    path = fixtures / "videos" / "cup.mp4"  # 217 frames
    # the original's rule on its own test-time indices int(seg * i + seg / 2), seg = (217 - 1) / 8
    original = original_slots([int(27 * i + 13.5) for i in range(8)], 217)
    assert original.tolist() == [4, 12, 20, 27, 35, 43, 51, 59]
    ours = decoded_slots(np.array([13, 40, 67, 94, 121, 148, 175, 202]), 0, 217, 64)
    assert ours.tolist() == original.tolist()
    clip = Clip("cup", path, 0)
    decoded = UniformSampler(num_frames=8, size=56, patch_size=14, temporal_slots=64)
    spread = UniformSampler(num_frames=8, size=56, patch_size=14, temporal_slots=64,
                            temporal_positions="spread")
    for train, rng in ((False, None), (True, np.random.default_rng(3))):
        (view,) = decoded(clip, None, rng, train)
        t = view.positions.view(8, -1, 3)[:, 0, 0]
        assert t.tolist() == original_slots(view.source_frames, 217).tolist()
    (view,) = spread(clip)
    assert view.positions.view(8, -1, 3)[:, 0, 0].tolist() == [0, 9, 18, 27, 36, 45, 54, 63]
    image = UniformSampler(num_frames=8, size=56, patch_size=14)  # no temporal grid: frame order
    assert image(clip)[0].positions.view(8, -1, 3)[:, 0, 0].tolist() == list(range(8))


def test_chunk_centres_at_test_time_and_random_offsets_within_chunks_in_training() -> None:
    centres = chunk_indices(0, 300, 16, np.full(16, 0.5))
    assert centres.tolist() == [int((i + 0.5) * 300 / 16) for i in range(16)]
    assert chunk_indices(10, 20, 5, np.full(5, 0.5)).tolist() == [11, 13, 15, 17, 19]
    assert chunk_indices(0, 3, 6, np.full(6, 0.5)).tolist() == [0, 0, 1, 1, 2, 2]  # short span: repeats
    rng = np.random.default_rng(0)
    draws = np.stack([chunk_indices(0, 300, 16, rng.random(16)) for _ in range(200)])
    lo, hi = np.arange(16) * 300 / 16, (np.arange(16) + 1) * 300 / 16
    assert (draws >= np.floor(lo)).all() and (draws < hi).all()  # frame floor(x) holds position x
    assert (draws.max(0) - draws.min(0) > 10).all()  # the offsets do explore each 18.75-frame chunk


def test_uniform_views_of_a_real_video(fixtures: Path) -> None:
    path = fixtures / "videos" / "cup.mp4"  # 640x480, 217 frames
    sampler = UniformSampler(num_frames=8, size=112, patch_size=14, temporal_slots=64, num_clips=2,
                             num_crops=3)
    views = sampler(Clip("cup", path, label=3), open_video(path))
    assert [v.view for v in views] == list(range(sampler.num_views)) == [0, 1, 2, 3, 4, 5]
    grid = 112 // 14
    for v in views:
        assert v.frames.shape == (8, 112, 112, 3) and v.frames.dtype == torch.uint8
        assert v.positions.shape == (8 * grid * grid, 3) and v.positions.dtype == torch.int64
        assert v.label == 3 and v.clip_id == "cup" and v.layout == "dense"
    # temporal view k takes fraction (k + 0.5) / 2 of each 27.125-frame chunk
    assert views[0].source_frames == [int((i + 0.25) * 217 / 8) for i in range(8)]
    assert views[3].source_frames == [int((i + 0.75) * 217 / 8) for i in range(8)]
    # positions: frame-major raster, t on the 64-slot grid at each decoded frame's own index
    pos = views[0].positions.view(8, grid, grid, 3)
    assert pos[:, 0, 0, 0].tolist() == original_slots(views[0].source_frames, 217).tolist()
    assert (pos[2, :, :, 1] == torch.arange(grid)[:, None]).all()
    assert (pos[2, :, :, 2] == torch.arange(grid)[None, :]).all()
    # the crops are the left, centre and right squares of the frames resized to shorter side 112
    frames = resize_shorter_side(open_video(path).get_frames(views[0].source_frames), 112)
    assert frames.shape == (8, 112, 149, 3)
    for v, position in zip(views[:3], (0.0, 0.5, 1.0), strict=True):
        assert torch.equal(v.frames, crop_square(frames, 112, position))
    assert not torch.equal(views[0].frames, views[2].frames)


def test_a_span_is_respected_and_a_short_stream_clamps_instead_of_failing(fixtures: Path) -> None:
    sampler = UniformSampler(num_frames=4, size=56, patch_size=14)
    cup = fixtures / "videos" / "cup.mp4"
    (view,) = sampler(Clip("cup", cup, 0, start_frame=100, end_frame=140))
    assert view.source_frames == [105, 115, 125, 135]
    assert view.positions[:, 0].unique().tolist() == [0, 1, 2, 3]  # no temporal grid: t = frame order
    tree = fixtures / "videos" / "tree.avi"  # the header says 444 frames, 68 decode
    (view,) = sampler(Clip("tree", tree, 0, start_frame=0, end_frame=444))
    assert view.source_frames == [8, 25, 42, 59]  # chunks of the 68 real frames
    (view,) = sampler(Clip("tree", tree, 0, start_frame=300, end_frame=444))
    assert view.source_frames == [67, 67, 67, 67]  # a span past the end repeats the last frame


def test_training_draws_are_random_but_reproducible(fixtures: Path) -> None:
    path = fixtures / "videos" / "tree.avi"
    sampler = UniformSampler(num_frames=8, size=56, patch_size=14)
    clip = Clip("tree", path, 1)
    draw = [sampler(clip, None, np.random.default_rng(s), train=True) for s in (0, 0, 1)]
    assert all(len(d) == 1 for d in draw)
    assert draw[0][0].source_frames == draw[1][0].source_frames
    assert torch.equal(draw[0][0].frames, draw[1][0].frames)
    assert draw[0][0].source_frames != draw[2][0].source_frames
    with pytest.raises(ValueError, match="rng"):
        sampler(clip, train=True)


def test_sampler_registry_and_argument_checks() -> None:
    assert "uniform" in list_samplers()
    sampler = create_sampler("uniform", num_frames=4, size=224, patch_size=16, temporal_slots=64)
    assert isinstance(sampler, UniformSampler)
    with pytest.raises(KeyError, match="uniform"):
        create_sampler("nope", num_frames=4, size=224, patch_size=16)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        UniformSampler(num_frames=4, size=100, patch_size=16)
