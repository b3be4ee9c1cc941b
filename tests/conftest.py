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
