"""What keying stores by the videos costs: `clips_digest` over a clip list with and without the video
fingerprints, on files in the page cache (warm) and evicted from it (cold: their data evicted with
`posix_fadvise`; their inodes stay cached, so a `stat` stays warm), and with the fingerprint cache of a
run's cache_dir (a `stat` per file), side by side.

The files are `--files` copies of random bytes of `--size` each in a temporary folder (on `--dir`'s
disk), every one a distinct file; the per-file figures scale to a 240k-clip data set.

    python benchmarks/bench_fingerprint.py [--files 2000] [--size 300000] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import probe.store.features
from probe.store.features import _canonical, clips_digest
from tasks.clip import Clip

KINETICS = 240_000


def ids_only(clips: list[Clip]) -> str:
    """The digest as it was before videos entered it: ids and labels only."""
    return hashlib.sha256(_canonical([[c.clip_id, c.label] for c in clips]).encode()).hexdigest()


def evict(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def seconds(call, *args) -> float:
    t0 = time.perf_counter()
    call(*args)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=300_000, help="bytes per file")
    parser.add_argument("--dir", default=None, help="where the temporary folder goes (default: the system's)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        paths = []
        for i in range(args.files):
            path = Path(root) / f"v{i}.mp4"
            path.write_bytes(rng.integers(0, 256, args.size, np.uint8).tobytes())
            paths.append(path)
        os.sync()
        clips = [Clip(f"v{i}.mp4", p, i % 400) for i, p in enumerate(paths)]
        rows = {"ids and labels only (before)": seconds(ids_only, clips),
                "stat of every file": seconds(lambda: [p.stat() for p in paths])}
        seconds(clips_digest, clips)  # warm the page cache
        rows["with video fingerprints, warm"] = seconds(clips_digest, clips)
        evict(paths)
        rows["with video fingerprints, cold"] = seconds(clips_digest, clips)
        probe.store.features.RECENT_NS = 0  # the files are seconds old: cache them anyway
        cache = Path(root) / "fingerprints.json"
        rows["with video fingerprints, filling the cache"] = seconds(clips_digest, clips, cache)
        evict(paths)
        rows["with video fingerprints, from the cache (files cold)"] = seconds(clips_digest, clips, cache)
    print(f"{args.files} files of {args.size:,} bytes under {root} (a shared, loaded machine: timings vary)")
    print("| digest of the clip list | seconds | per file (us) | at 240k clips (s) |")
    print("|---|---|---|---|")
    for name, s in rows.items():
        print(f"| {name} | {s:.3f} | {s / args.files * 1e6:.0f} | {s / args.files * KINETICS:.1f} |")
    base = rows["ids and labels only (before)"]
    for name in list(rows)[2:]:
        print(f"{name}: {rows[name]:.3f} s vs ids only {base:.3f} s")


if __name__ == "__main__":
    main()
