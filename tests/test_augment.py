"""Training views are real augmentations: own frames and own colour jitter per (seed, view, clip)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from probe.run.main import ViewSampler, augmentation_record, compose_config, view_rng
from tasks.clip import Clip
from tasks.sampling.augment import ColorJitter
from tasks.sampling.samplers import CodecSampler, UniformSampler


def test_jitter_follows_the_original_loaders_parameters() -> None:
    jitter = ColorJitter()
    draws = [jitter.draw(np.random.default_rng(i)) for i in range(2000)]
    for key, p in (("contrast", 0.8), ("saturation", 0.8), ("hue_degrees", 0.8)):
        assert abs(np.mean([d[key] is not None for d in draws]) - p) < 0.04
    assert abs(np.mean([d["bgr"] for d in draws]) - 0.1) < 0.03
    contrast = [d["contrast"] for d in draws if d["contrast"] is not None]
    assert 0.6 <= min(contrast) < 0.65 and 1.35 < max(contrast) <= 1.4
    assert all(-0.2 <= d["hue_degrees"] <= 0.2 for d in draws if d["hue_degrees"] is not None)
    assert all(d == {"brightness": None, "contrast": None, "saturation": None, "hue_degrees": None,
                     "bgr": False} for d in map(ColorJitter(enabled=False).draw,
                                                (np.random.default_rng(i) for i in range(50))))


def test_jitter_steps_do_what_dali_computes() -> None:
    grey = torch.full((2, 4, 4, 3), 100, dtype=torch.uint8)
    none = {"brightness": None, "contrast": None, "saturation": None, "hue_degrees": None, "bgr": False}
    # contrast about mid-grey 128, then brightness as an additive shift of the range (ours) ...
    out = ColorJitter().apply(grey, {**none, "brightness": 0.1, "contrast": 0.5})
    assert (out == round(128 + 0.5 * (100 - 128) + 25.5)).all()
    # ... or as DALI's multiplier, which is what the original's call computes
    out = ColorJitter(brightness_mode="multiplier").apply(grey, {**none, "brightness": 0.1, "contrast": 0.5})
    assert (out == round(0.1 * (128 + 0.5 * (100 - 128)))).all()
    rgb = torch.tensor([[[[200, 50, 10]]]], dtype=torch.uint8)
    assert ColorJitter().apply(rgb, {**none, "bgr": True}).flatten().tolist() == [10, 50, 200]
    grey_out = ColorJitter().apply(rgb, {**none, "saturation": 0.0}).flatten().tolist()
    assert max(grey_out) - min(grey_out) <= 1  # no chroma left: a grey of the same luma
    assert abs(grey_out[0] - (0.299 * 200 + 0.587 * 50 + 0.114 * 10)) <= 1
    assert torch.equal(ColorJitter().apply(rgb, {**none, "hue_degrees": 0.0}), rgb)


def _views(sampler, clip: Clip, seed: int, views: int = 2) -> list:
    out = ViewSampler(sampler, True, views, seed, jitter=ColorJitter())(clip)
    assert len(out) == views
    return out


@pytest.mark.parametrize("kind", ["uniform", "codec"])
def test_training_views_differ_per_clip_and_a_seed_reproduces_them(fixtures: Path, tmp_path, kind) -> None:
    if kind == "uniform":
        sampler = UniformSampler(num_frames=8, size=56, patch_size=14, temporal_slots=64)
    else:
        sampler = CodecSampler(num_frames=64, size=56, patch_size=14, temporal_slots=64, budget=256,
                               native_sparse=True, cache_dir=str(tmp_path / "codec"))
    clip = Clip("cup", fixtures / "videos" / "cup.mp4", 0)
    a, b = _views(sampler, clip, seed=0)
    assert a.source_frames != b.source_frames  # own frames
    assert not torch.equal(a.frames, b.frames)
    again = _views(sampler, clip, seed=0)
    for x, y in zip((a, b), again, strict=True):
        assert x.source_frames == y.source_frames and torch.equal(x.frames, y.frames)
        assert torch.equal(x.positions, y.positions)
    other = _views(sampler, clip, seed=1)
    assert other[0].source_frames != a.source_frames
    if kind == "codec":  # jittered frames within chunks of the 217-frame clip, one per slot
        assert len(a.source_frames) <= 64
        test_view = sampler(clip)[0]
        assert test_view.source_frames != a.source_frames


def test_the_record_says_how_views_were_augmented() -> None:
    config = compose_config([])
    clips = [Clip(f"c{i}", Path("x.mp4"), 0) for i in range(40)]
    record = augmentation_record(config, clips, views=2)
    assert record["views_per_clip"] == 2
    assert record["color_jitter"]["p_brightness_contrast"] == 0.8
    assert record["color_jitter"]["brightness_mode"] == "shift"
    drawn = record["color_jitter_drawn"]
    assert drawn["views"] == 80 and 0.6 < drawn["contrast"]["applied"] < 1.0
    assert 0.6 <= drawn["contrast"]["min"] and drawn["contrast"]["max"] <= 1.4
    # the jitter stream of a view is not the frame stream
    assert view_rng(0, 1, "c0").random() != view_rng(0, 1, "c0", stream=1).random()


def test_codec_training_frames_stay_distinct_and_in_their_chunks() -> None:
    from tasks.decode.codec import plan_slots

    rng = np.random.default_rng(0)
    for n in (64, 65, 100, 217, 1000):
        bounds = np.arange(65) * n // 64
        for _ in range(20):
            frames, slots = plan_slots(n, 64, rng.random(64))
            assert (np.diff(frames) > 0).all() and slots.tolist() == list(range(64))
            assert (frames >= bounds[:-1]).all() and (frames < bounds[1:]).all()
    frames, slots = plan_slots(40, 64, rng.random(64))  # shorter than the run: every frame once, no jitter
    assert frames.tolist() == list(range(40))
