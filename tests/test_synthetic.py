"""The generated task: deterministic files, cached once, and solvable from motion but not from a frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks import create_task
from tasks.datasets.registry import Task
from tasks.datasets.synthetic import SyntheticConfig, generate
from tasks.decode.video import open_video

SMALL = {"num_train": 96, "num_test": 80, "num_frames": 16, "size": 64, "digit_size": 24,
         "speeds": (1.0, 2.5)}
TINY = {"num_train": 8, "num_test": 8, "num_frames": 8, "size": 64, "digit_size": 16}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, fixtures: Path) -> Task:
    return create_task("synthetic", cache_dir=tmp_path_factory.mktemp("cache"),
                       digits=fixtures / "videos" / "digits.png", **SMALL)


@pytest.fixture(scope="module")
def fixtures() -> Path:  # module-scoped twin of conftest's fixture, for the module-scoped task above
    from conftest import fixtures_dir

    return fixtures_dir()


def _decode_split(task: Task, split: str) -> tuple[np.ndarray, np.ndarray]:
    clips = task.clips(split)
    videos = [open_video(c.path).get_frames(range(SMALL["num_frames"])) for c in clips]
    return np.stack(videos).astype(np.float32), np.array([c.label for c in clips])


def _circular_centroids(weights: np.ndarray) -> np.ndarray:
    """Centre of mass on the torus of `[..., H, W]` weights, as angles `[..., 2]` (y, x)."""
    size = weights.shape[-1]
    angle = 2 * np.pi * np.arange(size) / size
    out = []
    for axis in (-1, -2):  # marginal over x, then over y
        marginal = weights.sum(axis=axis)
        out.append(np.arctan2(marginal @ np.sin(angle), marginal @ np.cos(angle)))
    return np.stack(out, axis=-1)


def _nearest_class_mean(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                        test_y: np.ndarray) -> float:
    classes = np.unique(train_y)
    means = np.stack([train_x[train_y == c].mean(0) for c in classes])
    pred = classes[((test_x[:, None] - means[None]) ** 2).sum(-1).argmin(1)]
    return float((pred == test_y).mean())


def test_motion_solves_the_task_and_a_single_frame_does_not(small: Task) -> None:
    (train, train_y), (test, test_y) = _decode_split(small, "train"), _decode_split(small, "test")
    assert len(small.classes) == 8 and np.bincount(train_y).tolist() == [12] * 8
    chance = 1 / len(small.classes)

    def foreground(videos: np.ndarray) -> np.ndarray:  # distance to the static background (median)
        return np.abs(videos - np.median(videos, axis=1, keepdims=True)).sum(-1)

    def motion(videos: np.ndarray) -> np.ndarray:  # mean wrapped centroid step between frames, in pixels
        theta = _circular_centroids(foreground(videos))
        step = np.angle(np.exp(1j * np.diff(theta, axis=1)))
        return step.mean(axis=1) * SMALL["size"] / (2 * np.pi)

    def position(videos: np.ndarray) -> np.ndarray:  # where the digit is in one frame, on the torus
        theta = _circular_centroids(foreground(videos))[:, 5]
        return np.concatenate([np.cos(theta), np.sin(theta)], axis=-1)

    def pixels(videos: np.ndarray) -> np.ndarray:  # the frame itself, 16x16
        frame = videos[:, 5]
        return frame.reshape(len(frame), 16, 4, 16, 4, 3).mean(axis=(2, 4)).reshape(len(frame), -1)

    motion_acc = _nearest_class_mean(motion(train), train_y, motion(test), test_y)
    position_acc = _nearest_class_mean(position(train), train_y, position(test), test_y)
    pixels_acc = _nearest_class_mean(pixels(train), train_y, pixels(test), test_y)
    assert motion_acc > 0.9, motion_acc
    assert position_acc < chance + 0.15, position_acc
    assert pixels_acc < chance + 0.15, pixels_acc


def test_same_seed_same_files_labels_and_frames(tmp_path: Path, fixtures: Path) -> None:
    digits = fixtures / "videos" / "digits.png"
    first = generate(SyntheticConfig(**TINY), digits, tmp_path / "a")
    second = generate(SyntheticConfig(**TINY), digits, tmp_path / "b")
    assert first.name == second.name  # same fingerprint
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 8 + 8 + 4  # videos, train.txt, test.txt, classes.txt, DONE
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    one, two = (create_task("synthetic", cache_dir=tmp_path / d, digits=digits, **TINY) for d in "ab")
    labels = [[(c.clip_id, c.label) for c in t.clips("train")] for t in (one, two)]
    assert labels[0] == labels[1] and len(set(lab for _, lab in labels[0])) > 1
    for a, b in zip(one.clips("test"), two.clips("test"), strict=True):
        frames = [open_video(c.path).get_frames(range(8)) for c in (a, b)]
        np.testing.assert_array_equal(*frames)

    other = generate(SyntheticConfig(**{**TINY, "seed": 1}), digits, tmp_path / "a")
    assert other != first
    assert (other / "train.txt").read_text() != (first / "train.txt").read_text()


def test_default_frame_size_encodes_bit_identically(tmp_path: Path, fixtures: Path) -> None:
    """At the default 112 px, x264's macroblock tree made about one file in five differ between two
    encodes of the same frames; the encoder options turn it off."""
    cfg = SyntheticConfig(num_train=12, num_test=12, num_frames=16)
    digits = fixtures / "videos" / "digits.png"
    first, second = (generate(cfg, digits, tmp_path / d, progress=False) for d in "ab")
    for video in sorted((first / "videos").iterdir()):
        assert video.read_bytes() == (second / "videos" / video.name).read_bytes(), video.name


def test_generated_once_and_regenerated_when_params_change(tmp_path: Path, fixtures: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    digits = fixtures / "videos" / "digits.png"
    monkeypatch.setenv("OVPROBE_CACHE", str(tmp_path))
    folder = generate(SyntheticConfig(**TINY), digits)
    assert folder.parent == tmp_path / "synthetic" and (folder / "DONE").is_file()
    stamp = (folder / "train.txt").stat().st_mtime_ns
    assert generate(SyntheticConfig(**TINY), digits) == folder
    assert (folder / "train.txt").stat().st_mtime_ns == stamp  # reused, not rewritten
    changed = generate(SyntheticConfig(**{**TINY, "speeds": [1.0, 2.0]}), digits)
    assert changed != folder and (changed / "DONE").is_file()
    assert not list((tmp_path / "synthetic").glob(".tmp-*"))  # nothing half-written left behind
    (folder / "DONE").unlink()  # an unfinished folder is never trusted
    assert generate(SyntheticConfig(**TINY), digits) == folder and (folder / "DONE").is_file()
    with pytest.raises(ValueError, match="directions"):
        SyntheticConfig(directions=6)
    with pytest.raises(ValueError, match="texture"):
        SyntheticConfig(texture=2.0)
