"""The feature store: reuse, resume after a kill, checksum repair, padding, dtypes, a real backbone."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from itertools import islice
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch import nn

from backbones.base import Backbone, PreprocessSpec
from backbones.registry import create_backbone
from probe.store.features import (
    FeatureStore,
    NonFiniteTokensError,
    _canonical,
    clips_digest,
    extract_features,
)
from tasks.clip import Clip, SampledClip

PATCH, FRAMES, SIDE = 4, 2, 2  # 2 frames of 2x2 patches of 4x4 pixels: 8 tokens per view


class CountingBackbone(Backbone):
    """A deterministic toy encoder (patch mean and position through a fixed linear map) that counts views."""

    name = "counting"
    patch_size = PATCH
    embed_dim = 8
    preprocess = PreprocessSpec((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), SIDE * PATCH)

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, self.embed_dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.linspace(-1, 1, 32).view(8, 4))
            self.proj.bias.copy_(torch.linspace(0, 1, 8))
        self.encoded = 0

    def encode(self, frames: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.encoded += frames.shape[0]
        b, t, h, w, _ = frames.shape
        means = frames.float().view(b, t, h // PATCH, PATCH, w // PATCH, PATCH, 3).mean((3, 5, 6)) / 255
        pt, ph, pw = positions.unbind(-1)
        picked = means[torch.arange(b)[:, None], pt, ph, pw]
        return self.proj(torch.stack([picked, pt.float(), ph.float(), pw.float()], -1))

    def fingerprint(self) -> str:
        return "counting-v1"


def _grid(t: int, h: int, w: int) -> torch.Tensor:
    return torch.stack(
        torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"), -1
    ).view(-1, 3)


class Interrupted(Exception):
    pass


def make_sampler(
    views: int,
    tokens: Callable[[int, int], int] = lambda i, v: FRAMES * SIDE * SIDE,
    fail_at: int | None = None,
) -> Callable[[Clip], list[SampledClip]]:
    """Views with seeded random pixels; `tokens(i, v)` keeps that many of the 8 positions."""

    def sample(clip: Clip) -> list[SampledClip]:
        i = int(clip.clip_id[1:])
        if i == fail_at:
            raise Interrupted(clip.clip_id)
        out = []
        for v in range(views):
            g = torch.Generator().manual_seed(1000 * i + v)
            frames = torch.randint(
                0, 256, (FRAMES, SIDE * PATCH, SIDE * PATCH, 3), generator=g, dtype=torch.uint8
            )
            positions = _grid(FRAMES, SIDE, SIDE)[: tokens(i, v)]
            out.append(SampledClip(clip.clip_id, clip.label, frames, positions, view=v))
        return out

    return sample


CLIPS = [Clip(f"c{i}", Path(f"/videos/{i}.mp4"), label=i % 3) for i in range(10)]
SETTINGS = dict(task="toy", split="train", sampling={"kind": "uniform", "frames": FRAMES}, seed=0, views=2)


def _extract(backbone: Backbone, root: Path, sampler=None, **overrides) -> FeatureStore:
    kwargs = {**SETTINGS, "shard_size": 4, "batch_size": 3, "progress": False, **overrides}
    return extract_features(backbone, CLIPS, sampler or make_sampler(kwargs["views"]), root=root, **kwargs)


def _all_pairs(store: FeatureStore):
    clips = np.repeat(np.arange(store.num_clips), store.num_views)
    views = np.tile(np.arange(store.num_views), store.num_clips)
    return clips, views, store.batch(clips, views)


def _direct(backbone: Backbone, sampler, clips: np.ndarray, views: np.ndarray) -> list[torch.Tensor]:
    out = []
    for c, v in zip(clips, views, strict=True):
        sc = sampler(CLIPS[c])[v]
        out.append(backbone.encode(sc.frames[None], sc.positions[None])[0].detach())
    return out


def test_store_matches_backbone_and_is_reused(tmp_path: Path) -> None:
    backbone = CountingBackbone()
    store = _extract(backbone, tmp_path)
    assert backbone.encoded == 20  # 10 clips x 2 views, once
    assert (store.num_clips, store.num_views, store.num_tokens, store.embed_dim) == (10, 2, 8, 8)
    assert store.clip_ids == [c.clip_id for c in CLIPS]
    assert store.labels.tolist() == [c.label for c in CLIPS]
    assert store.temporal_extent == FRAMES
    manifest = json.loads((store.path / "manifest.json").read_text())
    assert manifest["complete"] and manifest["dtype"] == "float16"
    assert manifest["backbone_identity"]["weights"] == "counting-v1"
    assert [len(s["clips"]) for s in manifest["shards"]] == [4, 4, 2]
    assert np.load(store.path / "shard_00000.tokens.npy", mmap_mode="r").dtype == np.float16

    clips, views, batch = _all_pairs(store)
    expected = _direct(backbone, make_sampler(2), clips, views)
    torch.testing.assert_close(batch.tokens, torch.stack(expected), rtol=2e-3, atol=2e-3)  # float16 on disk
    assert batch.mask.all() and batch.labels.tolist() == [CLIPS[c].label for c in clips]
    assert torch.equal(batch.positions[3], _grid(FRAMES, SIDE, SIDE))

    stats = store.extraction
    assert (stats.clips, stats.skipped, stats.views, stats.tokens) == (10, 0, 20, 20 * 8)
    assert stats.bytes_written == sum(f["bytes"] for s in manifest["shards"] for f in s["files"].values())
    assert stats.encode_s > 0 and stats.wait_s > 0 and stats.write_s > 0
    assert stats.total_s >= stats.encode_s + stats.wait_s + stats.write_s

    backbone.encoded = 0
    again = _extract(backbone, tmp_path)
    assert backbone.encoded == 0 and again.path == store.path
    assert again.extraction.clips == 0 and again.extraction.encode_s == 0  # reused: nothing computed
    assert torch.equal(again.batch(clips, views).tokens, batch.tokens)

    other = _extract(backbone, tmp_path, seed=1)  # another key: another store
    assert other.path != store.path and backbone.encoded == 20


def test_killed_extraction_resumes_by_shard(tmp_path: Path) -> None:
    backbone = CountingBackbone()
    with pytest.raises(Interrupted):
        _extract(backbone, tmp_path / "a", make_sampler(2, fail_at=9))  # dies inside the last shard
    (path,) = (tmp_path / "a").iterdir()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        FeatureStore(path)
    assert sorted(p.name for p in path.glob("shard_*.json")) == ["shard_00000.json", "shard_00001.json"]

    backbone.encoded = 0
    resumed = _extract(backbone, tmp_path / "a", num_workers=2)
    assert backbone.encoded == 2 * 2  # only clips 8 and 9 of the unfinished shard
    assert (resumed.extraction.clips, resumed.extraction.views) == (2, 4)
    fresh = _extract(CountingBackbone(), tmp_path / "b")
    assert torch.equal(_all_pairs(resumed)[2].tokens, _all_pairs(fresh)[2].tokens)
    assert resumed.manifest["shards"] == fresh.manifest["shards"]  # same bytes, same checksums


def test_corrupted_shard_is_recomputed(tmp_path: Path) -> None:
    backbone = CountingBackbone()
    store = _extract(backbone, tmp_path)
    before = _all_pairs(store)[2].tokens
    shard = store.path / "shard_00001.tokens.npy"
    data = bytearray(shard.read_bytes())
    data[-16:] = bytes(16)  # same size, different content
    shard.write_bytes(bytes(data))

    backbone.encoded = 0
    repaired = _extract(backbone, tmp_path)
    assert backbone.encoded == 4 * 2  # shard 1 only
    assert torch.equal(_all_pairs(repaired)[2].tokens, before)
    assert (repaired.path / "manifest.json").is_file()


def test_variable_token_counts_are_padded_with_a_mask(tmp_path: Path) -> None:
    def tokens(i: int, v: int) -> int:
        return 5 if i < 4 else 8 - v  # shard 0 holds 5 tokens per view, the others up to 8

    sampler = make_sampler(2, tokens)
    store = _extract(CountingBackbone(), tmp_path, sampler)
    assert store.num_tokens == 8
    assert [s["num_tokens"] for s in store.manifest["shards"]] == [5, 8, 8]
    clips, views, batch = _all_pairs(store)
    assert batch.tokens.shape == (20, 8, 8)
    counts = [tokens(c, v) for c, v in zip(clips, views, strict=True)]
    assert batch.mask.sum(1).tolist() == counts
    for row, (n, ref) in enumerate(
        zip(counts, _direct(CountingBackbone(), sampler, clips, views), strict=True)
    ):
        torch.testing.assert_close(batch.tokens[row, :n], ref, rtol=2e-3, atol=2e-3)
        assert not batch.tokens[row, n:].any() and not batch.positions[row, n:].any()


def test_bfloat16_store(tmp_path: Path) -> None:
    backbone = CountingBackbone()
    store = _extract(backbone, tmp_path, dtype="bfloat16")
    assert store.manifest["dtype"] == "bfloat16"
    clips, views, batch = _all_pairs(store)
    expected = torch.stack(_direct(backbone, make_sampler(2), clips, views))
    torch.testing.assert_close(batch.tokens, expected.bfloat16().float(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown"):
        _extract(backbone, tmp_path, dtype="float8")


def test_sampler_must_return_the_declared_views(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="clip 'c0': sampler returned 1 views, the store expects 2"):
        _extract(CountingBackbone(), tmp_path, make_sampler(1))


def test_onevision_tiny_tokens_through_the_store(tmp_path: Path, fixtures: Path) -> None:
    backbone = create_backbone("onevision_tiny")
    size, hp = backbone.preprocess.size, backbone.preprocess.size // backbone.patch_size
    with av.open(str(fixtures / "videos" / "cup.mp4")) as container:
        decoded = [
            f.to_ndarray(format="rgb24", width=size, height=size)
            for f in islice(container.decode(video=0), 48)
        ]
    video = torch.from_numpy(np.stack(decoded))
    clips = [
        Clip(f"cup{i}", fixtures / "videos" / "cup.mp4", label=i % 2, start_frame=12 * i) for i in range(4)
    ]
    positions = _grid(4, hp, hp)
    positions[:, 0] *= 21  # 4 frames spread over the 64 temporal slots

    def sample(clip: Clip) -> list[SampledClip]:
        frames = video[clip.start_frame : clip.start_frame + 12 : 3]
        return [SampledClip(clip.clip_id, clip.label, frames, positions)]

    store = extract_features(
        backbone,
        clips,
        sample,
        root=tmp_path,
        task="cup",
        split="test",
        sampling={"frames": 4},
        seed=0,
        shard_size=3,
        batch_size=2,
        progress=False,
    )
    assert (store.num_tokens, store.embed_dim, store.temporal_extent) == (4 * hp * hp, 128, 64)
    batch = store.batch(np.arange(4), np.zeros(4, dtype=int))
    with torch.inference_mode():
        expected = backbone.encode(
            torch.stack([sample(c)[0].frames for c in clips]), positions.expand(4, -1, -1)
        )
    torch.testing.assert_close(batch.tokens, expected.float(), rtol=1e-2, atol=1e-2)
    assert torch.equal(batch.positions[2], positions)


class ScaledBackbone(CountingBackbone):
    """The toy encoder with tokens scaled past float16's range, or NaN from one clip on."""

    def __init__(self, scale: float, nan_from: int | None = None) -> None:
        super().__init__()
        self.scale, self.nan_from = scale, nan_from

    def encode(self, frames: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = super().encode(frames, positions) * self.scale
        if self.nan_from is not None and self.encoded > self.nan_from:
            out[-1, 0, 0] = float("nan")
        return out


def test_tokens_beyond_the_store_dtype_are_an_error_naming_the_clip(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteTokensError, match=r"clip 'c0' view 0 .* set extract.dtype=bfloat16"):
        _extract(ScaledBackbone(1e5), tmp_path / "fp16")
    store = _extract(ScaledBackbone(1e5), tmp_path / "bf16", dtype="bfloat16")  # the suggested fix works
    assert torch.isfinite(_all_pairs(store)[2].tokens).all()
    with pytest.raises(NonFiniteTokensError, match=r"clip 'c1' view 1 .*as computed by the backbone"):
        _extract(ScaledBackbone(1.0, nan_from=2), tmp_path / "nan", batch_size=2)


def test_an_edited_segment_gets_features_of_its_own_not_the_old_spans():
    frames = [Clip("P01_01_3", Path("P01_01.MP4"), 4, start_frame=100, end_frame=160)]
    longer = [replace(frames[0], end_frame=180)]
    seconds = [replace(frames[0], start_frame=None, end_frame=None, start_time=4.0, end_time=6.4)]
    assert len({clips_digest(frames), clips_digest(longer), clips_digest(seconds)}) == 3
    # Whole videos keep the digest (and so the stores and run ids) they had before spans entered it.
    whole = [Clip("v1", Path("v1.mp4"), 2)]
    assert clips_digest(whole) == hashlib.sha256(_canonical([["v1", 2]]).encode()).hexdigest()
