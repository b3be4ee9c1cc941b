"""Nothing silently wrong under damaged data and faults: damaged copies of real clips, damaged feature
shards, clips that vanish for one run, hand-written list files, full disks and two runs at once."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, encode_h264, fixtures_dir
from test_features import CountingBackbone, _all_pairs, _extract
from test_run import small, small_overrides
from test_train import FAST, FRAMES, TIMED, temporal_order_features

import probe.record
import probe.run.main
from probe.files import DiskFullError, InUseError, exclusive
from probe.record import run_id
from probe.run.main import compose_config, run
from probe.training.train import NonFiniteLossError, train_probe_grid
from tasks import AnnotationError, VideoDecodeError, create_task, open_video
from tasks.datasets.synthetic import SyntheticConfig, generate
from tasks.decode.video import resize_shorter_side

SIZE = (160, 120)


@pytest.fixture(scope="module")
def cup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight 32-frame clips cut from the fixture `cup.mp4` (160x120), a copy of one with 1 KB of its
    media data overwritten, and a faststart copy (index first) cut in the middle of its media data."""
    folder = tmp_path_factory.mktemp("cup")
    with av.open(str(fixtures_dir() / "videos" / "cup.mp4")) as source:
        decoded = source.decode(video=0)
        frames = [next(decoded).reformat(*SIZE).to_ndarray(format="rgb24") for _ in range(200)]
    for i in range(8):
        encode_h264(folder / f"cup{i}.mp4", frames[i * 24 : i * 24 + 32], faststart=i == 0)
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
    extract = probe.run.main.extract

    def file_system_hiccup(config, backbone, task, split, sampler, train, **kwargs):  # after the listing
        if train:
            task.clips(split)
            missing.rename(away)
        return extract(config, backbone, task, split, sampler, train, **kwargs)

    monkeypatch.setattr(probe.run.main, "extract", file_system_hiccup)
    first = run(small(tmp_path, *task))
    assert first["skipped_clips"]["train"] == {"cup3.mp4": f"cannot decode video {missing}: no such file"}
    assert first["unreadable_clips"]["train"] == {"cup3.mp4": str(missing)}
    assert first["data"]["train_clips"] == 5

    monkeypatch.setattr(probe.run.main, "extract", extract)
    away.rename(missing)
    again = run(small(tmp_path, *task))  # on_existing=reuse: not while a skipped clip is readable again
    assert again["run_id"] == first["run_id"] + "-r2"
    assert again["retried_clips"] == {"train": ["cup3.mp4"], "eval": []}
    assert again["skipped_clips"] == {"train": {}, "eval": {}} and again["data"]["train_clips"] == 6
    assert run(small(tmp_path, *task))["run_id"] == again["run_id"]  # nothing to retry: reused


# ---- list files written by hand -------------------------------------------------------------------------

TEST = b"c.mp4 0\nd.mp4 1\n"
BOM = b"\xef\xbb\xbf"
# case: (train list, test list, classes file, expected: an error's regex, or what the task holds)
LIST_MISTAKES = {
    "numeric class names are names": (b"a.mp4 20\nb.mp4 10\n", b"c.mp4 10\n", b"10\n20\n",
                                      {"labels": [1, 0]}),
    "numeric class names, an index label": (
        b"a.mp4 20\nb.mp4 1\n", b"c.mp4 10\n", b"10\n20\n",
        r"train.txt line 2: label '1' is neither .* nor a class name \(class names are numbers here"),
    "a typo label without classes": (
        b"a.mp4 0\nb.mp4 1\nb2.mp4 99\n", TEST, None,
        r"train.txt line 3: label 99 leaves 97 class\(es\) without any clip \(e.g. 2\)"),
    "labels from 1": (b"a.mp4 1\nb.mp4 2\n", b"c.mp4 1\nd.mp4 2\n", None,
                      r"labels count from 1 \(no clip has label 0, e.g. .*train.txt line 1\)"),
    "a class named twice": (b"a.mp4 cat\n", TEST, b"cat\ndog\ncat\n",
                            r"classes.txt line 3: class name 'cat' repeats .*classes.txt line 1"),
    "one file twice": (b"a.mp4 0\n./a.mp4 1\nb.mp4 1\n", TEST, None,
                       r"train.txt line 2: video ./a.mp4 is a.mp4 of .*train.txt line 1 again"),
    "train and test overlap": (
        b"a.mp4 0\nb.mp4 1\n", b"c.mp4 0\na.mp4 0\nd.mp4 1\n", None,
        {"warning": r"^1 of 3 test clips \(.*test.txt\) are also in train .* e.g. a.mp4"}),
    "a byte-order mark": (b"a.mp4 cat\nb.mp4 dog\n", BOM + b"c.mp4 dog\n", BOM + b"cat\ndog\n",
                          {"labels": [0, 1], "classes": ["cat", "dog"]}),
    "a latin-1 byte": (b"a.mp4 0\nb\xe9.mp4 1\n", TEST, None,
                       r"list file .*train.txt line 2: byte 0xe9 at column 2 is not UTF-8"),
    "a path outside the data": (
        b"a.mp4 0\n../../etc/hostname 1\n", TEST, None,
        r"train.txt line 2: video path ../../etc/hostname leads outside the list file's folder"),
    "an empty list": (b"\n\n", TEST, None, r"list file .*train.txt is empty"),
    "a folder named x.mp4": (b"a.mp4 0\nx.mp4 1\n", TEST, None,
                             r"train.txt line 2 \(clip x.mp4\): video .*x.mp4 is a folder, not a video file"),
}


@pytest.mark.parametrize("case", LIST_MISTAKES)
def test_list_file_mistakes_are_named_or_recorded(tmp_path: Path, case: str) -> None:
    train, test, classes, expected = LIST_MISTAKES[case]
    for name in ("a", "b", "b2", "c", "d"):
        (tmp_path / f"{name}.mp4").write_bytes(b"video")
    (tmp_path / "x.mp4").mkdir()
    (tmp_path / "train.txt").write_bytes(train)
    (tmp_path / "test.txt").write_bytes(test)
    if classes is not None:
        (tmp_path / "classes.txt").write_bytes(classes)

    def clips():
        task = create_task("list", splits={"train": tmp_path / "train.txt", "test": tmp_path / "test.txt"},
                           classes=None if classes is None else tmp_path / "classes.txt")
        return task, task.clips("train"), task.clips("test")

    if isinstance(expected, str):
        with pytest.raises(AnnotationError, match=expected):
            clips()
        return
    task, train_clips, _ = clips()
    assert [c.label for c in train_clips] == expected.get("labels", [c.label for c in train_clips])
    assert task.classes == expected.get("classes", task.classes)
    assert len(task.warnings) == ("warning" in expected)
    if "warning" in expected:
        assert re.search(expected["warning"], task.warnings[0])


def test_video_root_is_a_declared_list_option(tmp_path: Path) -> None:
    config = compose_config(["task=list", "task.args.splits.train=a.txt", "task.args.splits.test=b.txt",
                             f"task.args.video_root={tmp_path}"])
    assert config["task"]["args"]["video_root"] == str(tmp_path)


# ---- full disks -----------------------------------------------------------------------------------------


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past `limit` bytes of any file fail (EFBIG), as a full disk fails them: mid-file."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_no_room_while_writing_a_probe_checkpoint_is_a_disk_full_error(tmp_path: Path) -> None:
    """torch's own zip writer, given the file, said `RuntimeError: [enforce fail at inline_container.cc]`."""
    train = temporal_order_features(40, views=1, seed=3)
    test = temporal_order_features(10, views=1, seed=4)
    recipe = replace(FAST, lrs=(1e-2,), wds=(0.0,), epochs=2)
    ckpt = tmp_path / "grid.pt"
    limited = ExitStack()

    def limit_after_first(epoch: int, stats) -> None:
        limited.enter_context(file_size_limit(ckpt.stat().st_size // 2))

    with limited, pytest.raises(DiskFullError, match=rf"file size limit hit writing {ckpt} .*The checkpoint "
                                "of epoch 1 is kept; the next run resumes from it"):
        train_probe_grid(train, test, FRAMES, TIMED, recipe, checkpoint=ckpt, on_epoch_end=limit_after_first,
                         progress=False)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.pt"]


def test_a_full_results_dir_fails_with_ovprobes_message_first(tmp_path: Path, monkeypatch) -> None:
    results = tmp_path / "results"
    results.mkdir()
    monkeypatch.setattr(probe.record.shutil, "disk_usage", lambda folder: SimpleNamespace(free=2**20))
    monkeypatch.setattr(sys, "argv", ["ovprobe", f"results_dir={results}", f"cache_dir={tmp_path / 'cache'}"])
    full = rf"^ovprobe: results folder {results} has only 1 MiB free; free some space"
    with pytest.raises(SystemExit, match=full):
        probe.run.main.main()
    assert list(results.iterdir()) == []  # Hydra wrote nothing there


# ---- two runs at once -----------------------------------------------------------------------------------

HOLD = """
import json, sys, time
import probe.training.train
from probe.run.main import compose_config, run
slow = probe.training.train._train_epoch
probe.training.train._train_epoch = lambda *a, **k: time.sleep(600) or slow(*a, **k)
run(compose_config(json.loads(sys.argv[1])))
"""


def test_a_second_run_of_one_run_id_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    overrides = small_overrides(tmp_path)
    config = compose_config(overrides)
    lock = tmp_path / "cache" / "probes" / f"{run_id(config)}.lock"
    first = subprocess.Popen([sys.executable, "-c", HOLD, json.dumps(overrides)], cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text()) and first.poll() is None:
            assert time.monotonic() < deadline, "the first run never took its lock"
            time.sleep(0.2)
        with pytest.raises(InUseError, match=rf"^run {run_id(config)} is in use by process {first.pid} on "):
            run(config)
    finally:
        first.kill()
        first.wait()
    with exclusive(lock, "run", wait=False):  # a killed holder leaves no lock behind
        pass


# ---- huge frames, killed generations --------------------------------------------------------------------


def test_each_distinct_frame_is_decoded_and_resized_once(cup: Path) -> None:
    reader = open_video(cup / "cup1.mp4")
    frames, inverse = reader.get_distinct([5, 0, 5, 5, 31, 0, 90])  # 90 is past the end: the last frame
    assert frames.shape == (3, SIZE[1], SIZE[0], 3) and inverse.tolist() == [1, 0, 1, 1, 2, 0, 2]
    assert np.array_equal(frames[inverse], reader.get_frames([5, 0, 5, 5, 31, 0, 31]))
    whole = resize_shorter_side(frames, 56)
    assert torch.equal(resize_shorter_side(frames, 56, max_float=SIZE[0] * SIZE[1]), whole)  # plane by plane


def test_folders_of_killed_generations_do_not_stay(tmp_path: Path) -> None:
    base = tmp_path / "synthetic"
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    host, fp = socket.gethostname(), "0123456789abcdef"
    pids = {"dead": finished.stdout.strip(), "alive": os.getpid()}
    names = {**{k: f".tmp-{fp}-{host}-{pid}" for k, pid in pids.items()},
             "old": f".tmp-{fp}-elsewhere-1", "recent": f".tmp-{fp}-elsewhere-2"}
    for name in names.values():
        (base / name).mkdir(parents=True)
    os.utime(base / names["old"], (time.time() - 3 * 86400,) * 2)
    generate(SyntheticConfig(num_train=8, num_test=8, num_frames=8, size=64, digit_size=16),
             fixtures_dir() / "videos" / "digits.png", tmp_path, progress=False)
    assert sorted(p.name for p in base.glob(".tmp-*")) == sorted([names["alive"], names["recent"]])
