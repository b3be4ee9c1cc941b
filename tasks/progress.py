"""Progress reports that suit where the output goes: bars on a terminal, a plain line now and then in a
log file (SLURM, CI), where a bar's carriage returns would fill the log with redraws."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm.auto import tqdm

MODES = ("auto", "bar", "lines", "off")
LINE_INTERVAL_S = 30.0  # `lines`: at most one line per bar this often (plus its first and last)

Progress = str | bool  # a mode, or the older true (auto) / false (off)


def progress_mode(progress: Progress, stream: TextIO | None = None) -> str:
    """`bar`, `lines` or `off`: `auto` (or true) gives bars when `stream` (stderr) is a terminal."""
    mode = {True: "auto", False: "off"}.get(progress, progress) if isinstance(progress, bool) else progress
    if mode not in MODES:
        raise ValueError(f"progress={progress!r} is not one of: {', '.join(MODES)}")
    if mode == "auto":
        stream = stream or sys.stderr
        return "bar" if getattr(stream, "isatty", lambda: False)() else "lines"
    return mode


class _Lines:
    """A file for tqdm that turns each redraw into one plain line (and drops repeats)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line and line != self.last:
            self.stream.write(line + "\n")
            self.last = line

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(progress: Progress, **kwargs: Any) -> tqdm:
    """A tqdm bar (`kwargs` as tqdm's) in the mode `progress` resolves to."""
    mode = progress_mode(progress)
    if mode == "lines":
        return tqdm(file=_Lines(sys.stderr), mininterval=LINE_INTERVAL_S, ascii=True, ncols=100, **kwargs)
    return tqdm(disable=mode == "off", **kwargs)
