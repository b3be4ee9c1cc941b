"""Finding checkpoint folders (local or the Hugging Face cache, offline) and fingerprinting weights."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file


class CheckpointError(RuntimeError):
    pass


def resolve_checkpoint_dir(folder_or_repo_id: str | Path) -> Path:
    """A local folder as given, else the newest snapshot of a repo id in the Hugging Face cache.

    Never downloads: weights are fetched by the user beforehand, so a run on a cluster node
    without network behaves the same as one with it.
    """
    path = Path(folder_or_repo_id).expanduser()
    if path.is_dir():
        return path
    repo_id = str(folder_or_repo_id)
    if repo_id.count("/") != 1 or path.exists():
        raise CheckpointError(f"checkpoint folder {path} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as err:  # the hub raises several types for "not in the cache"
        raise CheckpointError(
            f"weights for {repo_id!r} are neither a local folder nor in the Hugging Face cache "
            f"({HF_HUB_CACHE}). Download them first, e.g. `hf download {repo_id}` (fills the cache) or "
            f"`hf download {repo_id} --local-dir DIR` and pass DIR as the checkpoint."
        ) from err


def safetensors_files(folder: Path) -> list[Path]:
    """`model.safetensors`, or the shards named by `model.safetensors.index.json`."""
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [str(s) for s in shards if not s.is_file()]
        if missing:
            raise CheckpointError(f"{index} names shards that are missing: {missing}")
        return shards
    raise CheckpointError(
        f"no model.safetensors or model.safetensors.index.json in {folder}; "
        "point the checkpoint at the folder of a released model"
    )


def load_state_dict(files: Iterable[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except Exception as err:
            raise CheckpointError(f"cannot read weights file {f}: {err}") from err
    return state


def check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], source: str) -> None:
    """Raise one error naming every missing, unexpected and misshaped key."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(found[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and found[k].shape != v.shape
    )
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("misshaped", misshaped),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"checkpoint {source} does not match the model config: "
            + "; ".join(problems)
            + ". Check that config.json belongs to these weights."
        )


def files_fingerprint(files: Iterable[Path]) -> str:
    """sha256 over the files' bytes, memoised per (path, size, mtime) in the ovprobe cache."""
    files = sorted(Path(f).resolve() for f in files)
    memo_path = (
        Path(os.environ.get("OVPROBE_CACHE", Path.home() / ".cache" / "ovprobe")) / "fingerprints.json"
    )
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, json.JSONDecodeError):
        memo = {}
    keys = [f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    joined = "|".join(keys)
    if joined in memo:
        return memo[joined]
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    memo[joined] = digest.hexdigest()[:16]
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_path)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return memo[joined]


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in names:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(names)}")
    return names[dtype]
