"""Faults: a full disk, a read-only folder, and damaged files on disk. Each stops with an error that
names the folder and what is kept, or is detected and recomputed, never read as valid."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_features import CountingBackbone, _all_pairs, _extract
from test_run import encode_calls, small  # noqa: F401 (encode_calls is a fixture)
from test_train import FAST, FRAMES, TIMED, temporal_order_features

import probe.training.train
from probe.files import DiskFullError
from probe.record import ResultsDirError, claim_run
from probe.run.main import run
from probe.training.train import EpochStats, train_probe_grid


@pytest.fixture
def disk_full(monkeypatch) -> Callable[[str | None], None]:
    """`disk_full(pattern)`: from now on, flushing a file whose path matches `pattern` fails with ENOSPC
    (as a full disk reports at write or at fsync time); `disk_full(None)`: space again."""
    fsync = os.fsync

    def fill(pattern: str | None) -> None:
        def full(fd: int) -> None:
            if re.search(pattern, os.readlink(f"/proc/self/fd/{fd}")):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync if pattern is None else full)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file is flushed")
    return fill


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name]


def test_disk_full_during_extraction_keeps_finished_shards(tmp_path: Path, disk_full) -> None:
    backbone = CountingBackbone()
    disk_full(r"shard_00001\.tokens\.npy")
    with pytest.raises(DiskFullError) as caught:
        _extract(backbone, tmp_path)
    (store,) = tmp_path.iterdir()
    message = str(caught.value)
    assert f"disk full writing {store}/shard_00001.tokens.npy" in message
    assert re.search(r"\d+\.\d [KMG]iB free in .*, about 1\.0 KiB needed", message)
    assert f"Finished feature shards in {store} are kept" in message
    assert sorted(p.name for p in store.glob("shard_*.json")) == ["shard_00000.json"]
    assert _leftovers(store) == []

    disk_full(None)
    backbone.encoded = 0
    resumed = _extract(backbone, tmp_path)
    assert backbone.encoded == (4 + 2) * 2  # shards 1 and 2 only
    fresh = _extract(CountingBackbone(), tmp_path / "fresh")
    assert resumed.manifest["shards"] == fresh.manifest["shards"]


def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(tmp_path: Path, disk_full) -> None:
    train = temporal_order_features(80, views=1, seed=3)
    test = temporal_order_features(20, views=1, seed=4)
    recipe = replace(FAST, lrs=(1e-2,), wds=(0.0,), epochs=3)
    ckpt = tmp_path / "grid.pt"

    def fill_after_first(epoch: int, stats: dict[str, EpochStats]) -> None:
        disk_full(r"grid\.pt")

    with pytest.raises(DiskFullError, match=r"The checkpoint of epoch 1 is kept; the next run resumes"):
        train_probe_grid(train, test, FRAMES, TIMED, recipe, checkpoint=ckpt, on_epoch_end=fill_after_first)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1 and _leftovers(tmp_path) == []


def test_disk_full_writing_the_record_keeps_the_trained_probes(
    tmp_path: Path, disk_full, monkeypatch, encode_calls  # noqa: F811 (the imported fixture)
) -> None:
    config = small(tmp_path)
    disk_full(r"record\.json")
    with pytest.raises(DiskFullError, match=r"The trained probes are kept in .*grid\.pt"):
        run(config)
    assert not list((tmp_path / "results").glob("*/record.json")) and _leftovers(tmp_path / "results") == []

    disk_full(None)
    encode_calls.clear()
    epochs: list[int] = []
    original = probe.training.train._train_epoch
    monkeypatch.setattr(probe.training.train, "_train_epoch",
                        lambda *a, **k: epochs.append(1) or original(*a, **k))
    record = run(config)
    assert encode_calls == [] and epochs == []  # features and probes come from the cache
    assert (tmp_path / "results" / record["run_id"] / "record.json").is_file()


def test_killed_while_committing_the_record(tmp_path: Path, monkeypatch, encode_calls) -> None:  # noqa: F811
    config = small(tmp_path)
    replace_file = os.replace

    def killed_before_record(src, dst) -> None:
        if Path(dst).name == "record.json":  # the run's folder is in place, its record not yet
            raise KeyboardInterrupt
        replace_file(src, dst)

    monkeypatch.setattr(os, "replace", killed_before_record)
    with pytest.raises(KeyboardInterrupt):
        run(config)
    monkeypatch.setattr(os, "replace", replace_file)
    results = tmp_path / "results"
    assert not list(results.rglob("record.json"))  # nothing a report would collect
    encode_calls.clear()
    record = run(config)
    assert encode_calls == []
    assert list(results.rglob("record.json")) == [results / record["run_id"] / "record.json"]
    assert _leftovers(results) == []


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` made unwritable: by its mode, or (as root, whom modes do not stop) as immutable."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    immutable = False
    try:
        try:
            (folder / "x").touch()
        except OSError:
            pass
        else:
            (folder / "x").unlink()
            immutable = bool(shutil.which("chattr")) and (
                subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
            )
            if not immutable:
                pytest.skip("cannot make a folder read-only here (root, and no chattr)")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


@pytest.mark.parametrize("folder, setting", [("results", "results_dir"), ("cache", "cache_dir")])
def test_read_only_folders_fail_before_any_work(
    tmp_path: Path, encode_calls, folder, setting  # noqa: F811 (the imported fixture)
) -> None:
    with read_only(tmp_path / folder):
        with pytest.raises(ResultsDirError, match=rf"{tmp_path / folder} is not writable .*set {setting}="):
            run(small(tmp_path))
    assert encode_calls == []


def _into(epochs: list[int]) -> Callable[[int, dict[str, EpochStats]], None]:
    return lambda epoch, stats: epochs.append(epoch)


def test_damaged_checkpoint_is_not_trusted(tmp_path: Path, caplog) -> None:
    train = temporal_order_features(80, views=1, seed=3)
    test = temporal_order_features(20, views=1, seed=4)
    recipe = replace(FAST, lrs=(1e-2,), wds=(0.0,), epochs=2)
    whole = train_probe_grid(train, test, FRAMES, TIMED, recipe, progress=False)

    class Killed(Exception):
        pass

    def kill(epoch: int, stats: dict[str, EpochStats]) -> None:
        raise Killed

    ckpt = tmp_path / "grid.pt"
    with pytest.raises(Killed):
        train_probe_grid(
            train, test, FRAMES, TIMED, recipe, checkpoint=ckpt, on_epoch_end=kill, progress=False
        )
    good = ckpt.read_bytes()
    middle = bytearray(good)
    middle[len(good) // 2] ^= 0xFF  # a flipped byte inside a tensor: torch.load alone would not notice
    for damaged in (good[: len(good) // 2], bytes(middle)):
        ckpt.write_bytes(damaged)
        caplog.clear()
        seen: list[int] = []
        with caplog.at_level(logging.WARNING, logger="probe.training.train"):
            again = train_probe_grid(
                train, test, FRAMES, TIMED, recipe, checkpoint=ckpt, on_epoch_end=_into(seen), progress=False
            )
        assert seen == [1, 2]  # started over
        assert "is unreadable" in caplog.text and "probe training starts over" in caplog.text
        assert again.curves == whole.curves


def test_damaged_sidecar_and_manifest_are_recomputed(tmp_path: Path) -> None:
    backbone = CountingBackbone()
    store = _extract(backbone, tmp_path)
    tokens = _all_pairs(store)[2].tokens
    manifest = (store.path / "manifest.json").read_text()
    (store.path / "manifest.json").write_text(manifest[: len(manifest) // 2])  # torn
    backbone.encoded = 0
    assert torch.equal(_all_pairs(_extract(backbone, tmp_path))[2].tokens, tokens)
    assert backbone.encoded == 0 and json.loads((store.path / "manifest.json").read_text())

    sidecar = store.path / "shard_00001.json"
    sidecar.write_text(sidecar.read_text()[:-20])
    repaired = _extract(backbone, tmp_path)
    assert backbone.encoded == 4 * 2  # shard 1 only
    assert torch.equal(_all_pairs(repaired)[2].tokens, tokens)


def test_unreadable_record_is_run_again(tmp_path: Path, caplog) -> None:
    config = small(tmp_path)
    slot = claim_run(tmp_path / "results", config, "refuse")
    slot.path.mkdir(parents=True)
    (slot.path / "record.json").write_text('{"config": {"task"')  # torn
    with caplog.at_level(logging.WARNING, logger="probe.record"):
        again = claim_run(tmp_path / "results", config, "refuse")
    assert again.path == slot.path and again.existing is None
    assert "record.json is unreadable" in caplog.text
    (slot.path / "record.json").write_text(json.dumps({"run_id": slot.run_id}))
    assert claim_run(tmp_path / "results", config, "reuse").existing == {"run_id": slot.run_id}
