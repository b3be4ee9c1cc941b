"""Run records: one self-describing folder per run in `results/`, written atomically, never overwritten."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from probe.files import disk_full_names, fsync_dir, read_json, write_synced

log = logging.getLogger(__name__)

RECORD_FILE = "record.json"
# Config keys that do not change a run's result: they never enter its identity.
NON_SEMANTIC_KEYS = (
    "on_existing", "results_dir", "cache_dir", "device", "num_workers", "progress", "frame_batch"
)
ON_EXISTING = ("reuse", "refuse", "new")


class RunExistsError(RuntimeError):
    pass


class ResultsDirError(RuntimeError):
    pass


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def semantic_config(obj: Any) -> Any:
    """`obj` without the non-semantic keys, at any depth (task args carry `cache_dir` and `progress`)."""
    if isinstance(obj, dict):
        return {k: semantic_config(v) for k, v in obj.items() if k not in NON_SEMANTIC_KEYS}
    return obj


def config_hash(config: dict[str, Any], identity: dict[str, Any] | None = None) -> str:
    """Hash of the semantic config and, when given, the `identity` of what it ran on (weights, data)."""
    spec = semantic_config(config)
    spec = spec if identity is None else {"config": spec, "identity": identity}
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:10]


def run_id(config: dict[str, Any], identity: dict[str, Any] | None = None) -> str:
    """Readable and unique: `<task>-<backbone>-<sampling>-<hash of the semantic config and identity>`.

    The config names a checkpoint by its path and a data set by its folder; `identity` (the weights
    fingerprint and the digest of each split's clips and labels) makes new weights saved over old ones,
    or an edited annotation file, a new run instead of a stale answer.
    """
    parts = [config["task"]["name"], config["backbone"]["name"], config["sampling"]["name"]]
    budget = config["sampling"].get("budget")
    if budget:
        parts[-1] += f"{budget}"
    return "-".join(str(p) for p in parts) + "-" + config_hash(config, identity)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("ovprobe", "torch", "torchvision", "transformers", "timm", "decord", "av", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "absent"
    return found


def git_commit() -> str | None:
    """The suite's own commit (with `+dirty` when the checkout has local changes), if it is a checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


@dataclass
class RunSlot:
    """Where a run's record goes, decided before any work so a refusal costs nothing."""

    run_id: str
    path: Path
    existing: dict[str, Any] | None = None


def claim_run(
    results_dir: str | Path, config: dict[str, Any], on_existing: str, identity: dict[str, Any] | None = None
) -> RunSlot:
    """Apply the `on_existing` policy: reuse the stored record, refuse, or take a new numbered id."""
    if on_existing not in ON_EXISTING:
        raise ValueError(f"on_existing={on_existing!r} is not one of {', '.join(ON_EXISTING)}")
    results_dir = Path(results_dir)
    base = run_id(config, identity)
    path = results_dir / base
    existing = read_record(path)
    if existing is None:
        return RunSlot(base, path)
    if on_existing == "reuse":
        return RunSlot(base, path, existing=existing)
    if on_existing == "refuse":
        raise RunExistsError(
            f"{path} already holds a run with this configuration; pass on_existing=reuse to print it, "
            "or on_existing=new to run again under a new id"
        )
    n = 2
    while (results_dir / f"{base}-r{n}" / RECORD_FILE).is_file():
        n += 1
    return RunSlot(f"{base}-r{n}", results_dir / f"{base}-r{n}")


def read_record(folder: Path) -> dict[str, Any] | None:
    """The finished run's record in `folder`, or None; a record that does not parse is not trusted."""
    path = folder / RECORD_FILE
    record = read_json(path)
    if record is None and path.is_file():
        log.warning("%s is unreadable; the run is done again in its place", path)
    return record


def check_writable(folder: str | Path, what: str = "results folder", setting: str = "results_dir") -> None:
    """Fail before any work if `folder` cannot be written or is (nearly) full. A folder that does not exist
    yet is not made here, so a command refused later leaves nothing behind: the nearest folder above it
    that exists must let it be made."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        if existing == folder:
            probe_file = folder / f".write-test-{socket.gethostname()}-{os.getpid()}"
            probe_file.write_text("ok")
            probe_file.unlink()
        elif not os.access(existing, os.W_OK | os.X_OK):  # EROFS and immutable folders included
            raise PermissionError(errno.EACCES, f"{existing} cannot be written", str(existing))
    except OSError as err:
        raise ResultsDirError(
            f"{what} {folder} is not writable ({err.strerror}); set {setting}= to a writable folder"
        ) from err
    free = shutil.disk_usage(existing).free
    if free < 16 * 2**20:
        raise ResultsDirError(
            f"{what} {folder} has only {free // 2**20} MiB free; free some space or set {setting}= elsewhere"
        )


def write_record(
    slot: RunSlot, record: dict[str, Any], extra_files: dict[str, str | bytes] | None = None, kept: str = ""
) -> dict[str, Any]:
    """Write the run's folder and return the record as written. `kept` says what survives a full disk.

    The files go to a temporary folder, flushed to disk, which is renamed into place holding
    `record.json.tmp`; renaming that to `record.json` commits the run. A kill at any point leaves no
    `record.json` anywhere but complete, in its final place (readers collect every `record.json`).
    """
    final = slot.path
    for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a killed writer
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    record = {**record, "run_id": slot.run_id, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    pending = RECORD_FILE + ".tmp"
    files = {**(extra_files or {}), pending: json.dumps(record, indent=2, default=str)}
    try:
        for name, text in files.items():
            data = text.encode() if isinstance(text, str) else text
            with disk_full_names(final / (RECORD_FILE if name == pending else name), kept, len(data)):
                write_synced(tmp / name, lambda f, data=data: f.write(data))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(tmp)
    if (final / RECORD_FILE).is_file():  # written meanwhile by a run with another cache_dir
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunExistsError(f"{final} was written by another run meanwhile; it is kept as it is ({kept})")
    if final.exists():  # a folder without a record: leftovers of a killed run, never a finished one
        shutil.rmtree(final)
    os.replace(tmp, final)
    os.replace(final / pending, final / RECORD_FILE)
    fsync_dir(final)
    fsync_dir(final.parent)
    return record
