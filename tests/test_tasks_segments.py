"""Perception Test and Charades-Ego: action segments of long videos as single-label clips, as the original
suite defines them. Their official annotation files written here in the exact layouts (with malformed
records), short generated videos, spans in seconds placed by the video's own frame timestamps, and one run
end to end each."""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from probe.run.main import run
from tasks import AnnotationError, ClipDataset, create_sampler, create_task
from tasks.clip import Clip
from tasks.decode.video import open_video, span_frames
from tasks.sampling.samplers import clip_span, frame_span
from tests.test_run import small
from tests.test_tasks import _encode, _place, _sampler


def _timed(path: Path, pts_ms: list[int]) -> Path:
    """H.264 frames shown at `pts_ms` (variable rate allowed): frame i is flat grey 8 * i plus a noise texture
    that pans one pixel a frame, so the codec finds motion."""
    texture = np.random.default_rng(0).integers(0, 60, (48, 64 + len(pts_ms), 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for i, t in enumerate(pts_ms):
            image = np.ascontiguousarray(texture[:, i:i + 64]) + np.uint8(4 * i)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        container.mux(stream.encode())
    return path


CONSTANT = [40 * i for i in range(48)]  # 25 fps, 1.92 s
VARIABLE = [100 * i for i in range(10)] + [1000 + 25 * i for i in range(30)]  # 10 fps for 1 s, then 40 fps


def test_span_frames_keeps_every_frame_shown_during_the_span() -> None:
    times = np.arange(40) / 25
    assert span_frames(times, 0.4, 1.0) == (10, 25)  # frame 10 starts at 0.4 s; frame 25 at 1.0 s is after
    assert span_frames(times, 0.41, 1.01) == (10, 26)  # frames 10 and 25 overlap the span
    assert span_frames(times, 0.399_999_9, 0.400_000_1) == (10, 11)  # annotation rounding; at least a frame
    assert span_frames(times, 0.5, None) == (12, 40)
    assert span_frames(times, 1.6, 2.0)[0] == 40  # after the last frame: the samplers clamp and warn
    assert span_frames(times, 1.59, 2.0) == (39, 40)


@pytest.mark.parametrize("timing, start, end, frames", [
    (CONSTANT, 0.4, 1.0, (10, 25)),
    (VARIABLE, 0.3, 1.1, (3, 14)),  # 0.3 s is frame 3 at 10 fps; 1.1 s is frame 14 at 40 fps after 1 s
    (VARIABLE, 1.0, None, (10, 40)),
])
@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_a_span_in_seconds_decodes_its_frames_under_uniform_and_codec_sampling(
        tmp_path: Path, timing: list[int], start: float, end: float | None, frames: tuple[int, int],
        backend: str) -> None:
    path = _timed(tmp_path / "timed.mp4", timing)
    clip = Clip("span", path, 0, start_time=start, end_time=end)
    reader = open_video(path, backend)
    placed = frame_span(clip, reader)
    assert (placed.start_frame, placed.end_frame) == frames and placed.start_time is None
    # the decoded frames are the ones shown then: frame i is grey 4 * i over the texture (mean 29.5)
    first = reader.get_frames([frames[0]])[0].mean()
    assert abs(first - (29.5 + 4 * frames[0])) < 3
    with pytest.raises(ValueError, match="place it with frame_span"):
        clip_span(clip, reader.num_frames)

    uniform = create_sampler("uniform", num_frames=4, size=28, patch_size=14, temporal_slots=64,
                             backend=backend)
    (view,) = uniform(clip)
    chunk = (frames[1] - frames[0]) / 4
    assert view.source_frames == np.floor(frames[0] + (np.arange(4) + 0.5) * chunk).tolist()
    codec = create_sampler("codec", num_frames=8, size=28, patch_size=14, budget=8, backend=backend)
    (view,) = codec(clip)
    assert view.source_frames and all(frames[0] <= f < frames[1] for f in view.source_frames)
    start_frame, end_frame, _, _ = codec.maps_key(clip, None, None)
    assert (start_frame, end_frame) == frames


# ---- Perception Test ------------------------------------------------------------------------------------

PT_NAMES = ["Putting something into something", "Taking something out of something", "Stacking objects"]


def _segment(i: int, label_id, start_us, end_us, label: str | None = None) -> dict:
    """One `action_localisation` entry as the release writes it (frame ids at the video's 25 fps)."""
    name = label or (PT_NAMES[label_id] if isinstance(label_id, int) and label_id < 3 else "Something else")
    frame_ids = [int(start_us * 25 // 1e6), int(end_us * 25 // 1e6)] if isinstance(start_us, int) else [0, 0]
    return {"id": i, "label": name, "label_id": label_id, "timestamps": [start_us, end_us],
            "frame_ids": frame_ids, "parent_objects": [i]}


def _pt_video(video_id: str, split: str, segments: list[dict], frames: int = 48) -> dict:
    metadata = {"split": split, "video_id": video_id, "frame_rate": 25, "num_frames": frames,
                "resolution": [48, 64], "audio_samples": 0, "audio_sample_rate": 16000, "is_cup_game": False,
                "is_camera_moving": False}
    return {"metadata": metadata, "object_tracking": [], "point_tracking": [],
            "action_localisation": segments, "sound_localisation": [], "mc_question": [],
            "grounded_question": []}


def _perception_test(root: Path, train: dict, valid: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "all_train.json").write_text(json.dumps(train))
    (root / "all_valid.json").write_text(json.dumps(valid))
    long = _encode(root / "long.mp4", "libx264", frames=48)
    _place(long, *(root / "videos" / f"{v}.mp4" for v in [*train, *valid] if v != "video_9999"))
    return root


def test_perception_test_reads_action_segments_as_clips(tmp_path: Path) -> None:
    train = {
        "video_10": _pt_video("video_10", "train", [
            _segment(0, 2, 400_000, 1_000_000),  # frames [10, 25)
            _segment(1, 0, 0, 120_000),  # [0, 3)
            _segment(2, 5, 0, 400_000),  # label_id 5 of 0..2
            _segment(3, 1, 800_000, 800_000),  # empty
            {"id": 4, "label": "x", "label_id": 1},  # no timestamps
            _segment(5, "1", 0, 40_000)]),  # label_id not an integer
        "video_11": {"object_tracking": []},  # no metadata, no segments
        "video_12": _pt_video("video_12", "train", []),  # annotated, but no action segments: no clip
        "video_13": {**_pt_video("video_13", "train", [_segment(0, 1, 0, 400_000)]),
                     "metadata": {"video_id": "video_13", "frame_rate": 0, "num_frames": 48}},
        "video_9999": _pt_video("video_9999", "train", [_segment(0, 1, 0, 1_000_000)]),  # video not on disk
    }
    valid = {"video_20": _pt_video("video_20", "valid", [_segment(0, 1, 1_010_000, 1_900_000),
                                                         _segment(1, 0, 0, 500_000, label="Putting in")])}
    root = _perception_test(tmp_path, train, valid)

    task = create_task("perception_test", root=root, num_classes=3, on_bad_record="skip")
    assert task.classes == PT_NAMES and task.eval_split == "valid"
    clips = task.clips("train")
    assert [(c.clip_id, c.label, c.start_frame, c.end_frame) for c in clips] == [
        ("video_10_0", 2, 10, 25), ("video_10_1", 0, 0, 3), ("video_9999_0", 1, 0, 25)]
    assert clips[0].path == root / "videos" / "video_10.mp4"
    assert task.missing["train"] == [str(root / "videos" / "video_9999.mp4")]
    problems = task.skipped["train"]
    assert len(problems) == 6
    assert "all_train.json video video_10 action_localisation[2] (clip video_10_2): unknown label 5" \
        in problems[0]
    assert "action_localisation[3]: empty or negative segment: timestamps 800000..800000" in problems[1]
    assert "action_localisation[4]: missing key(s) 'timestamps'" in problems[2]
    assert "action_localisation[5]: label_id must be an integer, got '1'" in problems[3]
    assert "video video_11: missing key(s) 'metadata', 'action_localisation'" in problems[4]
    assert "video video_13: metadata needs frame_rate > 0 and num_frames > 0, got 0, 48" in problems[5]
    valid_clips = task.clips("valid")  # 1.01..1.9 s: frames 25..47 (frame 25 is shown from 1.0 s to 1.04 s)
    assert [(c.clip_id, c.label, c.start_frame, c.end_frame) for c in valid_clips] == [
        ("video_20_0", 1, 25, 48), ("video_20_1", 0, 0, 13)]
    assert task.warnings == ["perception_test: label_id 0 is named both 'Putting something into something' "
                             "and 'Putting in'; the first is kept"]
    (view,) = ClipDataset(task, "train", _sampler())[0]  # only the segment's frames are read
    assert view.source_frames == [11, 15, 19, 23]

    assert create_task("perception_test", root=root).num_classes == 63  # the release's classes by default
    with pytest.raises(AnnotationError, match=r"all_train.json video video_10 action_localisation\[2\].*"
                                              r"on_bad_record='skip'"):
        create_task("perception_test", root=root, num_classes=3).clips("train")
    (root / "all_valid.json").write_text(json.dumps([valid["video_20"]]))
    with pytest.raises(AnnotationError, match="all_valid.json must hold one object keyed by video id"):
        create_task("perception_test", root=root)


def test_perception_test_runs_end_to_end_with_onevision_tiny(tmp_path: Path) -> None:
    train = {f"video_{v}": _pt_video(f"video_{v}", "train", [
        _segment(k, (v + k) % 3, 300_000 * k, 300_000 * k + 600_000) for k in range(3)]) for v in range(4)}
    valid = {"video_20": _pt_video("video_20", "valid", [
        _segment(k, k, 500_000 * k, 500_000 * k + 400_000) for k in range(3)])}
    root = _perception_test(tmp_path / "pt", train, valid)
    record = run(small(tmp_path, "task=perception_test", f"task.args.root={root}", "task.args.num_classes=3"))
    assert record["data"]["task"] == "perception_test" and record["data"]["num_classes"] == 3
    assert (record["data"]["train_clips"], record["data"]["eval_clips"]) == (12, 3)
    assert record["data"]["eval_split"] == "valid" and record["config"]["task"]["epochs"] == 10
    assert record["config"]["task"]["original"] == {"epochs": 30, "batch_size": 32}  # 4 per GPU x 8
    assert record["config"]["sampling"]["name"] == "uniform"
    assert 0 <= record["metrics"]["test"]["top1"] <= 100


# ---- Charades-Ego ---------------------------------------------------------------------------------------

CE_HEADER = ["id", "subject", "scene", "quality", "relevance", "verified", "script", "descriptions",
             "actions", "length", "egocentric", "charades_video"]
CE_CLASSES = ["Holding some clothes", "Putting clothes somewhere", "Taking some clothes from somewhere"]


def _ce_row(video: str, actions: str, egocentric: str = "No") -> list[str]:
    return [video, "SUBJ1", "Bedroom", "6", "7", "Yes", "A person holds clothes, then puts them away.",
            "Person holding clothes;Person putting clothes away", actions, "1.92", egocentric, "46GP8"]


def _charades_ego(root: Path, train: list[list[str]], test: list[list[str]]) -> Path:
    notes = root / "CharadesEgo"
    notes.mkdir(parents=True)
    lines = "".join(f"c{i:03d} {name}\n" for i, name in enumerate(CE_CLASSES))
    (notes / "Charades_v1_classes.txt").write_text(lines)
    for name, rows in (("CharadesEgo_v1_train.csv", train), ("CharadesEgo_v1_test.csv", test)):
        with (notes / name).open("w", newline="") as f:
            csv.writer(f).writerows([CE_HEADER, *rows])
    long = _timed(root / "long.mp4", CONSTANT)
    _place(long, *(root / "CharadesEgo_v1_480" / f"{r[0]}.mp4" for r in [*train, *test]))
    return root


def test_charades_ego_reads_each_action_as_a_clip_in_seconds(tmp_path: Path) -> None:
    train = [_ce_row("46GP8", "c001 0.40 1.00;c002 0.00 0.50"),
             _ce_row("46GP8EGO", "c001 0.20 0.60;c000 1.00 1.90", "Yes"),
             _ce_row("XKRT1", ""),  # a video without actions gives no clip
             _ce_row("XKRT1EGO", "c157 0.1 0.5;c001 x 1.0;c002 1.0 0.5;c01 0 1", "Yes"),
             _ce_row("QQQQQ", "c000 0.0 1.0", "Maybe")]
    test = [_ce_row("ZZZZZ", "c002 0.41 1.01"), _ce_row("ZZZZZEGO", "c000 0.00 0.30", "Yes")]
    root = _charades_ego(tmp_path, train, test)

    task = create_task("charades_ego", root=root, on_bad_record="skip")
    assert task.classes == CE_CLASSES and task.eval_split == "test" and task.views == "both"
    clips = task.clips("train")
    assert [(c.clip_id, c.label, c.start_time, c.end_time) for c in clips] == [
        ("46GP8_0", 1, 0.4, 1.0), ("46GP8_1", 2, 0.0, 0.5), ("46GP8EGO_0", 1, 0.2, 0.6),
        ("46GP8EGO_1", 0, 1.0, 1.9)]
    assert clips[0].path == root / "CharadesEgo_v1_480" / "46GP8.mp4" and clips[0].start_frame is None
    problems = task.skipped["train"]
    assert len(problems) == 5
    assert "CharadesEgo_v1_train.csv line 5 action 1 (clip XKRT1EGO_0): unknown label 157" in problems[0]
    assert "line 5 action 2: expected 'c<class> <start> <end>' (e.g. c092 11.90 21.20), got 'c001 x 1.0'" \
        in problems[1]
    assert "line 5 action 3: empty or negative segment: 1.0..0.5 s" in problems[2]
    assert "line 5 action 4: expected 'c<class> <start> <end>'" in problems[3]
    assert "line 6: needs an id and egocentric Yes or No, got 'QQQQQ', 'Maybe'" in problems[4]
    # a span in seconds decodes the frames shown then (25 fps): 0.41..1.01 s is frames 10..25
    (view,) = ClipDataset(task, "test", _sampler())[0]
    assert view.source_frames == [12, 16, 20, 24]

    first = create_task("charades_ego", root=root, views="first", on_bad_record="skip")
    assert [c.clip_id for c in first.clips("train")] == ["46GP8EGO_0", "46GP8EGO_1"]
    assert [c.clip_id for c in first.clips("test")] == ["ZZZZZEGO_0"]
    third = create_task("charades_ego", root=root, views="third", on_bad_record="skip")
    assert [c.clip_id for c in third.clips("test")] == ["ZZZZZ_0"] and len(third.clips("train")) == 2
    with pytest.raises(AnnotationError, match="views must be one of both, first, third"):
        create_task("charades_ego", root=root, views="ego")
    with pytest.raises(AnnotationError, match=r"_train.csv line 5 action 1 .*on_bad_record='skip'"):
        create_task("charades_ego", root=root).clips("train")
    (root / "CharadesEgo" / "Charades_v1_classes.txt").write_text("c000 Holding some clothes\nc002 Taking\n")
    with pytest.raises(AnnotationError, match="expected lines 'c000 <name>', 'c001 <name>', ... in order"):
        create_task("charades_ego", root=root)


def test_charades_ego_runs_end_to_end_with_codec_sampling(tmp_path: Path) -> None:
    train = [_ce_row(f"V{v:04d}{ego}", ";".join(f"c{(v + k) % 3:03d} {0.3 * k:.2f} {0.3 * k + 0.6:.2f}"
                                                   for k in range(3)), "Yes" if ego else "No")
             for v in range(2) for ego in ("", "EGO")]
    test = [_ce_row("T0000", "c000 0.00 0.40;c001 0.50 0.90;c002 1.00 1.40")]
    root = _charades_ego(tmp_path / "ce", train, test)
    record = run(small(tmp_path, "task=charades_ego", f"task.args.root={root}", "sampling=codec",
                       "sampling.frames_equiv=2", "sampling.args.num_frames=8"))
    assert record["data"]["task"] == "charades_ego" and record["data"]["num_classes"] == 3
    assert (record["data"]["train_clips"], record["data"]["eval_clips"]) == (12, 3)
    assert record["config"]["task"]["args"]["views"] == "both" and record["config"]["task"]["epochs"] == 10
    assert record["config"]["task"]["original"] == {"epochs": 10, "batch_size": 128}  # 16 per GPU x 8
    assert record["config"]["sampling"]["name"] == "codec"
    assert record["skipped_clips"] == {"train": {}, "eval": {}}
    assert record["residual_only_clips"] == {"train": 0, "eval": 0}  # the segments' motion vectors were read
    assert 0 <= record["metrics"]["test"]["top1"] <= 100
