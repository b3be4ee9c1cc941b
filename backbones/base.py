"""The interface every backbone of the suite implements."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

PROCESSOR_CONFIG = "preprocessor_config.json"
# PIL's resampling codes in Hugging Face processor configs -> torch interpolation modes.
PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


@dataclass(frozen=True)
class PreprocessSpec:
    """How raw uint8 frames must be prepared for a backbone."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: int
    interpolation: str = "bicubic"  # how the samplers resize frames to `size` (shorter side)

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 `[..., T, H, W, 3]` -> float `[..., 3, T, H, W]` scaled and normalised."""
        x = frames.float().div_(255.0)
        mean = x.new_tensor(self.mean)
        std = x.new_tensor(self.std)
        x = (x - mean) / std
        return x.movedim(-1, -4)


def release_preprocess(folder: Path, registered: PreprocessSpec, name: str) -> PreprocessSpec:
    """`registered` with the mean, std and interpolation of the release's `preprocessor_config.json` in
    `folder` (unchanged without one), warning where the release contradicts the registered entry.

    The release's rescale factor and `do_normalize` are folded into mean and std. The input size stays
    the registered one (each entry's size gives the suite's common patch grid; `input_size` changes it):
    a release that declares another fixed size is warned about, not followed.
    """
    path = Path(folder) / PROCESSOR_CONFIG
    if not path.is_file():
        return registered
    try:
        config = json.loads(path.read_text())
        scale = 255 * float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0
        if config.get("do_normalize", True):
            mean = tuple(float(m) / scale for m in config.get("image_mean", registered.mean))
            std = tuple(float(s) / scale for s in config.get("image_std", registered.std))
        else:
            mean, std = (0.0, 0.0, 0.0), (1 / scale,) * 3
        resample = config.get("resample")
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{path} is not a processor config (image_mean, image_std, ...): {err}") from err
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"{path}: image_mean and image_std must hold 3 values (RGB), got {mean}, {std}")
    interpolation = PIL_RESAMPLE.get(resample, registered.interpolation)
    if resample is not None and resample not in PIL_RESAMPLE:
        log.warning("%s: resample=%s has no torch equivalent; resizing %s", path, resample, interpolation)
    spec = replace(registered, mean=mean, std=std, interpolation=interpolation)
    for what in ("mean", "std"):
        ours, theirs = getattr(registered, what), getattr(spec, what)
        if any(abs(a - b) > 1e-6 for a, b in zip(ours, theirs, strict=True)):
            log.warning("%s: the release's %s %s replaces the registered %s (from %s)", name, what, theirs,
                        ours, path)
    size = _processor_size(config)
    if size is not None and size != registered.size:
        log.warning("%s: %s declares input size %d; the suite uses %d (the common patch grid); set "
                    "backbone.args.input_size=%d for the release's", name, path, size, registered.size, size)
    return spec


def _processor_size(config: dict[str, Any]) -> int | None:
    """The fixed square input size a processor config declares, or None (a patch or pixel budget)."""
    size = config.get("crop_size") if config.get("do_center_crop") else config.get("size")
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        if "height" in size and size.get("height") == size.get("width"):
            return int(size["height"])
        if "shortest_edge" in size and "longest_edge" not in size:
            return int(size["shortest_edge"])
    return None


@dataclass(frozen=True)
class ViTShape:
    """The sizes that set a ViT's forward FLOPs, declared by each family from its config."""

    layers: int
    dim: int
    mlp_dim: int
    patch_dim: int  # values per patch vector: channels x patch area (x temporal patch)
    prefix: int = 0  # class and register tokens added to every sequence
    gated_mlp: bool = False
    per_patch: float = 0.0  # FLOPs per patch outside the blocks (e.g. a patch merger)

    def flops(self, patches: int, sequence: int | None = None) -> float:
        """Forward FLOPs (2 per multiply-add) of one sequence of `patches` patches (plus the prefix), or
        of `sequence` tokens holding them (packed frames, their prefixes and padding): patch embedding,
        then per block the q/k/v/out projections, attention scores and weighted sum, and the MLP. Norms,
        softmax and activations are left out (not matrix products; torch's FLOP counter, which
        tests/test_cost.py checks these numbers against, leaves them out too)."""
        n = patches + self.prefix if sequence is None else sequence
        blocks = 8 * n * self.dim**2 + 4 * n * n * self.dim + 2 * n * self.dim * self.mlp_dim * (
            3 if self.gated_mlp else 2)
        return 2 * patches * self.patch_dim * self.dim + self.layers * blocks + self.per_patch * patches


@dataclass(frozen=True)
class EncodeCost:
    """What encoding one view took: frames (or pseudo-frames) through the encoder, tokens through its
    blocks (class/register tokens included), tokens kept, and analytic FLOPs (None: not declared)."""

    frames: int
    tokens: int
    kept: int
    flops: float | None


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
    # Class/register tokens returned per encoded frame ahead of the patch tokens (0: one token per patch
    # position, the suite's equal-patch setting); see `token_positions`.
    prefix_kept: int = 0
    # Whether the original OneVision-Encoder suite's settings (input size, tokens) were asked for.
    reference: bool = False
    # Blocks whose outputs are probed (`set_layers`; empty: the model's output only), where the blocks sit
    # in `self.model`, and the norm the model applies to its last block's output (None: none).
    layers: tuple[int, ...] = ()
    blocks_path: str | None = None
    final_norm_path: str | None = None
    # Architecture settings given at build time on top of the registered ones (set by the factory).
    config_overrides: Mapping[str, Any] = MappingProxyType({})

    def encode(self, frames: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """frames uint8 `[B, T, H, W, 3]`, positions int64 `[B, N, 3]` -> tokens `[B, N, D]`."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identifies the weights, so stored features are reused only for the same model."""
        raise NotImplementedError

    def set_layers(self, layers: Sequence[int] | None) -> None:
        """Probe the outputs of these blocks (0-based, any order, negative from the end) instead of the
        model's output: each through the model's final norm, as its output is, and the layers' tokens
        concatenated along the sequence, layer after layer (V-JEPA 2's multi-layer probe: blocks 17, 19,
        21 and 23 of ViT-L). The same positions repeat for every layer."""
        if not layers:
            return
        if self.blocks_path is None:
            raise ValueError(f"{self.name}: layers is not offered (its tokens are not the output of one "
                             "block per token); leave layers unset")
        count = len(self.model.get_submodule(self.blocks_path))
        if any(not -count <= i < count for i in layers):
            raise ValueError(f"{self.name}: layers {list(layers)} out of range: it has {count} blocks "
                             f"(0..{count - 1}, or -{count}..-1 from the end)")
        chosen = sorted({i % count for i in layers})
        if len(chosen) != len(layers):
            raise ValueError(f"{self.name}: layers {list(layers)} names a block twice")
        self.layers = tuple(chosen)
        norm = f"through {self.final_norm_path}" if self.final_norm_path else "no final norm"
        self.tokens = f"blocks {', '.join(map(str, chosen))} of {count} ({norm}), concatenated as tokens"

    @property
    def layer_count(self) -> int:
        """How many times each position's token is returned: once per probed block, or once."""
        return max(len(self.layers), 1)

    @staticmethod
    def layer_after_layer(tokens: torch.Tensor) -> torch.Tensor:
        """`layer_outputs`' layers gathered to `[L, B, N, D]` -> `[B, L * N, D]`: each view's tokens of
        the first layer, then the next layer's (the model's output alone: `[1, B, N, D]` -> `[B, N, D]`)."""
        return tokens.transpose(0, 1).flatten(1, 2)

    def layer_outputs(self, forward: Callable[[], torch.Tensor]) -> torch.Tensor:
        """`forward()`'s output `[..., S, D]` as `[1, ..., S, D]`, or with `layers` the chosen blocks'
        outputs `[L, ..., S, D]` captured during that forward, normed as the output is and cut to its
        last S tokens (a path that drops leading class/register tokens drops them from every layer)."""
        if not self.layers:
            return forward()[None]
        blocks = self.model.get_submodule(self.blocks_path)
        captured: list[torch.Tensor] = []

        def keep(_module: nn.Module, _args: Any, out: Any) -> None:
            captured.append(out[0] if isinstance(out, tuple) else out)

        hooks = [blocks[i].register_forward_hook(keep) for i in self.layers]
        try:
            out = forward()
        finally:
            for hook in hooks:
                hook.remove()
        norm = self.model.get_submodule(self.final_norm_path) if self.final_norm_path else nn.Identity()
        return torch.stack([norm(h)[..., -out.shape[-2]:, :] for h in captured])

    def token_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """The positions `[B, M, 3]` of the tokens `encode` returns for patch positions `[B, N, 3]`: the
        same, unless the backbone keeps its class/register tokens (`prefix_kept`): those of each encoded
        frame come first, frame by frame in time order, the j-th of frame t at (t, -1, j). With `layers`
        the whole sequence repeats once per layer."""
        if not self.prefix_kept:
            return positions.repeat(1, self.layer_count, 1)
        rows = []
        for view in positions:
            t = torch.unique(view[:, 0])
            prefix = torch.stack(torch.broadcast_tensors(
                t[:, None], torch.full_like(t[:, None], -1), torch.arange(self.prefix_kept, device=t.device)
            ), dim=-1)
            rows.append(torch.cat([prefix.reshape(-1, 3).to(view.dtype), view]))
        return torch.stack(rows).repeat(1, self.layer_count, 1)

    def vit_shape(self) -> ViTShape | None:
        """The architecture's FLOP-relevant sizes; None where not declared (FLOPs then unknown)."""
        return None

    def encode_cost(self, positions: torch.Tensor) -> EncodeCost:
        """The cost of `encode` for one view with token positions `[N, 3]`. This default is a natively
        sparse encoder: the N tokens form one sequence (K / patches-per-frame pseudo-frames)."""
        n = len(positions)
        per_frame = (self.preprocess.size // self.patch_size) ** 2
        shape = self.vit_shape()
        return EncodeCost(frames=-(-n // per_frame), tokens=n + (shape.prefix if shape else 0),
                          kept=n * self.layer_count, flops=shape.flops(n) if shape else None)

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
