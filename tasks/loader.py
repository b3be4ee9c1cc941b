"""A torch `Dataset` over a task split: decode and sample each clip in DataLoader workers.

A clip whose video cannot be opened or decoded (`VideoDecodeError`, naming the file and what is wrong)
either stops the run (`on_bad_clip="error"`) or is skipped (`"skip"`): the item is then a
`SkippedClip`, and the collate function moves it to `Batch.skipped`, so the main process counts skips
even when workers decode. A video shorter than the frames asked for is not bad: samplers repeat its
frames (uniform) or spread them over the temporal grid (codec).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tasks.clip import Clip, SampledClip
from tasks.datasets.registry import Task, check_policy
from tasks.decode.video import VideoDecodeError, open_video
from tasks.sampling.samplers import Sampler


@dataclass(frozen=True)
class SkippedClip:
    clip_id: str
    reason: str
    transient: bool = False  # the file was missing or unreadable, not damaged: retried by later runs


def sample_or_skip(
    clip: Clip, on_bad_clip: str, sample: Callable[[], list[SampledClip]]
) -> list[SampledClip] | SkippedClip:
    """Apply the bad-clip policy around `sample()`: re-raise naming the clip ("error"), or skip ("skip")."""
    try:
        return sample()
    except VideoDecodeError as e:
        if on_bad_clip == "error":
            raise VideoDecodeError(e.path, f"{e.reason} (clip {clip.clip_id}; set on_bad_clip='skip' "
                                   "to skip and count such clips)") from e
        return SkippedClip(clip.clip_id, str(e), e.transient)


class ClipDataset(Dataset):
    """Item i: all views of clip i of `task.clips(split)` (one view in training), or a `SkippedClip`.

    Item i's randomness comes from `np.random.default_rng([seed, epoch, i])`, so it does not depend
    on which worker decodes it; set `epoch` before each training epoch (with non-persistent workers).
    """

    def __init__(self, task: Task, split: str, sampler: Sampler, *, train: bool = False, seed: int = 0,
                 on_bad_clip: str = "error", backend: str = "auto"):
        self.clips: list[Clip] = task.clips(split)
        self.sampler = sampler
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.on_bad_clip = check_policy(on_bad_clip, "on_bad_clip")
        self.backend = backend

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> list[SampledClip] | SkippedClip:
        clip = self.clips[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])

        def sample() -> list[SampledClip]:
            return self.sampler(clip, open_video(clip.path, self.backend), rng, self.train)

        return sample_or_skip(clip, self.on_bad_clip, sample)


@dataclass
class Batch:
    """Views of a batch of clips, one row per view: frames `[B, T, H, W, 3]` uint8, positions `[B, N, 3]`."""

    frames: torch.Tensor
    positions: torch.Tensor
    labels: torch.Tensor
    clip_ids: list[str]
    views: list[int]
    skipped: list[SkippedClip] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.clip_ids)


def collate_views(items: Sequence[list[SampledClip] | SkippedClip]) -> Batch:
    """Flatten the views of the clips into one `Batch`; skipped clips go to `Batch.skipped`."""
    views = [v for item in items if not isinstance(item, SkippedClip) for v in item]
    skipped = [item for item in items if isinstance(item, SkippedClip)]
    if not views:
        empty = torch.empty(0, dtype=torch.uint8)
        return Batch(empty, empty.long(), empty.long(), [], [], skipped)
    shapes = {(tuple(v.frames.shape), tuple(v.positions.shape)) for v in views}
    if len(shapes) > 1:
        raise ValueError(f"views of one batch differ in shape (frames, positions): {sorted(shapes)}")
    return Batch(frames=torch.stack([v.frames for v in views]),
                 positions=torch.stack([v.positions for v in views]),
                 labels=torch.tensor([v.label for v in views]),
                 clip_ids=[v.clip_id for v in views], views=[v.view for v in views], skipped=skipped)


def make_loader(dataset: ClipDataset, batch_size: int, num_workers: int = 0, shuffle: bool = False,
                seed: int = 0) -> DataLoader:
    """A DataLoader that decodes in `num_workers` processes and collates with `collate_views`."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=collate_views, generator=generator)
