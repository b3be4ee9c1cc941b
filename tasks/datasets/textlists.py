"""Whitespace-separated annotation lines, as the HMDB51 and UCF101 releases ship them (CRLF or LF)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tasks.datasets.registry import AnnotationError


def text_lines(path: Path) -> Iterable[tuple[str, list[str]]]:
    """`(where, fields)` for each non-blank line of `path`, `where` naming the file and line."""
    if not path.is_file():
        raise AnnotationError(f"annotation file {path} not found; check the task's root and layout")
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                yield f"{path} line {n}", line.split()
