"""Knowing a store's size before paying for it: logged, and refused before any decoding when it cannot fit."""

from __future__ import annotations

import logging

import pytest

import probe.features
from probe.features import StoreTooLargeError
from probe.run import run
from tests.test_run import small


def test_a_store_too_large_for_its_disk_stops_before_any_decoding(tmp_path, monkeypatch) -> None:
    decoded = []
    monkeypatch.setattr(probe.features._ClipViews, "__getitem__", lambda *a: decoded.append(a) or 1 / 0)
    monkeypatch.setattr(probe.features, "free_bytes", lambda folder: 100 * 2**10)  # a 100 KiB disk
    with pytest.raises(StoreTooLargeError) as err:
        run(small(tmp_path))
    # 32 training clips x 1 view x 256 tokens (4 frames of 64) x 128 channels x 2 bytes, plus positions
    message = str(err.value)
    assert "needs 2.2 MiB (32 clips x 1 views x 256 tokens x 128 channels x 2 bytes" in message
    assert "100.0 KiB free" in message and "extract.mode=stream" in message and "cache_dir=" in message
    assert decoded == []


def test_the_size_is_logged_and_a_store_that_fits_is_written(tmp_path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="probe.features"):
        run(small(tmp_path))
    sizes = [r.getMessage() for r in caplog.records if "to write" in r.getMessage()]
    assert len(sizes) == 2 and "32 clips x 1 views x 256 tokens x 128 channels x 2 bytes" in sizes[0]
