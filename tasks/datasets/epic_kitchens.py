"""EPIC-KITCHENS-100 verb and noun classification in the official layout under `root`
(or `$OVPROBE_DATA/epic_kitchens`):

    epic-kitchens-100-annotations/EPIC_100_train.csv        one action segment per row: narration_id,
    epic-kitchens-100-annotations/EPIC_100_validation.csv   participant_id, video_id, start_frame,
                                                            stop_frame, verb_class, noun_class, ...
    epic-kitchens-100-annotations/EPIC_100_{verb,noun}_classes.csv   id,key,... (97 verbs, 300 nouns)
    EPIC-KITCHENS/<participant_id>/videos/<video_id>.MP4     as the official download scripts lay them out

A clip is one segment of a long video: `start_frame`/`stop_frame` number the video's frames from 1,
both included, so the clip spans decoded frames [start_frame - 1, stop_frame). Samplers read only the
span: uniform sampling seeks to its frames, codec sampling decodes every frame from the keyframe before
the span to its end (motion vectors need them in order; `tasks.decode.codec.analyse`). As in the original
OneVision-Encoder suite (`epic_verb`, 97 classes, and `epic_noun`, 300 classes, 10 epochs each), verb
and noun are two single-label tasks trained on the train split and evaluated on the validation split
(the test split's labels are not public).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from pathlib import Path

from tasks.clip import Clip
from tasks.datasets.registry import AnnotationError, Task, data_root, read_csv, register_task, require

SPLIT_FILES = {"train": "EPIC_100_train.csv", "validation": "EPIC_100_validation.csv"}
COLUMNS = ("narration_id", "participant_id", "video_id", "start_frame", "stop_frame")


def _class_names(path: Path) -> list[str]:
    rows = [r for _, r in read_csv(path, ("id", "key"))]
    if [r["id"] for r in rows] != [str(i) for i in range(len(rows))]:
        raise AnnotationError(f"{path}: class ids must be 0..{len(rows) - 1}, in order")
    return [r["key"] for r in rows]


class EpicKitchens100(Task):
    splits = ("train", "validation")
    eval_split = "validation"

    def __init__(self, target: str, root: str | Path | None = None,
                 annotations_dir: str = "epic-kitchens-100-annotations", video_dir: str = "EPIC-KITCHENS",
                 on_bad_record: str = "error"):
        self.name = f"epic_{target}"
        self.target = target
        self.root = data_root(root, "epic_kitchens")
        self.annotations = self.root / annotations_dir
        self.video_folder = self.root / video_dir
        super().__init__(_class_names(self.annotations / f"EPIC_100_{target}_classes.csv"), on_bad_record)

    def _read_split(self, split: str) -> Iterable[tuple[str, Clip]]:
        label_column = f"{self.target}_class"
        for where, r in read_csv(self.annotations / SPLIT_FILES[split], (*COLUMNS, label_column)):
            problem = require({k: v for k, v in r.items() if v}, (*COLUMNS, label_column))
            ints = (r["start_frame"], r["stop_frame"], r[label_column])
            if problem is None and not all(v.isdigit() for v in ints):
                problem = f"start_frame, stop_frame and {label_column} must be integers, got {list(ints)}"
            elif problem is None and not 1 <= int(r["start_frame"]) <= int(r["stop_frame"]):
                problem = f"empty or negative segment: frames {r['start_frame']}..{r['stop_frame']}"
            if problem:
                self._reject(split, where, problem)
                continue
            path = self.video_folder / r["participant_id"] / "videos" / f"{r['video_id']}.MP4"
            yield where, Clip(clip_id=r["narration_id"], path=path, label=int(r[label_column]),
                              start_frame=int(r["start_frame"]) - 1, end_frame=int(r["stop_frame"]))


for _target in ("verb", "noun"):
    register_task(partial(EpicKitchens100, _target), name=f"epic_{_target}")
