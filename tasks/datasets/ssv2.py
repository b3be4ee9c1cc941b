"""Something-Something-v2 under `root` (or `$OVPROBE_DATA/ssv2`), in the layouts it is downloaded in:

    20bn (as the release unpacks):     labels/labels.json, labels/train.json, labels/validation.json
                                       20bn-something-something-v2/<id>.webm   (VP9)
    flat (everything in one folder):   labels.json, train.json, validation.json, <id>.webm

The annotation files may also carry the older release's prefix (`something-something-v2-labels.json`,
`...-train.json`, `...-validation.json`). With `labels_dir`/`video_dir` unset the layout is detected
(and logged); set either (relative to `root`, or absolute) to override the detection.

labels.json maps each class name to its index (a string): `{"Approaching something with your camera":
"0", ...}`; some copies spell the keys with the templates' brackets (`"Approaching [something] ..."`).
A record's class is its `template` with the brackets removed, looked up among the keys with theirs
removed, and its class index is labels.json's value, whichever spelling the keys use.
"""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)

LABELS_DIRS = ("labels", ".")  # where the annotations are looked for, in this order
VIDEO_DIRS = ("20bn-something-something-v2", ".")
PREFIX = "something-something-v2-"  # the older release's file names
OPTIONS = "set task.args.root to the folder holding them, or task.args.labels_dir / task.args.video_dir"


def template_class(template: str) -> str:
    """"Putting [something] onto [something]" -> "Putting something onto something"."""
    return template.replace("[", "").replace("]", "")


def _class_index(path: Path) -> dict[str, int]:
    """Class name (brackets removed) -> the index labels.json gives it."""
    labels = read_json(path)
    if not isinstance(labels, dict):
        raise AnnotationError(f"{path} must map each template to its class index")
    index: dict[str, int] = {}
    for name, i in labels.items():
        try:
            value = int(i)
        except (TypeError, ValueError) as e:
            raise AnnotationError(f"{path}: class indices must be integers (as strings), got {i!r} for "
                                  f"{name!r}") from e
        key = template_class(name)
        if key in index:
            raise AnnotationError(f"{path}: {name!r} names the class {key!r} twice once brackets are removed")
        index[key] = value
    if sorted(index.values()) != list(range(len(index))):
        raise AnnotationError(f"{path}: class indices must be 0..{len(index) - 1}, each once")
    return index


def annotation_file(folder: Path, name: str) -> Path:
    """`folder/<name>.json`, or the older release's `folder/something-something-v2-<name>.json`."""
    plain = folder / f"{name}.json"
    prefixed = folder / f"{PREFIX}{name}.json"
    return prefixed if not plain.is_file() and prefixed.is_file() else plain


def _folder(root: Path, given: str | None, candidates: tuple[str, ...], holds) -> Path | None:
    if given is not None:
        return root / given
    return next((root / c for c in candidates if holds(root / c)), None)


def detect_layout(root: Path, labels_dir: str | None, video_dir: str | None) -> tuple[Path, Path]:
    """(annotation folder, video folder) under `root`: as given, or the first candidate that fits."""
    labels = _folder(root, labels_dir, LABELS_DIRS, lambda d: annotation_file(d, "labels").is_file())
    if labels is None or not annotation_file(labels, "labels").is_file():
        where = f"{labels}" if labels is not None else f"{root / LABELS_DIRS[0]} or {root}"
        raise AnnotationError(f"ssv2: no labels.json (or {PREFIX}labels.json) in {where}; {OPTIONS}")
    videos = _folder(root, video_dir, VIDEO_DIRS, Path.is_dir)
    if videos is None or not videos.is_dir():
        raise AnnotationError(f"ssv2: video folder {videos or root} not found; {OPTIONS}")
    return labels, videos


@register_task(name="ssv2")
class SomethingSomethingV2(Task):
    name = "ssv2"
    splits = ("train", "validation")
    eval_split = "validation"

    def __init__(self, root: str | Path | None = None, labels_dir: str | None = None,
                 video_dir: str | None = None, on_bad_record: str = "error"):
        self.root = data_root(root, "ssv2")
        self.labels_dir, self.video_folder = detect_layout(self.root, labels_dir, video_dir)
        log.info("ssv2 under %s: annotations in %s, videos in %s (%s)", self.root, self.labels_dir,
                 self.video_folder, self.layout)
        self._index = _class_index(annotation_file(self.labels_dir, "labels"))
        super().__init__(sorted(self._index, key=self._index.__getitem__), on_bad_record)

    @property
    def layout(self) -> str:
        """The layout found: "20bn", "flat", or the folders as given."""
        folders = (self._relative(self.labels_dir), self._relative(self.video_folder))
        named = {(LABELS_DIRS[0], VIDEO_DIRS[0]): "20bn", (".", "."): "flat"}
        return named.get(folders, f"labels_dir={folders[0]}, video_dir={folders[1]}")

    def _relative(self, folder: Path) -> str:
        return folder.relative_to(self.root).as_posix() if folder.is_relative_to(self.root) else str(folder)

    def _read_split(self, split: str) -> Iterable[tuple[str, Clip]]:
        path = annotation_file(self.labels_dir, split)
        for where, r in json_records(path):
            problem = require(r, ("id", "template"))
            if problem is None and template_class(str(r["template"])) not in self._index:
                problem = f"template {r['template']!r} is not a class of labels.json"
            if problem:
                self._reject(split, where, problem)
                continue
            yield where, Clip(clip_id=str(r["id"]), path=self.video_folder / f"{r['id']}.webm",
                              label=self._index[template_class(str(r["template"]))])
