"""The original suite's roster beyond Diving-48/SSv2/Kinetics-400: each dataset's official annotation
files and video folders written here in their exact layouts (short real clips, malformed records), loaded,
decoded, and one of them run end to end."""

from __future__ import annotations

import csv
from pathlib import Path

import av
import numpy as np
import pytest

import tasks.decode.codec as codec
from probe.run.main import run
from tasks import AnnotationError, ClipDataset, create_sampler, create_task, list_tasks
from tests.test_run import small
from tests.test_tasks import _csv, _encode, _place, _sampler


@pytest.fixture(scope="module")
def avi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short real clip in the container and codec family HMDB51 and UCF101 ship (AVI, MPEG-4 part 2)."""
    return _encode(tmp_path_factory.mktemp("avi") / "clip.avi", "mpeg4")


# ---- HMDB51 ---------------------------------------------------------------------------------------------

HMDB_CLASSES = ("draw_sword", "brush_hair", "fall_floor")


def _hmdb_video(name: str, i: int) -> str:
    return f"April_09_{name}_u_nm_np1_ba_goo_{i}.avi"


def _hmdb51(root: Path, avi: Path, per_class: int = 3, extra: dict[str, str] | None = None) -> Path:
    """Split 1: videos 0..per_class-2 train, the last test; split 2: the reverse; one unused (0) video."""
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    for name in HMDB_CLASSES:
        videos = [_hmdb_video(name, i) for i in range(per_class + 1)]
        _place(avi, *(root / "videos" / name / v for v in videos))
        train = ["1"] * (per_class - 1)
        for n, markers in ((1, [*train, "2", "0"]), (2, ["2", *train, "0"])):
            # as released: CRLF line ends, a space after the marker
            lines = "".join(f"{v} {m} \r\n" for v, m in zip(videos, markers, strict=True))
            (splits / f"{name}_test_split{n}.txt").write_text(lines + (extra or {}).get(f"{name}{n}", ""))
    return root


def test_hmdb51_reads_the_official_split_files_by_config(tmp_path: Path, avi: Path) -> None:
    bad = {"brush_hair1": "lost.avi 1\nno_marker.avi\nthree.avi 3\n"}
    root = _hmdb51(tmp_path / "hmdb51", avi, extra=bad)
    task = create_task("hmdb51", root=root, on_bad_record="skip")
    assert task.classes == sorted(HMDB_CLASSES) and task.split == 1
    train = task.clips("train")
    assert [(c.clip_id, c.label) for c in train[:2]] == [("April_09_brush_hair_u_nm_np1_ba_goo_0", 0),
                                                        ("April_09_brush_hair_u_nm_np1_ba_goo_1", 0)]
    # a listed video that is not on disk stays in the split as a bad clip (on_bad_clip), not a bad record
    assert [c.label for c in train] == [0, 0, 0, 1, 1, 2, 2]
    assert task.missing["train"] == [str(root / "videos" / "brush_hair" / "lost.avi")]
    assert train[0].path == root / "videos" / "brush_hair" / "April_09_brush_hair_u_nm_np1_ba_goo_0.avi"
    test = task.clips("test")
    assert [(c.clip_id, c.label) for c in test] == [(f"April_09_{n}_u_nm_np1_ba_goo_2", i)
                                                    for i, n in enumerate(sorted(HMDB_CLASSES))]
    problems = task.skipped["train"]
    assert len(problems) == 2
    assert "line 6" in problems[0] and "'no_marker.avi'" in problems[0]
    assert "line 7" in problems[1] and "'three.avi 3'" in problems[1]
    assert len(task.skipped["test"]) == 2  # the malformed lines are bad in every split; lost.avi is train
    (view,) = ClipDataset(task, "test", _sampler())[0]  # AVI / MPEG-4 decodes
    assert view.frames.shape == (4, 28, 28, 3)

    second = create_task("hmdb51", root=root, split=2)
    assert [c.clip_id[-1] for c in second.clips("test")] == ["0"] * 3
    assert [c.clip_id[-1] for c in second.clips("train")] == ["1", "2"] * 3
    with pytest.raises(AnnotationError, match=r"brush_hair_test_split1.txt line 6: .*on_bad_record='skip'"):
        create_task("hmdb51", root=root).clips("train")
    with pytest.raises(AnnotationError, match="split must be 1, 2 or 3"):
        create_task("hmdb51", root=root, split=4)
    with pytest.raises(AnnotationError, match=r"no split files .*<class>_test_split1.txt"):
        create_task("hmdb51", root=root / "videos")


def test_hmdb51_runs_end_to_end_with_onevision_tiny(tmp_path: Path, avi: Path) -> None:
    root = _hmdb51(tmp_path / "hmdb51", avi, per_class=5)
    record = run(small(tmp_path, "task=hmdb51", f"task.args.root={root}", "task.args.split=2"))
    assert record["config"]["task"]["args"]["split"] == 2 and record["config"]["task"]["epochs"] == 30
    assert record["data"]["train_clips"] == 12 and record["data"]["eval_clips"] == 3
    assert record["data"]["num_classes"] == 3 and record["skipped_records"] == {"train": [], "eval": []}
    assert 0 <= record["metrics"]["test"]["top1"] <= 100


# ---- UCF101 ---------------------------------------------------------------------------------------------

UCF_CLASSES = ("ApplyEyeMakeup", "Archery", "HandstandPushups")


def _ucf_video(name: str, group: int) -> str:
    spelled = "HandStandPushups" if name == "HandstandPushups" else name  # as the release spells its files
    return f"{name}/v_{spelled}_g{group:02d}_c01.avi"


def test_ucf101_reads_classind_and_the_train_and_test_lists(tmp_path: Path, avi: Path) -> None:
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\r\n" for i, c in enumerate(UCF_CLASSES, start=1)))
    train = [f"{_ucf_video(c, g)} {i}" for i, c in enumerate(UCF_CLASSES, start=1) for g in (8, 9)]
    train += ["Archery/v_Archery_g10_c01.avi 1",  # label contradicts the folder
              "Rowing/v_Rowing_g08_c01.avi 2",  # not a class folder
              "Archery/v_Archery_g11_c01.avi",  # no label
              "Archery/v_Archery_g12_c01.avi 2"]  # no video
    (lists / "trainlist02.txt").write_text("".join(f"{line}\r\n" for line in train))
    test = [_ucf_video(c, 1) for c in UCF_CLASSES] + ["Archery/v_Archery_g02_c01.avi 2"]  # a label
    (lists / "testlist02.txt").write_text("".join(f"{line}\r\n" for line in test))
    videos = [_ucf_video(c, g) for c in UCF_CLASSES for g in (1, 8, 9)]
    _place(avi, *(tmp_path / "UCF-101" / v for v in [*videos, "Archery/v_Archery_g10_c01.avi"]))

    task = create_task("ucf101", root=tmp_path, split=2, on_bad_record="skip")
    assert task.classes == list(UCF_CLASSES)
    assert [(c.clip_id, c.label) for c in task.clips("train")] == [
        ("v_ApplyEyeMakeup_g08_c01", 0), ("v_ApplyEyeMakeup_g09_c01", 0), ("v_Archery_g08_c01", 1),
        ("v_Archery_g09_c01", 1), ("v_HandStandPushups_g08_c01", 2), ("v_HandStandPushups_g09_c01", 2),
        ("v_Archery_g12_c01", 1)]  # listed without its video: a bad clip (on_bad_clip), not a bad record
    assert task.missing["train"] == [str(tmp_path / "UCF-101" / "Archery" / "v_Archery_g12_c01.avi")]
    clips = task.clips("test")
    assert [c.label for c in clips] == [0, 1, 2]
    assert clips[2].path == tmp_path / "UCF-101" / "HandstandPushups" / "v_HandStandPushups_g01_c01.avi"
    problems = task.skipped["train"]
    assert len(problems) == 3
    assert "trainlist02.txt line 7" in problems[0]
    assert "label 1 contradicts the class folder 'Archery', whose index is 2" in problems[0]
    assert "line 8" in problems[1] and "'Rowing/v_Rowing_g08_c01.avi' is not in a class folder" in problems[1]
    assert "line 9" in problems[2] and "expected '<class>/<video>.avi <index>'" in problems[2]
    assert "testlist02.txt line 4" in task.skipped["test"][0]
    assert "expected '<class>/<video>.avi'" in task.skipped["test"][0]
    (view,) = ClipDataset(task, "test", _sampler())[2]
    assert view.frames.shape == (4, 28, 28, 3)

    with pytest.raises(AnnotationError, match=r"trainlist01.txt not found"):
        create_task("ucf101", root=tmp_path).clips("train")  # split 1 is the default
    with pytest.raises(AnnotationError, match=r"trainlist02.txt line 7: .*on_bad_record='skip'"):
        create_task("ucf101", root=tmp_path, split=2).clips("train")
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n3 Archery\n")
    with pytest.raises(AnnotationError, match=r"classInd.txt: class indices must be 1..2"):
        create_task("ucf101", root=tmp_path)


# ---- Kinetics-600/700: the Kinetics loader, chosen by config --------------------------------------------

K_CLASSES = {600: ["acting in play", "adjusting glasses", "alligator wrestling"],
             700: ["passing American football (not in game)", "pouring wine", "zumba"]}


@pytest.mark.parametrize("variant", [600, 700])
def test_kinetics_600_and_700_load_their_official_csvs_by_config(tmp_path: Path, avi: Path,
                                                                 variant: int) -> None:
    classes = K_CLASSES[variant]
    train = [[c, f"yt{i}{j}", "10", "20", "train", "0"] for i, c in enumerate(classes) for j in range(2)]
    _csv(tmp_path / "annotations" / "train.csv", [*train, [classes[0], "gone", "0", "10", "train", "0"]])
    val = [[c, f"v{i}", "1", "11", "val", "0"] for i, c in enumerate(classes)]
    _csv(tmp_path / "annotations" / "val.csv", [*val, ["not a kinetics class", "v9", "1", "11", "val", "0"]])
    mp4 = _encode(tmp_path / "clip.mp4", "libx264")
    _place(mp4, *(tmp_path / "train" / c / f"yt{i}{j}_000010_000020.mp4" for i, c in enumerate(classes)
                  for j in range(2)))
    _place(mp4, *(tmp_path / "val" / f"v{i}_000001_000011.mp4" for i in range(3)))

    config = small(tmp_path, f"task=kinetics{variant}", f"task.args.root={tmp_path}", "on_bad_record=skip")
    assert (config["task"]["eval_split"], config["task"]["epochs"]) == ("val", 10)  # the suite's default
    args = {"on_bad_record": config["on_bad_record"], **config["task"]["args"]}
    task = create_task(config["task"]["name"], **args)  # as probe.run builds it
    assert task.name == f"kinetics{variant}" and task.classes == classes  # (sorted names)
    assert [(c.clip_id, c.label) for c in task.clips("train")] == [
        *((f"yt{i}{j}_000010_000020", i) for i in range(3) for j in range(2)), ("gone_000000_000010", 0)]
    assert [c.label for c in task.clips("val")] == [0, 1, 2]
    # a clip listed but not downloaded is a bad clip (skipped when decoded), not a bad record
    assert len(task.missing["train"]) == 1 and task.missing["train"][0].endswith("gone_000000_000010.mp4")
    assert not task.skipped["train"] and "'not a kinetics class' is not a class" in task.skipped["val"][0]
    (view,) = ClipDataset(task, "val", _sampler())[0]
    assert view.frames.shape == (4, 28, 28, 3)


# ---- EPIC-KITCHENS-100 ---------------------------------------------------------------------------------

EPIC_HEADER = ["narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
               "stop_timestamp", "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun",
               "noun_class", "all_nouns", "all_noun_classes"]


def _epic_row(nid: str, video: str, start: str, stop: str, verb: str, noun: str) -> list[str]:
    return [nid, video[:3], video, "00:00:01.00", "00:00:00.50", "00:00:01.20", start, stop,
            "open fridge", "open", verb, "fridge", noun, "['fridge']", f"[{noun}]"]


def _write_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def _epic(root: Path, train: list[list[str]], validation: list[list[str]]) -> Path:
    """The annotations repository's files and the downloaded layout, with two 48-frame videos."""
    notes = root / "epic-kitchens-100-annotations"
    notes.mkdir(parents=True)
    for target, keys in (("verb", ["take", "put", "open"]), ("noun", ["tap", "plate", "fridge", "knife"])):
        rows = [[str(i), k, "[]", "x"] for i, k in enumerate(keys)]
        _write_csv(notes / f"EPIC_100_{target}_classes.csv", [["id", "key", "instances", "category"], *rows])
    _write_csv(notes / "EPIC_100_train.csv", [EPIC_HEADER, *train])
    _write_csv(notes / "EPIC_100_validation.csv", [EPIC_HEADER, *validation])
    long = _encode(root / "long.mp4", "libx264", frames=48)
    _place(long, *(root / "EPIC-KITCHENS" / "P01" / "videos" / f"{v}.MP4" for v in ("P01_01", "P01_02")))
    return root


def test_epic_kitchens_verb_and_noun_segments_of_long_videos(tmp_path: Path) -> None:
    _epic(tmp_path, [_epic_row("P01_01_0", "P01_01", "21", "30", "2", "3"),
                     _epic_row("P01_01_1", "P01_01", "1", "48", "0", "1"),
                     _epic_row("P01_01_2", "P01_01", "1.5", "30", "0", "1"),  # frame numbers are integers
                     _epic_row("P01_01_3", "P01_01", "30", "21", "0", "1"),  # stop before start
                     _epic_row("P02_01_0", "P02_01", "1", "10", "0", "1"),  # no such video
                     _epic_row("P01_01_4", "P01_01", "1", "10", "3", "3")],  # verb 3 of 0..2; noun 3 is fine
          [_epic_row("P01_02_0", "P01_02", "5", "12", "1", "2")])
    notes = tmp_path / "epic-kitchens-100-annotations"

    verb = create_task("epic_verb", root=tmp_path, on_bad_record="skip")
    assert verb.classes == ["take", "put", "open"] and verb.eval_split == "validation"
    clips = verb.clips("train")
    assert [(c.clip_id, c.label, c.start_frame, c.end_frame) for c in clips] == [
        ("P01_01_0", 2, 20, 30), ("P01_01_1", 0, 0, 48), ("P02_01_0", 0, 0, 10)]
    assert clips[0].path == tmp_path / "EPIC-KITCHENS" / "P01" / "videos" / "P01_01.MP4"
    # a segment of a video not on disk is a bad clip (on_bad_clip), not a bad record
    assert verb.missing["train"] == [str(tmp_path / "EPIC-KITCHENS" / "P02" / "videos" / "P02_01.MP4")]
    problems = verb.skipped["train"]
    assert len(problems) == 3 and "line 4" in problems[0] and "must be integers" in problems[0]
    assert "line 5" in problems[1] and "empty or negative segment: frames 30..21" in problems[1]
    assert "line 7" in problems[2] and "unknown label 3" in problems[2]
    (view,) = ClipDataset(verb, "train", _sampler())[0]  # only the segment's frames are read
    assert view.frames.shape == (4, 28, 28, 3) and view.source_frames == [21, 23, 26, 28]
    by_codec = create_sampler("codec", num_frames=8, size=28, patch_size=14, budget=8)
    (view,) = ClipDataset(verb, "train", by_codec)[0]
    assert view.source_frames and all(20 <= f < 30 for f in view.source_frames)

    noun = create_task("epic_noun", root=tmp_path, on_bad_record="skip")
    assert noun.num_classes == 4 and [c.label for c in noun.clips("train")] == [3, 1, 1, 3]
    assert [(c.label, c.start_frame, c.end_frame) for c in noun.clips("validation")] == [(2, 4, 12)]
    with pytest.raises(AnnotationError, match=r"EPIC_100_train.csv line 4: .*on_bad_record='skip'"):
        create_task("epic_noun", root=tmp_path).clips("train")
    (notes / "EPIC_100_verb_classes.csv").write_text("id,key\n1,take\n")
    with pytest.raises(AnnotationError, match="class ids must be 0..0, in order"):
        create_task("epic_verb", root=tmp_path)


def _b_frames(path: Path) -> Path:
    """120 frames of a panning texture, H.264 with B-frames (reordered) and a keyframe every 12 frames."""
    texture = np.random.default_rng(0).integers(0, 255, (64, 120, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 80, 64, "yuv420p"
        stream.options = {"bf": "3", "x264-params": "keyint=12:min-keyint=12:scenecut=0"}
        for i in range(120):
            image = np.ascontiguousarray(texture[:, i % 40:i % 40 + 80])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.mark.parametrize("video, start, first", [("cup.mp4", 100, 90), ("Megamind.avi", 150, 0),
                                                 ("b-frames", 50, 48)])
def test_codec_maps_of_a_segment_decode_from_the_keyframe_before_it(
        fixtures: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, video: str, start: int,
        first: int) -> None:
    """cup.mp4 (a keyframe every 30 frames) and a B-frame stream cost the segment; Megamind.avi's
    timestamps do not number its frames after a seek, so it decodes from the start; the maps are a whole
    decode's either way."""
    decoded: list[int] = []
    frame = codec._DecodePass._frame
    monkeypatch.setattr(codec._DecodePass, "_frame",
                        lambda self, f, i: (decoded.append(i), frame(self, f, i)))
    path = _b_frames(tmp_path / "b.mp4") if video == "b-frames" else fixtures / "videos" / video
    end = start + 40
    whole, _ = codec.analyse(path, start_frame=start, end_frame=end, seek=False)
    assert decoded == list(range(end))
    decoded.clear()
    maps, _ = codec.analyse(path, start_frame=start, end_frame=end)
    assert decoded[-(end - first):] == list(range(first, end))  # the pass that made the maps
    assert len(decoded) == end - first if first else len(decoded) < end + 10  # (a few before the fallback)
    for field in ("fused", "motion", "residual", "frame_indices", "slots"):
        assert np.array_equal(getattr(maps, field), getattr(whole, field), equal_nan=True), field


def test_epic_verb_runs_end_to_end_on_segments(tmp_path: Path) -> None:
    train = [_epic_row(f"P01_01_{i}", "P01_01", str(1 + 5 * i), str(8 + 5 * i), str(i % 3), "0")
             for i in range(8)]  # overlapping segments of one video, as narrations are
    validation = [_epic_row(f"P01_02_{i}", "P01_02", str(1 + 12 * i), str(12 + 12 * i), str(i), "0")
                  for i in range(3)]
    root = _epic(tmp_path / "epic", train, validation)
    record = run(small(tmp_path, "task=epic_verb", f"task.args.root={root}"))
    assert record["data"]["task"] == "epic_verb" and record["data"]["num_classes"] == 3
    assert (record["data"]["train_clips"], record["data"]["eval_clips"]) == (8, 3)
    assert record["data"]["eval_split"] == "validation" and record["config"]["task"]["epochs"] == 10
    assert 0 <= record["metrics"]["test"]["top1"] <= 100


# ---- registry and configs -------------------------------------------------------------------------------

@pytest.mark.parametrize("name, epochs",
                         [("hmdb51", 30), ("ucf101", 10), ("epic_verb", 10), ("epic_noun", 10),
                          ("perception_test", 10), ("charades_ego", 10)])
def test_new_tasks_are_registered_with_a_config(tmp_path: Path, name: str, epochs: int) -> None:
    assert name in list_tasks()
    config = small(tmp_path, f"task={name}", f"task.args.root={tmp_path}")
    assert config["task"]["name"] == name and config["task"]["epochs"] == epochs
    assert config["task"]["args"]["root"] == str(tmp_path)
