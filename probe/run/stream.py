"""Streaming mode (`extract.mode=stream`): training features encoded on demand, never stored.

Every epoch draws each training clip's view afresh (view number = epoch, so its own frames and colour
jitter, seeded by (seed, epoch, clip)), the backbone encodes the batch, and every probe of the grid
trains on it: the original protocol's augmentation, at the cost of one backbone pass per clip and
epoch. To the trainer it is one more `Features` (`probe.training.train`), with `fresh_views` set.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from backbones import Backbone
from probe.store.features import CODECS, ExtractStats, FeatureBatch, _make_batch, clips_digest, to_device
from tasks import Clip, SampledClip, SkippedClip


class StreamingFeatures:
    """Training clips whose `batch(clips, views)` decodes, samples and encodes view `views[i]` of each.

    A clip that cannot be decoded (under `on_bad_clip=skip`) is dropped from its batch and listed in
    `skipped`, as a store lists it.
    """

    fresh_views = True
    path = None  # nothing on disk

    def __init__(
        self,
        backbone: Backbone,
        clips: Sequence[Clip],
        draw: Callable[[Clip, int], SampledClip | SkippedClip],
        key: dict,
        num_frames: int,
        num_workers: int = 0,
        batch_size: int = 8,
        dtype: str = "float16",
    ) -> None:
        self.backbone, self.clips, self.draw = backbone, list(clips), draw
        self.labels = np.asarray([c.label for c in self.clips], dtype=np.int64)
        self.num_clips, self.num_views = len(self.clips), 1
        self.embed_dim = backbone.embed_dim
        self.temporal_extent = num_frames  # image backbones: t indexes the sampled frames
        self.num_tokens = 0  # known once a batch is encoded
        self.batch_size = batch_size
        self.codec = CODECS[dtype]
        self.skipped: dict[str, str] = {}
        # What a store also records (codec clips scored without vectors, clips to retry); a stream keeps
        # no store, so each epoch tries every clip afresh.
        self.residual_only: list[str] = []
        self.unreadable: list[str] = []
        self.retried: list[str] = []
        self.cost: dict[str, Any] | None = None  # a store keeps what making it cost; a stream keeps nothing
        self.extraction = ExtractStats()
        self.device = next(backbone.parameters(), torch.empty(0)).device
        self.pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None
        blob = {**key, "backbone": backbone.fingerprint(), "clips": clips_digest(self.clips)}
        self.fingerprint = "stream-" + hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()
                                                       ).hexdigest()[:16]

    def _views(self, clips: np.ndarray, views: np.ndarray) -> list[SampledClip | SkippedClip]:
        jobs = [(self.clips[int(c)], int(v)) for c, v in zip(clips, views, strict=True)]
        if self.pool is None:
            return [self.draw(clip, view) for clip, view in jobs]
        return list(self.pool.map(lambda job: self.draw(*job), jobs))

    @torch.no_grad()  # not inference_mode: the probes train on these tensors
    def batch(self, clips: np.ndarray, views: np.ndarray) -> FeatureBatch:
        t0 = time.perf_counter()
        sampled = self._views(np.asarray(clips), np.asarray(views))
        self.extraction.wait_s += time.perf_counter() - t0
        kept: list[tuple[int, SampledClip]] = []
        for i, item in enumerate(sampled):
            if isinstance(item, SkippedClip):
                self.skipped[item.clip_id] = item.reason
            else:
                kept.append((i, item))
        encoded: list[tuple[torch.Tensor, torch.Tensor]] = []
        for start in range(0, len(kept), self.batch_size):
            chunk = [sc for _, sc in kept[start : start + self.batch_size]]
            encoded += self._encode(chunk)
        n = max((t.shape[0] for t, _ in encoded), default=0)
        self.num_tokens = max(self.num_tokens, n)
        labels = self.labels[np.asarray(clips)[[i for i, _ in kept]]]
        padded = torch.zeros(len(kept), n, self.embed_dim)
        positions = torch.zeros(len(kept), n, 3, dtype=torch.int64)
        for j, (t, p) in enumerate(encoded):
            padded[j, : t.shape[0]], positions[j, : t.shape[0]] = t, p
        lengths = torch.tensor([t.shape[0] for t, _ in encoded], dtype=torch.int64)
        return _make_batch(padded, positions, lengths, labels)

    def _encode(self, chunk: list[SampledClip]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(tokens, their positions) of each view; views of one shape are encoded together (codec views
        of a budget share theirs)."""
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(chunk)
        groups: dict[tuple, list[int]] = {}
        for i, sc in enumerate(chunk):
            groups.setdefault((tuple(sc.frames.shape), tuple(sc.positions.shape)), []).append(i)
        for members in groups.values():
            frames = to_device(torch.stack([chunk[i].frames for i in members]), self.device)
            positions = to_device(torch.stack([chunk[i].positions for i in members]), self.device)
            t0 = time.perf_counter()
            tokens = self.backbone.encode(frames, positions)
            self.extraction.encode_s += time.perf_counter() - t0
            self.extraction.views += len(members)
            self.extraction.tokens += tokens.shape[0] * tokens.shape[1]
            # Through the store's dtype, as the stored test tokens were: token channels of random-weight
            # encoders carry their signal in the last bits of a large mean, so a probe trained on full
            # precision and tested on float16 tokens sees two different distributions.
            stored = self.codec.decode(self.codec.encode(tokens.detach().cpu()))
            token_positions = self.backbone.token_positions(positions).cpu()
            for i, t, p in zip(members, stored, token_positions, strict=True):
                out[i] = (t, p)
        return out
