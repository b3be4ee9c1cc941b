"""Peak memory (max RSS, each case in a fresh process) of uniform sampling, 8 frames at 224 px: a clip of
one 7680x4320 frame against a normal clip (the fixture `cup.mp4`, 640x480, 217 frames).

    python benchmarks/bench_huge_frames.py [FIXTURES]

A one-frame clip sampled at 8 indices is decoded once and resized once, in uint8 planes, so its peak
stays within a small multiple of the normal clip's (the decoded frame itself is 100 MB).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import resource, sys
from pathlib import Path
from tasks import Clip, create_sampler
sampler = create_sampler("uniform", num_frames=8, size=224, patch_size=14, temporal_slots=64)
(view,) = sampler(Clip("clip", Path(sys.argv[1]), 0))
assert tuple(view.frames.shape) == (8, 224, 224, 3)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def huge_frame_clip(source: Path, path: Path, size: tuple[int, int] = (7680, 4320)) -> Path:
    """One frame of `source` scaled to `size` (width, height), as H.264."""
    with av.open(str(source)) as inp:
        frame = next(inp.decode(video=0)).reformat(*size, format="yuv420p")
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def peak_rss_mib(video: Path) -> float:
    """Max RSS in MiB of a fresh process that samples `video` once."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(video)], capture_output=True, text=True, env=env,
                         check=True)
    return int(out.stdout.split()[-1]) / 1024


def compare(fixtures: Path) -> tuple[float, float]:
    """(peak MiB of the normal clip, peak MiB of the one-frame 8K clip)."""
    normal = fixtures / "videos" / "cup.mp4"
    with tempfile.TemporaryDirectory() as tmp:
        huge = huge_frame_clip(normal, Path(tmp) / "8k.mp4")
        return peak_rss_mib(normal), peak_rss_mib(huge)


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "fixtures"
    base, huge = compare(folder)
    print(f"peak RSS: normal clip {base:.0f} MiB, one 7680x4320 frame {huge:.0f} MiB ({huge / base:.2f}x)")
