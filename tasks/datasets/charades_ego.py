"""Charades-Ego action classification (`charades_ego`, 157 classes) in the official layout under `root`
(or `$OVPROBE_DATA/charades_ego`):

    CharadesEgo/CharadesEgo_v1_train.csv   CharadesEgo_v1.tar (or these files directly under root): one video
    CharadesEgo/CharadesEgo_v1_test.csv    per row, columns id, subject, scene, quality, relevance, verified,
                                           script, descriptions, actions ("c092 11.90 21.20;c147 0.00 12.60":
                                           class, start and end in seconds), length, egocentric (Yes/No),
                                           charades_video
    CharadesEgo/Charades_v1_classes.txt    "c000 Holding some clothes", one class a line, c000..c156
    CharadesEgo_v1_480/<id>.mp4            CharadesEgo_v1_480.tar; first-person ids end in "EGO"

Source: the release's README.txt (Charades-Ego v1.0, allenai.org/plato/charades,
github.com/gsig/actor-observer).

The release is multi-label video classification scored by mAP. The original OneVision-Encoder suite instead
makes it single-label (`charadesego`: 157 classes, top-1 accuracy, 10 epochs): each annotated action of a
video is one clip with that one class, a trimmed span of the video; trained on the train CSV and evaluated on
the test CSV (the release's validation annotations, labels public). Its plain `charadesego` uses first- and
third-person videos together, its `CharadesEgo_v1_only1st` / `only3rd` one view each: `views` selects
(`both`, `first`, `third`; by the `egocentric` column). The release gives spans in seconds only, and its
videos keep their original frame rates, so a clip carries its span in seconds and the samplers place it by
the video's own frame timestamps (`tasks.sampling.samplers.frame_span`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path

from tasks.clip import Clip
from tasks.datasets.registry import AnnotationError, Task, data_root, read_csv, register_task

SPLIT_FILES = {"train": "CharadesEgo_v1_train.csv", "test": "CharadesEgo_v1_test.csv"}
CLASSES_FILE = "Charades_v1_classes.txt"
COLUMNS = ("id", "actions", "egocentric")
VIEWS = {"both": ("Yes", "No"), "first": ("Yes",), "third": ("No",)}
ACTION = re.compile(r"c(\d{3}) (\S+) (\S+)")


def _class_names(path: Path) -> list[str]:
    if not path.is_file():
        raise AnnotationError(f"class list {path} not found; check root and annotations_dir")
    lines = [line.split(maxsplit=1) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines or [line[0] for line in lines] != [f"c{i:03d}" for i in range(len(lines))] \
            or min(map(len, lines)) < 2:
        raise AnnotationError(f"{path}: expected lines 'c000 <name>', 'c001 <name>', ... in order")
    return [name for _, name in lines]


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@register_task(name="charades_ego")
class CharadesEgo(Task):
    name = "charades_ego"

    def __init__(self, root: str | Path | None = None, annotations_dir: str | None = None,
                 video_dir: str = "CharadesEgo_v1_480", views: str = "both", on_bad_record: str = "error"):
        if views not in VIEWS:
            raise AnnotationError(f"views must be one of {', '.join(VIEWS)}, got {views!r}")
        self.views = views
        self.root = data_root(root, "charades_ego")
        candidates = [self.root / d for d in ([annotations_dir] if annotations_dir else ["CharadesEgo", "."])]
        self.annotations = next((c for c in candidates if (c / CLASSES_FILE).is_file()), candidates[0])
        self.video_folder = self.root / video_dir
        super().__init__(_class_names(self.annotations / CLASSES_FILE), on_bad_record)

    def _read_split(self, split: str) -> Iterable[tuple[str, Clip]]:
        for where, r in read_csv(self.annotations / SPLIT_FILES[split], COLUMNS):
            if not r["id"] or r["egocentric"] not in VIEWS["both"]:
                self._reject(split, where, f"needs an id and egocentric Yes or No, got {r['id']!r}, "
                             f"{r['egocentric']!r}")
                continue
            if r["egocentric"] not in VIEWS[self.views]:
                continue
            actions = [a.strip() for a in r["actions"].split(";") if a.strip()]  # a video may have none
            for k, action in enumerate(actions):
                at = f"{where} action {k + 1}"
                match = ACTION.fullmatch(action)
                start, end = (_float(match[2]), _float(match[3])) if match else (None, None)
                if start is None or end is None:
                    self._reject(split, at, f"expected 'c<class> <start> <end>' (e.g. c092 11.90 21.20), "
                                 f"got {action!r}")
                elif not 0 <= start < end:
                    self._reject(split, at, f"empty or negative segment: {start}..{end} s in {action!r}")
                else:
                    yield at, Clip(clip_id=f"{r['id']}_{k}", path=self.video_folder / f"{r['id']}.mp4",
                                   label=int(match[1]), start_time=start, end_time=end)
