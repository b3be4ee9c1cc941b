"""The interface every backbone of the suite implements."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class PreprocessSpec:
    """How raw uint8 frames must be prepared for a backbone."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: int
    interpolation: str = "bicubic"

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 `[..., T, H, W, 3]` -> float `[..., 3, T, H, W]` scaled and normalised."""
        x = frames.float().div_(255.0)
        mean = x.new_tensor(self.mean)
        std = x.new_tensor(self.std)
        x = (x - mean) / std
        return x.movedim(-1, -4)


class Backbone(nn.Module):
    """A frozen encoder: uint8 frames plus token positions in, one token per position out.

    `temporal_slots` is the length of the backbone's temporal position grid (64 for
    OneVision); `None` for image encoders that see frames one at a time.
    `native_sparse` says whether the backbone accepts an arbitrary set of patches with their
    positions (OneVision) or must encode whole frames and keep the selected tokens.
    """

    name: str
    patch_size: int
    embed_dim: int
    preprocess: PreprocessSpec
    temporal_slots: int | None = None
    native_sparse: bool = False

    def encode(self, frames: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """frames uint8 `[B, T, H, W, 3]`, positions int64 `[B, N, 3]` -> tokens `[B, N, D]`."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identifies the weights, so stored features are reused only for the same model."""
        raise NotImplementedError
