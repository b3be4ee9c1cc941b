"""On-disk cache of codec saliency maps: the expensive, budget-independent part of codec sampling.

An entry holds the fused map (uint8) and its metadata, about 0.5-1 MB for 64 frames of a 720x528 video.
It is keyed by a fingerprint of the video file (resolved path, size, modification time), the clip
span and the `CodecConfig`, so any other budget, selection option or backbone grid reuses it. Entries
are `.npz` files written to a temporary name and moved into place with `os.replace` (a reader never
sees half a file) and carry a SHA-256 of their contents; an entry that fails to load or to verify is
logged, recomputed and overwritten, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path

import av
import numpy as np

from tasks.decode.codec import CodecConfig, CodecMaps, analyse

log = logging.getLogger(__name__)

CACHE_VERSION = 5  # 2: B-frame streams decode without frame threads; 3: maps carry each frame's contrast;
# 4: one decode pass, the last decoded frame standing in for a frame past the end; 5: the analysis batched
# over frames (fused maps within one level of 4's). Also in the feature store's key (`CodecSampler`).
_NOT_STORED = ("motion", "residual")  # raw maps: large, and not needed to select patches


def default_cache_dir() -> Path:
    """`$OVPROBE_CACHE/codec`, by default `.cache/codec` under the working directory."""
    return Path(os.environ.get("OVPROBE_CACHE", ".cache")) / "codec"


def fingerprint(path: Path, cfg: CodecConfig, start_frame: int | None, end_frame: int | None,
                jitter: np.ndarray | None = None) -> str:
    """Hex key of (file identity, clip span, codec config, frame jitter of a training view, cache format)."""
    stat = path.stat()
    payload = {
        "path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
        "span": [start_frame, end_frame], "config": asdict(cfg), "version": CACHE_VERSION,
    }
    if jitter is not None:
        payload["jitter"] = np.asarray(jitter, np.float64).round(12).tolist()
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _checksum(arrays: dict[str, np.ndarray], meta: str) -> str:
    digest = hashlib.sha256(meta.encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class MapCache:
    """Codec maps on disk under `root`, one file per fingerprint."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def entry(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def load(self, key: str) -> CodecMaps | None:
        """The cached maps, or None when absent or damaged (a damaged entry is logged)."""
        file = self.entry(key)
        if not file.exists():
            return None
        try:
            with np.load(file, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files if name not in ("meta", "checksum")}
                meta_json = str(data["meta"])
                stored = str(data["checksum"])
            if _checksum(arrays, meta_json) != stored:
                raise ValueError("checksum mismatch")
            meta = json.loads(meta_json)
        except Exception as err:  # any unreadable entry is recomputed, whatever broke it
            log.warning("codec cache entry %s is damaged (%s); recomputing it", file, err)
            return None
        meta["frame_size"] = tuple(meta["frame_size"])
        try:
            return CodecMaps(**arrays, **meta)
        except TypeError as err:  # written by another version of CodecMaps
            log.warning("codec cache entry %s does not match CodecMaps (%s); recomputing it", file, err)
            return None

    def store(self, key: str, maps: CodecMaps) -> Path:
        """Write atomically: a temporary file in the same folder, then `os.replace`."""
        file = self.entry(key)
        file.parent.mkdir(parents=True, exist_ok=True)
        values = {f.name: getattr(maps, f.name) for f in fields(maps) if f.name not in _NOT_STORED}
        arrays = {name: v for name, v in values.items() if isinstance(v, np.ndarray)}
        meta_json = json.dumps({name: v for name, v in values.items() if name not in arrays})
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{key[:8]}.", suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez_compressed(handle, **arrays, meta=np.array(meta_json),
                                    checksum=np.array(_checksum(arrays, meta_json)))
            os.replace(tmp, file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return file


def cached_analyse(path: str | Path, cfg: CodecConfig | None = None, start_frame: int | None = None,
                   end_frame: int | None = None, cache: MapCache | None = None,
                   keep: Callable[[av.VideoFrame], np.ndarray] | None = None,
                   jitter: np.ndarray | None = None) -> tuple[CodecMaps, list[np.ndarray] | None]:
    """`tasks.decode.codec.analyse` through the cache. On a hit no frame is decoded and the pixels are None:
    the caller decodes `maps.frame_indices` itself (far cheaper than the full sequential pass)."""
    path, cfg = Path(path), cfg or CodecConfig()
    if cache is None:
        return analyse(path, cfg, start_frame, end_frame, keep, jitter)
    key = fingerprint(path, cfg, start_frame, end_frame, jitter)
    maps = cache.load(key)
    if maps is not None:
        return maps, None
    maps, pixels = analyse(path, cfg, start_frame, end_frame, keep, jitter)
    cache.store(key, maps)
    return maps, pixels

