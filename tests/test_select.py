"""`ovprobe-select`: codec maps computed ahead, sharded; the run then analyses nothing and gets the same
features."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_run import small

import tasks.decode.codec_cache
from probe.run.main import run
from probe.run.select import main, parse_shard, precompute
from probe.store.features import FeatureStore

CODEC = ["sampling=codec", "sampling.args.num_frames=16", "sampling.frames_equiv=4", "extract.train_views=2"]


@pytest.fixture
def analyses(monkeypatch) -> list[str]:
    """Counts motion-vector analyses (`tasks.decode.codec.analyse` as the map cache calls it)."""
    calls: list[str] = []
    original = tasks.decode.codec_cache.analyse

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(tasks.decode.codec_cache, "analyse", counting)
    return calls


def _stores(cache: Path) -> dict[str, np.ndarray]:
    out = {}
    for folder in sorted((cache / "features").iterdir()):
        store = FeatureStore(folder)
        views = np.arange(store.num_views)
        clips = np.repeat(np.arange(store.num_clips), len(views))
        batch = store.batch(clips, np.tile(views, store.num_clips))
        out[folder.name] = batch.tokens.numpy()
    return out


def test_a_run_after_select_analyses_nothing_and_gets_the_same_features(tmp_path, analyses):
    task_cache = f"task.args.cache_dir={tmp_path / 'task'}"
    plain = small(tmp_path / "plain", *CODEC, task_cache)
    reference = run(plain)
    assert len(analyses) == 32 * 2 + 16  # every training view's maps and every test clip's

    ahead = small(tmp_path / "ahead", *CODEC, task_cache)
    analyses.clear()
    halves = [precompute(ahead, (i, 2)) for i in range(2)]
    assert [h.clips for h in halves] == [24, 24] and sum(h.computed for h in halves) == 32 * 2 + 16
    assert len(analyses) == 32 * 2 + 16 and not any(h.unreadable for h in halves)
    again = precompute(ahead, (1, 2))  # a rerun (after an interruption) only checks the cache
    assert again.computed == 0 and again.cached == 16 * 2 + 8

    analyses.clear()
    record = run(ahead)
    assert analyses == []  # every map came from the cache: no motion-vector analysis in the run
    assert record["metrics"]["test"]["top1"] == reference["metrics"]["test"]["top1"]
    want, got = _stores(tmp_path / "plain" / "cache"), _stores(tmp_path / "ahead" / "cache")
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_select_refuses_samplers_without_maps_and_bad_shards(tmp_path):
    with pytest.raises(SystemExit, match="only sampling=codec keeps per-clip maps"):
        main(
            [
                f"cache_dir={tmp_path}",
                "sampling=uniform",
                "task.args.num_train=8",
                "task.args.num_test=8",
                f"task.args.cache_dir={tmp_path / 'task'}",
            ]
        )
    for bad in ("3/3", "1", "a/b"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_select_command_prints_its_summary(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "probe.run.select",
            "--shard",
            "0/4",
            *CODEC,
            "task.args.num_train=8",
            "task.args.num_test=4",
            "task.args.num_frames=16",
            f"task.args.cache_dir={tmp_path / 'task'}",
            f"cache_dir={tmp_path / 'cache'}",
            "num_workers=2",
            "progress=off",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (
        "shard 0/4: 3 clips, maps of 5 views computed and 0 already cached, 0 clips unreadable" in out.stdout
    )
