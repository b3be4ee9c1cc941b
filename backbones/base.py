"""The interface every backbone of the suite implements."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

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
    # How a sparse patch set is encoded ("native": only the kept patches; other values name the way
    # whole frames are encoded and the kept tokens gathered): the compute differs.
    sparse_mode: str = "native"
    # Which tokens the backbone returns (layer and kind); a family offering a choice overrides it.
    tokens: str = "last_hidden_state"
    # Architecture settings given at build time on top of the registered ones (set by the factory).
    config_overrides: Mapping[str, Any] = MappingProxyType({})

    def encode(self, frames: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """frames uint8 `[B, T, H, W, 3]`, positions int64 `[B, N, 3]` -> tokens `[B, N, D]`."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identifies the weights, so stored features are reused only for the same model."""
        raise NotImplementedError

    def feature_identity(self) -> dict[str, Any]:
        """Everything that changes this backbone's tokens: the feature store keys on it, so two
        backbones with equal identities give equal tokens and anything else gets a store of its own.

        Weights, input size and preprocessing (mean, std, interpolation), patch size, compute dtype,
        which tokens are returned, how sparse patch sets are encoded, and architecture overrides. A
        family with further token-changing arguments adds them (`super().feature_identity() | {...}`);
        arguments that only change speed (batch sizes) stay out.
        """
        param = next((p for p in self.parameters() if p.is_floating_point()), None)
        return {
            "name": self.name,
            "weights": self.fingerprint(),
            "preprocess": asdict(self.preprocess),
            "patch_size": self.patch_size,
            "dtype": None if param is None else str(param.dtype).removeprefix("torch."),
            "tokens": self.tokens,
            "sparse_mode": self.sparse_mode,
            "config_overrides": dict(self.config_overrides),
        }
