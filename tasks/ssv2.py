"""Something-Something-v2 in the official layout under `root` (or `$OVPROBE_DATA/ssv2`):

    labels/labels.json         {"<template without brackets>": "<class index>", ...}  (174 classes)
    labels/train.json          [{"id", "label", "template", "placeholders"}, ...]
    labels/validation.json
    20bn-something-something-v2/<id>.webm   (VP9)

A record's class is its template with the `[something]` brackets removed, looked up in labels.json.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tasks.clip import Clip
from tasks.registry import AnnotationError, Task, data_root, json_records, read_json, register_task, require


def _class_index(path: Path) -> dict[str, int]:
    labels = read_json(path)
    if not isinstance(labels, dict):
        raise AnnotationError(f"{path} must map each template to its class index")
    try:
        index = {name: int(i) for name, i in labels.items()}
    except (TypeError, ValueError) as e:
        raise AnnotationError(f"{path}: class indices must be integers (as strings): {e}") from e
    if sorted(index.values()) != list(range(len(index))):
        raise AnnotationError(f"{path}: class indices must be 0..{len(index) - 1}, each once")
    return index


def template_class(template: str) -> str:
    """"Putting [something] onto [something]" -> "Putting something onto something"."""
    return template.replace("[", "").replace("]", "")


@register_task(name="ssv2")
class SomethingSomethingV2(Task):
    name = "ssv2"
    splits = ("train", "validation")
    eval_split = "validation"

    def __init__(self, root: str | Path | None = None, labels_dir: str = "labels",
                 video_dir: str = "20bn-something-something-v2", on_bad_record: str = "error"):
        self.root = data_root(root, "ssv2")
        self.labels_dir = self.root / labels_dir
        self.video_folder = self.root / video_dir
        self._index = _class_index(self.labels_dir / "labels.json")
        super().__init__(sorted(self._index, key=self._index.__getitem__), on_bad_record)

    def _read_split(self, split: str) -> Iterable[tuple[str, Clip]]:
        path = self.labels_dir / f"{split}.json"
        for where, r in json_records(path):
            problem = require(r, ("id", "template"))
            if problem is None and template_class(str(r["template"])) not in self._index:
                problem = f"template {r['template']!r} is not a class of labels.json"
            if problem:
                self._reject(split, where, problem)
                continue
            yield where, Clip(clip_id=str(r["id"]), path=self.video_folder / f"{r['id']}.webm",
                              label=self._index[template_class(str(r["template"]))])
