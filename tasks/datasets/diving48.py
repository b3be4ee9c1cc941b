"""Diving-48 with the V2 annotations, in the official layout under `root` (or `$OVPROBE_DATA/diving48`):

    Diving48_vocab.json        48 classes, each a list of four attributes
                               (takeoff, somersaults, twists, flight)
    Diving48_V2_train.json     [{"vid_name", "label", "start_frame", "end_frame"}, ...]
    Diving48_V2_test.json
    rgb/<vid_name>.mp4

`start_frame`/`end_frame` are frame indices in the (already trimmed) video, end exclusive.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tasks.clip import Clip
from tasks.datasets.registry import (
    AnnotationError,
    Task,
    data_root,
    json_records,
    read_json,
    register_task,
    require,
)

INT_KEYS = ("label", "start_frame", "end_frame")


def _vocab(path: Path) -> list[str]:
    vocab = read_json(path)
    if not isinstance(vocab, list) or not all(isinstance(v, list) and len(v) == 4 for v in vocab):
        raise AnnotationError(f"{path} must be a list of [takeoff, somersault, twist, flight] lists")
    return [" ".join(map(str, v)) for v in vocab]


@register_task(name="diving48")
class Diving48(Task):
    name = "diving48"
    splits = ("train", "test")

    def __init__(self, root: str | Path | None = None, video_dir: str = "rgb", on_bad_record: str = "error"):
        self.root = data_root(root, "diving48")
        self.video_folder = self.root / video_dir
        super().__init__(_vocab(self.root / "Diving48_vocab.json"), on_bad_record)

    def _read_split(self, split: str) -> Iterable[tuple[str, Clip]]:
        path = self.root / f"Diving48_V2_{split}.json"
        for where, r in json_records(path):
            problem = require(r, ("vid_name", *INT_KEYS))
            if problem is None and not all(type(r[k]) is int for k in INT_KEYS):
                problem = f"label, start_frame and end_frame must be integers, got {[r[k] for k in INT_KEYS]}"
            if problem is None and not 0 <= r["start_frame"] < r["end_frame"]:
                problem = f"empty or negative span [{r['start_frame']}, {r['end_frame']})"
            if problem:
                self._reject(split, where, problem)
                continue
            yield where, Clip(clip_id=str(r["vid_name"]), path=self.video_folder / f"{r['vid_name']}.mp4",
                              label=r["label"], start_frame=r["start_frame"], end_frame=r["end_frame"])
