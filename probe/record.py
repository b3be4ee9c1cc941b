"""Run records: one self-describing folder per run in `results/`, written atomically, never overwritten."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

RECORD_FILE = "record.json"
# Config keys that do not change a run's result: they never enter its identity.
NON_SEMANTIC_KEYS = ("on_existing", "results_dir", "cache_dir", "device", "num_workers", "progress")
ON_EXISTING = ("reuse", "refuse", "new")


class RunExistsError(RuntimeError):
    pass


class ResultsDirError(RuntimeError):
    pass


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _semantic(obj: Any) -> Any:
    """`obj` without the non-semantic keys, at any depth (task args carry `cache_dir` and `progress`)."""
    if isinstance(obj, dict):
        return {k: _semantic(v) for k, v in obj.items() if k not in NON_SEMANTIC_KEYS}
    return obj


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(_semantic(config)).encode()).hexdigest()[:10]


def run_id(config: dict[str, Any]) -> str:
    """Readable and unique: `<task>-<backbone>-<sampling>-<hash of the semantic config>`."""
    parts = [config["task"]["name"], config["backbone"]["name"], config["sampling"]["name"]]
    budget = config["sampling"].get("budget")
    if budget:
        parts[-1] += f"{budget}"
    return "-".join(str(p) for p in parts) + "-" + config_hash(config)


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


def claim_run(results_dir: str | Path, config: dict[str, Any], on_existing: str) -> RunSlot:
    """Apply the `on_existing` policy: reuse the stored record, refuse, or take a new numbered id."""
    if on_existing not in ON_EXISTING:
        raise ValueError(f"on_existing={on_existing!r} is not one of {', '.join(ON_EXISTING)}")
    results_dir = Path(results_dir)
    base = run_id(config)
    path = results_dir / base
    if not (path / RECORD_FILE).is_file():
        return RunSlot(base, path)
    if on_existing == "reuse":
        return RunSlot(base, path, existing=json.loads((path / RECORD_FILE).read_text()))
    if on_existing == "refuse":
        raise RunExistsError(
            f"{path} already holds a run with this configuration; pass on_existing=reuse to print it, "
            "or on_existing=new to run again under a new id"
        )
    n = 2
    while (results_dir / f"{base}-r{n}" / RECORD_FILE).is_file():
        n += 1
    return RunSlot(f"{base}-r{n}", results_dir / f"{base}-r{n}")


def check_writable(results_dir: str | Path) -> None:
    """Fail before any work if the results folder cannot take a record."""
    results_dir = Path(results_dir)
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        probe_file = results_dir / f".write-test-{os.getpid()}"
        probe_file.write_text("ok")
        probe_file.unlink()
    except OSError as err:
        raise ResultsDirError(
            f"results folder {results_dir} is not writable ({err.strerror}); "
            "set results_dir= to a writable folder"
        ) from err
    free = shutil.disk_usage(results_dir).free
    if free < 16 * 2**20:
        raise ResultsDirError(
            f"results folder {results_dir} has only {free // 2**20} MiB free; free some space first"
        )


def write_record(
    slot: RunSlot, record: dict[str, Any], extra_files: dict[str, str] | None = None
) -> dict[str, Any]:
    """Write `record.json` (+ extra text files) into a temporary folder, rename it into place, and
    return the record as written."""
    final = slot.path
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    record = {**record, "run_id": slot.run_id, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str))
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)
    if final.exists():  # a folder without a record: leftovers of a killed run, never a finished one
        shutil.rmtree(final)
    os.replace(tmp, final)
    return record
