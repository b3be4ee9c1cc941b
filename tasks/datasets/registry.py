"""The `Task` interface, the task registry (`register_task`, `create_task`, `list_tasks`) and the
helpers every annotation parser shares (data root, JSON and CSV reading, bad-record policy)."""

from __future__ import annotations

import csv
import fnmatch
import json
import logging
import os
import stat
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tasks.clip import Clip

log = logging.getLogger(__name__)

POLICIES = ("error", "skip")


class AnnotationError(ValueError):
    """An annotation file or record is missing or malformed; the message names it and the fix."""


class UnknownTaskError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def check_policy(policy: str, what: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"{what} must be one of {POLICIES}, got {policy!r}")
    return policy


class Task(ABC):
    """A labelled video set: its classes, its splits and their clips. Knows its annotation format,
    nothing about models.

    Bad records raise `AnnotationError` naming the annotation file and line (or record), with
    `on_bad_record="error"`; with `"skip"` they are dropped, logged and listed in `skipped[split]`.
    Every format checks its own fields; every task checks that a record's label is a class index, that
    its clip id is new in the split (the feature store and the run record are keyed by it) and that its
    video lies under `video_folder` (if set; `../` or absolute paths must not reach other data). A split
    left without any clip is an error under either policy.

    A well-formed record whose video is absent (real copies of Kinetics always lack some) is not a bad
    record but a bad clip: it stays in the split, is listed in `missing[split]`, and the bad-clip policy
    (`on_bad_clip`) skips or stops on it when it is decoded. A split none of whose videos exists is an
    error: the data folder or layout is wrong.
    """

    name: str
    splits: tuple[str, ...] = ("train", "test")
    train_split: str = "train"
    eval_split: str = "test"
    video_folder: Path | None = None

    def __init__(self, classes: list[str], on_bad_record: str = "error"):
        self.classes = list(classes)
        self.on_bad_record = check_policy(on_bad_record, "on_bad_record")
        self.skipped: dict[str, list[str]] = {}
        self.missing: dict[str, list[str]] = {}  # videos listed but absent, per split
        self.warnings: list[str] = []  # doubts about the annotations that do not stop a run; recorded
        # False: a split none of whose videos exists is not an error (`ovprobe-plan` reads annotations alone)
        self.require_videos = True
        self._clips: dict[str, list[Clip]] = {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def clips(self, split: str) -> list[Clip]:
        """The split's valid clips, parsed once."""
        if split not in self.splits:
            raise KeyError(f"task {self.name!r} has no split {split!r}; splits: {', '.join(self.splits)}")
        if split not in self._clips:
            self._clips[split] = self._parse(split)
        return list(self._clips[split])

    def _parse(self, split: str) -> list[Clip]:
        self.skipped[split] = []
        first: dict[str, str] = {}  # clip id -> the record that brought it
        clips = []
        missing = []
        inside = _Inside(self.video_folder)
        for where, clip in self._read_split(split):
            kind = _file_kind(clip.path)  # one stat per clip: 240k of them for Kinetics-400
            problem = self._problem(clip, first.get(clip.clip_id), inside, kind)
            if problem:
                self._reject(split, f"{where} (clip {clip.clip_id})", problem)
                continue
            first[clip.clip_id] = where
            clips.append(clip)
            if kind != "file":
                missing.append(str(clip.path))
        skipped = self.skipped[split]
        self.missing[split] = missing
        if clips and len(self.missing[split]) == len(clips) and self.require_videos:
            raise AnnotationError(f"{self.name}/{split}: none of the {len(clips)} videos listed exists, e.g. "
                                  f"{clips[0].path}; check the task's root and layout (task.args)")
        if self.missing[split]:
            log.warning("%s/%s: %d of %d listed videos are missing, e.g. %s; they count as bad clips "
                        "(on_bad_clip)", self.name, split, len(self.missing[split]), len(clips),
                        self.missing[split][0])
        if not clips:
            example = f"; {len(skipped)} bad records were skipped, e.g. {skipped[0]}" if skipped else ""
            raise AnnotationError(f"{self.name}/{split}: the annotations hold no usable clip{example}")
        if skipped:
            log.warning("%s/%s: skipped %d bad records, e.g. %s", self.name, split, len(skipped), skipped[0])
        return clips

    @abstractmethod
    def _read_split(self, split: str) -> Iterable[tuple[str, Clip]]:
        """Parse the split's annotation file into `(where, clip)`, `where` naming the file and line or
        record; call `_reject` (and move on) for records that give no clip."""

    def _problem(self, clip: Clip, first: str | None, inside: _Inside, kind: str | None) -> str | None:
        """Why `clip` is not usable (`first`: where its id already appeared; `inside`: the video folder's
        test; `kind`: what its path is, `_file_kind`), or None."""
        if not 0 <= clip.label < self.num_classes:
            return f"unknown label {clip.label}: class indices are 0..{self.num_classes - 1}"
        if first is not None:
            return f"clip id {clip.clip_id!r} repeats {first}; each clip may appear once per split"
        if not inside(clip.path):
            return f"video path {clip.path} leads outside the video folder {self.video_folder}"
        if kind == "folder":
            return f"video {clip.path} is a folder, not a video file"
        return None

    def _reject(self, split: str, where: str, reason: str) -> None:
        message = f"{self.name}/{split}: {where}: {reason}"
        if self.on_bad_record == "error":
            raise AnnotationError(f"{message} (fix or remove the record, or set on_bad_record='skip')")
        self.skipped[split].append(message)


def require(record: Any, keys: Iterable[str]) -> str | None:
    """Why `record` is not a mapping holding all `keys`, or None if it is."""
    if not isinstance(record, Mapping):
        return f"expected an object, got {type(record).__name__}"
    missing = [k for k in keys if k not in record]
    return f"missing key(s) {', '.join(map(repr, missing))}" if missing else None


class _Inside:
    """Whether a path, with `.` and `..` resolved by name, lies in `folder` (always, without a folder).
    Symlinks are not followed, so a data folder of links to other storage is still inside. Compares
    strings: pathlib's `is_relative_to` took a third of a 240k-clip parse."""

    def __init__(self, folder: Path | None) -> None:
        root = None if folder is None else os.path.normpath(folder)
        self.prefix = None if root is None else root.rstrip(os.sep) + os.sep

    def __call__(self, path: Path) -> bool:
        if self.prefix is None:
            return True
        norm = os.path.normpath(path)
        return norm.startswith(self.prefix) or norm + os.sep == self.prefix


def _file_kind(path: Path) -> str | None:
    """"file", "folder", "other" (a device, a pipe) or None (absent, or a link to nothing)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return "file" if stat.S_ISREG(mode) else "folder" if stat.S_ISDIR(mode) else "other"


def data_root(root: str | Path | None, subdir: str) -> Path:
    """A task's data folder: `root` if given, else `$OVPROBE_DATA/<subdir>`."""
    if root is not None:
        return Path(root).expanduser()
    if "OVPROBE_DATA" not in os.environ:
        raise AnnotationError(f"no data root for {subdir!r}: pass root=... or set OVPROBE_DATA "
                              f"(the data is then expected in $OVPROBE_DATA/{subdir})")
    return Path(os.environ["OVPROBE_DATA"]).expanduser() / subdir


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise AnnotationError(f"annotation file {path} not found; check the task's root and layout")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path} is not valid JSON: {e}") from e


def read_csv(path: Path, columns: Iterable[str]) -> Iterable[tuple[str, dict[str, str]]]:
    """(where, row) for each row of a CSV file whose header must hold `columns`."""
    if not path.is_file():
        raise AnnotationError(f"annotation file {path} not found; check root and annotations_dir")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = sorted(set(columns) - set(reader.fieldnames or ()))
        if missing:
            raise AnnotationError(f"{path}: header lacks column(s) {missing}")
        for line, row in enumerate(reader, start=2):  # line numbers, counting the header
            yield f"{path} line {line}", row


def json_records(path: Path) -> Iterable[tuple[str, Any]]:
    """(where, record) for each record of a JSON annotation file that must hold a list."""
    records = read_json(path)
    if not isinstance(records, list):
        raise AnnotationError(f"{path} must hold a list of records")
    for i, record in enumerate(records):
        yield f"{path} record {i}", record


_REGISTRY: dict[str, Callable[..., Task]] = {}
_GENERATED: set[str] = set()  # tasks whose creation writes their videos


def register_task(fn: Callable[..., Task] | None = None, *, name: str | None = None, generated: bool = False):
    """Register a task class or factory under its name (or `name`); usable as `@register_task`.
    `generated`: creating the task writes its videos (the run checks everything else first)."""

    def wrap(f: Callable[..., Task]) -> Callable[..., Task]:
        key = name or f.__name__
        if key in _REGISTRY:
            raise ValueError(f"task {key!r} is registered twice")
        _REGISTRY[key] = f
        if generated:
            _GENERATED.add(key)
        return f

    return wrap(fn) if fn is not None else wrap


def task_is_generated(name: str) -> bool:
    """Whether creating task `name` writes files (a generated task) rather than reading them."""
    _import_tasks()
    return name in _GENERATED


def list_tasks(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style wildcard, sorted."""
    _import_tasks()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def create_task(name: str, **config: Any) -> Task:
    """Build a registered task; keyword config goes to its constructor."""
    _import_tasks()
    if name not in _REGISTRY:
        raise UnknownTaskError(f"unknown task {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**config)


def _import_tasks() -> None:
    """Import the task modules so their `@register_task` lines run."""
    import tasks.datasets.charades_ego  # noqa: F401
    import tasks.datasets.diving48  # noqa: F401
    import tasks.datasets.epic_kitchens  # noqa: F401
    import tasks.datasets.hmdb51  # noqa: F401
    import tasks.datasets.kinetics  # noqa: F401
    import tasks.datasets.listfile  # noqa: F401
    import tasks.datasets.perception_test  # noqa: F401
    import tasks.datasets.ssv2  # noqa: F401
    import tasks.datasets.synthetic  # noqa: F401
    import tasks.datasets.ucf101  # noqa: F401
