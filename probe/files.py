"""Files that are complete or absent: atomic writes, and disk-full errors that say what is kept.

A file is written under a temporary name, flushed to disk (fsync), and renamed into place, so a
reader sees the old file or the new one, never a part of one, whenever the process is killed. A
full disk (ENOSPC, at write or at fsync time) becomes a `DiskFullError` naming the folder, the free
space and what earlier work survives.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)


class DiskFullError(RuntimeError):
    """The disk filled up while writing; work finished before is kept and a rerun resumes it."""


class InUseError(RuntimeError):
    """Another process holds the lock of a run or a feature store being written."""


def _size(n: int) -> str:
    unit = next((u for u in (3, 2, 1) if n >= 2 ** (10 * u)), 0)
    return f"{n / 2 ** (10 * unit):.1f} {('bytes', 'KiB', 'MiB', 'GiB')[unit]}"


# No room: a full disk, a full quota, or a file-size limit (ulimit -f)
NO_ROOM = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file size limit hit"}


def _disk_full_message(path: Path, kept: str, needed: int | None, why: str = NO_ROOM[errno.ENOSPC]) -> str:
    folder = next((p for p in path.parents if p.exists()), path.parent)
    try:
        free = f"{_size(shutil.disk_usage(folder).free)} free"
    except OSError:
        free = "free space unknown"
    need = "" if needed is None else f", about {_size(needed)} needed"
    parts = (f"{why} writing {path} ({free} in {folder}{need}).", kept, "Free some space and run again.")
    return " ".join(p for p in parts if p)


@contextmanager
def disk_full_names(path: Path, kept: str = "", needed: int | None = None) -> Iterator[None]:
    """Turn a full disk (ENOSPC) inside the block into a `DiskFullError` about writing `path`."""
    try:
        yield
    except OSError as err:
        if err.errno in NO_ROOM:
            raise DiskFullError(_disk_full_message(path, kept, needed, NO_ROOM[err.errno])) from err
        raise


def write_synced(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Create `path` with `write(file)` and fsync it; on any failure remove it."""
    try:
        with open(path, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def fsync_dir(folder: Path) -> None:
    """Make renames in `folder` durable (a no-op where the platform cannot fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: Path, write: Callable[[BinaryIO], object], kept: str = "", needed: int | None = None
) -> None:
    """Write `path` through `write(file)` to `<path>.tmp`, fsync, and rename it into place. A full disk
    raises `DiskFullError` saying `kept`: what earlier work survives."""
    tmp = path.with_name(path.name + ".tmp")
    with disk_full_names(path, kept, needed):
        write_synced(tmp, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_json(path: Path) -> Any | None:
    """The parsed file, or None if it is absent or unreadable (a file that does not parse is not trusted)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def atomic_write_text(path: Path, text: str, kept: str = "") -> None:
    data = text.encode()
    atomic_write(path, lambda f: f.write(data), kept, len(data))


@contextmanager
def exclusive(path: Path, what: str, wait: bool) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` while the block runs (the OS drops it when the process
    dies, however it dies). If another process holds it: wait for it (logged), or raise `InUseError`
    naming the holder (the file says who holds the lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            if not wait:
                raise InUseError(f"{what} is in use by {holder} (lock {path}); let it finish, or stop that "
                                 "process, and run again") from None
            log.warning("waiting for %s, in use by %s (lock %s)", what, holder, path)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
