"""Kinetics-400/600/700 under `root` (or `$OVPROBE_DATA/kinetics<N>`), in the layouts it is downloaded in:

    CVDF:      annotations/{train,val,test}.csv
    DeepMind:  train.csv, validate.csv, test.csv at the top

Each CSV has the header `label,youtube_id,time_start,time_end,split` (extra columns such as `is_cc` are
ignored); the first layout that has a split's CSV is used, unless `annotation_files` names it. Videos
are `<youtube_id>_<start:06d>_<end:06d>.mp4` in `{train,val,test}/` (for the validation split also
`validate/`), flat or inside per-class folders.

Classes are the sorted label names of the train split, or, when only other splits were downloaded, of
the first of them present (Kinetics' validation split holds every class). A clip listed but absent on
disk (a real copy always lacks some) is a bad clip, skipped and listed under `on_bad_clip` when
decoded; a malformed row is a bad record (`on_bad_record`).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path

from tasks.clip import Clip
from tasks.datasets.registry import AnnotationError, Task, data_root, register_task, require

log = logging.getLogger(__name__)

COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")
# Per split, where its CSV is looked for (CVDF, then DeepMind) and the folders its videos may sit in.
CSV_FILES = {"train": ("annotations/train.csv", "train.csv"),
             "val": ("annotations/val.csv", "validate.csv"),
             "test": ("annotations/test.csv", "test.csv")}
VIDEO_DIRS = {"train": ("train",), "val": ("val", "validate"), "test": ("test",)}


def clip_name(youtube_id: str, start: int, end: int) -> str:
    return f"{youtube_id}_{start:06d}_{end:06d}.mp4"


class Kinetics(Task):
    splits = ("train", "val", "test")
    eval_split = "val"

    def __init__(self, variant: int = 400, root: str | Path | None = None,
                 annotation_files: Mapping[str, str] | None = None, on_bad_record: str = "error"):
        self.name = f"kinetics{variant}"
        self.root = self.video_folder = data_root(root, self.name)
        given = dict(annotation_files or {})
        self.annotation_files: dict[str, Path | None] = {
            s: self.root / given[s] if s in given else next(
                (self.root / f for f in CSV_FILES[s] if (self.root / f).is_file()), None)
            for s in self.splits}
        source = next((s for s in (self.train_split, *self.splits) if self.annotation_files[s]), None)
        if source is None:
            raise AnnotationError(f"{self.name}: no annotation CSV under {self.root} (looked for annotations/"
                                  "{train,val,test}.csv and train.csv, validate.csv, test.csv); "
                                  "check task.args.root, or name the files with task.args.annotation_files")
        classes = sorted({r["label"] for _, r in self._rows(source) if r.get("label")})
        if source != self.train_split:
            log.warning("%s: no train CSV under %s; classes come from the %s split",
                        self.name, self.root, source)
        if len(classes) != variant:
            log.warning("%s: %d classes in the %s CSV (the full dataset has %d): a partial copy",
                        self.name, len(classes), source, variant)
        super().__init__(classes, on_bad_record)
        self.class_source = source
        self._class_index = {c: i for i, c in enumerate(self.classes)}

    def _csv(self, split: str) -> Path:
        path = self.annotation_files[split]
        if path is None or not path.is_file():
            looked = path or " or ".join(str(self.root / f) for f in CSV_FILES[split])
            raise AnnotationError(f"{self.name}/{split}: annotation file {looked} not found; check "
                                  "task.args.root, or name it with task.args.annotation_files")
        return path

    def _rows(self, split: str) -> list[tuple[int, dict[str, str]]]:
        path = self._csv(split)
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = set(COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise AnnotationError(f"{path}: header lacks column(s) {sorted(missing)}; "
                                      f"expected {','.join(COLUMNS)}")
            return list(enumerate(reader, start=2))  # line numbers, counting the header

    def video_dir(self, split: str) -> Path:
        """The split's video folder: the first of its candidates present (the first if none is)."""
        folders = [self.root / d for d in VIDEO_DIRS[split]]
        return next((d for d in folders if d.is_dir()), folders[0])

    def _read_split(self, split: str) -> Iterable[tuple[str, Clip]]:
        path = self._csv(split)
        folder = self.video_dir(split)
        on_disk = _videos_under(folder)  # flat or per-class folders
        for line, r in self._rows(split):
            where = f"{path} line {line}"
            problem = require({k: v for k, v in r.items() if v}, COLUMNS)
            if problem is None and r["label"] not in self._class_index:
                problem = f"label {r['label']!r} is not a class of the {self.class_source} split"
            if problem is None:
                try:
                    start, end = int(float(r["time_start"])), int(float(r["time_end"]))
                except ValueError:
                    problem = f"time_start/time_end must be numbers: {r['time_start']!r}, {r['time_end']!r}"
            if problem:
                self._reject(split, where, problem)
                continue
            name = clip_name(r["youtube_id"], start, end)
            yield where, Clip(clip_id=name[:-4], path=on_disk.get(name, folder) / name,
                              label=self._class_index[r["label"]])


def _videos_under(folder: Path) -> dict[str, Path]:
    """Video file name -> the folder (`folder` or one below it, links to folders not followed) holding
    it. Listed with `os.scandir`, whose entries know their type without a stat: `Path.rglob` stats each
    of Kinetics-400's 240k files and took a fifth of its parse."""
    found: dict[str, Path] = {}
    pending = [folder]
    while pending:
        top = pending.pop()
        try:
            entries = list(os.scandir(top))
        except OSError:  # absent or unreadable: its clips are missing
            continue
        for entry in entries:
            if entry.name.endswith(".mp4"):
                found.setdefault(entry.name, top)
            elif entry.is_dir(follow_symlinks=False):
                pending.append(top / entry.name)
    return found


for _variant in (400, 600, 700):
    register_task(partial(Kinetics, _variant), name=f"kinetics{_variant}")
