"""The run end to end on a small generated task: record, reuse policy, bad configs, kill and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import probe.features
import probe.train
from backbones.onevision.backbone import OneVisionBackbone
from probe.record import RunExistsError, run_id
from probe.run import ConfigError, compose_config, run
from tasks import AnnotationError, VideoDecodeError


def small_overrides(tmp: Path, *extra: str) -> list[str]:
    """A run of a few seconds: a small synthetic task (unless `extra` picks another), 4 frames, 2 epochs."""
    synthetic = (
        []
        if any(e.startswith("task=") for e in extra)
        else [
            "task.args.num_train=32",
            "task.args.num_test=16",
            "task.args.num_frames=16",
        ]
    )
    return [
        *synthetic,
        "sampling=uniform",
        "sampling.frames_equiv=4",
        "probe.recipe.epochs=2",
        "probe.recipe.lrs=[1e-3]",
        "probe.recipe.wds=[0.0,0.01]",
        "probe.recipe.val_fraction=0.25",
        "probe.recipe.bootstrap=50",
        "extract.train_views=1",
        "extract.shard_size=8",
        "num_workers=0",
        "progress=false",
        f"results_dir={tmp / 'results'}",
        f"cache_dir={tmp / 'cache'}",
        *extra,
    ]


def small(tmp: Path, *extra: str) -> dict:
    return compose_config(small_overrides(tmp, *extra))


@pytest.fixture
def encode_calls(monkeypatch) -> list[int]:
    """Counts clips encoded by the backbone."""
    calls: list[int] = []
    original = OneVisionBackbone.encode

    def counting(self, frames, positions):
        calls.append(frames.shape[0])
        return original(self, frames, positions)

    monkeypatch.setattr(OneVisionBackbone, "encode", counting)
    return calls


def test_run_writes_a_complete_record_and_reuses_it(tmp_path, encode_calls):
    config = small(tmp_path)
    record = run(config)
    folder = tmp_path / "results" / record["run_id"]
    stored = json.loads((folder / "record.json").read_text())
    assert stored["config"]["backbone"]["name"] == "onevision_tiny"
    assert stored["backbone"]["random_weights"] is True
    assert stored["sampling"] == {
        "name": "uniform",
        "budget": 256,
        "frames_equiv": 4.0,
        "tokens_per_clip": 256,
    }
    assert stored["data"]["train_clips"] == 32 and stored["data"]["eval_clips"] == 16
    assert set(stored["metrics"]["curves"]) == {"lr=0.001_wd=0", "lr=0.001_wd=0.01"}
    assert 0 <= stored["metrics"]["test"]["top1"] <= 100
    assert stored["versions"]["torch"] and "extract_train_s" in stored["timings"]
    assert sum(encode_calls) == 48

    encode_calls.clear()
    assert run(config)["run_id"] == record["run_id"]  # reuse: no new work
    assert encode_calls == []
    with pytest.raises(RunExistsError, match="on_existing=reuse"):
        run({**config, "on_existing": "refuse"})
    again = run({**config, "on_existing": "new"})
    assert again["run_id"] == record["run_id"] + "-r2"
    assert encode_calls == []  # features come from the store
    assert again["metrics"]["test"] == record["metrics"]["test"]
    assert (tmp_path / "results" / record["run_id"] / "record.json").read_text() == folder.joinpath(
        "record.json"
    ).read_text()


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (
            ["backbone.name=onevision_gigantic"],
            ConfigError,
            "backbone.name='onevision_gigantic' is not one of",
        ),
        (["sampling.name=nearest"], ConfigError, "sampling.name='nearest' is not one of: .*uniform"),
        (["sampling.budget=100"], ConfigError, "sampling.budget=100 is not a whole number of frames of 64"),
        (["on_bad_clip=ignore"], ConfigError, "on_bad_clip='ignore' is not one of: skip, error"),
        (["task=diving48", "task.args.root=/nonexistent/diving48"], AnnotationError, "/nonexistent/diving48"),
    ],
)
def test_bad_configs_fail_before_any_work(tmp_path, encode_calls, overrides, error, message):
    with pytest.raises(error, match=message):
        run(small(tmp_path, *overrides))
    assert encode_calls == []
    assert not (tmp_path / "cache" / "features").exists()
    assert not any((tmp_path / "results").glob("*/record.json"))


def test_killed_run_resumes_without_recomputing(tmp_path, monkeypatch, encode_calls):
    config = small(tmp_path)

    # Killed during extraction, after the second shard of 8 train clips.
    original_write = probe.features._ShardWriter.write
    written: list[int] = []

    def dying_write(self):
        original_write(self)
        written.append(self.index)
        if len(written) == 2:
            raise KeyboardInterrupt("killed during extraction")

    monkeypatch.setattr(probe.features._ShardWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        run(config)
    monkeypatch.setattr(probe.features._ShardWriter, "write", original_write)
    assert sum(encode_calls) == 16
    encode_calls.clear()

    # Killed during training, after the first epoch's checkpoint.
    original_epoch = probe.train._train_epoch
    epochs: list[int] = []

    def dying_epoch(*args, **kwargs):
        epochs.append(1)
        if len(epochs) == 2:
            raise KeyboardInterrupt("killed during training")
        return original_epoch(*args, **kwargs)

    monkeypatch.setattr(probe.train, "_train_epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(config)
    monkeypatch.setattr(probe.train, "_train_epoch", original_epoch)
    assert sum(encode_calls) == 16 + 16  # only the unfinished train shards, then the test split
    assert not any((tmp_path / "results").glob("*/record.json"))
    encode_calls.clear()

    resumed = run(config)
    assert encode_calls == []
    fresh = run({**config, "on_existing": "new"})  # same features, training from scratch
    assert resumed["metrics"]["curves"] == fresh["metrics"]["curves"]
    assert resumed["metrics"]["test"] == fresh["metrics"]["test"]


def test_unreadable_clips_are_skipped_and_listed_or_fatal(tmp_path, encode_calls):
    from tasks import create_task

    synthetic = create_task(
        "synthetic", cache_dir=tmp_path / "cache", num_train=32, num_test=16, num_frames=16
    )
    good = {split: [(str(c.path), c.label) for c in synthetic.clips(split)] for split in ("train", "test")}
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    (tmp_path / "empty.mp4").write_bytes(b"")
    lists = {}
    for split, rows in good.items():
        bad = [(str(tmp_path / "corrupt.mp4"), 0)] + (
            [(str(tmp_path / "empty.mp4"), 1), (str(tmp_path / "other.mp4"), 99)]
            if split == "train"
            else []
        )
        lists[split] = tmp_path / f"{split}.txt"
        lists[split].write_text("".join(f"{p} {y}\n" for p, y in rows + bad))
    classes = tmp_path / "classes.txt"
    classes.write_text("".join(f"{c}\n" for c in synthetic.classes))
    task = [
        "task=list",
        f"task.args.splits.train={lists['train']}",
        f"task.args.splits.test={lists['test']}",
        f"task.args.classes={classes}",
    ]
    with pytest.raises(AnnotationError, match=r"train.txt line 35 .*class indices are 0..7"):
        run(small(tmp_path, *task))  # on_bad_record=error by default
    record = run(small(tmp_path, *task, "on_bad_clip=skip", "on_bad_record=skip"))
    assert record["skipped_records"]["eval"] == [] and len(record["skipped_records"]["train"]) == 1
    assert "train.txt line 35" in record["skipped_records"]["train"][0]
    skipped = record["skipped_clips"]
    assert len(skipped["train"]) == 2 and len(skipped["eval"]) == 1
    assert all(
        "cannot decode video" in reason for reason in [*skipped["train"].values(), *skipped["eval"].values()]
    )
    assert record["data"]["train_clips"] == 32 and record["data"]["eval_clips"] == 16
    assert record["metrics"]["num_test"] == 16

    with pytest.raises(VideoDecodeError, match="corrupt.mp4.*set on_bad_clip='skip'"):
        run(small(tmp_path, *task, "on_bad_clip=error", "on_bad_record=skip", "extract.dtype=bfloat16"))


def test_where_files_go_and_progress_bars_never_change_a_run_id(tmp_path):
    base = run_id(small(tmp_path))
    assert run_id(small(tmp_path / "elsewhere", "progress=true", "num_workers=2")) == base
    assert run_id(small(tmp_path, "seed=1")) != base
    assert run_id(small(tmp_path, "task.args.num_test=8")) != base
