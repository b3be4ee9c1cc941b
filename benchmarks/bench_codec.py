"""What codec patch selection costs next to decoding, per fixture video, measured side by side.

Columns (median of `--repeats` interleaved runs, seconds per clip, 64 frames at 224 px, patch 14):
- `decode`: the bare sequential PyAV decode of every frame, no conversion (a floor, not a pipeline);
- `uniform`: what the dense sampler pays: `tasks.decode.video` decodes the 64 linspace frames, then the frames
  are resized and centre-cropped (`resize_shorter_side`, `crop_square`);
- `seq+crop`: the codec pass with its signal work removed: one sequential decode keeping the same 64
  frames as resized crops (RGB conversion through one reused `VideoReformatter`, as the codec sampler
  does: `frame.to_ndarray(format="rgb24")` costs 3-7x more per frame). This is "decode only" for the
  codec sampler. It decodes with frame threads, as a uniform sampler may; the codec pass cannot on
  streams with B-frames (frame threading misattributes their vectors) and decodes those ahead on a
  thread of its own instead;
- `codec`: the codec pass (motion vectors + residuals, same 64 frames kept as resized crops) plus patch
  scores, top-K selection and packing into pseudo-frames;
- `cached`: maps from the cache, then decoding only the frames that hold selected patches, selection
  and packing.
The target is that selection adds at most 30%: `codec / seq+crop <= 1.3`. `cpu` is the same ratio in
CPU time of all threads (median of the runs), which threads cannot hide. `packets` is the file's packet
count (what the plan is made from), `decoded` the frames that decode, `passes` the decode passes one
codec analysis made (1: the file is decoded once, whatever its packet count says).

With no paths: every video in the fixtures' `videos/` folder, plus three generated clips (a square
moving over noise in MPEG-4 Part 2, the same in H.264 with B-frames, and that H.264 clip with one packet
more than it decodes).

    python benchmarks/bench_codec.py [VIDEO ...] [--repeats 3] [--budget 2048]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

import tasks.decode.codec as codec_module
from tasks.decode.codec import CodecConfig, analyse, count_frames, crop_box, patch_scores, plan_slots
from tasks.decode.codec_cache import MapCache, cached_analyse
from tasks.decode.video import crop_square, open_video, resize_shorter_side
from tasks.sampling.selection import pack, select_patches

SIZE, PATCH = 224, 14
GRID = SIZE // PATCH


def bare_decode(path: Path) -> None:
    with av.open(str(path)) as container:
        for _ in container.decode(video=0):
            pass


def uniform(path: Path) -> np.ndarray:
    reader = open_video(path, "pyav")
    offsets, _ = plan_slots(reader.num_frames, 64)
    return crop_square(resize_shorter_side(reader.get_frames(offsets), SIZE), SIZE).numpy()


_RGB = VideoReformatter()  # as the codec sampler converts: one swscale context, not one per frame


def to_crop(frame: av.VideoFrame) -> np.ndarray:
    rgb = _RGB.reformat(frame, format="rgb24").to_ndarray()[None]
    return crop_square(resize_shorter_side(rgb, SIZE), SIZE)[0].numpy()


def sequential_crops(path: Path) -> np.ndarray:
    n = open_video(path, "pyav").num_frames  # the same demux-only count the codec pass makes
    wanted = set(plan_slots(n, 64)[0].tolist())
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return np.stack([to_crop(f) for i, f in enumerate(container.decode(stream)) if i in wanted])


def select_and_pack(maps, frames: np.ndarray, rows: np.ndarray, budget: int) -> np.ndarray:
    scores = patch_scores(maps, (GRID, GRID), crop_box(maps.frame_size, SIZE))
    selection = select_patches(scores, budget, static=maps.static)
    return pack(selection, frames, maps.slots[rows], PATCH)


def codec(path: Path, budget: int) -> np.ndarray:
    maps, pixels = analyse(path, CodecConfig(), keep=to_crop)
    return select_and_pack(maps, np.stack(pixels), np.arange(len(maps.slots)), budget)


def cached(path: Path, budget: int, cache: MapCache) -> np.ndarray:
    maps, _ = cached_analyse(path, cache=cache)
    scores = patch_scores(maps, (GRID, GRID), crop_box(maps.frame_size, SIZE))
    selection = select_patches(scores, budget, static=maps.static)
    rows = np.flatnonzero(np.isin(maps.slots, selection.slots))
    frames = open_video(path, "pyav").get_frames(maps.frame_indices[rows])
    frames = crop_square(resize_shorter_side(frames, SIZE), SIZE).numpy()
    return pack(selection, frames, maps.slots[rows], PATCH)


VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")


def generated_clips(folder: Path) -> list[Path]:
    """The test suite's clips with known motion (`tests/test_codec.py`), written to `folder`."""
    from tests.test_codec import with_extra_packet, write_clip

    h264 = write_clip(folder / "square_h264_b.mp4", "libx264", b_frames=2)
    extra = with_extra_packet(h264, folder / "extra_packet.mp4")
    return [write_clip(folder / "square_mpeg4.avi"), h264, extra]


@contextmanager
def counted_passes() -> Iterator[list[int]]:
    """Counts the sequential decode passes of the codec analysis while the block runs."""
    passes: list[int] = []
    run = codec_module._DecodePass.run

    def counted(self, *args, **kwargs):
        passes.append(1)
        return run(self, *args, **kwargs)

    codec_module._DecodePass.run = counted
    try:
        yield passes
    finally:
        codec_module._DecodePass.run = run


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


class _Once(logging.Filter):
    """Lets each distinct message through once: the timed repeats would print a file's warnings (a
    stream shorter than its packets) again at every run of every column."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        new = message not in self.seen
        self.seen.add(message)
        return new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_videos = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "videos"
    fixtures = Path(os.environ.get("OVPROBE_FIXTURES", default_videos.parent))
    parser.add_argument("videos", type=Path, nargs="*", help="video files (default: fixtures + generated)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=int, default=2048)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(format="%(name)s: %(message)s")
    logging.getLogger().handlers[0].addFilter(_Once())
    columns = ["decode", "uniform", "seq+crop", "codec", "cached"]
    print(f"{'video':<20}{'packets':>8}{'decoded':>8}{'passes':>7}" + "".join(f"{c:>10}" for c in columns)
          + f"{'codec/seq+crop':>16}{'cpu':>6}{'codec/uniform':>15}")
    with tempfile.TemporaryDirectory() as tmp:
        found = sorted(p for p in (fixtures / "videos").iterdir() if p.suffix in VIDEO_SUFFIXES)
        videos = args.videos or [*found, *generated_clips(Path(tmp))]
        cache = MapCache(Path(tmp) / "cache")
        for path in videos:
            with counted_passes() as passes:
                cached_analyse(path, cache=cache)  # warm the cache (and the file system) once
            runs = {"decode": lambda p=path: bare_decode(p), "uniform": lambda p=path: uniform(p),
                    "seq+crop": lambda p=path: sequential_crops(p),
                    "codec": lambda p=path: codec(p, args.budget),
                    "cached": lambda p=path: cached(p, args.budget, cache)}
            times: dict[str, list[float]] = {k: [] for k in runs}
            cpu: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(args.repeats):
                for key, run in runs.items():
                    start, start_cpu = time.perf_counter(), time.process_time()
                    run()
                    times[key].append(time.perf_counter() - start)
                    cpu[key].append(time.process_time() - start_cpu)
            med = {k: statistics.median(v) for k, v in times.items()}
            cpu_ratio = statistics.median(cpu["codec"]) / statistics.median(cpu["seq+crop"])
            print(f"{path.name:<20}{count_frames(path):>8}{decoded_frames(path):>8}{len(passes):>7}"
                  + "".join(f"{med[c]:>10.3f}" for c in columns)
                  + f"{med['codec'] / med['seq+crop']:>16.2f}{cpu_ratio:>6.2f}"
                  + f"{med['codec'] / med['uniform']:>15.2f}", flush=True)


if __name__ == "__main__":
    main()
