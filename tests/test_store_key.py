"""Stores and runs keyed by the videos themselves: other videos under the same names are another store
and another run, the same videos in another folder reuse, and a store's labels are the task's."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import encode_h264, fixtures_dir
from test_features import CLIPS, CountingBackbone, _all_pairs, _extract
from test_run import encode_calls, small  # noqa: F401  (encode_calls: a fixture)

import probe.store.features
from probe.run.main import run
from probe.store.features import (
    VIDEO_SAMPLE,
    FeatureStore,
    clips_digest,
    video_fingerprint,
    video_fingerprints,
)
from tasks.clip import Clip

SIZE = (96, 72)
NAMES = [f"v{i}.mp4" for i in range(10)]  # v0..v7 train, v8 v9 test; labels alternate 0, 1


@pytest.fixture(scope="module")
def frames() -> list[list[np.ndarray]]:
    """Ten 16-frame pieces of the fixture `cup.mp4`."""
    with av.open(str(fixtures_dir() / "videos" / "cup.mp4")) as source:
        decoded = source.decode(video=0)
        every = [next(decoded).reformat(*SIZE).to_ndarray(format="rgb24") for _ in range(10 * 20)]
    return [every[i * 20 : i * 20 + 16] for i in range(10)]


@pytest.fixture(scope="module")
def pieces(tmp_path_factory: pytest.TempPathFactory, frames: list[list[np.ndarray]]) -> list[Path]:
    """The ten pieces as mp4 files."""
    folder = tmp_path_factory.mktemp("pieces")
    return [encode_h264(folder / f"p{i}.mp4", piece) for i, piece in enumerate(frames)]


def _folder(folder: Path, pieces: list[Path], order: list[int]) -> list[str]:
    """`NAMES[i]` holds piece `order[i]`; the same list files (names and labels) whatever the order."""
    folder.mkdir()
    for name, piece in zip(NAMES, order, strict=True):
        shutil.copy(pieces[piece], folder / name)
    for split, names in (("train", NAMES[:8]), ("test", NAMES[8:])):
        (folder / f"{split}.txt").write_text("".join(f"{n} {i % 2}\n" for i, n in enumerate(names)))
    return ["task=list", f"task.args.splits.train={folder / 'train.txt'}",
            f"task.args.splits.test={folder / 'test.txt'}"]


def test_other_videos_under_the_same_names_are_another_store_and_run(
    tmp_path: Path, pieces: list[Path], encode_calls: list[int]  # noqa: F811
) -> None:
    a = run(small(tmp_path, *_folder(tmp_path / "a", pieces, list(range(10)))))
    encoded = sum(encode_calls)
    # b: a's videos swapped between the classes (v0 <-> v1, ...), under the same list files
    encode_calls.clear()
    b = run(small(tmp_path, *_folder(tmp_path / "b", pieces, [1, 0, 3, 2, 5, 4, 7, 6, 9, 8])))
    assert b["run_id"] != a["run_id"] and sum(encode_calls) == encoded  # all computed again
    for role in ("train", "eval"):
        assert b["identity"][f"{role}_clips"] != a["identity"][f"{role}_clips"]
        assert b["data"][f"{role}_features"] != a["data"][f"{role}_features"]
    # b's test clip v8 holds a's v9: its tokens (eval views are drawn alike for every clip), not v8's
    # (equal up to float16 and batching: b encodes its clips in another batch order)
    store_a, store_b = (FeatureStore(Path(r["data"]["eval_features"])) for r in (a, b))
    first_views = np.zeros(2, dtype=np.int64)
    swapped = store_b.batch(np.array([1, 0]), first_views).tokens
    assert torch.allclose(swapped, store_a.batch(np.array([0, 1]), first_views).tokens, atol=1e-2)
    assert not torch.allclose(swapped, store_b.batch(np.array([0, 1]), first_views).tokens, atol=1e-2)

    # the same videos copied to another folder: the stores are reused, nothing is encoded (the run is
    # another: its config names other list files)
    encode_calls.clear()
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    for split in ("train", "test"):
        (tmp_path / "copy" / f"{split}.txt").write_text((tmp_path / "a" / f"{split}.txt").read_text())
    c = run(small(tmp_path, "task=list", f"task.args.splits.train={tmp_path / 'copy' / 'train.txt'}",
                  f"task.args.splits.test={tmp_path / 'copy' / 'test.txt'}"))
    assert c["identity"] == a["identity"] and sum(encode_calls) == 0 and c["run_id"] != a["run_id"]
    assert (c["data"]["train_features"], c["data"]["eval_features"]) == (
        a["data"]["train_features"], a["data"]["eval_features"])


def test_a_reencoded_or_edited_video_changes_its_fingerprint_and_a_copy_does_not(
    tmp_path: Path, frames: list[list[np.ndarray]]
) -> None:
    video = fixtures_dir() / "videos" / "cup.mp4"
    size = video.stat().st_size
    assert size > 3 * VIDEO_SAMPLE  # sampled, not read whole
    fp = video_fingerprint(video)
    shutil.copy(video, tmp_path / "copy.mp4")
    assert video_fingerprint(tmp_path / "copy.mp4") == fp
    middle = bytearray(video.read_bytes())
    middle[size // 2] ^= 0xFF  # same size, one byte of the middle block
    (tmp_path / "edited.mp4").write_bytes(middle)
    assert video_fingerprint(tmp_path / "edited.mp4") != fp
    every = [f for piece in frames for f in piece]
    assert video_fingerprint(encode_h264(tmp_path / "crf23.mp4", every, crf=23)) != video_fingerprint(
        encode_h264(tmp_path / "crf30.mp4", every, crf=30))
    # the fingerprint is the size and the sha256 of the three blocks, computed here independently
    data = video.read_bytes()
    blocks = [data[:VIDEO_SAMPLE], data[(size - VIDEO_SAMPLE) // 2 :][:VIDEO_SAMPLE], data[-VIDEO_SAMPLE:]]
    assert fp == f"{size}-{hashlib.sha256(str(size).encode() + b''.join(blocks)).hexdigest()[:16]}"
    small_file = tmp_path / "small.bin"
    small_file.write_bytes(data[: 3 * VIDEO_SAMPLE - 1])
    whole = hashlib.sha256(str(3 * VIDEO_SAMPLE - 1).encode() + small_file.read_bytes()).hexdigest()[:16]
    assert video_fingerprint(small_file) == f"{3 * VIDEO_SAMPLE - 1}-{whole}"
    assert video_fingerprint(tmp_path / "absent.mp4") is None


def test_clips_digest_holds_each_video_and_skips_absent_ones(tmp_path: Path) -> None:
    (tmp_path / "x.mp4").write_bytes(b"one video")
    (tmp_path / "y.mp4").write_bytes(b"another video")
    clip = Clip("c", tmp_path / "x.mp4", 1)
    swapped = Clip("c", tmp_path / "y.mp4", 1)
    absent = Clip("c", tmp_path / "absent.mp4", 1)
    assert len({clips_digest([clip]), clips_digest([swapped]), clips_digest([absent])}) == 3
    # an absent video adds nothing: the digest of the clip alone, as before videos entered it
    assert clips_digest([absent]) == hashlib.sha256(b'[["c",1]]').hexdigest()


def test_cached_fingerprints_cost_a_stat_until_the_file_changes(tmp_path: Path, monkeypatch) -> None:
    source = fixtures_dir() / "videos"
    videos = [shutil.copyfile(source / name, tmp_path / name) for name in ("cup.mp4", "tree.avi")]
    cache = tmp_path / "fingerprints.json"
    read: list[str] = []
    real = probe.store.features.video_fingerprint
    monkeypatch.setattr(probe.store.features, "video_fingerprint", lambda p: read.append(p) or real(p))
    first = video_fingerprints(videos, cache)
    assert len(read) == 2 and first == {str(v): real(v) for v in videos}
    assert not cache.exists()  # files changed in the last RECENT_NS are not cached: their times tick coarsely
    monkeypatch.setattr(probe.store.features, "RECENT_NS", 0)
    video_fingerprints(videos, cache)
    read.clear()
    assert video_fingerprints(videos, cache) == first and read == []  # a stat each, no read

    # the same size, the same mtime, other bytes: the ctime moved, so the file is read again
    mtime = videos[0].stat().st_mtime_ns
    data = bytearray(videos[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    time.sleep(0.02)  # past the coarse tick of file times (RECENT_NS guards this in use)
    videos[0].write_bytes(data)
    os.utime(videos[0], ns=(mtime, mtime))
    again = video_fingerprints(videos, cache)
    assert read == [str(videos[0])] and again[str(videos[0])] != first[str(videos[0])]
    # replaced by another file (a new inode): read again
    read.clear()
    shutil.copyfile(source / "Megamind.avi", tmp_path / "other.avi")
    (tmp_path / "other.avi").replace(videos[1])
    assert video_fingerprints(videos, cache)[str(videos[1])] == real(source / "Megamind.avi")
    assert read == [str(videos[1])]


def test_a_store_whose_labels_were_edited_by_hand_is_not_trusted(tmp_path: Path, caplog) -> None:
    backbone = CountingBackbone()
    store = _extract(backbone, tmp_path)
    labels = [c.label for c in CLIPS]
    tokens = _all_pairs(store)[2].tokens
    manifest_path = store.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for shard in manifest["shards"]:
        shard["labels"] = [(y + 1) % 3 for y in shard["labels"]]  # flipped
    manifest_path.write_text(json.dumps(manifest))
    assert FeatureStore(store.path).labels.tolist() != labels  # what a run would have trained on
    backbone.encoded = 0
    with caplog.at_level(logging.WARNING, logger="probe.store.features"):
        again = _extract(backbone, tmp_path)
    assert backbone.encoded == 0  # the shards are sound: the manifest is written again from them
    assert "manifest.json differs from its shards" in caplog.text
    assert again.labels.tolist() == labels
    assert json.loads(manifest_path.read_text())["shards"][0]["labels"] == labels[:4]

    sidecar_path = store.path / "shard_00001.json"
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["labels"] = [(y + 1) % 3 for y in sidecar["labels"]]
    sidecar_path.write_text(json.dumps(sidecar))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="probe.store.features"):
        repaired = _extract(backbone, tmp_path)
    assert backbone.encoded == 4 * 2  # shard 1 only: 4 clips x 2 views
    assert "shard 1 lists other clips or labels than the task" in caplog.text
    assert repaired.labels.tolist() == labels and torch.equal(_all_pairs(repaired)[2].tokens, tokens)


def test_a_changed_codec_analysis_keys_new_stores_and_a_new_run(tmp_path: Path, encode_calls,  # noqa: F811
                                                                monkeypatch) -> None:
    """A new codec map version (the analysis changed its maps, the config did not) encodes again instead
    of reusing tokens selected from the old maps; the same version reuses."""
    import tasks.sampling.samplers as samplers

    config = small(tmp_path, "sampling=codec", "sampling.args.num_frames=16")
    first = run(config)
    encoded = sum(encode_calls)
    assert encoded > 0
    encode_calls.clear()
    assert run(config)["run_id"] == first["run_id"] and encode_calls == []
    monkeypatch.setattr(samplers, "CACHE_VERSION", samplers.CACHE_VERSION + 1)
    assert run(config)["run_id"] != first["run_id"]
    assert sum(encode_calls) == encoded
