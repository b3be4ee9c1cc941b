"""Shared test helpers: where the read-only fixtures live, and an offline hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny models gain nothing from threads, and oversubscribing 2 cores slows them tenfold.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]


def fixtures_dir() -> Path:
    """The shared fixtures folder (`$OVPROBE_FIXTURES`, default `../shared/fixtures`); skips if absent."""
    path = Path(os.environ.get("OVPROBE_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))
    if not path.is_dir():
        pytest.skip(f"fixtures folder {path} is absent; set OVPROBE_FIXTURES to the shared fixtures")
    return path


@pytest.fixture
def fixtures() -> Path:
    return fixtures_dir()


def encode_h264(path: Path, frames: list, crf: int | None = None, faststart: bool = False) -> Path:
    """`frames` (RGB uint8 arrays of one size) as an H.264 MP4 at 25 fps: libx264's default quality or
    `crf`; `faststart` puts the index first."""
    import av

    height, width = frames[0].shape[:2]
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=options) as out:
        stream = out.add_stream("libx264", rate=25, options={} if crf is None else {"crf": str(crf)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path
