"""The feature store: backbone tokens computed once per (clip, view, sampling config) and kept on disk.

A store is a folder named by a fingerprint of everything that determines its content (the backbone's
feature identity: weights, input size, compute dtype, tokens, preprocessing, sparse mode; task, split,
clip list with each clip's label, span and video fingerprint, sampling config, seed, number of views,
store dtype). Clips are written in shards of
`shard_size` clips, each shard as three `.npy` files (tokens `[S, V, N, D]`, positions `[S, V, N, 3]`,
lengths `[S, V]`) plus a sidecar JSON with their sha256, written last as the shard's commit mark. Every
file is written atomically (`probe.files`). A killed extraction resumes shard by shard; `manifest.json`
is committed only once every shard exists. With several processes
(`probe.distributed`) each extracts every world_size-th missing shard and process 0 commits the
manifest. Readers memory-map the shards and pad every clip to the store's largest token count,
returning a mask.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from backbones.base import Backbone
from probe import distributed
from probe.files import atomic_write, atomic_write_text, exclusive, read_json
from tasks.clip import SampledClip
from tasks.decode.video import VideoDecodeError
from tasks.loader import SkippedClip
from tasks.progress import Progress, progress_bar

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LAYOUT = "store.json"
SHARD_ARRAYS = ("tokens", "positions", "lengths")


@dataclass(frozen=True)
class Codec:
    """How tokens are kept on disk: the numpy dtype, the conversions to and from torch, and how many
    columns each token carries beyond its channels (`extra`: int8 keeps its scale there)."""

    disk_dtype: type
    encode: Callable[[torch.Tensor], np.ndarray]
    decode: Callable[[np.ndarray], torch.Tensor]
    extra: int = 0


def _int8_encode(t: torch.Tensor) -> np.ndarray:
    """Per-token symmetric int8: q = round(x / s) with s = max|x| / 127 (float32), s's four bytes
    appended. Each value comes back within s / 2 = max|x| / 254 of itself (float32 rounding aside)."""
    t = t.float()
    scale = (t.abs().amax(-1, keepdim=True) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round(t / scale).clamp_(-127, 127).to(torch.int8)
    return torch.cat([q, scale.view(torch.int8)], dim=-1).numpy()


def _int8_decode(a: np.ndarray) -> torch.Tensor:
    a = torch.from_numpy(np.ascontiguousarray(a))
    return a[..., :-4].float() * a[..., -4:].contiguous().view(torch.float32)


CODECS: dict[str, Codec] = {
    "float32": Codec(
        np.float32, lambda t: t.float().numpy(), lambda a: torch.from_numpy(np.asarray(a, np.float32))
    ),
    "float16": Codec(
        np.float16, lambda t: t.half().numpy(), lambda a: torch.from_numpy(np.asarray(a)).float()
    ),
    # numpy has no bfloat16: keep the raw bits as int16 and reinterpret them on the way back.
    "bfloat16": Codec(
        np.int16,
        lambda t: t.bfloat16().view(torch.int16).numpy(),
        lambda a: torch.from_numpy(np.ascontiguousarray(a)).view(torch.bfloat16).float(),
    ),
    # A quarter of float32's bytes (half of float16's) per token, decoded on the fly by the trainer.
    "int8": Codec(np.int8, _int8_encode, _int8_decode, extra=4),
}


def _codec(name: str) -> Codec:
    if name not in CODECS:
        raise ValueError(f"feature dtype {name!r} is unknown; choose one of {sorted(CODECS)}")
    return CODECS[name]


class NonFiniteTokensError(RuntimeError):
    """A backbone produced, or the store dtype could not hold, finite tokens for a clip."""


class StoreTooLargeError(RuntimeError):
    """The feature store would not fit on its disk: found before anything is decoded."""


def free_bytes(folder: Path) -> int:
    """Free space where `folder` lives (a function of its own, so tests can shrink the disk)."""
    return shutil.disk_usage(folder).free


def store_bytes(clips: int, views: int, tokens: int, dim: int, dtype: str) -> int:
    """Bytes a store of `clips` x `views` views of `tokens` tokens of `dim` channels takes on disk."""
    codec = _codec(dtype)
    itemsize = np.dtype(codec.disk_dtype).itemsize
    return clips * views * tokens * ((dim + codec.extra) * itemsize + 3 * 4 + 4)  # tokens, (t, h, w), lengths


def _check_room(path: Path, clips: int, views: int, tokens: int, dim: int, dtype: str) -> None:
    """Log what the missing shards will take, and stop before any work when the disk cannot hold it."""
    if not clips:
        return
    itemsize = np.dtype(_codec(dtype).disk_dtype).itemsize
    need = store_bytes(clips, views, tokens, dim, dtype)
    free = free_bytes(path)
    log.info("feature store %s: %d clips x %d views x %d tokens x %d channels x %d bytes = %s to write, %s "
             "free there", path.name, clips, views, tokens, dim, itemsize, _size(need), _size(free))
    if need > free:
        raise StoreTooLargeError(
            f"the feature store {path} needs {_size(need)} ({clips} clips x {views} views x {tokens} tokens "
            f"x {dim} channels x {itemsize} bytes, plus positions) but {path.parent} has {_size(free)} free; "
            "set cache_dir= to a larger disk, store fewer views (extract.train_views), store int8 (half "
            "of float16's bytes) or a 2-byte dtype instead of float32 (extract.dtype), or encode every "
            "epoch without storing (extract.mode=stream)"
        )


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass
class FeatureBatch:
    """Tokens of B (clip, view) pairs padded to a common N; `mask` is True for real tokens."""

    tokens: torch.Tensor  # [B, N, D] float32
    positions: torch.Tensor  # [B, N, 3] int64
    mask: torch.Tensor  # [B, N] bool
    labels: torch.Tensor  # [B] int64

    def to(self, device: torch.device | str) -> FeatureBatch:
        return FeatureBatch(*(to_device(t, torch.device(device)) for t in
                              (self.tokens, self.positions, self.mask, self.labels)))


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor onto `device`; to a GPU through pinned memory and an asynchronous copy (the host
    goes on preparing the next batch meanwhile)."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@dataclass
class ExtractStats:
    """What one process computed in `extract_features` and where its time went (zeros: store reused).

    `wait_s`: waiting for the next clip from the loader (decoding and sampling that the workers did not
    hide); `encode_s`: inside `backbone.encode` (CUDA synchronised); `write_s`: saving and hashing
    shards; the rest of `total_s` is batching, host copies and dtype conversion.
    """

    clips: int = 0  # clips received, skipped ones included
    skipped: int = 0
    views: int = 0  # views encoded
    tokens: int = 0  # tokens encoded
    bytes_written: int = 0
    encode_s: float = 0.0
    wait_s: float = 0.0
    write_s: float = 0.0
    total_s: float = 0.0


class Features(Protocol):
    """What the trainer needs from stored features: sizes, labels and random access by (clip, view)."""

    fingerprint: str
    num_clips: int
    num_views: int
    num_tokens: int
    embed_dim: int
    labels: np.ndarray

    def batch(self, clips: np.ndarray, views: np.ndarray) -> FeatureBatch: ...


class ArrayFeatures:
    """Features held as arrays, in memory or memory-mapped (one store shard is one of these).

    tokens `[C, V, N, D]` (in `dtype`'s disk representation), positions `[C, V, N, 3]`,
    lengths `[C, V]` (real tokens per view, the rest is padding; default all N), labels `[C]`.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        labels: np.ndarray,
        lengths: np.ndarray | None = None,
        dtype: str = "float32",
        fingerprint: str | None = None,
    ) -> None:
        self.tokens, self.positions, self.labels = tokens, positions, np.asarray(labels, dtype=np.int64)
        self.codec = _codec(dtype)
        self.num_clips, self.num_views, self.num_tokens, width = tokens.shape
        self.embed_dim = width - self.codec.extra
        self.lengths = np.full(tokens.shape[:2], self.num_tokens) if lengths is None else lengths
        self._fingerprint = fingerprint

    @property
    def fingerprint(self) -> str:
        """A content hash unless one was given (stores pass theirs)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for arr in (self.tokens, self.positions, self.lengths, self.labels):
                h.update(np.ascontiguousarray(arr).tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def gather(
        self, clips: np.ndarray, views: np.ndarray, num_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens float32, positions int64, lengths int64) of the pairs, padded to `num_tokens`."""
        pad = num_tokens - self.num_tokens
        tokens = F.pad(self.codec.decode(self.tokens[clips, views]), (0, 0, 0, pad))
        positions = F.pad(torch.from_numpy(self.positions[clips, views].astype(np.int64)), (0, 0, 0, pad))
        return tokens, positions, torch.from_numpy(self.lengths[clips, views].astype(np.int64))

    def batch(self, clips: np.ndarray, views: np.ndarray) -> FeatureBatch:
        return _make_batch(*self.gather(clips, views, self.num_tokens), self.labels[clips])


def _make_batch(
    tokens: torch.Tensor, positions: torch.Tensor, lengths: torch.Tensor, labels: np.ndarray
) -> FeatureBatch:
    mask = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    return FeatureBatch(tokens, positions, mask, torch.from_numpy(np.asarray(labels, dtype=np.int64)))


class FeatureStore:
    """A complete store on disk, read through memory maps. Open with `FeatureStore(path)`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"feature store {self.path} is incomplete (no {MANIFEST}); "
                "run the extraction again to finish it"
            )
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        m = self.manifest
        self.fingerprint: str = m["fingerprint"]
        self.num_views: int = m["views"]
        self.num_tokens: int = m["num_tokens"]
        self.embed_dim: int = m["embed_dim"]
        self.temporal_extent: int = m["temporal_extent"]
        self.shard_size: int = m["shard_size"]
        self.cost: dict[str, Any] | None = m.get("cost")  # per clip, from the extraction that wrote it
        # Clips skipped at extraction (on_bad_clip=skip) stay in their shards with no tokens; the store
        # shows only usable clips, so index i here is the i-th usable clip.
        self.skipped: dict[str, str] = {c: r for s in m["shards"] for c, r in s.get("skipped", {}).items()}
        # Clips whose codec exports no motion vectors: their patches were scored by residuals alone.
        self.residual_only: list[str] = [c for s in m["shards"] for c in s.get("residual_only", [])]
        self.unreadable: list[str] = [c for s in m["shards"] for c in s.get("retry", [])]  # of `skipped`
        all_ids = [c for s in m["shards"] for c in s["clips"]]
        self._all_labels = np.asarray([y for s in m["shards"] for y in s["labels"]], dtype=np.int64)
        self._rows = np.asarray([i for i, c in enumerate(all_ids) if c not in self.skipped], dtype=np.int64)
        self.num_clips = len(self._rows)
        self.clip_ids: list[str] = [all_ids[i] for i in self._rows]
        self.labels = self._all_labels[self._rows]
        self._shards: dict[int, ArrayFeatures] = {}
        self.extraction = ExtractStats()  # filled by `extract_features` when it computed shards
        self.retried: list[str] = []  # clips skipped as missing or unreadable before, tried again now

    def shard(self, index: int) -> ArrayFeatures:
        if index not in self._shards:
            arrays = _load_shard_arrays(self.path, index, mmap=True)
            start = index * self.shard_size
            self._shards[index] = ArrayFeatures(
                arrays["tokens"],
                arrays["positions"],
                self._all_labels[start : start + len(arrays["lengths"])],
                arrays["lengths"],
                dtype=self.manifest["dtype"],
                fingerprint=f"{self.fingerprint}/{index}",
            )
        return self._shards[index]

    def batch(self, clips: np.ndarray, views: np.ndarray) -> FeatureBatch:
        clips, views = self._rows[np.asarray(clips)], np.asarray(views)
        n = len(clips)
        tokens = torch.empty(n, self.num_tokens, self.embed_dim)
        positions = torch.empty(n, self.num_tokens, 3, dtype=torch.int64)
        lengths = torch.empty(n, dtype=torch.int64)
        shard_of = clips // self.shard_size
        for k in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == k)
            t, p, ln = self.shard(int(k)).gather(
                clips[sel] - k * self.shard_size, views[sel], self.num_tokens
            )
            idx = torch.from_numpy(sel)
            tokens[idx], positions[idx], lengths[idx] = t, p, ln
        return _make_batch(tokens, positions, lengths, self._all_labels[clips])


class ClipLike(Protocol):
    clip_id: str
    label: int


@dataclass(frozen=True)
class StoreKey:
    """Everything that determines a store's content; its fingerprint names the store folder."""

    backbone: str
    backbone_identity: Mapping[str, Any]  # `Backbone.feature_identity()`: weights, size, dtype, ...
    task: str
    split: str
    sampling: Mapping[str, Any]
    seed: int
    views: int
    dtype: str
    clips: str  # `clips_digest`: ids, labels, spans and video fingerprints

    def fingerprint(self) -> str:
        return hashlib.sha256(_canonical(asdict(self)).encode()).hexdigest()[:16]

    def dirname(self) -> str:
        readable = "_".join(
            re.sub(r"[^A-Za-z0-9.-]+", "-", s) for s in (self.backbone, self.task, self.split)
        )
        return f"{readable}_{self.fingerprint()}"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


SPAN_FIELDS = ("start_frame", "end_frame", "start_time", "end_time")
# A video's fingerprint reads this many bytes at its start, middle and end (the scheme of imohash):
# a re-encoded or another file differs there, while a copy elsewhere is the same.
VIDEO_SAMPLE = 16 * 1024
FINGERPRINT_THREADS = 16  # files fingerprinted at once: on network storage the reads overlap
FINGERPRINT_CACHE = "video_fingerprints.json"  # under a run's cache_dir: see `video_fingerprints`
# A file changed this recently is not cached: file times tick coarsely (milliseconds), so a second
# change within the same tick could leave its state as cached (git's "racily clean" entries).
RECENT_NS = 2_000_000_000


def video_fingerprint(path: str | Path | None) -> str | None:
    """A cheap identity of a video's content, `<size>-<sha256 prefix>`: the size and a hash of three
    `VIDEO_SAMPLE`-byte blocks (start, middle, end; the whole file when smaller than the three). Neither
    its path nor its times enter it. None when the file is absent or unreadable."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            h = hashlib.sha256(str(size).encode())
            if size <= 3 * VIDEO_SAMPLE:
                h.update(f.read())
            else:
                for offset in (0, (size - VIDEO_SAMPLE) // 2, size - VIDEO_SAMPLE):
                    h.update(os.pread(f.fileno(), VIDEO_SAMPLE, offset))
    except OSError:
        return None
    return f"{size}-{h.hexdigest()[:16]}"


def _file_state(path: str) -> list[int] | None:
    """What changes whenever a file's content may have: device, inode, size, mtime and ctime (a write,
    a rename over it or a restored mtime all set a new ctime, which no user call can set back)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def video_fingerprints(paths: Iterable[str | Path], cache: Path | None = None) -> dict[str, str | None]:
    """`video_fingerprint` of each distinct path (keyed by `str(path)`), read by a pool of threads.

    With `cache` (a JSON file: path -> file state and fingerprint) a file whose state is the one cached
    costs a `stat` instead of three reads; the others are read, and those unchanged for `RECENT_NS` are
    added to the cache. A moved data set has new paths: it is read once, and keeps its fingerprints."""
    distinct = sorted({str(p) for p in paths})
    known = read_json(cache) if cache is not None else None
    known = known if isinstance(known, dict) else {}

    def one(path: str) -> tuple[str | None, list | None]:
        state = _file_state(path)
        entry = known.get(path)
        if state is not None and isinstance(entry, list) and entry[:-1] == state:
            return entry[-1], None
        fingerprint = video_fingerprint(path)
        # the state read before the blocks: a file that changed meanwhile is read again next time
        if state is None or fingerprint is None or time.time_ns() - state[-1] < RECENT_NS:
            return fingerprint, None
        return fingerprint, [*state, fingerprint]

    with ThreadPoolExecutor(max(1, min(FINGERPRINT_THREADS, len(distinct)))) as pool:
        found = dict(zip(distinct, pool.map(one, distinct), strict=True))
    new = {path: entry for path, (_, entry) in found.items() if entry is not None}
    if cache is not None and new:  # runs at once (a multirun) add their entries one after the other
        with exclusive(cache.with_name(cache.name + ".lock"), f"fingerprint cache {cache}", wait=True):
            latest = read_json(cache)
            atomic_write_text(cache, json.dumps({**(latest if isinstance(latest, dict) else {}), **new}))
    return {path: fingerprint for path, (fingerprint, _) in found.items()}


def clips_digest(clips: Sequence[ClipLike], fingerprint_cache: Path | None = None) -> str:
    """The clip list's identity: ids and labels, the span of each clip annotated as a segment of a
    longer video (an edited start or end must not reuse features of the old span), and the fingerprint
    of each clip's video (other videos under the same names must not reuse them; the same videos in
    another folder do). A video absent when listed adds nothing (its clip is skipped and retried).
    `fingerprint_cache`: see `video_fingerprints`."""
    paths = [p for c in clips if (p := getattr(c, "path", None)) is not None]
    videos = video_fingerprints(paths, fingerprint_cache)
    rows = []
    for c in clips:
        span = [getattr(c, f, None) for f in SPAN_FIELDS]
        video = videos.get(str(getattr(c, "path", None)))
        rows.append([c.clip_id, int(c.label), *([span] if any(v is not None for v in span) else []),
                     *([video] if video else [])])
    return hashlib.sha256(_canonical(rows).encode()).hexdigest()


def store_key(
    backbone: Backbone, clips: Sequence[ClipLike], *, task: str, split: str, sampling: Mapping[str, Any],
    seed: int, views: int, dtype: str, clips_key: str | None = None,
) -> StoreKey:
    """The key of the store `extract_features` reads or writes for these arguments (`ovprobe-plan` looks
    stores up by it); `clips_key`: the clips' `clips_digest` if already taken."""
    return StoreKey(backbone=backbone.name, backbone_identity=backbone.feature_identity(), task=task,
                    split=split, sampling=dict(sampling), seed=seed, views=views, dtype=dtype,
                    clips=clips_key or clips_digest(clips))


def extract_features(
    backbone: Backbone,
    clips: Sequence[ClipLike],
    sample_views: Callable[[ClipLike], Sequence[SampledClip]],
    *,
    root: str | Path,
    task: str,
    split: str,
    sampling: Mapping[str, Any],
    seed: int,
    views: int = 1,
    dtype: str = "float16",
    shard_size: int = 32,
    batch_size: int = 8,
    num_workers: int = 0,
    verify: bool = True,
    progress: Progress = "auto",
    tokens_per_view: int | None = None,
    clips_key: str | None = None,
) -> FeatureStore:
    """Return the store for these clips, computing only what is missing.

    `sample_views(clip)` must return the clip's `views` SampledClips (decoded and sampled with
    `sampling` and `seed`; the store records them, the callable applies them). An existing complete
    store is reused; with `verify` every shard's sha256 is checked first and a failing shard is
    recomputed. `num_workers` > 0 decodes clips in DataLoader worker processes. The returned store's
    `extraction` holds this process's `ExtractStats`. With `tokens_per_view` the size of what is missing
    is logged and checked against the free space first (`StoreTooLargeError`). `clips_key` is the
    clips' `clips_digest` when the caller took it already (a run takes it once, for its id and stores).
    """
    _codec(dtype)
    if not clips:
        raise ValueError(f"no clips to extract for task {task!r} split {split!r}")
    key = store_key(backbone, clips, task=task, split=split, sampling=sampling, seed=seed, views=views,
                    dtype=dtype, clips_key=clips_key)
    path = Path(root) / key.dirname()
    # Process 0 holds the store's lock (a second run writing the same store waits), checks what exists
    # (and removes what fails); each process extracts its share of the missing shards; process 0 commits
    # the manifest once every shard is there.
    with ExitStack() as held:
        lock = path / ".lock"
        distributed.on_main(lambda: held.enter_context(exclusive(lock, f"feature store {path}", wait=True)))
        paths = {c.clip_id: getattr(c, "path", None) for c in clips}
        members = [(c.clip_id, int(c.label)) for c in clips]
        shard_size, num_shards, todo, complete, retried = distributed.on_main(
            lambda: _plan(path, key, shard_size, members, backbone.embed_dim, verify,
                          lambda c: _readable(paths.get(c)))
        )
        if complete:
            return FeatureStore(path)
        if tokens_per_view:
            missing = sum(min(shard_size, len(clips) - k * shard_size) for k in todo)
            distributed.on_main(
                lambda: _check_room(path, missing, views, tokens_per_view, backbone.embed_dim, dtype)
            )
        mine = todo[distributed.rank() :: distributed.world_size()]
        stats = ExtractStats()
        if mine:
            _extract_shards(
                backbone, clips, sample_views, path, key, shard_size, mine, batch_size, num_workers, progress,
                stats,
            )
        distributed.barrier()
        distributed.on_main(lambda: _commit_manifest(path, key, shard_size, len(clips), num_shards,
                                                     backbone.embed_dim))
        store = FeatureStore(path)
        store.extraction = stats
        store.retried = retried
        return store


def _plan(
    path: Path, key: StoreKey, shard_size: int, members: Sequence[tuple[str, int]], embed_dim: int,
    verify: bool, readable: Callable[[str], bool],
) -> tuple[int, int, list[int], bool, list[str]]:
    """(shard size, number of shards, shards to compute, whether the store is complete and valid, clips
    to try again: skipped as missing or unreadable, and `readable` now).

    `members` are the (clip id, label) pairs in store order: a shard whose sidecar lists others is
    recomputed, and a manifest that differs from what its sidecars give is written again."""
    path.mkdir(parents=True, exist_ok=True)
    shard_size = _layout(path, key, shard_size, len(members))
    num_shards = -(-len(members) // shard_size)
    failed, again_shards, retried = [], [], []
    for k in range(num_shards):
        meta = _valid_sidecar(path, k, verify)
        listed = members[k * shard_size : (k + 1) * shard_size]
        if meta is None or not _sound_shard(path, k, key.dtype):
            failed.append(k)
        elif (meta.get("clips"), meta.get("labels")) != ([c for c, _ in listed], [y for _, y in listed]):
            log.warning("feature store %s: shard %d lists other clips or labels than the task (edited by "
                        "hand?); recomputing it", path, k)
            (path / _shard_name(k, "json")).unlink()
            failed.append(k)
        elif again := [c for c in meta.get("retry", []) if readable(c)]:
            log.warning("feature store %s: clips %s were missing or unreadable when shard %d was made and "
                        "can be read now; recomputing the shard", path, again, k)
            (path / _shard_name(k, "json")).unlink()
            again_shards.append(k)
            retried += again
    todo = sorted(failed + again_shards)
    manifest = read_json(path / MANIFEST)
    if manifest is not None and not todo:
        derived = _manifest(path, key, shard_size, len(members), num_shards, embed_dim)
        if json.loads(json.dumps(derived, default=str)) == {**manifest, "created": derived["created"]}:
            return shard_size, num_shards, todo, True, retried
        log.warning("feature store %s: %s differs from its shards (edited by hand?); writing it again",
                    path, MANIFEST)
    elif manifest is not None and failed:
        log.warning("feature store %s: shards %s fail their checks; recomputing them", path, failed)
    (path / MANIFEST).unlink(missing_ok=True)
    return shard_size, num_shards, todo, False, retried


def _readable(video: str | Path | None) -> bool:
    return video is not None and Path(video).is_file() and os.access(video, os.R_OK)


def _layout(path: Path, key: StoreKey, shard_size: int, num_clips: int) -> int:
    """Write the store's layout on creation; later runs keep its shard size so shards stay valid."""
    layout_path = path / LAYOUT
    if layout_path.is_file():
        layout = json.loads(layout_path.read_text())
        if layout["fingerprint"] != key.fingerprint() or layout["num_clips"] != num_clips:
            raise RuntimeError(f"{layout_path} describes another store; move the folder {path} away")
        return int(layout["shard_size"])
    layout = {
        "fingerprint": key.fingerprint(),
        "key": asdict(key),
        "shard_size": shard_size,
        "num_clips": num_clips,
    }
    atomic_write_text(layout_path, json.dumps(layout, indent=1, default=str))
    return shard_size


def _shard_name(index: int, what: str) -> str:
    return f"shard_{index:05d}.{what}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _valid_sidecar(path: Path, index: int, verify: bool) -> dict[str, Any] | None:
    """The shard's sidecar if the shard counts as written: the sidecar exists and its files match it
    (by hash, or by size); else None.

    A shard that fails loses its sidecar, so it reads as unwritten until it is recomputed.
    """
    sidecar = path / _shard_name(index, "json")
    meta = read_json(sidecar)
    if meta is None:
        sidecar.unlink(missing_ok=True)
        return None
    for entry in meta["files"].values():
        f = path / entry["name"]
        if (
            not f.is_file()
            or f.stat().st_size != entry["bytes"]
            or (verify and _sha256(f) != entry["sha256"])
        ):
            sidecar.unlink()
            return None
    return meta


def _sound_shard(path: Path, index: int, dtype: str, chunk: int = 1 << 24) -> bool:
    """Whether a written shard's tokens are all finite and its lengths fit its token axis; if not, its
    sidecar is removed (the shard is recomputed). Always on: a scan is far cheaper than the sha256 of
    `verify`, and one flipped value (NaN) would otherwise train every probe on NaN without a word."""
    try:
        problem = _shard_problem(_load_shard_arrays(path, index, mmap=True), CODECS[dtype], chunk)
    except (OSError, ValueError) as err:
        problem = f"cannot be read ({err})"
    if problem is None:
        return True
    log.warning("feature store %s: shard %d %s (damaged on disk?); recomputing it", path, index, problem)
    (path / _shard_name(index, "json")).unlink(missing_ok=True)
    return False


def _shard_problem(arrays: dict[str, np.ndarray], codec: Codec, chunk: int) -> str | None:
    tokens, lengths = arrays["tokens"], arrays["lengths"]
    if codec.extra:  # int8: the values are finite by type; the float32 scales may not be
        scales = np.ascontiguousarray(tokens[..., -codec.extra :]).view(np.float32)
        if not np.isfinite(scales).all():
            return "holds NaN or infinite tokens"
    else:
        flat = tokens.reshape(-1)
        if not all(_finite(flat[i : i + chunk], codec) for i in range(0, flat.size, chunk)):
            return "holds NaN or infinite tokens"
    if lengths.size and (lengths.min() < 0 or lengths.max() > tokens.shape[2]):
        return f"has token counts outside 0..{tokens.shape[2]}"
    return None


def _finite(values: np.ndarray, codec: Codec) -> bool:
    if codec.disk_dtype is np.int16:  # bfloat16 bits: an exponent of all ones is inf or NaN
        return bool(((values.view(np.uint16) & 0x7F80) != 0x7F80).all())
    return bool(np.isfinite(values).all())


def _load_shard_arrays(path: Path, index: int, mmap: bool) -> dict[str, np.ndarray]:
    return {
        a: np.load(path / _shard_name(index, f"{a}.npy"), mmap_mode="r" if mmap else None)
        for a in SHARD_ARRAYS
    }


def _kept(path: Path) -> str:
    return f"Finished feature shards in {path} are kept; the next run computes only the missing ones."


def _atomic_save_npy(path: Path, array: np.ndarray) -> dict[str, Any]:
    atomic_write(path, lambda f: np.save(f, array), _kept(path.parent), array.nbytes)
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": _sha256(path)}


class _ClipViews(Dataset):
    """Index -> (index, the clip's sampled views), checked against the clip; runs in loader workers."""

    def __init__(self, clips: Sequence[ClipLike], sample_views: Callable, views: int) -> None:
        self.clips, self.sample_views, self.views = clips, sample_views, views

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[int, list[SampledClip] | SkippedClip | VideoDecodeError]:
        clip = self.clips[index]
        try:
            out = self.sample_views(clip)
        except VideoDecodeError as err:  # raised by the main process: from a worker it would be a traceback
            return index, err
        if isinstance(out, SkippedClip):
            return index, out
        out = list(out)
        if len(out) != self.views:
            raise ValueError(
                f"clip {clip.clip_id!r}: sampler returned {len(out)} views, the store expects {self.views}"
            )
        for v in out:
            if v.clip_id != clip.clip_id or v.label != clip.label:
                raise ValueError(
                    f"clip {clip.clip_id!r}: sampler returned a view of {v.clip_id!r} (label {v.label})"
                )
        return index, out


def _as_is(item: Any) -> Any:
    return item


class _ShardWriter:
    """Collects one shard's views, encodes them in batches of equal shape, and writes the shard."""

    def __init__(
        self,
        backbone: Backbone,
        path: Path,
        index: int,
        clips: Sequence[ClipLike],
        views: int,
        codec: Codec,
        batch_size: int,
        stats: ExtractStats,
    ) -> None:
        self.backbone, self.path, self.index, self.clips = backbone, path, index, clips
        self.codec, self.batch_size, self.stats = codec, batch_size, stats
        self.tokens: list[list[Any]] = [[None] * views for _ in clips]
        self.positions: list[list[Any]] = [[None] * views for _ in clips]
        self.pending: list[tuple[int, int, SampledClip]] = []
        self.skipped: dict[str, str] = {}
        self.residual_only: list[str] = []
        self.retry: list[str] = []  # skipped as missing or unreadable: later runs try them again
        self.received = 0
        self.cost = dict.fromkeys(COST_SUMS, 0.0)  # this shard's, summed over its views
        self.device = next(backbone.parameters(), torch.empty(0)).device

    def add(self, slot: int, views: list[SampledClip] | SkippedClip) -> None:
        self.received += 1
        self.stats.clips += 1
        if isinstance(views, SkippedClip):
            self.stats.skipped += 1
            self.skipped[views.clip_id] = views.reason
            if views.transient:
                self.retry.append(views.clip_id)
            return
        self.pending.extend((slot, v, sc) for v, sc in enumerate(views))
        if any(sc.signals == "residual" for sc in views):
            self.residual_only.append(views[0].clip_id)
        if len(self.pending) >= self.batch_size:
            self._encode_pending()

    @property
    def complete(self) -> bool:
        return self.received == len(self.clips)

    @torch.inference_mode()
    def _encode_pending(self) -> None:
        groups: dict[tuple, list[tuple[int, int, SampledClip]]] = {}
        for item in self.pending:
            groups.setdefault((tuple(item[2].frames.shape), tuple(item[2].positions.shape)), []).append(item)
        self.pending = []
        for items in groups.values():
            for i in range(0, len(items), self.batch_size):
                chunk = items[i : i + self.batch_size]
                frames = to_device(torch.stack([sc.frames for _, _, sc in chunk]), self.device)
                positions = to_device(torch.stack([sc.positions for _, _, sc in chunk]), self.device)
                t0 = time.perf_counter()
                out = self.backbone.encode(frames, positions)
                if out.device.type == "cuda":
                    torch.cuda.synchronize(out.device)
                seconds = time.perf_counter() - t0
                self.stats.encode_s += seconds
                self._add_cost(positions, seconds)
                self.stats.views += len(chunk)
                self.stats.tokens += out.shape[0] * out.shape[1]
                token_positions = self.backbone.token_positions(positions).cpu().numpy().astype(np.int32)
                expected = (len(chunk), token_positions.shape[1], self.backbone.embed_dim)
                if tuple(out.shape) != expected:
                    raise RuntimeError(
                        f"{self.backbone.name}.encode returned {tuple(out.shape)}, expected {expected}"
                    )
                tokens = self.codec.encode(out.detach().cpu())
                self._check_finite(chunk, out, tokens)
                for (slot, v, _), tok, pos in zip(chunk, tokens, token_positions, strict=True):
                    self.tokens[slot][v] = tok
                    self.positions[slot][v] = pos

    def _add_cost(self, positions: torch.Tensor, seconds: float) -> None:
        for view_positions in positions.cpu():
            cost = self.backbone.encode_cost(view_positions)
            for field in ("frames", "tokens", "kept", "flops"):
                value, total = getattr(cost, field), self.cost[field]
                self.cost[field] = None if value is None or total is None else total + value
        self.cost["views"] += len(positions)
        self.cost["encode_s"] += seconds

    def _check_finite(self, chunk: list[tuple[int, int, SampledClip]], out: torch.Tensor,
                      stored: np.ndarray) -> None:
        """Tokens must be finite as computed and as stored: inf/NaN would poison every probe trained on
        the store (float16 overflows above 65,504, e.g. a residual stream of a large ViT)."""
        finite = torch.isfinite(self.codec.decode(stored)).flatten(1).all(1)
        if bool(finite.all()):
            return
        _, v, sc = chunk[int((~finite).nonzero()[0, 0])]
        computed = torch.isfinite(out).flatten(1).all(1).cpu()
        if bool(computed.all()):
            store_dtype = next(name for name, codec in CODECS.items() if codec is self.codec)
            cause = (f"finite as computed (largest |token| {out.abs().max().item():.4g}) but not in the "
                     f"store's {store_dtype}; set extract.dtype=bfloat16 (float16 stops at 65,504)")
        else:
            dtype = next(self.backbone.parameters(), torch.empty(0)).dtype
            cause = (f"inf/NaN as computed by the backbone in {str(dtype).removeprefix('torch.')}; set "
                     "backbone.args.dtype=bfloat16 or float32 (and extract.dtype=bfloat16)")
        raise NonFiniteTokensError(
            f"{self.backbone.name}: clip {sc.clip_id!r} view {v} has inf/NaN tokens, {cause}. Shards "
            f"written so far in {self.path} are kept."
        )

    def write(self) -> None:
        """Write the arrays, then the sidecar (with their sha256) that commits the shard."""
        self._encode_pending()
        t0 = time.perf_counter()
        n = max((t.shape[0] for row in self.tokens for t in row if t is not None), default=0)
        s, v, d = len(self.clips), len(self.tokens[0]), self.backbone.embed_dim
        tokens = np.zeros((s, v, n, d + self.codec.extra), dtype=self.codec.disk_dtype)
        positions = np.zeros((s, v, n, 3), dtype=np.int32)
        lengths = np.zeros((s, v), dtype=np.int32)
        for c in range(s):
            for j in range(v):
                if self.tokens[c][j] is None:  # a skipped clip: no tokens
                    continue
                k = lengths[c, j] = self.tokens[c][j].shape[0]
                tokens[c, j, :k] = self.tokens[c][j]
                positions[c, j, :k] = self.positions[c][j]
        arrays = {"tokens": tokens, "positions": positions, "lengths": lengths}
        files = {
            a: _atomic_save_npy(self.path / _shard_name(self.index, f"{a}.npy"), arr)
            for a, arr in arrays.items()
        }
        real = np.arange(n)[None, None, :] < lengths[..., None]
        sidecar = {
            "index": self.index,
            "clips": [c.clip_id for c in self.clips],
            "labels": [int(c.label) for c in self.clips],
            "num_tokens": n,
            "temporal_extent": int(positions[..., 0][real].max(initial=-1)) + 1,
            "skipped": self.skipped,
            "residual_only": self.residual_only,
            "retry": self.retry,
            "cost": {**self.cost, "clips": len(self.clips) - len(self.skipped)},
            "files": files,
        }
        atomic_write_text(self.path / _shard_name(self.index, "json"), json.dumps(sidecar), _kept(self.path))
        self.stats.bytes_written += sum(f["bytes"] for f in files.values())
        self.stats.write_s += time.perf_counter() - t0


def _extract_shards(
    backbone: Backbone,
    clips: Sequence[ClipLike],
    sample_views: Callable,
    path: Path,
    key: StoreKey,
    shard_size: int,
    todo: list[int],
    batch_size: int,
    num_workers: int,
    progress: Progress,
    stats: ExtractStats,
) -> None:
    started = time.perf_counter()
    order = [i for k in todo for i in range(k * shard_size, min((k + 1) * shard_size, len(clips)))]
    loader = DataLoader(
        _ClipViews(clips, sample_views, key.views),
        batch_size=None,
        sampler=order,
        collate_fn=_as_is,
        num_workers=num_workers,
    )
    codec = _codec(key.dtype)
    backbone.eval()
    writer: _ShardWriter | None = None
    world = distributed.world_size()  # with several processes, process 0 shows its own share
    desc = f"features {key.backbone} {key.task}/{key.split}"
    bar = progress_bar(
        progress if distributed.is_main() else "off",
        total=len(clips) if world == 1 else len(order),
        initial=len(clips) - len(order) if world == 1 else 0,
        desc=desc if world == 1 else f"{desc} (process 0 of {world})",
        unit="clip",
    )
    with bar:
        waited = time.perf_counter()
        for index, views in loader:
            stats.wait_s += time.perf_counter() - waited
            if isinstance(views, VideoDecodeError):
                raise views
            k = index // shard_size
            if writer is None:
                members = clips[k * shard_size : (k + 1) * shard_size]
                writer = _ShardWriter(backbone, path, k, members, key.views, codec, batch_size, stats)
            writer.add(index - k * shard_size, views)
            if writer.complete:
                writer.write()
                writer = None
            bar.update(1)
            waited = time.perf_counter()
    stats.total_s += time.perf_counter() - started


# A shard's cost sums (sidecar key -> the manifest's per-clip name).
COST_SUMS = {"views": "views", "frames": "frames_encoded", "tokens": "tokens_encoded", "kept": "tokens_kept",
             "flops": "flops", "encode_s": "encode_s"}


def store_cost(shards: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Per usable clip (all its views): frames and tokens encoded, tokens kept, analytic FLOPs and the
    encode seconds measured when the shards were written; None for shards written without costs."""
    costs = [s.get("cost") for s in shards]
    if not costs or None in costs:
        return None
    clips = sum(c["clips"] for c in costs)
    out: dict[str, Any] = {"clips": clips}
    for key, name in COST_SUMS.items():
        values = [c[key] for c in costs]
        out[f"{name}_per_clip"] = None if None in values or not clips else sum(values) / clips
    return out


def _manifest(
    path: Path, key: StoreKey, shard_size: int, num_clips: int, num_shards: int, embed_dim: int
) -> dict[str, Any]:
    """The manifest the store's sidecars give (`created`: now)."""
    shards = [_valid_sidecar(path, k, verify=False) for k in range(num_shards)]
    missing = [k for k, sidecar in enumerate(shards) if sidecar is None]
    if missing:
        raise RuntimeError(
            f"feature store {path}: shards {missing} are missing after extraction; with several "
            "processes every one must write to the same cache_dir (a folder all nodes share)"
        )
    return {
        "fingerprint": key.fingerprint(),
        **asdict(key),
        "complete": True,
        "num_clips": num_clips,
        "shard_size": shard_size,
        "num_tokens": max(s["num_tokens"] for s in shards),
        "embed_dim": embed_dim,
        "temporal_extent": max(s["temporal_extent"] for s in shards),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cost": store_cost(shards),
        # the sidecars, less their measured costs (kept in the sidecars; summed above)
        "shards": [{k: v for k, v in s.items() if k != "cost"} for s in shards],
    }


def _commit_manifest(
    path: Path, key: StoreKey, shard_size: int, num_clips: int, num_shards: int, embed_dim: int
) -> None:
    manifest = _manifest(path, key, shard_size, num_clips, num_shards, embed_dim)
    atomic_write_text(path / MANIFEST, json.dumps(manifest, indent=1, default=str), _kept(path))
