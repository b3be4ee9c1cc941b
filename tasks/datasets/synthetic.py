"""The generated task: a handwritten digit glides over a static background; the label is its motion
(direction x speed), never its appearance.

Digit identity, colour, background and start position are random, and the digit wraps around the
frame edges (the frame is a torus), so its position in any single frame is uniform whatever the
label: one frame says nothing about the class, two frames say everything. Train and test use
disjoint digit images (left and right halves of `digits.png`). The default background is flat grey:
with `texture` > 0 every clip gets its own static colour blobs, which frozen random-weight encoders
pass on as clip identity that a probe on 400 clips memorises instead of the motion.

The clips are written once as real H.264 files plus `train.txt`/`test.txt` in the generic list format
and `classes.txt`, into `<cache>/synthetic/<fingerprint>/` (cache: `cache_dir`, `$OVPROBE_CACHE` or
`~/.cache/ovprobe`); the fingerprint covers every generation parameter, the digit images and the
encoder, and a folder only appears, atomically, once complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from tasks.datasets.listfile import ListTask, write_list
from tasks.datasets.registry import register_task
from tasks.progress import Progress, progress_bar

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
# every 45 degrees, clockwise on screen (image y points down)
DIRECTIONS = ("right", "down-right", "down", "down-left", "left", "up-left", "up", "up-right")
# x264's macroblock-tree rate control reads uninitialised memory on 112-px frames (its half-resolution
# lookahead rows): with it, identical frames gave different files about one clip in five; without it the
# files are bit-identical. It only moves quantisers between frames; B-frames and motion vectors remain.
ENCODERS = (("libx264", {"preset": "veryfast", "crf": "18", "threads": "1", "x264-params": "no-mbtree=1"}),
            ("libopenh264", {"threads": "1"}),
            ("mpeg4", {"qscale": "2", "threads": "1"}))
DIGIT_CELL = 20  # digits.png: 20x20 cells, rows of 100, 5 rows per class


@dataclass(frozen=True)
class SyntheticConfig:
    """Generation parameters. `speeds` are in pixels per frame, `directions` is 4 or 8, and `texture`
    scales the background's colour blobs and grain (0: flat grey, 1: strong). The defaults are the
    embedded benchmark's (`probe/conf/task/synthetic.yaml`): a large digit on a flat background,
    where an attentive probe over the tiny random-weight OneVision learns the motion in a minute.
    """

    seed: int = 0
    num_train: int = 400
    num_test: int = 160
    num_frames: int = 32
    size: int = 112
    digit_size: int = 56
    directions: int = 4
    speeds: tuple[float, ...] = (1.5, 3.0)
    texture: float = 0.0
    fps: int = 25

    def __post_init__(self) -> None:
        object.__setattr__(self, "speeds", tuple(float(s) for s in self.speeds))
        if not 0 <= self.texture <= 1:
            raise ValueError(f"texture must be in [0, 1], got {self.texture}")
        if self.directions not in (4, 8):
            raise ValueError(f"directions must be 4 or 8, got {self.directions}")
        if self.size % 4 or not 0 < self.digit_size < self.size:
            raise ValueError(f"size must be a multiple of 4 (4:2:0 planes) and exceed digit_size, "
                             f"got size={self.size}, digit_size={self.digit_size}")

    @property
    def classes(self) -> list[str]:
        step = 8 // self.directions
        return [f"{d} {s:g}px/frame" for d in DIRECTIONS[::step] for s in self.speeds]


def default_digits() -> Path:
    """The digit sheet shipped with the package (`tasks/assets/digits.png`, provenance in its README)."""
    return Path(__file__).resolve().parents[1] / "assets" / "digits.png"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    default = Path.home() / ".cache" / "ovprobe"
    return Path(cache_dir or os.environ.get("OVPROBE_CACHE") or default).expanduser()


def _encoder() -> tuple[str, dict[str, str]]:
    for name, options in ENCODERS:
        if name in av.codecs_available:
            if name != ENCODERS[0][0]:
                log.warning("libx264 is not in this PyAV build; the synthetic task is encoded with %s", name)
            return name, options
    raise RuntimeError(f"PyAV has none of the encoders {[n for n, _ in ENCODERS]}")


def _load_digits(path: Path, size: int) -> np.ndarray:
    """All 5000 digits as alpha masks `[50 rows, 100 cols, size, size]` in [0, 1]."""
    if not path.is_file():
        raise FileNotFoundError(f"digit images {path} not found; pass digits=... (a 20x20-cell digit sheet)")
    sheet = np.asarray(Image.open(path).convert("L"))
    rows, cols = sheet.shape[0] // DIGIT_CELL, sheet.shape[1] // DIGIT_CELL
    cells = sheet.reshape(rows, DIGIT_CELL, cols, DIGIT_CELL).transpose(0, 2, 1, 3)
    cells = cells.reshape(-1, DIGIT_CELL, DIGIT_CELL)
    scaled = [np.asarray(Image.fromarray(c).resize((size, size), Image.Resampling.BICUBIC)) for c in cells]
    return (np.stack(scaled).reshape(rows, cols, size, size) / 255.0).astype(np.float32)


def _background(rng: np.random.Generator, size: int, texture: float) -> np.ndarray:
    """Smooth colour blobs plus fine grain around a dark grey, so the digit stands out: `[size, size, 3]`."""
    coarse = Image.fromarray((rng.random((6, 6, 3)) * 255).astype(np.uint8))
    blobs = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    grain = rng.normal(0, 8, (size, size, 3)).astype(np.float32)
    return 80 + texture * (110 * (blobs - 0.5) + grain)


def render_clip(cfg: SyntheticConfig, label: int, digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 `[num_frames, size, size, 3]`: `digit` (an alpha mask) moving as class `label` says."""
    angle = np.deg2rad(45 * (8 // cfg.directions) * (label // len(cfg.speeds)))
    speed = cfg.speeds[label % len(cfg.speeds)]
    velocity = speed * np.array([np.sin(angle), np.cos(angle)])  # (dy, dx)
    start = rng.uniform(0, cfg.size, 2)
    colour = rng.uniform(170, 255, 3).astype(np.float32)
    background = _background(rng, cfg.size, cfg.texture)
    layer = np.zeros((cfg.size, cfg.size), np.float32)
    layer[: cfg.digit_size, : cfg.digit_size] = digit
    frames = np.empty((cfg.num_frames, cfg.size, cfg.size, 3), np.uint8)
    for t in range(cfg.num_frames):
        shift = np.rint(start + velocity * t).astype(int) % cfg.size
        alpha = np.roll(layer, tuple(shift), axis=(0, 1))[..., None]
        frames[t] = np.clip(background * (1 - alpha) + colour * alpha, 0, 255).round()
    return frames


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range 4:2:0 in PyAV's `yuv420p` array layout (`[H * 3 / 2, W]`).

    Done here rather than by PyAV because its own conversion inside `encode` is not bit-reproducible
    (about one encode in ten differed in a test), and the files must be.
    """
    r, g, b = np.moveaxis(rgb.astype(np.float32), -1, 0)
    h, w = r.shape
    y = 16 + 0.256788 * r + 0.504129 * g + 0.097906 * b
    u = 128 - 0.148223 * r - 0.290993 * g + 0.439216 * b
    v = 128 + 0.439216 * r - 0.367788 * g - 0.071427 * b
    chroma = [c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).reshape(h // 4, w) for c in (u, v)]
    return np.clip(np.concatenate([y, *chroma]).round(), 0, 255).astype(np.uint8)


def write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    codec, options = _encoder()
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = options
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format="yuv420p")))
        container.mux(stream.encode())


def fingerprint(cfg: SyntheticConfig, digits: Path) -> str:
    spec = {"format": FORMAT_VERSION, **asdict(cfg), "encoder": _encoder(),
            "digits": hashlib.sha256(digits.read_bytes()).hexdigest()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def remove_stale_generations(base: Path, max_age_s: float = 86400.0) -> None:
    """Remove the `.tmp-<fingerprint>-<host>-<pid>` folders of killed generations: those of this host whose
    process is gone, and any untouched for `max_age_s` (another host's, or from before host names)."""
    host = socket.gethostname()
    for tmp in base.glob(".tmp-*"):
        owner, _, pid = tmp.name[len(".tmp-") + 17:].rpartition("-")
        try:
            gone = owner == host and pid.isdigit() and not _alive(int(pid))
            if gone or time.time() - tmp.stat().st_mtime > max_age_s:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:  # removed meanwhile by another process
            continue


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def generate(
    cfg: SyntheticConfig,
    digits: Path | None = None,
    cache_dir: str | Path | None = None,
    progress: Progress = True,
) -> Path:
    """The folder holding the generated task, generating it first if no finished copy exists."""
    digits = Path(digits) if digits is not None else default_digits()
    if not digits.is_file():
        raise FileNotFoundError(f"digit images {digits} not found; pass digits=<a 20x20-cell digit sheet>")
    base = cache_root(cache_dir) / "synthetic"
    out = base / fingerprint(cfg, digits)
    if (out / "DONE").is_file():
        return out
    remove_stale_generations(base)
    tmp = base / f".tmp-{out.name}-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    _write_task(cfg, digits, tmp, progress)
    try:
        os.rename(tmp, out)
    except OSError:  # another process finished first, or a stale unfinished folder is in the way
        if (out / "DONE").is_file():
            shutil.rmtree(tmp)
        else:
            shutil.rmtree(out)
            os.rename(tmp, out)
    return out


def _write_task(cfg: SyntheticConfig, digits_path: Path, folder: Path, progress: Progress) -> None:
    digits = _load_digits(digits_path, cfg.digit_size)
    half = digits.shape[1] // 2
    num_classes = len(cfg.classes)
    (folder / "videos").mkdir(parents=True)
    with progress_bar(progress, total=cfg.num_train + cfg.num_test, desc="generating the synthetic task",
                      unit="clip") as bar:
        for split_id, (split, n) in enumerate((("train", cfg.num_train), ("test", cfg.num_test))):
            columns = slice(0, half) if split == "train" else slice(half, None)
            pool = digits[:, columns].reshape(-1, cfg.digit_size, cfg.digit_size)
            labels = np.random.default_rng([cfg.seed, split_id]).permutation(np.arange(n) % num_classes)
            rows = []
            for i, label in enumerate(labels.tolist()):
                rng = np.random.default_rng([cfg.seed, split_id, i])
                name = f"videos/{split}_{i:05d}.mp4"
                digit = pool[rng.integers(len(pool))]
                write_video(folder / name, render_clip(cfg, label, digit, rng), cfg.fps)
                rows.append((name, label))
                bar.update()
            write_list(folder / f"{split}.txt", rows)
    (folder / "classes.txt").write_text("".join(f"{c}\n" for c in cfg.classes), encoding="utf-8")
    (folder / "DONE").write_text(json.dumps(asdict(cfg), indent=1), encoding="utf-8")


@register_task(name="synthetic", generated=True)
def synthetic(cache_dir: str | Path | None = None, digits: str | Path | None = None,
              on_bad_record: str = "error", progress: Progress = True, **params: Any) -> ListTask:
    """The generated task (see the module docstring); `params` are `SyntheticConfig` fields."""
    root = generate(SyntheticConfig(**params), digits, cache_dir, progress)
    return ListTask(splits={"train": root / "train.txt", "test": root / "test.txt"},
                    classes=root / "classes.txt", name="synthetic", on_bad_record=on_bad_record)
