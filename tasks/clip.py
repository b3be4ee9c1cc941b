"""The two records that flow from a task to a backbone: a `Clip` to decode and a `SampledClip` to encode."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass(frozen=True)
class Clip:
    """One annotated video (or span of a video) of a task.

    `start_frame`/`end_frame` bound the span in decoded frame indices (end exclusive);
    `None` means the whole decoded stream. Annotations that give seconds only set `start_time`/`end_time`
    instead (end exclusive; `end_time=None`: to the end); samplers turn them into frames by the video's
    own frame timestamps (`tasks.sampling.samplers.frame_span`), so a variable frame rate is placed correctly.
    """

    clip_id: str
    path: Path
    label: int
    start_frame: int | None = None
    end_frame: int | None = None
    start_time: float | None = None
    end_time: float | None = None


@dataclass
class SampledClip:
    """What a sampler hands to a backbone.

    `frames` holds uint8 pixels `[T, H, W, 3]`, already resized and centre-cropped to the
    backbone's size. In `dense` layout every patch of every frame is a token; in `packed`
    layout the frames are pseudo-frames holding selected patches in raster order (OneVision);
    in `sparse` layout the frames are the sampled frames and only the patches at `positions`
    are tokens (image backbones encode the frames and keep those tokens).
    `positions` is `[N, 3]` int64 `(t, h, w)` for the N tokens, in frame-major raster order,
    with t on the backbone's temporal grid and (h, w) in patch units.
    `signals` says what scored the patches (codec sampling: "motion+residual", or "residual" for codecs
    that export no motion vectors); it travels back from loader workers so a run can count them.
    """

    clip_id: str
    label: int
    frames: torch.Tensor
    positions: torch.Tensor
    layout: str = "dense"  # dense | packed | sparse
    source_frames: list[int] = field(default_factory=list)
    view: int = 0
    signals: str | None = None

    @property
    def n_tokens(self) -> int:
        return int(self.positions.shape[0])
