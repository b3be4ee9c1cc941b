"""The generic list format, so users can bring any dataset: one clip per line,

    path,label          (CSV)   or   path label   (space-separated, as V-JEPA and SlowFast lists)

`label` is a class index, or a class name when `classes` are given. Relative paths are resolved
against `video_root` (default: the list file's folder). With `video_root` set, every path (relative
or absolute) must lie under it; without it, paths are taken as written (lists of absolute paths, as
V-JEPA's, need no root). An optional first line `path,label` (or `path label`) is a header. Classes
come from `classes` (a list, or a file with one name per line); without them there are
max(label) + 1 classes named by their index.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tasks.clip import Clip
from tasks.registry import AnnotationError, Task, register_task


def read_list(path: Path) -> list[tuple[int, list[str]]]:
    """`(line number, fields)` for each non-empty line of a list file (`[path, label]` when well formed)."""
    if not path.is_file():
        raise AnnotationError(f"list file {path} not found")
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            line = line.strip()
            if line:
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
        if not path.is_file():
            raise AnnotationError(f"classes file {path} not found")
        return [c.strip() for c in path.read_text(encoding="utf-8").splitlines() if c.strip()]
    if classes is not None:
        return list(classes)
    labels = [int(f[1]) for p in splits.values() for _, f in read_list(p) if len(f) == 2 and f[1].isdigit()]
    if not labels:
        raise AnnotationError(f"no integer labels in {', '.join(map(str, splits.values()))}")
    return [str(i) for i in range(max(labels) + 1)]


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

    def _read_split(self, split: str) -> Iterable[tuple[str, Clip]]:
        path = self.files[split]
        root = self.video_folder or path.parent
        for line, fields in read_list(path):
            where = f"{path} line {line}"
            if len(fields) != 2 or not all(fields):
                self._reject(split, where, f"expected 'path label' or 'path,label', got {fields}")
                continue
            video, label = fields
            index = int(label) if label.lstrip("-").isdigit() else self._by_name.get(label)
            if index is None:
                self._reject(split, where, f"label {label!r} is neither a class index "
                             f"(0..{self.num_classes - 1}) nor a class name")
                continue
            yield where, Clip(clip_id=video, path=root / video, label=index)
