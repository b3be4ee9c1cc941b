"""Finding checkpoint folders (local or the Hugging Face cache, offline) and fingerprinting weights."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file

from backbones.checkpoints import CheckpointError, resolve_checkpoint_dir  # noqa: F401 (their old home)


def safetensors_files(folder: Path) -> list[Path]:
    """`model.safetensors`, or the shards named by `model.safetensors.index.json`."""
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shard_names = set(weight_map.values())
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(
                f"{index} is not a safetensors index (a JSON object whose 'weight_map' maps each key to "
                f"its shard file): {type(err).__name__}: {err}"
            ) from err
        shards = [folder / name for name in sorted(shard_names)]
        missing = [str(s) for s in shards if not s.is_file()]
        if missing:
            raise CheckpointError(f"{index} names shards that are missing: {missing}")
        return shards
    raise CheckpointError(
        f"no model.safetensors or model.safetensors.index.json in {folder}; "
        "point the checkpoint at the folder of a released model"
    )


def load_state_dict(files: Iterable[Path]) -> dict[str, torch.Tensor]:
    """The tensors of all `files`; a key held by two files is an error naming both."""
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
    for f in files:
        try:
            part = load_file(str(f))
        except Exception as err:
            raise CheckpointError(
                f"cannot read weights file {f} ({err}); it may be truncated or not safetensors: "
                "download it again"
            ) from err
        twice = sorted(set(part) & set(state))
        if twice:
            raise CheckpointError(
                f"{f} and {origin[twice[0]]} both hold {len(twice)} key(s), e.g. {twice[0]}; "
                "keep each key in one shard"
            )
        state.update(part)
        origin.update(dict.fromkeys(part, f))
    return state


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype.is_complex:
        return "complex"
    return "floating-point" if dtype.is_floating_point else "integer or bool"


DTYPE_FIX = "Save the weights unquantised, in the model's dtypes."


def _mistyped(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> list[str]:
    return sorted(
        f"{k}: checkpoint {found[k].dtype} vs model {v.dtype} (expects {_dtype_kind(v.dtype)})"
        for k, v in expected.items()
        if k in found and _dtype_kind(found[k].dtype) != _dtype_kind(v.dtype)
    )


def check_dtypes(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], source: str) -> None:
    """The dtype part of `check_state_dict`, for loaders that check keys and shapes themselves."""
    mistyped = _mistyped(expected, found)
    if mistyped:
        raise CheckpointError(
            f"checkpoint {source} does not match the model: wrong dtype ({len(mistyped)}): "
            f"{', '.join(mistyped)}. {DTYPE_FIX}"
        )


# safetensors' dtype names (a file's header) -> torch dtypes.
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                      "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
                      "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def check_file_dtypes(model: torch.nn.Module, file: Path) -> None:
    """`check_dtypes` of a safetensors file against `model` (whose keys are the file's), from the file's
    header alone: for loaders that check keys and shapes themselves but cast what they copy (timm,
    open_clip). Dtypes missing from `SAFETENSORS_DTYPES` (float8) are not checked."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        names = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    found = {k: torch.empty(0, dtype=SAFETENSORS_DTYPES[n])
             for k, n in names.items() if n in SAFETENSORS_DTYPES}
    check_dtypes(model.state_dict(), found, str(file))


def check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], source: str) -> None:
    """Raise one error naming every missing, unexpected, misshaped and mistyped key.

    Any floating-point precision loads into a floating-point parameter (weights are cast to the
    requested dtype afterwards); an integer tensor where the model holds floats (a quantised or
    mis-saved checkpoint) is an error, as is the reverse.
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(found[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and found[k].shape != v.shape
    )
    mistyped = _mistyped(expected, found)
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("misshaped", misshaped),
            ("wrong dtype", mistyped),
        )
        if keys
    ]
    fixes = [
        fix
        for fix, applies in (
            ("Check that config.json belongs to these weights.", missing or unexpected or misshaped),
            (DTYPE_FIX, mistyped),
        )
        if applies
    ]
    if problems:
        raise CheckpointError(
            f"checkpoint {source} does not match the model: {'; '.join(problems)}. {' '.join(fixes)}"
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
    """A compute dtype by name. "auto" is the run's to resolve for its device (bfloat16 on CUDA, see
    `probe.run.main.resolve_dtype`); left unresolved (scripts on a CPU) it is float32."""
    if dtype is None or dtype == "auto":
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
