"""Nothing silently wrong under damaged data and faults: damaged copies of real clips, damaged feature
shards, clips that vanish for one run, hand-written list files, full disks and two runs at once."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import fixtures_dir
from test_features import CountingBackbone, _all_pairs, _extract
from test_run import small
from test_train import FAST, FRAMES, TIMED, temporal_order_features

import probe.run
from probe.run import run
from probe.train import NonFiniteLossError, train_probe_grid
from tasks import VideoDecodeError

SIZE = (160, 120)


def _encode(path: Path, frames: list[np.ndarray], faststart: bool = False) -> Path:
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=options) as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def cup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight 32-frame clips cut from the fixture `cup.mp4` (160x120), a copy of one with 1 KB of its
    media data overwritten, and a faststart copy (index first) cut in the middle of its media data."""
    folder = tmp_path_factory.mktemp("cup")
    with av.open(str(fixtures_dir() / "videos" / "cup.mp4")) as source:
        decoded = source.decode(video=0)
        frames = [next(decoded).reformat(*SIZE).to_ndarray(format="rgb24") for _ in range(200)]
    for i in range(8):
        _encode(folder / f"cup{i}.mp4", frames[i * 24 : i * 24 + 32], faststart=i == 0)
    data = bytearray((folder / "cup0.mp4").read_bytes())
    media = data.find(b"mdat") + 4
    middle = (media + len(data)) // 2
    data[middle : middle + 1024] = np.random.default_rng(0).integers(0, 256, 1024, np.uint8).tobytes()
    (folder / "damaged.mp4").write_bytes(data)
    (folder / "cut.mp4").write_bytes((folder / "cup0.mp4").read_bytes()[:middle])
    return folder


def list_task(folder: Path, train: list[str], test: list[str], *extra: str) -> list[str]:
    """Overrides for `task=list` over `folder` (labels alternate 0, 1)."""
    for split, names in (("train", train), ("test", test)):
        (folder / f"{split}.txt").write_text("".join(f"{n} {i % 2}\n" for i, n in enumerate(names)))
    return ["task=list", f"task.args.splits.train={folder / 'train.txt'}",
            f"task.args.splits.test={folder / 'test.txt'}", *extra]


CODEC = ("sampling=codec", "sampling.frames_equiv=2", "sampling.args.num_frames=16")


def test_damaged_mp4s_under_codec_sampling_are_skipped_or_named(tmp_path: Path, cup: Path) -> None:
    train = [f"cup{i}.mp4" for i in range(6)] + ["damaged.mp4", "cut.mp4"]
    test = ["cup6.mp4", "damaged.mp4", "cup7.mp4", "cut.mp4"]
    task = list_task(cup, train, test)
    record = run(small(tmp_path, *task, *CODEC, "on_bad_clip=skip", "num_workers=1"))
    for split in ("train", "eval"):
        skipped = record["skipped_clips"][split]
        assert sorted(skipped) == ["cut.mp4", "damaged.mp4"]
        for name, reason in skipped.items():
            assert reason.startswith(f"cannot decode video {cup / name}: ")
            assert "Invalid data found" in reason
    assert record["data"]["train_clips"] == 6 and record["data"]["eval_clips"] == 2

    with pytest.raises(VideoDecodeError, match=r"damaged\.mp4: .*set on_bad_clip='skip'") as caught:
        run(small(tmp_path / "strict", *task, *CODEC, "on_bad_clip=error", "num_workers=1"))
    assert "DataLoader worker" not in str(caught.value) and "\n" not in str(caught.value)


# ---- damaged feature shards -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_nan_written_into_a_stored_shard_is_found_and_the_shard_recomputed(
    tmp_path: Path, dtype: str, caplog
) -> None:
    backbone = CountingBackbone()
    first = _all_pairs(_extract(backbone, tmp_path, dtype=dtype))[2].tokens
    (store,) = tmp_path.iterdir()
    tokens = np.load(store / "shard_00001.tokens.npy", mmap_mode="r+")  # same size, one value changed
    tokens[2, 1, 3, 4] = np.float16("nan") if dtype == "float16" else np.int16(0x7FC0)
    tokens.flush()
    del tokens

    backbone.encoded = 0
    reread = _extract(backbone, tmp_path, dtype=dtype, verify=False)  # the run's default
    assert backbone.encoded == 4 * 2  # shard 1 only: 4 clips x 2 views
    assert f"feature store {store}: shard 1 holds NaN or infinite tokens" in caplog.text
    assert torch.equal(_all_pairs(reread)[2].tokens, first)


def test_a_probe_whose_loss_is_not_finite_stops_the_run_naming_the_features() -> None:
    train = temporal_order_features(40, views=1, seed=3)
    train.tokens[5, 0, 1, 2] = np.nan
    test = temporal_order_features(10, views=1, seed=4)
    with pytest.raises(NonFiniteLossError, match=rf"lr=.* \(nan\) is not finite in epoch 1, on features "
                       rf"{train.fingerprint}: the stored tokens may hold NaN"):
        train_probe_grid(train, test, FRAMES, TIMED, FAST, progress=False)


# ---- clips missing for one run --------------------------------------------------------------------------


def test_a_clip_missing_for_one_run_is_encoded_once_back(tmp_path: Path, cup: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    shutil.copytree(cup, data)
    task = list_task(data, [f"cup{i}.mp4" for i in range(6)], ["cup6.mp4", "cup7.mp4"])
    missing, away = data / "cup3.mp4", tmp_path / "away.mp4"
    extract = probe.run.extract

    def file_system_hiccup(config, backbone, task, split, sampler, train):  # after the list was read
        if train:
            task.clips(split)
            missing.rename(away)
        return extract(config, backbone, task, split, sampler, train)

    monkeypatch.setattr(probe.run, "extract", file_system_hiccup)
    first = run(small(tmp_path, *task))
    assert first["skipped_clips"]["train"] == {"cup3.mp4": f"cannot decode video {missing}: no such file"}
    assert first["unreadable_clips"]["train"] == {"cup3.mp4": str(missing)}
    assert first["data"]["train_clips"] == 5

    monkeypatch.setattr(probe.run, "extract", extract)
    away.rename(missing)
    again = run(small(tmp_path, *task))  # on_existing=reuse: not while a skipped clip is readable again
    assert again["run_id"] == first["run_id"] + "-r2"
    assert again["retried_clips"] == {"train": ["cup3.mp4"], "eval": []}
    assert again["skipped_clips"] == {"train": {}, "eval": {}} and again["data"]["train_clips"] == 6
    assert run(small(tmp_path, *task))["run_id"] == again["run_id"]  # nothing to retry: reused
