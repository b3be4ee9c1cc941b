"""The run end to end on a small generated task: record, reuse policy, bad configs, kill and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import probe.store.features
import probe.training.train
from backbones.onevision.backbone import OneVisionBackbone
from probe.record import RunExistsError, run_id
from probe.run.main import ConfigError, compose_config, resolve_dtype, run
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
        "grid": [8, 8],
        "area_fraction": 1.0,
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


def test_the_selected_probe_is_kept_and_re_evaluated_to_the_same_metrics(tmp_path, encode_calls):
    record = run(small(tmp_path))
    folder = tmp_path / "results" / record["run_id"]
    about = json.loads((folder / "probe.json").read_text())
    assert about["head"]["kind"] == "attentive" and about["num_classes"] == 8
    assert about["selected"] == record["metrics"]["selected"]
    assert (folder / "probe.safetensors").stat().st_size > 0
    encode_calls.clear()
    again = run(small(tmp_path, f"probe.from_run={record['run_id']}"))
    assert encode_calls == []  # the test features come from the store, and nothing trains
    assert again["run_id"] != record["run_id"] and again["probe_from"]["run_dir"] == str(folder)
    assert again["metrics"]["test"] == record["metrics"]["test"]
    with pytest.raises(ConfigError, match="holds no probe.json"):
        run(small(tmp_path, "probe.from_run=no-such-run"))


def test_original_protocol_streams_fresh_views_and_reports_the_test_maximum(tmp_path, encode_calls):
    overrides = [o for o in small_overrides(tmp_path) if not o.startswith("probe.recipe.")]
    overrides += ["protocol=original", "probe.recipe.epochs=3", "probe.recipe.batch_size=8",
                  "probe.recipe.bootstrap=50"]
    record = run(compose_config(overrides))
    stored = json.loads((tmp_path / "results" / record["run_id"] / "record.json").read_text())
    protocol = stored["protocol"]
    assert protocol["name"] == "original" and protocol["head"] == "original"
    assert protocol["selection"] == "max over test epochs, original protocol"
    assert protocol["train_fraction"] == 1.0 and protocol["global_batch"] == 8
    assert protocol["lrs"] == [1e-4] and protocol["wds"] == [0.0] and protocol["extract_mode"] == "stream"
    augmentation = stored["augmentation"]
    assert augmentation["views"].startswith("drawn afresh every epoch")
    assert augmentation["views_per_clip"] == 3
    assert augmentation["color_jitter"]["brightness_mode"] == "multiplier"
    metrics = stored["metrics"]
    assert metrics["num_train"] == 32 and metrics["num_val"] == 0
    (curve,) = metrics["curves"].values()
    assert metrics["test"]["top1"] == max(s["test_top1"] for s in curve)
    assert metrics["selected"]["rule"] == protocol["selection"]
    # the backbone encoded every training clip once per epoch (nothing stored) and the test clips once
    assert sum(encode_calls) == 3 * 32 + 16
    about = json.loads((tmp_path / "results" / record["run_id"] / "probe.json").read_text())
    assert about["head"]["kind"] == "original"


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (
            ["backbone.name=onevision_gigantic"],
            ConfigError,
            "backbone.name='onevision_gigantic' is not one of",
        ),
        (["sampling.name=nope"], ConfigError, "sampling.name='nope' is not one of: .*random.*uniform"),
        (["sampling.budget=100"], ConfigError, "sampling.budget=100 is not a whole number of frames of 64"),
        (["on_bad_clip=ignore"], ConfigError, "on_bad_clip='ignore': expected one of: skip, error"),
        (["extract.mode=disk"], ConfigError, "extract.mode='disk': expected one of: store, stream"),
        (["probe.recipe.selection=test_max"], ConfigError, "set val_fraction=0"),
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
    original_write = probe.store.features._ShardWriter.write
    written: list[int] = []

    def dying_write(self):
        original_write(self)
        written.append(self.index)
        if len(written) == 2:
            raise KeyboardInterrupt("killed during extraction")

    monkeypatch.setattr(probe.store.features._ShardWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        run(config)
    monkeypatch.setattr(probe.store.features._ShardWriter, "write", original_write)
    assert sum(encode_calls) == 16
    encode_calls.clear()

    # Killed during training, after the first epoch's checkpoint.
    original_epoch = probe.training.train._train_epoch
    epochs: list[int] = []

    def dying_epoch(*args, **kwargs):
        epochs.append(1)
        if len(epochs) == 2:
            raise KeyboardInterrupt("killed during training")
        return original_epoch(*args, **kwargs)

    monkeypatch.setattr(probe.training.train, "_train_epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(config)
    monkeypatch.setattr(probe.training.train, "_train_epoch", original_epoch)
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


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict]:
    """A small generated task (8 classes, 4 train and 2 test clips each), shared by the tests below."""
    from tasks import create_task

    cache = tmp_path_factory.mktemp("generated")
    task = create_task("synthetic", cache_dir=cache, num_train=32, num_test=16, num_frames=16)
    return cache, {split: task.clips(split) for split in ("train", "test")} | {"classes": task.classes}


def test_a_kinetics_copy_missing_clips_runs_and_lists_them(tmp_path, generated, encode_calls):
    """Kinetics-400 in the CVDF layout, one listed train clip not downloaded: under the default config
    it is a counted skip listed in the record; with on_bad_clip=error the run stops before any work."""
    import csv
    import shutil

    _, clips = generated
    root = tmp_path / "k400"
    names = {"train": "train", "test": "val"}
    for split, folder in names.items():
        rows = []
        for i, c in enumerate(clips[split]):
            label = clips["classes"][c.label]
            rows.append([label, f"{folder}{i}", "0", "10", folder])
            (root / folder / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(c.path, root / folder / label / f"{folder}{i}_000000_000010.mp4")
        if split == "train":
            rows.append([clips["classes"][0], "gone", "0", "10", folder])
        (root / "annotations").mkdir(exist_ok=True)
        with (root / "annotations" / f"{folder}.csv").open("w", newline="") as f:
            csv.writer(f).writerows([["label", "youtube_id", "time_start", "time_end", "split"], *rows])
    task = ["task=kinetics400", f"task.args.root={root}"]
    missing = r"kinetics400/train: 1 listed videos are missing, e.g. .*gone_000000_000010.mp4; set on_bad"
    with pytest.raises(ConfigError, match=missing):
        run(small(tmp_path, *task, "on_bad_clip=error"))
    assert encode_calls == []
    record = run(small(tmp_path, *task))
    assert record["config"]["on_bad_clip"] == "skip" and record["config"]["on_bad_record"] == "error"
    assert list(record["skipped_clips"]["train"]) == ["gone_000000_000010"]
    assert "no such file" in record["skipped_clips"]["train"]["gone_000000_000010"]
    assert record["skipped_clips"]["eval"] == {} and record["skipped_records"] == {"train": [], "eval": []}
    assert record["data"]["train_clips"] == 32 and record["data"]["eval_clips"] == 16


def test_a_validation_carve_out_without_clips_fails_before_any_work(tmp_path, generated, encode_calls):
    _, clips = generated
    lists = {}
    for split in ("train", "test"):
        lists[split] = tmp_path / f"{split}.txt"
        lists[split].write_text("".join(f"{c.path} {c.label}\n" for c in clips[split]))
    task = ["task=list", f"task.args.splits.train={lists['train']}", f"task.args.splits.test={lists['test']}"]
    message = r"val_fraction=0.1 carves no validation clip out of the 32 train clips .*raise probe.recipe.val"
    with pytest.raises(ConfigError, match=message):
        run(small(tmp_path, *task, "probe.recipe.val_fraction=0.1"))  # 4 clips a class: round(0.4) = 0
    assert encode_calls == [] and not (tmp_path / "cache" / "features").exists()


def _to_vp9(source: Path, target: Path) -> Path:
    """Re-encode `source` as VP9 in WebM (SSv2's codec: libvpx exports no motion vectors)."""
    import av

    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        stream = dst.add_stream("libvpx-vp9", rate=25)
        stream.width, stream.height, stream.pix_fmt = 112, 112, "yuv420p"
        stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for frame in src.decode(video=0):
            dst.mux(stream.encode(frame.reformat(format="yuv420p")))
        dst.mux(stream.encode())
    return target


def test_vector_less_codecs_are_warned_once_per_run_and_counted(tmp_path, generated, caplog):
    """Codec sampling decodes in loader workers; clips in VP9 (no motion vectors) are counted there and
    travel back with the sampled views: one warning for the run, and the count in the record."""
    import logging

    _, clips = generated
    lists = {}
    for split in ("train", "test"):
        rows = []
        for i, c in enumerate(clips[split]):
            path = _to_vp9(c.path, tmp_path / f"{split}{i}.webm") if split == "test" and i % 2 else c.path
            rows.append(f"{path} {c.label}\n")
        lists[split] = tmp_path / f"{split}.txt"
        lists[split].write_text("".join(rows))
    task = ["task=list", f"task.args.splits.train={lists['train']}", f"task.args.splits.test={lists['test']}"]
    codec = ["sampling=codec", "sampling.args.num_frames=16", "num_workers=2"]
    with caplog.at_level(logging.WARNING):
        record = run(small(tmp_path, *task, *codec))
    assert record["residual_only_clips"] == {"train": 0, "eval": 8}
    warnings = [r.getMessage() for r in caplog.records if "no motion vectors" in r.getMessage()]
    assert warnings == [
        "8 clips (train 0, eval 8) are in codecs that export no motion vectors (VP9, ...): their patches "
        "were scored by residual energy alone (counted in the record)"
    ]


def test_backbone_dtype_auto_is_bf16_on_cuda_and_float32_here(tmp_path):
    config = small(tmp_path)
    assert config["backbone"]["args"]["dtype"] == "auto"  # every backbone config's default
    for device, dtype in (("cuda", "bfloat16"), ("cpu", "float32")):
        assert resolve_dtype(config["backbone"]["args"], torch.device(device))["dtype"] == dtype
    assert resolve_dtype({"dtype": "float16"}, torch.device("cuda")) == {"dtype": "float16"}
    record = run(config)  # the record and the run's identity carry the dtype that ran
    assert record["config"]["backbone"]["args"]["dtype"] == "auto"
    assert record["identity"]["dtype"] == record["backbone"]["feature_identity"]["dtype"] == "float32"


class _Killed(Exception):
    pass


def test_streaming_resumes_at_the_epoch_after_a_kill(tmp_path, monkeypatch, encode_calls):
    """extract.mode=stream keeps an epoch checkpoint like the stored path: a killed run resumes after its
    last finished epoch (its epochs' views are seeded by epoch) and ends where an unkilled run ends."""
    stream = ["extract.mode=stream", "probe.recipe.epochs=3", f"task.args.cache_dir={tmp_path / 'task'}"]
    whole = run(small(tmp_path / "whole", *stream))
    whole_encodes = sum(encode_calls)

    original = probe.training.train._train_epoch

    def killed_in_epoch_two(grid, train, train_idx, recipe, epoch, *args, **kwargs):
        if epoch == 1:
            raise _Killed
        return original(grid, train, train_idx, recipe, epoch, *args, **kwargs)

    monkeypatch.setattr(probe.training.train, "_train_epoch", killed_in_epoch_two)
    with pytest.raises(_Killed):
        run(small(tmp_path / "killed", *stream))
    monkeypatch.setattr(probe.training.train, "_train_epoch", original)
    encode_calls.clear()
    resumed = run(small(tmp_path / "killed", *stream))
    assert resumed["metrics"]["test"] == whole["metrics"]["test"]
    assert resumed["metrics"]["curves"] == whole["metrics"]["curves"]
    assert 0 < sum(encode_calls) < whole_encodes  # epoch 1 and the eval store were not encoded again
