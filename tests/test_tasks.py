"""Official annotation formats, written here in their exact layouts with short real videos, including
malformed records; and the dataset layer that decodes them, fatal or skip-and-count."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from tasks import (
    AnnotationError,
    ClipDataset,
    VideoDecodeError,
    create_sampler,
    create_task,
    list_tasks,
    make_loader,
)
from tasks.datasets.registry import UnknownTaskError


def _encode(path: Path, codec: str, frames: int = 12) -> Path:
    rng = np.random.default_rng(len(path.name))
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One short real clip per container the official formats use."""
    folder = tmp_path_factory.mktemp("videos")
    return {"mp4": _encode(folder / "clip.mp4", "libx264"),
            "webm": _encode(folder / "clip.webm", "libvpx-vp9")}


def _place(video: Path, *paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(video, p)


def _sampler():
    return create_sampler("uniform", num_frames=4, size=28, patch_size=14, temporal_slots=64)


# ---- Diving-48 ------------------------------------------------------------------------------------------

VOCAB = [[t, s, w, f] for t in ("Back", "Forward", "Inward") for s in ("15som", "25som", "35som", "45som")
         for w in ("NoTwis", "05Twis") for f in ("TUCK", "PIKE")]  # 48 classes, as the real vocab


@pytest.fixture
def diving48(tmp_path: Path, videos: dict[str, Path]) -> Path:
    (tmp_path / "Diving48_vocab.json").write_text(json.dumps(VOCAB))
    train = [{"vid_name": "a_00001", "label": 5, "start_frame": 0, "end_frame": 12},
             {"vid_name": "b_00002", "label": 47, "start_frame": 2, "end_frame": 10},
             {"vid_name": "c_00003", "label": 3, "start_frame": 0},  # missing end_frame
             {"vid_name": "d_00004", "label": 48, "start_frame": 0, "end_frame": 12},  # unknown label
             {"vid_name": "e_00005", "label": 1, "start_frame": 0, "end_frame": 12}]  # no video
    test = [{"vid_name": "a_00001", "label": 0, "start_frame": 0, "end_frame": 12}]
    (tmp_path / "Diving48_V2_train.json").write_text(json.dumps(train))
    (tmp_path / "Diving48_V2_test.json").write_text(json.dumps(test))
    names = ("a_00001", "b_00002", "c_00003", "d_00004")
    _place(videos["mp4"], *(tmp_path / "rgb" / f"{v}.mp4" for v in names))
    return tmp_path


def test_diving48_loads_the_official_layout_and_counts_bad_records(diving48: Path) -> None:
    task = create_task("diving48", root=diving48, on_bad_record="skip")
    assert len(task.classes) == 48 and task.classes[0] == "Back 15som NoTwis TUCK"
    clips = task.clips("train")
    assert [(c.clip_id, c.label, c.start_frame, c.end_frame) for c in clips] == [
        ("a_00001", 5, 0, 12), ("b_00002", 47, 2, 10), ("e_00005", 1, 0, 12)]
    assert clips[0].path == diving48 / "rgb" / "a_00001.mp4"
    problems = task.skipped["train"]
    assert len(problems) == 2
    assert "record 2" in problems[0] and "'end_frame'" in problems[0]
    assert "unknown label 48" in problems[1]
    assert task.missing["train"] == [str(diving48 / "rgb" / "e_00005.mp4")]  # a bad clip, not a bad record
    with pytest.raises(VideoDecodeError, match="e_00005.mp4: no such file"):
        ClipDataset(task, "train", _sampler())[2]
    (view,) = ClipDataset(task, "train", _sampler())[1]
    assert view.frames.shape == (4, 28, 28, 3) and view.source_frames == [3, 5, 7, 9]


def test_diving48_bad_records_are_fatal_by_default(diving48: Path) -> None:
    task = create_task("diving48", root=diving48)
    with pytest.raises(AnnotationError, match=r"V2_train.json record 2: missing key\(s\) 'end_frame'"):
        task.clips("train")
    assert len(task.clips("test")) == 1
    with pytest.raises(KeyError, match="no split 'val'"):
        task.clips("val")


def test_data_root_comes_from_config_or_ovprobe_data(diving48: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OVPROBE_DATA", raising=False)
    with pytest.raises(AnnotationError, match="OVPROBE_DATA"):
        create_task("diving48")
    (diving48.parent / "data").mkdir()
    (diving48.parent / "data" / "diving48").symlink_to(diving48)
    monkeypatch.setenv("OVPROBE_DATA", str(diving48.parent / "data"))
    assert create_task("diving48").root == diving48.parent / "data" / "diving48"
    with pytest.raises(AnnotationError, match="Diving48_vocab.json not found"):
        create_task("diving48", root=diving48 / "rgb")


# ---- Something-Something-v2 -----------------------------------------------------------------------------

TEMPLATES = ["Holding something next to something", "Putting something onto something",
             "Pretending to pick something up"]


def _ssv2_record(vid: str, template: str) -> dict[str, object]:
    return {"id": vid, "label": template.replace("something", "a cup"), "template": template,
            "placeholders": ["a cup"] * template.count("[")}


def test_ssv2_maps_templates_to_classes_and_reports_bad_records(tmp_path: Path,
                                                                videos: dict[str, Path]) -> None:
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "labels.json").write_text(json.dumps({t: str(i) for i, t in enumerate(reversed(TEMPLATES))}))
    train = [_ssv2_record("101", "Holding [something] next to [something]"),
             _ssv2_record("102", "Pretending to pick [something] up"),
             _ssv2_record("103", "Throwing [something] in the air"),  # not a class
             {"id": "104", "label": "x", "placeholders": []},  # no template
             _ssv2_record("105", "Putting [something] onto [something]")]  # no video
    (labels / "train.json").write_text(json.dumps(train))
    validation = [_ssv2_record("101", "Putting [something] onto [something]")]
    (labels / "validation.json").write_text(json.dumps(validation))
    video_dir = tmp_path / "20bn-something-something-v2"
    _place(videos["webm"], *(video_dir / f"{i}.webm" for i in (101, 102, 103, 104)))

    task = create_task("ssv2", root=tmp_path, on_bad_record="skip")
    assert task.classes == list(reversed(TEMPLATES))  # ordered by the index in labels.json
    assert task.splits == ("train", "validation") and task.eval_split == "validation"
    assert [(c.clip_id, c.label) for c in task.clips("train")] == [("101", 2), ("102", 0), ("105", 1)]
    assert task.clips("validation")[0].path.suffix == ".webm"
    problems = task.skipped["train"]
    assert len(problems) == 2 and "'Throwing [something] in the air' is not a class" in problems[0]
    assert "'template'" in problems[1] and task.missing["train"] == [str(video_dir / "105.webm")]
    (view,) = ClipDataset(task, "train", _sampler())[0]  # VP9 decodes
    assert view.frames.shape == (4, 28, 28, 3)
    with pytest.raises(AnnotationError, match="record 2"):
        create_task("ssv2", root=tmp_path).clips("train")


def test_ssv2_rejects_a_malformed_class_index(tmp_path: Path) -> None:
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "labels.json").write_text(json.dumps({"a": "0", "b": "2"}))
    with pytest.raises(AnnotationError, match="0..1, each once"):
        create_task("ssv2", root=tmp_path)


BRACKETED = [t.replace("something", "[something]") for t in TEMPLATES]


def _ssv2_copy(root: Path, video: Path, labels_dir: str, video_dir: str, keys: list[str],
               prefix: str = "") -> None:
    """A small SSv2 copy: labels.json with `keys` (index = position), two train and one validation clip."""
    labels, videos = root / labels_dir, root / video_dir
    labels.mkdir(parents=True, exist_ok=True)
    (labels / f"{prefix}labels.json").write_text(json.dumps({k: str(i) for i, k in enumerate(keys)}))
    records = {"train": [_ssv2_record("7", BRACKETED[2]), _ssv2_record("8", BRACKETED[0])],
               "validation": [_ssv2_record("9", BRACKETED[1])]}
    for split, rows in records.items():
        (labels / f"{prefix}{split}.json").write_text(json.dumps(rows))
    _place(video, *(videos / f"{i}.webm" for i in (7, 8, 9)))


@pytest.mark.parametrize("labels_dir, video_dir, layout", [
    ("labels", "20bn-something-something-v2", "20bn"),
    (".", ".", "flat"),
    ("labels", ".", "labels_dir=labels, video_dir=."),
])
@pytest.mark.parametrize("keys", ["plain", "bracketed"])
@pytest.mark.parametrize("prefix", ["", "something-something-v2-"])
def test_ssv2_loads_each_layout_from_its_root_alone(tmp_path: Path, videos: dict[str, Path], caplog,
                                                    labels_dir: str, video_dir: str, layout: str,
                                                    keys: str, prefix: str) -> None:
    names = TEMPLATES if keys == "plain" else BRACKETED
    _ssv2_copy(tmp_path, videos["webm"], labels_dir, video_dir, names, prefix)
    with caplog.at_level("INFO", logger="tasks.datasets.ssv2"):
        task = create_task("ssv2", root=tmp_path)
    assert task.layout == layout and f"({layout})" in caplog.text  # the detected layout is logged
    assert task.classes == TEMPLATES  # named without brackets, indexed by labels.json's values
    assert [(c.clip_id, c.label) for c in task.clips("train")] == [("7", 2), ("8", 0)]
    assert [(c.path, c.label) for c in task.clips("validation")] == [(tmp_path / video_dir / "9.webm", 1)]
    assert task.missing == {"train": [], "validation": []} and task.skipped["train"] == []


def test_ssv2_folders_given_in_the_config_and_errors_that_name_them(tmp_path: Path,
                                                                    videos: dict[str, Path]) -> None:
    from probe.run.main import compose_config

    args = compose_config(["task=ssv2"])["task"]["args"]
    assert args == {"root": None, "labels_dir": None, "video_dir": None}  # declared: no `+` needed
    _ssv2_copy(tmp_path, videos["webm"], "annotations", "webm", list(reversed(TEMPLATES)))
    with pytest.raises(AnnotationError, match=r"no labels.json .* in .*labels or .*task.args.labels_dir"):
        create_task("ssv2", root=tmp_path)
    with pytest.raises(AnnotationError, match=r"video folder .*/videos not found.*task.args.video_dir"):
        create_task("ssv2", root=tmp_path, labels_dir="annotations", video_dir="videos")
    task = create_task("ssv2", root=tmp_path, labels_dir="annotations", video_dir=str(tmp_path / "webm"))
    assert task.layout == "labels_dir=annotations, video_dir=webm"
    assert [(c.clip_id, c.label) for c in task.clips("train")] == [("7", 0), ("8", 2)]
    with pytest.raises(AnnotationError, match=r"none of the 2 videos listed exists, e.g. .*7.webm"):
        create_task("ssv2", root=tmp_path, labels_dir="annotations").clips("train")  # videos not in root


def test_ssv2_rejects_label_keys_that_collide_without_brackets(tmp_path: Path) -> None:
    (tmp_path / "labels.json").write_text(json.dumps({"Holding [something]": "0", "Holding something": "1"}))
    with pytest.raises(AnnotationError, match="names the class 'Holding something' twice"):
        create_task("ssv2", root=tmp_path)


# ---- Kinetics -------------------------------------------------------------------------------------------

def _csv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["label", "youtube_id", "time_start", "time_end", "split", "is_cc"], *rows])


def test_kinetics_finds_flat_and_per_class_clips_and_skips_missing_ones(tmp_path: Path,
                                                                        videos: dict[str, Path]) -> None:
    _csv(tmp_path / "annotations" / "train.csv", [
        ["riding a bike", "abc", "14", "24", "train", "0"],
        ["abseiling", "--x_y", "0", "10", "train", "0"],
        ["zumba", "gone", "30", "40", "train", "0"],  # the video is missing, as some always are
    ])
    _csv(tmp_path / "annotations" / "val.csv", [
        ["abseiling", "v1", "5", "15", "val", "0"],
        ["knitting", "v2", "5", "15", "val", "0"],  # not a train class
        ["zumba", "v3", "five", "15", "val", "0"],
        ["zumba", "", "5", "15", "val", "0"],
    ])
    _place(videos["mp4"], tmp_path / "train" / "abc_000014_000024.mp4",
           tmp_path / "train" / "abseiling" / "--x_y_000000_000010.mp4",  # per-class folder
           tmp_path / "val" / "v1_000005_000015.mp4", tmp_path / "val" / "v2_000005_000015.mp4")

    task = create_task("kinetics400", root=tmp_path, on_bad_record="skip")
    assert task.name == "kinetics400" and task.classes == ["abseiling", "riding a bike", "zumba"]
    clips = task.clips("train")
    assert [(c.clip_id, c.label) for c in clips] == [
        ("abc_000014_000024", 1), ("--x_y_000000_000010", 0), ("gone_000030_000040", 2)]
    assert clips[1].path == tmp_path / "train" / "abseiling" / "--x_y_000000_000010.mp4"
    assert task.skipped["train"] == []  # a missing video is a bad clip, not a bad record
    assert task.missing["train"] == [str(tmp_path / "train" / "gone_000030_000040.mp4")]
    assert [c.clip_id for c in task.clips("val")] == ["v1_000005_000015"]
    problems = task.skipped["val"]
    assert "line 3" in problems[0] and "'knitting' is not a class" in problems[0]
    assert "line 4" in problems[1] and "must be numbers" in problems[1]
    assert "line 5" in problems[2] and "'youtube_id'" in problems[2]
    with pytest.raises(AnnotationError, match="test.csv not found"):
        task.clips("test")
    assert len(create_task("kinetics400", root=tmp_path).clips("train")) == 3  # on_bad_record=error
    assert create_task("kinetics700", root=tmp_path).name == "kinetics700"


K400_ROWS = {"train": [["abseiling", "a1", "0", "10"], ["riding a bike", "b1", "14", "24"],
                       ["zumba", "z1", "30", "40"], ["zumba", "gone", "30", "40"]],  # gone: not downloaded
             "val": [["abseiling", "a2", "5", "15"], ["zumba", "z2", "5", "15"]]}


@pytest.mark.parametrize("layout", ["cvdf", "deepmind"])
def test_kinetics400_loads_each_download_layout(tmp_path: Path, videos: dict[str, Path], layout: str) -> None:
    """CVDF: annotations/{train,val}.csv, videos in {train,val}/<class>/; DeepMind: train.csv and
    validate.csv at the top (videos where the user put them: flat train/ and validate/ here)."""
    video_dirs = {"train": "train", "val": "val" if layout == "cvdf" else "validate"}
    csv_files = {"cvdf": {"train": "annotations/train.csv", "val": "annotations/val.csv"},
                 "deepmind": {"train": "train.csv", "val": "validate.csv"}}[layout]
    for split, rows in K400_ROWS.items():
        _csv(tmp_path / csv_files[split], [[*r, split, "0"] for r in rows])
        _place(videos["mp4"], *(
            tmp_path / video_dirs[split] / (label if layout == "cvdf" else "") / f"{v}_{s:0>6}_{e:0>6}.mp4"
            for label, v, s, e in rows if v != "gone"))
    task = create_task("kinetics400", root=tmp_path)  # on_bad_record=error: a missing video is no bad record
    assert task.classes == ["abseiling", "riding a bike", "zumba"]
    train = task.clips("train")
    assert [(c.clip_id, c.label) for c in train] == [("a1_000000_000010", 0), ("b1_000014_000024", 1),
                                                     ("z1_000030_000040", 2), ("gone_000030_000040", 2)]
    assert train[0].path.is_file()
    assert task.missing["train"] == [str(tmp_path / "train" / "gone_000030_000040.mp4")]
    val = task.clips("val")
    assert [(c.clip_id, c.label) for c in val] == [("a2_000005_000015", 0), ("z2_000005_000015", 2)]
    assert all(c.path.is_file() for c in val) and task.missing["val"] == []
    (view,) = ClipDataset(task, "val", _sampler())[1]
    assert view.label == 2 and view.frames.shape == (4, 28, 28, 3)

    (tmp_path / csv_files["train"]).unlink()
    only_val = create_task("kinetics400", root=tmp_path)  # listing validation needs no train.csv
    assert only_val.class_source == "val" and only_val.classes == ["abseiling", "zumba"]
    assert [c.clip_id for c in only_val.clips("val")] == ["a2_000005_000015", "z2_000005_000015"]
    with pytest.raises(AnnotationError, match="kinetics400/train: annotation file .*train.csv not found"):
        only_val.clips("train")


def test_kinetics_without_any_csv_names_both_layouts(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match=r"no annotation CSV .*annotations/\{train,val,test\}.csv and "
                                              r"train.csv, validate.csv, test.csv.*annotation_files"):
        create_task("kinetics400", root=tmp_path)


def test_kinetics_rejects_a_csv_without_the_official_header(tmp_path: Path) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "train.csv").write_text("youtube_id,label\nabc,zumba\n")
    with pytest.raises(AnnotationError, match=r"lacks column\(s\) \['split', 'time_end', 'time_start'\]"):
        create_task("kinetics600", root=tmp_path)


# ---- generic list format, registry, dataset -------------------------------------------------------------

def test_generic_lists_in_csv_and_space_formats(tmp_path: Path, videos: dict[str, Path]) -> None:
    _place(videos["mp4"], tmp_path / "clips" / "a b.mp4", tmp_path / "clips" / "c.mp4", tmp_path / "d.mp4")
    (tmp_path / "train.csv").write_text("path,label\nclips/a b.mp4,1\nclips/c.mp4,cat\n\nclips/c.mp4,0\n")
    absolute = tmp_path / "d.mp4"
    (tmp_path / "test.txt").write_text(f"clips/a b.mp4 2\n{absolute} 0\nmissing.mp4 1\nclips/c.mp4\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n")
    task = create_task("list", splits={"train": tmp_path / "train.csv", "test": tmp_path / "test.txt"},
                       classes=tmp_path / "classes.txt", on_bad_record="skip")
    assert task.classes == ["cat", "dog", "bird"]
    train = [(c.path.name, c.label) for c in task.clips("train")]
    assert train == [("a b.mp4", 1), ("c.mp4", 0)]  # line 5 repeats line 3's clip: a bad record
    assert "train.csv line 5 (clip clips/c.mp4): clip id 'clips/c.mp4' repeats" in task.skipped["train"][0]
    assert [(c.path, c.label) for c in task.clips("test")] == [(tmp_path / "clips" / "a b.mp4", 2),
                                                             (tmp_path / "d.mp4", 0),
                                                             (tmp_path / "missing.mp4", 1)]
    assert len(task.skipped["test"]) == 1 and "test.txt line 4" in task.skipped["test"][0]
    assert task.missing["test"] == [str(tmp_path / "missing.mp4")]
    derived = create_task("list", splits={"train": tmp_path / "test.txt", "test": tmp_path / "test.txt"},
                          on_bad_record="skip")
    assert derived.classes == ["0", "1", "2"]  # no class names: max label + 1, named by index
    with pytest.raises(AnnotationError, match="unknown label 2"):
        create_task("list", splits={"train": tmp_path / "test.txt", "test": tmp_path / "test.txt"},
                    classes=["x", "y"]).clips("train")


def test_task_registry() -> None:
    assert list_tasks("kinetics*") == ["kinetics400", "kinetics600", "kinetics700"]
    assert {"diving48", "ssv2", "synthetic", "list"} <= set(list_tasks())
    with pytest.raises(UnknownTaskError, match=r"unknown task 'ucf51'; registered: (\w+, )*diving48, "):
        create_task("ucf51")


def test_bad_videos_stop_the_run_or_are_skipped_and_counted_across_workers(tmp_path: Path,
                                                                          videos: dict[str, Path]) -> None:
    _place(videos["mp4"], *(tmp_path / f"ok{i}.mp4" for i in range(5)))
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(500))
    lines = [f"ok{i}.mp4 {i % 2}" for i in range(5)]
    lines.insert(2, "broken.mp4 1")
    (tmp_path / "all.txt").write_text("\n".join(lines))
    task = create_task("list", splits={"train": tmp_path / "all.txt", "test": tmp_path / "all.txt"})

    strict = ClipDataset(task, "test", _sampler())
    with pytest.raises(VideoDecodeError, match=r"broken.mp4.*on_bad_clip='skip'"):
        strict[2]

    sampler = create_sampler("uniform", num_frames=4, size=28, patch_size=14, num_crops=2)
    lenient = ClipDataset(task, "test", sampler, on_bad_clip="skip")
    batches = list(make_loader(lenient, batch_size=4, num_workers=2))
    assert sum(len(b.skipped) for b in batches) == 1
    assert batches[0].skipped[0].clip_id == "broken.mp4" and "broken.mp4" in batches[0].skipped[0].reason
    assert sum(len(b) for b in batches) == 5 * 2  # 5 good clips x 2 crops
    first = batches[0]
    assert first.frames.shape == (6, 4, 28, 28, 3) and first.positions.shape == (6, 4 * 2 * 2, 3)
    assert first.clip_ids[:2] == ["ok0.mp4", "ok0.mp4"] and first.views[:2] == [0, 1]
    assert first.labels.tolist() == [0, 0, 1, 1, 0, 0]

    train = ClipDataset(task, "train", sampler, train=True, seed=3, on_bad_clip="skip")
    assert len(train[0]) == 1  # one view per clip in training
    draws = [train[i][0].source_frames for i in (0, 1, 3, 4, 5)]
    again = ClipDataset(task, "train", sampler, train=True, seed=3)
    assert [again[i][0].source_frames for i in (0, 1, 3, 4, 5)] == draws  # per item, not per worker
    again.epoch = 1
    assert [again[i][0].source_frames for i in (0, 1, 3, 4, 5)] != draws  # a new epoch, new offsets
