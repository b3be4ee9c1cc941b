"""Decode throughput of the suite's two readers, decord and PyAV, side by side on the fixture videos.

    python benchmarks/bench_decode.py [--fixtures DIR] [--repeats 3] [--threads 1]

For each video and reader: the whole stream read in order (chunks of 32 frames), and a 16-frame
chunk-wise uniform sample (what the uniform sampler asks for), as frames per second; best of
`--repeats` runs, each with a freshly opened reader (opening and the index scan are included).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from tasks.decode.video import READERS
from tasks.sampling.samplers import chunk_indices

VIDEOS = ("Megamind.avi", "Megamind_bugy.avi", "tree.avi", "cup.mp4")


def _sequential(backend: str, path: Path, threads: int) -> tuple[float, int]:
    start = time.perf_counter()
    reader = READERS[backend](path, threads)
    n = reader.num_frames
    for first in range(0, n, 32):
        reader.get_frames(range(first, min(first + 32, n)))
    return time.perf_counter() - start, n


def _uniform16(backend: str, path: Path, threads: int) -> tuple[float, int]:
    start = time.perf_counter()
    reader = READERS[backend](path, threads)
    reader.get_frames(chunk_indices(0, reader.num_frames, 16, np.full(16, 0.5)))
    return time.perf_counter() - start, 16


def main() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
    default = Path(os.environ.get("OVPROBE_FIXTURES", shared))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, default=default)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="decoder threads per reader")
    args = parser.parse_args()
    missing = [name for name in VIDEOS if not (args.fixtures / "videos" / name).is_file()]
    if missing:
        raise SystemExit(f"bench_decode: {', '.join(missing)} not in {args.fixtures / 'videos'}; point "
                         "--fixtures or OVPROBE_FIXTURES at the fixtures (default: ../shared/fixtures)")

    print(f"{'video':<18} {'frames':>6} {'mode':<10} {'decord fps':>11} {'pyav fps':>10} {'decord/pyav':>12}")
    for name in VIDEOS:
        path = args.fixtures / "videos" / name
        for mode, run in (("sequential", _sequential), ("uniform16", _uniform16)):
            fps = {}
            for backend in ("decord", "pyav"):
                best, frames = min(run(backend, path, args.threads) for _ in range(args.repeats))
                fps[backend] = frames / best
            n = READERS["pyav"](path).num_frames
            print(f"{name:<18} {n:>6} {mode:<10} {fps['decord']:>11.0f} {fps['pyav']:>10.0f} "
                  f"{fps['decord'] / fps['pyav']:>12.2f}")


if __name__ == "__main__":
    main()
