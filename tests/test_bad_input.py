"""Bad input of every kind: a dataset of real clips mixed with broken files, annotation files with bad
records in each format, and damaged checkpoints. Each is a clear error naming the file and record, or a
counted skip."""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from backbones.onevision import OneVisionEncoder
from backbones.weights import CheckpointError
from tasks import (
    AnnotationError,
    Clip,
    ClipDataset,
    VideoDecodeError,
    create_sampler,
    create_task,
    make_loader,
    open_video,
)
from tests.test_tasks import _encode

# ---- videos ---------------------------------------------------------------------------------------------


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _cut_in_half(source: Path, dest: Path) -> Path:
    data = source.read_bytes()
    dest.write_bytes(data[: len(data) // 2])
    return dest


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real clips that decode (some oddly) and broken files that cannot; names say which."""
    d = tmp_path_factory.mktemp("clips")
    for i in range(3):
        _encode(d / f"good{i}.mp4", "libx264")
    _encode(d / "short.mp4", "libx264", frames=3)  # fewer frames than the sampler asks for
    _encode(d / "avi.avi", "mpeg4").rename(d / "avi_named.mp4")  # AVI content, .mp4 name
    _cut_in_half(_encode(d / "long.mkv", "libx264", frames=24), d / "truncated.mkv")  # loses its end only
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("not a video\n" * 40)
    _audio_only(d / "audio_only.mp4")
    _cut_in_half(d / "good0.mp4", d / "truncated.mp4")  # the MP4 index (moov) sits at the end: lost
    return d


DECODABLE = {
    "good0.mp4": 12,
    "good1.mp4": 12,
    "good2.mp4": 12,
    "short.mp4": 3,
    "avi_named.mp4": 12,
    "truncated.mkv": 11,
}
BROKEN = {
    "empty.mp4": "the file is empty (0 bytes)",
    "text.mp4": "FFmpeg finds no video container in it",
    "audio_only.mp4": "the file has no video stream (it holds audio)",
    "truncated.mp4": "FFmpeg finds no video container in it",
}


def _list_task(folder: Path, names: list[str]):
    (folder / "all.txt").write_text("".join(f"{name} {i % 2}\n" for i, name in enumerate(names)))
    return create_task("list", splits={"train": folder / "all.txt", "test": folder / "all.txt"})


@pytest.mark.parametrize("sampling", ["uniform", "codec"])
def test_bad_clips_are_skipped_and_counted_each_with_its_reason(clips: Path, sampling: str) -> None:
    names = [n for pair in zip(DECODABLE, [*BROKEN, None, None], strict=True) for n in pair if n]
    task = _list_task(clips, names)
    common = dict(num_frames=8, size=28, patch_size=14, temporal_slots=64)
    bad = dict(BROKEN)
    if sampling == "codec":  # 16 patches of 2 x 2 per frame: 3 frames are too few, the clip is bad
        sampler = create_sampler(sampling, **common, budget=16, native_sparse=True)
        bad["short.mp4"] = "clip short.mp4 has 3 frames, fewer patches than the budget of 16"
    else:  # 8 frames of a 3-frame video: each repeated, in order
        sampler = create_sampler(sampling, **common)
        assert sampler(Clip("short", clips / "short.mp4", 0))[0].source_frames == [0, 0, 0, 1, 1, 2, 2, 2]

    batches = list(make_loader(ClipDataset(task, "test", sampler, on_bad_clip="skip"), batch_size=4))
    skipped = {s.clip_id: s.reason for b in batches for s in b.skipped}
    assert sorted(skipped) == sorted(bad)
    for name, why in bad.items():
        assert skipped[name].startswith(f"cannot decode video {clips / name}: {why}")
    assert sorted(c for b in batches for c in b.clip_ids) == sorted(set(DECODABLE) - set(bad))

    strict = ClipDataset(task, "test", sampler)  # on_bad_clip="error", the default
    for i, name in enumerate(names):
        if name in bad:
            message = re.escape(f"{name}: {bad[name]}") + ".*on_bad_clip='skip'"
            with pytest.raises(VideoDecodeError, match=message):
                strict[i]


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_odd_but_sound_files_decode_by_content_up_to_where_they_end(clips: Path, backend: str) -> None:
    for name, frames in DECODABLE.items():
        reader = open_video(clips / name, backend)
        assert reader.num_frames == frames, name
        assert reader.get_frames([0, frames - 1, frames + 5]).shape == (3, 48, 64, 3)


def test_a_span_past_the_end_of_its_video_samples_the_last_frame(clips: Path, caplog) -> None:
    clip = Clip("late", clips / "good1.mp4", 0, start_frame=20, end_frame=30)  # the video has 12 frames
    uniform = create_sampler("uniform", num_frames=4, size=28, patch_size=14)
    codec = create_sampler("codec", num_frames=8, size=28, patch_size=14, budget=4)
    with caplog.at_level(logging.WARNING, logger="tasks.sampling.samplers"):
        assert uniform(clip)[0].source_frames == [11, 11, 11, 11]
        assert codec(clip)[0].source_frames == [11]
    assert "clip late starts at frame 20 but the video has 12 frames" in caplog.text


# ---- annotation files -----------------------------------------------------------------------------------


def test_list_records_name_file_and_line_and_say_what_is_wrong(tmp_path: Path, clips: Path) -> None:
    root = tmp_path / "data"
    (root / "v").mkdir(parents=True)
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        shutil.copy(clips / "good0.mp4", root / "v" / name)
    shutil.copy(clips / "good0.mp4", tmp_path / "outside.mp4")
    lines = [
        "v/a.mp4 0",  # 1 good
        "v/b.mp4",  # 2 no label
        "v/b.mp4,1,extra",  # 3 three fields
        "v/b.mp4 cow",  # 4 not a class name
        "v/b.mp4 7",  # 5 out of range
        "v/b.mp4 -1",  # 6 negative
        "v/a.mp4 1",  # 7 the id of line 1 again
        "../outside.mp4 0",  # 8 leaves the video root
        f"{tmp_path / 'outside.mp4'} 0",  # 9 absolute, outside the video root
        "v/gone.mp4 1",  # 10 no such video: a bad clip (skipped when decoded), not a bad record
        f"{root / 'v' / 'c.mp4'} 2",  # 11 absolute, inside: fine
        f"{tmp_path / 'data-v' / 'a.mp4'} 0",  # 12 a sibling folder whose name starts with the root's
    ]
    listed = root / "train.txt"
    listed.write_text("\n".join(lines) + "\n")
    task = create_task(
        "list",
        splits={"train": listed, "test": listed},
        classes=["cat", "dog", "bird"],
        video_root=root,
        on_bad_record="skip",
    )
    assert [(c.clip_id, c.label) for c in task.clips("train")] == [
        ("v/a.mp4", 0),
        ("v/gone.mp4", 1),
        (str(root / "v" / "c.mp4"), 2),
    ]
    assert task.missing["train"] == [str(root / "v" / "gone.mp4")]
    expected = {
        2: "expected 'path label' or 'path,label', got ['v/b.mp4']",
        3: "expected 'path label' or 'path,label', got ['v/b.mp4', '1', 'extra']",
        4: "label 'cow' is neither a class index (0..2) nor a class name",
        5: "(clip v/b.mp4): unknown label 7: class indices are 0..2",
        6: "(clip v/b.mp4): unknown label -1: class indices are 0..2",
        7: f"(clip v/a.mp4): clip id 'v/a.mp4' repeats {listed} line 1; each clip may appear once",
        8: f"video path {root / '../outside.mp4'} leads outside the video folder {root}",
        9: f"video path {tmp_path / 'outside.mp4'} leads outside the video folder {root}",
        12: f"video path {tmp_path / 'data-v' / 'a.mp4'} leads outside the video folder {root}",
    }
    assert len(task.skipped["train"]) == len(expected)
    for message, (line, why) in zip(task.skipped["train"], expected.items(), strict=True):
        assert message.startswith(f"list/train: {listed} line {line}") and why in message, message

    strict = create_task("list", splits={"train": listed, "test": listed}, classes=["cat", "dog", "bird"])
    with pytest.raises(AnnotationError, match=r"train.txt line 2: expected .*set on_bad_record='skip'"):
        strict.clips("train")
    # Without video_root, paths are taken as written: lists of absolute paths need no root.
    (tmp_path / "abs.txt").write_text(f"{tmp_path / 'outside.mp4'} 0\n{root / 'v' / 'a.mp4'} 1\n")
    free = create_task("list", splits={"train": tmp_path / "abs.txt", "test": tmp_path / "abs.txt"})
    assert len(free.clips("train")) == 2


def test_a_split_left_without_clips_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    listed = tmp_path / "train.txt"
    listed.write_text("gone.mp4 0\ngone.mp4 1\n")
    task = create_task("list", splits={"train": listed, "test": listed}, on_bad_record="skip")
    with pytest.raises(AnnotationError, match=r"list/train: none of the 1 videos listed exists, e.g. .*gone"):
        task.clips("train")
    listed.write_text("gone.mp4 x\n")
    task = create_task("list", splits={"train": listed, "test": listed}, on_bad_record="skip", classes=["a"])
    message = r"list/train: the annotations hold no usable clip; 1 bad records were skipped, e.g. "
    with pytest.raises(AnnotationError, match=message + r".*train.txt line 1: label 'x'"):
        task.clips("train")


def _diving48(root: Path, records: list[dict]) -> None:
    vocab = [[t, s, "NoTwis", f] for t in "ABCDEF" for s in "1234" for f in ("TUCK", "PIKE")]
    (root / "Diving48_vocab.json").write_text(json.dumps(vocab))
    for split in ("train", "test"):
        (root / f"Diving48_V2_{split}.json").write_text(json.dumps(records))


def _ssv2(root: Path, records: list[dict]) -> None:
    (root / "labels").mkdir()
    (root / "labels" / "labels.json").write_text(json.dumps({"Holding something": "0"}))
    for split in ("train", "validation"):
        (root / "labels" / f"{split}.json").write_text(json.dumps(records))


def _kinetics(root: Path, rows: list[list[str]]) -> None:
    (root / "annotations").mkdir()
    for split in ("train", "val"):
        with (root / "annotations" / f"{split}.csv").open("w", newline="") as f:
            csv.writer(f).writerows([["label", "youtube_id", "time_start", "time_end", "split"], *rows])


def _dive(name: str, label: object = 1) -> dict:
    return {"vid_name": name, "label": label, "start_frame": 0, "end_frame": 8}


def _ss(vid: str) -> dict:
    return {"id": vid, "template": "Holding [something]", "label": "Holding a cup", "placeholders": ["a cup"]}


FORMATS = {
    # task: (writer, records [good, repeated id, path outside], the good one's video, where each is)
    "diving48": (
        _diving48,
        [_dive("a"), _dive("a"), _dive("../../../etc/passwd")],
        "rgb/a.mp4",
        [f"Diving48_V2_train.json record {i}" for i in range(3)],
    ),
    "ssv2": (
        _ssv2,
        [_ss("1"), _ss("1"), _ss("../../x")],
        "20bn-something-something-v2/1.webm",
        [f"labels/train.json record {i}" for i in range(3)],
    ),
    "kinetics400": (
        _kinetics,
        [
            ["zumba", "a", "0", "10", "train"],
            ["zumba", "a", "0", "10", "train"],
            ["zumba", "../../x", "0", "10", "train"],
        ],
        "train/a_000000_000010.mp4",
        [f"annotations/train.csv line {i}" for i in (2, 3, 4)],
    ),  # line 1 is the header
}


@pytest.mark.parametrize("name", FORMATS)
def test_each_format_rejects_repeated_ids_and_paths_outside_its_data(
    tmp_path: Path, clips: Path, name: str
) -> None:
    write, records, video, wheres = FORMATS[name]
    write(tmp_path, records)
    (tmp_path / video).parent.mkdir(parents=True)
    shutil.copy(clips / "good0.mp4", tmp_path / video)
    first, second, third = (tmp_path / where for where in wheres)
    task = create_task(name, root=tmp_path, on_bad_record="skip")
    assert len(task.clips("train")) == 1
    repeated, outside = task.skipped["train"]
    assert repeated.startswith(f"{name}/train: {second} (clip ") and f"repeats {first};" in repeated
    assert outside.startswith(f"{name}/train: {third} (clip ") and "leads outside the video folder" in outside
    with pytest.raises(AnnotationError, match=re.escape(f"repeats {first};") + ".*set on_bad_record='skip'"):
        create_task(name, root=tmp_path).clips("train")


def test_diving48_fields_must_be_integers(tmp_path: Path) -> None:
    _diving48(tmp_path, [_dive("a", label=True), _dive("b", label="3")])
    task = create_task("diving48", root=tmp_path, on_bad_record="skip")
    with pytest.raises(AnnotationError, match="no usable clip"):
        task.clips("train")
    first, second = task.skipped["train"]
    assert "record 0: label, start_frame and end_frame must be integers, got [True, 0, 8]" in first
    assert "record 1: label, start_frame and end_frame must be integers, got ['3', 0, 8]" in second


# ---- checkpoints ----------------------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path: Path, fixtures: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    reference = fixtures / "onevision_reference" / "ov_tiny_layernorm_head"
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(reference / "config.json", folder)
    return folder, load_file(str(reference / "model.safetensors"))


def test_integer_weights_where_the_model_holds_floats_are_named(checkpoint) -> None:
    folder, state = checkpoint
    state["encoder.layers.0.mlp.fc1.weight"] = state["encoder.layers.0.mlp.fc1.weight"].to(torch.int8)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        OneVisionEncoder.from_pretrained(folder)
    message = str(err.value)
    assert f"checkpoint {folder / 'model.safetensors'} does not match the model" in message
    assert (
        "wrong dtype (1): encoder.layers.0.mlp.fc1.weight: checkpoint torch.int8 vs model torch.float32 "
        "(expects floating-point)"
    ) in message
    assert "missing keys" not in message and "unquantised" in message


def test_other_float_precisions_load_and_are_cast(checkpoint) -> None:
    folder, state = checkpoint
    save_file({k: v.double() for k, v in state.items()}, str(folder / "model.safetensors"))
    model = OneVisionEncoder.from_pretrained(folder)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    torch.testing.assert_close(model.layernorm_pre.weight, state["layernorm_pre.weight"])


def test_truncated_weights_and_broken_shards_name_the_file(checkpoint) -> None:
    folder, state = checkpoint
    save_file(state, str(folder / "model.safetensors"))
    _cut_in_half(folder / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"cannot read weights file .*model.safetensors .*truncated"):
        OneVisionEncoder.from_pretrained(folder)

    (folder / "model.safetensors").unlink()
    index = folder / "model.safetensors.index.json"
    index.write_text('{"weights": {}}')
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json is not a safetensors index"):
        OneVisionEncoder.from_pretrained(folder)
    keys = sorted(state)
    shards = {"a.safetensors": keys[: len(keys) // 2 + 1], "b.safetensors": keys[len(keys) // 2 :]}
    for shard, part in shards.items():
        save_file({k: state[k] for k in part}, str(folder / shard))
    index.write_text(json.dumps({"weight_map": {k: s for s, part in shards.items() for k in part}}))
    with pytest.raises(
        CheckpointError,
        match=rf"b.safetensors and .*a.safetensors both hold 1 key\(s\), "
        rf"e.g. {keys[len(keys) // 2]}",
    ):
        OneVisionEncoder.from_pretrained(folder)
