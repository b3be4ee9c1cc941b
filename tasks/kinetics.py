"""Kinetics-400/600/700 in the official (CVDF) layout under `root` (or `$OVPROBE_DATA/kinetics<N>`):

    annotations/{train,val,test}.csv   header `label,youtube_id,time_start,time_end,split`
                                       (extra columns ignored)
    {train,val,test}/<youtube_id>_<start:06d>_<end:06d>.mp4     optionally inside per-class folders

Classes are the sorted label names of the train split. Clips missing on disk (Kinetics always has
some) are bad records: skipped and counted with `on_bad_record="skip"`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path

from tasks.clip import Clip
from tasks.registry import AnnotationError, Task, data_root, register_task, require

COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")


def clip_name(youtube_id: str, start: int, end: int) -> str:
    return f"{youtube_id}_{start:06d}_{end:06d}.mp4"


class Kinetics(Task):
    splits = ("train", "val", "test")
    eval_split = "val"

    def __init__(self, variant: int = 400, root: str | Path | None = None,
                 annotation_files: Mapping[str, str] | None = None, on_bad_record: str = "error"):
        self.name = f"kinetics{variant}"
        self.root = self.video_folder = data_root(root, self.name)
        self.annotation_files = {s: f"annotations/{s}.csv" for s in self.splits}
        self.annotation_files.update(annotation_files or {})
        rows = self._rows(self.train_split)
        super().__init__(sorted({r["label"] for _, r in rows if r.get("label")}), on_bad_record)
        self._class_index = {c: i for i, c in enumerate(self.classes)}

    def _rows(self, split: str) -> list[tuple[int, dict[str, str]]]:
        path = self.root / self.annotation_files[split]
        if not path.is_file():
            raise AnnotationError(f"annotation file {path} not found; check root or annotation_files")
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = set(COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise AnnotationError(f"{path}: header lacks column(s) {sorted(missing)}; "
                                      f"expected {','.join(COLUMNS)}")
            return list(enumerate(reader, start=2))  # line numbers, counting the header

    def _read_split(self, split: str) -> Iterable[tuple[str, Clip]]:
        on_disk = {p.name: p for p in (self.root / split).rglob("*.mp4")}  # flat or per-class folders
        path = self.root / self.annotation_files[split]
        for line, r in self._rows(split):
            where = f"{path} line {line}"
            problem = require({k: v for k, v in r.items() if v}, COLUMNS)
            if problem is None and r["label"] not in self._class_index:
                problem = f"label {r['label']!r} is not a class of the train split"
            if problem is None:
                try:
                    start, end = int(float(r["time_start"])), int(float(r["time_end"]))
                except ValueError:
                    problem = f"time_start/time_end must be numbers: {r['time_start']!r}, {r['time_end']!r}"
            if problem:
                self._reject(split, where, problem)
                continue
            name = clip_name(r["youtube_id"], start, end)
            yield where, Clip(clip_id=name[:-4], path=on_disk.get(name, self.root / split / name),
                              label=self._class_index[r["label"]])


for _variant in (400, 600, 700):
    register_task(partial(Kinetics, _variant), name=f"kinetics{_variant}")
