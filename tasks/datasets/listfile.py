"""The generic list format, so users can bring any dataset: one clip per line,

    path,label          (CSV)   or   path label   (space-separated, as V-JEPA and SlowFast lists)

`label` is a class index, or a class name when `classes` are given (a label that is a class name is
that class; when class names are numbers, labels must be names). Relative paths are resolved against
`video_root` (default: the list file's folder). With `video_root` set, every path (relative or
absolute) must lie under it; without it, absolute paths are taken as written (lists of absolute paths,
as V-JEPA's, need no root) and relative ones must stay in the list file's folder. An optional first
line `path,label` (or `path label`) is a header. Classes come from `classes` (a list, or a file with one
name per line, each name once); without them the labels must be 0..K-1, each used. Files are UTF-8
(a byte-order mark is dropped). One video may appear once per split (`a.mp4` and `./a.mp4` are one);
a video in two splits is kept, with a warning in `Task.warnings` (and so in the run record).
"""

from __future__ import annotations

import codecs
import csv
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tasks.clip import Clip
from tasks.datasets.registry import AnnotationError, Task, register_task

log = logging.getLogger(__name__)


def read_lines(path: Path, what: str = "list file") -> list[tuple[int, str]]:
    """`(line number, stripped text)` of each non-empty line of a UTF-8 text file (a BOM is dropped)."""
    if path.is_dir():
        raise AnnotationError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise AnnotationError(f"{what} {path} not found")
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    lines = []
    for n, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as err:
            raise AnnotationError(f"{what} {path} line {n}: byte {raw[err.start]:#04x} at column "
                                  f"{err.start + 1} is not UTF-8; save the file as UTF-8") from err
        if line:
            lines.append((n, line))
    if not lines:
        raise AnnotationError(f"{what} {path} is empty; it must hold one line per "
                              f"{'clip (path label)' if what == 'list file' else 'class'}")
    return lines


def read_list(path: Path) -> list[tuple[int, list[str]]]:
    """`(line number, fields)` for each non-empty line of a list file (`[path, label]` when well formed)."""
    rows = []
    for n, line in read_lines(path):
        fields = next(csv.reader([line])) if "," in line else line.rsplit(maxsplit=1)
        rows.append((n, [x.strip() for x in fields]))
    if rows and rows[0][1] == ["path", "label"]:
        rows = rows[1:]
    return rows


def write_list(path: Path, rows: Iterable[tuple[str, int]]) -> None:
    """Write `path label` lines (space-separated; paths must not end in whitespace)."""
    path.write_text("".join(f"{p} {label}\n" for p, label in rows), encoding="utf-8")


def _classes(classes: Sequence[str] | str | Path | None, splits: Mapping[str, Path]) -> list[str]:
    if isinstance(classes, str | Path):
        path = Path(classes).expanduser()
        named = [(f"{path} line {n}", name) for n, name in read_lines(path, "classes file")]
    elif classes is not None:
        named = [(f"classes entry {i}", str(name)) for i, name in enumerate(classes)]
    else:
        return _classes_from_labels(splits)
    first: dict[str, str] = {}
    for where, name in named:
        if name in first:
            raise AnnotationError(f"{where}: class name {name!r} repeats {first[name]}; name each class once")
        first[name] = where
    return [name for _, name in named]


def _classes_from_labels(splits: Mapping[str, Path]) -> list[str]:
    """Without a classes list the labels must be 0..K-1, each used: a typo (99) or labels counted from 1
    would otherwise add classes without clips, and change chance level and every metric."""
    where: dict[int, str] = {}
    for path in dict.fromkeys(splits.values()):
        for n, fields in read_list(path):
            if len(fields) == 2 and fields[1].isdigit():
                where.setdefault(int(fields[1]), f"{path} line {n}")
    if not where:
        raise AnnotationError(f"no integer labels in {', '.join(map(str, splits.values()))}")
    unused = sorted(set(range(max(where) + 1)) - set(where))
    if unused == [0]:
        raise AnnotationError(f"labels count from 1 (no clip has label 0, e.g. {where[min(where)]}); "
                              "labels are class indices from 0: subtract 1, or give task.args.classes")
    if unused:
        top = max(where)
        raise AnnotationError(f"{where[top]}: label {top} leaves {len(unused)} class(es) without any clip "
                              f"(e.g. {unused[0]}); without task.args.classes the labels must be 0..K-1, "
                              "each used: fix the label, or give the class names")
    return [str(i) for i in range(len(where))]


@register_task(name="list")
class ListTask(Task):
    """A task from list files: `splits` maps a split name to its list file."""

    def __init__(self, splits: Mapping[str, str | Path], classes: Sequence[str] | str | Path | None = None,
                 video_root: str | Path | None = None, name: str = "list", train_split: str = "train",
                 eval_split: str = "test", on_bad_record: str = "error"):
        self.name = name
        self.files = {s: Path(p).expanduser() for s, p in splits.items()}
        self.splits = tuple(self.files)
        for role, split in (("train_split", train_split), ("eval_split", eval_split)):
            if split not in self.files:
                raise AnnotationError(f"{role} {split!r} has no list file; splits: {', '.join(self.files)}")
        self.train_split, self.eval_split = train_split, eval_split
        self.video_folder = Path(video_root).expanduser() if video_root is not None else None
        super().__init__(_classes(classes, self.files), on_bad_record)
        self._by_name = {c: i for i, c in enumerate(self.classes)}
        self._numeric_names = any(c.lstrip("-").isdigit() for c in self.classes)
        self._overlap_checked = False

    def clips(self, split: str) -> list[Clip]:
        clips = super().clips(split)
        if set(self._clips) >= {self.train_split, self.eval_split} and not self._overlap_checked:
            self._overlap_checked = True
            self._check_overlap()
        return clips

    def _check_overlap(self) -> None:
        """A video in both the training and the evaluation split is kept, with a warning and its count."""
        train = {os.path.normpath(c.path) for c in self._clips[self.train_split]}
        shared = [c for c in self._clips[self.eval_split] if os.path.normpath(c.path) in train]
        if shared:
            message = (f"{len(shared)} of {len(self._clips[self.eval_split])} {self.eval_split} clips "
                       f"({self.files[self.eval_split]}) are also in {self.train_split} "
                       f"({self.files[self.train_split]}), e.g. {shared[0].clip_id}: the {self.eval_split} "
                       "score is not on unseen videos")
            log.warning("%s: %s", self.name, message)
            self.warnings.append(message)

    def _label(self, label: str) -> int | None:
        if label in self._by_name:
            return self._by_name[label]
        if label.lstrip("-").isdigit() and not self._numeric_names:
            return int(label)
        return None

    def _read_split(self, split: str) -> Iterable[tuple[str, Clip]]:
        path = self.files[split]
        root = self.video_folder or path.parent
        seen: dict[str, tuple[str, str]] = {}  # normalised path -> (as written, where)
        for line, fields in read_list(path):
            where = f"{path} line {line}"
            if len(fields) != 2 or not all(fields):
                self._reject(split, where, f"expected 'path label' or 'path,label', got {fields}")
                continue
            video, label = fields
            index = self._label(label)
            if index is None:
                names = " (class names are numbers here: labels must be names)" if self._numeric_names else ""
                self._reject(split, where, f"label {label!r} is neither a class index "
                             f"(0..{self.num_classes - 1}) nor a class name{names}")
                continue
            full = os.path.normpath(root / video)
            inside = Path(full).is_relative_to(os.path.normpath(root))
            if self.video_folder is None and not Path(video).is_absolute() and not inside:
                self._reject(split, where, f"video path {video} leads outside the list file's folder {root}; "
                             "set task.args.video_root to the folder holding the videos")
                continue
            checked = self.video_folder is None or inside  # outside video_root: rejected by `Task`
            if checked and full in seen and seen[full][0] != video:
                self._reject(split, where, f"video {video} is {seen[full][0]} of {seen[full][1]} again; "
                             "each video may appear once per split")
                continue
            seen.setdefault(full, (video, where))
            yield where, Clip(clip_id=video, path=root / video, label=index)
