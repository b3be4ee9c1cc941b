"""Perception Test action classification (`perception_test`, 63 classes) in the official layout under `root`
(or `$OVPROBE_DATA/perception_test`):

    all_train.json, all_valid.json   train_annotations.zip, valid_annotations.zip: one object keyed by video
                                     id, each {"metadata": {"video_id", "frame_rate", "num_frames", "split",
                                     ...}, "action_localisation": [{"id", "label", "label_id", "timestamps":
                                     [start, end], "frame_ids", "parent_objects"}, ...], ...}
    videos/<video_id>.mp4            as sample_videos.zip unpacks (`video_dir` if the videos lie elsewhere)

Sources: the release README's download table and field tables (github.com/google-deepmind/perception_test),
its `data_visualisation.ipynb` (per-video `metadata`, `action_localisation` segments, `<video_id>.mp4`,
timestamps divided by 1e6: they are in microseconds, though the README's table says ms) and the action
localisation baseline's config (`num_classes: 63`). The action localisation challenge's
`action_localisation_{train,valid}.json` have the same layout: `annotation_files` names them.

As in the original OneVision-Encoder suite (`perception_test`: 63 classes, single-label top-1, 10 epochs),
each annotated action segment is one clip with its one class, a trimmed span of the long video; trained on
the train split and evaluated on the labelled valid split (the test split's labels are hidden). The class
of a segment is its `label_id`; class names are the segments' `label`s (an id no segment names is called
`label_id <n>`). The release gives each video's frame rate, so a segment's microseconds become decoded
frames when the annotations are read (`tasks.decode.video.span_frames`: every frame shown during the segment).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tasks.clip import Clip
from tasks.datasets.registry import AnnotationError, Task, data_root, read_json, register_task, require
from tasks.decode.video import span_frames

ANNOTATION_FILES = {"train": "all_train.json", "valid": "all_valid.json"}
SEGMENT_KEYS = ("label", "label_id", "timestamps")
NUM_CLASSES = 63  # the release's action classes (the localisation baseline's num_classes, the suite's map)


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and np.isfinite(x)


@register_task(name="perception_test")
class PerceptionTest(Task):
    name = "perception_test"
    splits = ("train", "valid")
    eval_split = "valid"

    def __init__(self, root: str | Path | None = None, video_dir: str = "videos",
                 annotation_files: Mapping[str, str] | None = None, num_classes: int = NUM_CLASSES,
                 on_bad_record: str = "error"):
        self.root = data_root(root, "perception_test")
        self.video_folder = self.root / video_dir
        self.files = {s: self.root / f for s, f in {**ANNOTATION_FILES, **(annotation_files or {})}.items()}
        unknown = sorted(set(self.files) - set(self.splits))
        if unknown:
            raise AnnotationError(f"annotation_files names unknown split(s) {unknown}; splits: train, valid")
        self._videos = {split: self._load(split) for split in self.splits}
        names, conflicts = self._class_names(num_classes)
        super().__init__(names, on_bad_record)
        self.warnings += conflicts

    def _load(self, split: str) -> dict[str, Any]:
        """The split's videos, keeping only what a clip needs (the files also hold tracks and questions)."""
        path = self.files[split]
        videos = read_json(path)
        if not isinstance(videos, dict):
            raise AnnotationError(f"{path} must hold one object keyed by video id, as the release's files do")
        return {vid: {k: v[k] for k in ("metadata", "action_localisation") if k in v} if isinstance(v, dict)
                else v for vid, v in videos.items()}

    def _class_names(self, num_classes: int) -> tuple[list[str], list[str]]:
        """Names by `label_id` from the segments of both splits (the first name met), and the conflicts."""
        names: dict[int, str] = {}
        conflicts: list[tuple[int, str]] = []
        for split in self.splits:
            for video in self._videos[split].values():
                segments = video.get("action_localisation") if isinstance(video, dict) else None
                for s in segments if isinstance(segments, list) else ():
                    if require(s, SEGMENT_KEYS) or _segment_problem(s):
                        continue  # a bad record: rejected when its split is read
                    i, name = s["label_id"], s["label"]
                    if not 0 <= i < num_classes:
                        continue
                    if names.setdefault(i, name) != name and (i, name) not in conflicts:
                        conflicts.append((i, name))
        warnings = [f"{self.name}: label_id {i} is named both {names[i]!r} and {name!r}; the first is kept"
                    for i, name in conflicts]
        return [names.get(i, f"label_id {i}") for i in range(num_classes)], warnings

    def _read_split(self, split: str) -> Iterable[tuple[str, Clip]]:
        path = self.files[split]
        for video_id, video in self._videos[split].items():
            where = f"{path} video {video_id}"
            problem = require(video, ("metadata", "action_localisation"))
            if problem is None:
                problem = require(video["metadata"], ("frame_rate", "num_frames"))
            if problem is None and not isinstance(video["action_localisation"], list):
                problem = "action_localisation must be a list of segments"
            if problem is None:
                fps, frames = video["metadata"]["frame_rate"], video["metadata"]["num_frames"]
                if not (_number(fps) and fps > 0 and _number(frames) and frames >= 1):
                    problem = f"metadata needs frame_rate > 0 and num_frames > 0, got {fps!r}, {frames!r}"
            if problem:
                self._reject(split, where, problem)
                continue
            times = np.arange(int(frames)) / float(fps)
            for i, segment in enumerate(video["action_localisation"]):
                at = f"{where} action_localisation[{i}]"
                problem = require(segment, SEGMENT_KEYS)
                if problem is None:
                    problem = _segment_problem(segment)
                if problem:
                    self._reject(split, at, problem)
                    continue
                start, end = (t / 1e6 for t in segment["timestamps"])
                first, stop = span_frames(times, start, end)
                yield at, Clip(clip_id=f"{video_id}_{i}", path=self.video_folder / f"{video_id}.mp4",
                               label=segment["label_id"], start_frame=first, end_frame=stop)


def _segment_problem(segment: Mapping[str, Any]) -> str | None:
    label, timestamps = segment["label_id"], segment["timestamps"]
    if not isinstance(label, int) or isinstance(label, bool):
        return f"label_id must be an integer, got {label!r}"
    if not isinstance(segment["label"], str):
        return f"label must be the class name, got {segment['label']!r}"
    if not (isinstance(timestamps, list) and len(timestamps) == 2 and all(map(_number, timestamps))):
        return f"timestamps must be [start, end] in microseconds, got {timestamps!r}"
    if not 0 <= timestamps[0] < timestamps[1]:
        return f"empty or negative segment: timestamps {timestamps[0]}..{timestamps[1]} microseconds"
    return None
