"""Knowing a store's size before paying for it: logged, and refused before any decoding when it cannot fit."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import probe.store.features
from probe.run.main import run
from probe.store.features import CODECS, FeatureStore, StoreTooLargeError
from tests.test_run import small


def test_a_store_too_large_for_its_disk_stops_before_any_decoding(tmp_path, monkeypatch) -> None:
    decoded = []
    monkeypatch.setattr(probe.store.features._ClipViews, "__getitem__", lambda *a: decoded.append(a) or 1 / 0)
    monkeypatch.setattr(probe.store.features, "free_bytes", lambda folder: 100 * 2**10)  # a 100 KiB disk
    with pytest.raises(StoreTooLargeError) as err:
        run(small(tmp_path))
    # 32 training clips x 1 view x 256 tokens (4 frames of 64) x 128 channels x 2 bytes, plus positions
    message = str(err.value)
    assert "needs 2.1 MiB (32 clips x 1 views x 256 tokens x 128 channels x 2 bytes" in message
    assert "100.0 KiB free" in message and "extract.mode=stream" in message and "cache_dir=" in message
    assert decoded == []


def test_the_size_is_logged_and_a_store_that_fits_is_written(tmp_path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="probe.store.features"):
        run(small(tmp_path))
    sizes = [r.getMessage() for r in caplog.records if "to write" in r.getMessage()]
    assert len(sizes) == 2 and "32 clips x 1 views x 256 tokens x 128 channels x 2 bytes" in sizes[0]


def test_int8_tokens_round_trip_within_the_documented_error() -> None:
    tokens = torch.randn(3, 2, 50, 64) * torch.logspace(-3, 3, 50)[None, None, :, None]  # scales differ
    codec = CODECS["int8"]
    stored = codec.encode(tokens)
    assert stored.dtype == np.int8 and stored.shape == (3, 2, 50, 68)  # 64 channels + the scale's 4 bytes
    back = codec.decode(stored)
    bound = tokens.abs().amax(-1, keepdim=True) / 254 * (1 + 1e-5)  # half a step (float32 rounding aside)
    assert ((back - tokens).abs() <= bound).all()
    assert CODECS["int8"].decode(CODECS["int8"].encode(torch.zeros(2, 8))).eq(0).all()


def test_an_int8_store_trains_and_reads_back_its_tokens(tmp_path) -> None:
    record = run(small(tmp_path, "extract.dtype=int8"))
    store = FeatureStore(record["data"]["train_features"])
    assert store.manifest["dtype"] == "int8" and store.embed_dim == 128
    batch = store.batch(np.arange(4), np.zeros(4, dtype=int))
    assert batch.tokens.shape == (4, 256, 128) and torch.isfinite(batch.tokens).all()
    assert 0 <= record["metrics"]["test"]["top1"] <= 100
