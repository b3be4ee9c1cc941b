"""What the per-frame image encoders (SigLIP2, DINOv3, Qwen3-ViT) share: building the library's own model
(seeded random weights from its config class, or weights from a local folder / the Hugging Face cache,
offline) and `Backbone.encode` for the "dense" and "sparse" layouts.

A family subclasses `FrameBackbone`, declares its library classes, sizes, released checkpoints and
preprocessing as class data, and implements `patch_tokens` (normalised frames -> raster-order patch
tokens). Sparse patch sets (`sparse_mode`) are encoded natively where the family implements
`packed_tokens` (each frame's kept patches alone, frames packed into sequences of a whole frame's length:
compute of about the K patches), else by encoding the whole frames they fall in and keeping the selected
tokens (compute of the frames touched).

Identical patch budgets: the samplers select on each backbone's own patch grid, and nearly every entry's
default input size gives the same grid as OneVision's (16 x 16 patches, 8 x 8 for the tiny entries)
whatever its patch size; a budget of K patches is then the same K frame regions (the codec sampler scores
one canonical crop, so equal grids get identical patches). `siglip2_base16_224` (14 x 14) and
`siglip2_so400m14_384` (27 x 27) keep their native grids: their records state the grid and the frame
area a budget covers, and the report keeps them apart (`input_size` changes any entry's grid).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from backbones.base import Backbone, EncodeCost, PreprocessSpec, ViTShape, release_preprocess
from backbones.registry import register_backbone
from backbones.weights import (
    CheckpointError,
    check_dtypes,
    files_fingerprint,
    load_state_dict,
    parse_dtype,
    resolve_checkpoint_dir,
    safetensors_files,
)


@dataclass(frozen=True)
class Entry:
    """A registered model: its architecture size, released weights (None: none) and input size."""

    size: str
    repo_id: str | None
    input_size: int
    # The input size of the original OneVision-Encoder suite's evaluation where it differs (`reference`).
    reference_size: int | None = None


class FrameBackbone(Backbone):
    """A frozen image encoder applied frame by frame; tokens are kept at the requested positions."""

    temporal_slots = None
    native_sparse = False  # positions are per frame (the samplers' "sparse" layout), not packed
    # How a sparse patch set is encoded, the first being the default: "native" feeds each frame's kept
    # patches alone (with their own positions) through the model, "full_frames_then_gather" encodes
    # the whole frames they fall in and keeps the selected tokens (compute of the frames touched).
    sparse_modes: ClassVar[tuple[str, ...]] = ("full_frames_then_gather",)

    model_class: ClassVar[type]
    config_class: ClassVar[type]
    mean: ClassVar[tuple[float, float, float]]
    std: ClassVar[tuple[float, float, float]]
    sizes: ClassVar[dict[str, dict[str, Any]]]
    entries: ClassVar[dict[str, Entry]]
    # Where the tower's weights sit in a released checkpoint (a full vision-language model holds more).
    weight_prefixes: ClassVar[tuple[str, ...]] = ("",)
    # Whether the original suite's wrapper probes the class/register tokens with the patch tokens.
    reference_keeps_prefix: ClassVar[bool] = False

    def __init__(self, name: str, model: nn.Module, input_size: int, fingerprint: str,
                 frame_batch: int = 64) -> None:
        super().__init__()
        self.name = name
        self.model = model.eval().requires_grad_(False)
        self.patch_size, self.embed_dim = self.model_dims(model)
        if input_size % self.patch_size:
            raise ValueError(f"{name}: input_size {input_size} is not a multiple of patch {self.patch_size}")
        self.preprocess = self.model_preprocess(model, input_size)
        self.frame_batch = frame_batch
        self._fingerprint = fingerprint
        self.sparse_mode = self.sparse_modes[0]  # `build` sets the requested one

    # What the base class reads from the library's model; a family whose model is not a transformers
    # model (timm, open_clip) overrides these four and `load`.
    @staticmethod
    def model_dims(model: nn.Module) -> tuple[int, int]:
        """The patch size and token width of a built model (transformers: from its config)."""
        return int(model.config.patch_size), int(model.config.hidden_size)

    def model_preprocess(self, model: nn.Module, input_size: int) -> PreprocessSpec:
        """How frames are prepared for `model` at `input_size` (transformers: the registered mean and std;
        a release folder's processor config replaces them, `folder_preprocess`)."""
        return PreprocessSpec(self.mean, self.std, input_size)

    def folder_preprocess(self, folder: Path) -> PreprocessSpec:
        """The preprocessing once weights came from `folder`: its release's where it declares one."""
        return release_preprocess(folder, self.preprocess, self.name)

    @classmethod
    def random_model(cls, size: str, seed: int, **config_overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
        """The registered architecture `size` with weights seeded by `seed`, and the settings that made it
        (its fingerprint is their hash)."""
        config = cls.config_class(**{**cls.sizes[size], **config_overrides})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls.model_class(config)
        return model, {**config.to_dict(), "class": cls.model_class.__name__}

    def frame_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised frames `[F, 3, H, W]` -> the model's output sequence `[F, prefix + (H/p) * (W/p), D]`:
        its `vit_shape().prefix` class/register tokens, then the patch tokens in raster order."""
        raise NotImplementedError

    def packed_tokens(self, pixels: torch.Tensor, frame: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """Native sparse input (families listing "native" in `sparse_modes`): normalised frames
        `[F, 3, H, W]` and packed sequences (`sequences`): each slot's frame `[S, L]` (-1: padding) and
        patch (raster index, or -1 - j for class/register token j) -> `[S, L, D]` tokens, each frame's
        computed from its own tokens alone."""
        raise NotImplementedError

    def off_native_grid(self, pixels: torch.Tensor) -> bool:
        """Whether frames `[F, 3, H, W]` leave the learned position grid of the model's `image_size` (whole
        patches: 384 / 14 -> 27), so the model must interpolate its position embeddings."""
        grid = self.model.config.image_size // self.patch_size
        return pixels.shape[-2] // self.patch_size != grid or pixels.shape[-1] // self.patch_size != grid

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Encode each frame some position points to (once: whole, or its kept patches in "native" mode)
        and return the tokens at `positions`, after each view's kept class/register tokens if any."""
        b, t, h, w, _ = frames.shape
        param = next(self.model.parameters())
        positions = positions.to(param.device)
        frame_ids = torch.arange(b, device=param.device)[:, None] * t + positions[..., 0]
        needed, which = torch.unique(frame_ids, return_inverse=True)
        pixels = frames.reshape(b * t, h, w, 3)[needed.to(frames.device)]
        patch = positions[..., 1] * (w // self.patch_size) + positions[..., 2]

        def normalised(rows: torch.Tensor) -> torch.Tensor:
            chunk = pixels[rows.to(pixels.device)].to(param.device)
            return self.preprocess.normalize(chunk).transpose(0, 1).to(param.dtype)

        if self.prefix_kept:
            self._check_whole_frames(which, len(needed), (h // self.patch_size) * (w // self.patch_size))
        # Every output below is [L, ...]: one per probed block (`layers`), or the model's output alone.
        if self.prefix_kept or self.sparse_mode == "full_frames_then_gather":
            rows = torch.arange(len(needed), device=param.device).split(self.frame_batch)
            hidden = torch.cat([self.layer_outputs(partial(self.frame_tokens, normalised(r))) for r in rows],
                               dim=1)
            tokens = hidden[:, which, self.vit_shape().prefix + patch]
            if self.prefix_kept:
                # `needed` is sorted by (view, frame) and every view has the same number of whole frames.
                prefix = hidden[:, :, : self.prefix_kept].reshape(len(hidden), b, -1, hidden.shape[-1])
                tokens = torch.cat([prefix, tokens], dim=2)
            return self.layer_after_layer(tokens)
        # Each frame's kept patches in a row of `index`, in the order of `positions`.
        which, patch = which.flatten(), patch.flatten()
        order = torch.argsort(which, stable=True)
        counts = torch.bincount(which, minlength=len(needed))
        rank = torch.empty_like(which)
        starts = counts.cumsum(0) - counts
        rank[order] = torch.arange(len(which), device=which.device) - starts[which[order]]
        index = torch.zeros(len(needed), int(counts.max()), dtype=torch.long, device=which.device)
        index[which, rank] = patch
        frame, slot, sequence, start = self.sequences(counts, index, needed // t)
        outputs = []
        for rows in torch.arange(len(frame), device=frame.device).split(self.frame_batch):
            used, local = torch.unique(frame[rows], return_inverse=True)
            pad = int(used[0] < 0)  # padding (-1) stays -1
            outputs.append(self.layer_outputs(partial(self.packed_tokens, normalised(used[pad:]), local - pad,
                                                      slot[rows])))
        tokens = torch.cat(outputs, dim=1)[:, sequence[which], start[which] + rank]
        return self.layer_after_layer(tokens.reshape(len(tokens), b, -1, tokens.shape[-1]))

    def sequences(self, counts: torch.Tensor, index: torch.Tensor, views: torch.Tensor
                  ) -> tuple[torch.Tensor, ...]:
        """Native sparse input laid out as attention sequences of a whole frame's length: each view's
        frames (their kept-patch `counts`, raster indices `index`) packed by `pack`, each frame's class and
        register tokens then its kept patches. Returns, per sequence slot `[S, L]`, the frame it belongs
        to (-1: padding) and its patch (raster index, or -1 - j for the j-th class/register token), and
        per frame its sequence and the slot of its first patch."""
        prefix, length = self.vit_shape().prefix, self.sequence_length()
        members = [[int(f) for f in torch.nonzero(views == v).flatten()[group]]
                   for v in torch.unique(views) for group in self.pack(counts[views == v].tolist())]
        frame = torch.full((len(members), length), -1, dtype=torch.long)
        slot = torch.zeros((len(members), length), dtype=torch.long)
        sequence, start = (torch.empty(len(counts), dtype=torch.long) for _ in range(2))
        tokens, index = -1 - torch.arange(prefix), index.cpu()
        for s, group in enumerate(members):
            at = 0
            for f in group:
                k = int(counts[f])
                frame[s, at : at + prefix + k] = f
                slot[s, at : at + prefix + k] = torch.cat([tokens, index[f, :k]])
                sequence[f], start[f] = s, at + prefix
                at += prefix + k
        return tuple(x.to(counts.device) for x in (frame, slot, sequence, start))

    def sequence_length(self) -> int:
        """Tokens in one attention sequence of native input: a whole frame's (patches and prefix)."""
        return (self.preprocess.size // self.patch_size) ** 2 + self.vit_shape().prefix

    def pack(self, counts: list[int]) -> list[list[int]]:
        """One view's frames (by kept-patch `counts`) in sequences of `sequence_length` tokens, their class
        and register tokens included: first-fit decreasing, so the codec's whole first frame fills a
        sequence of its own and the sparse frames share the rest. Per view, so a view's cost does not
        depend on the views batched with it (`encode_cost` packs the same way)."""
        prefix, length = self.vit_shape().prefix, self.sequence_length()
        groups: list[list[int]] = []
        room: list[int] = []
        for f in sorted(range(len(counts)), key=lambda f: -counts[f]):
            need = counts[f] + prefix
            fits = next((i for i, r in enumerate(room) if need <= r), None)
            if fits is None:
                groups.append([f])
                room.append(length - need)
            else:
                groups[fits].append(f)
                room[fits] -= need
        return groups

    def native_flops(self, counts: list[int]) -> float:
        """FLOPs of native input for one view's frames with these kept-patch counts: every packed sequence
        at its whole length (padding included), the patch embedding on the kept patches."""
        shape, length = self.vit_shape(), self.sequence_length()
        return sum(shape.flops(sum(counts[f] for f in group), sequence=length) for group in self.pack(counts))

    @staticmethod
    def frame_mask(frame: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive attention mask `[S, 1, L, L]` for packed sequences `frame` `[S, L]`: each token attends
        to its own frame's tokens only (padding to padding), so a frame's tokens are those it gets alone."""
        apart = frame[:, :, None] != frame[:, None, :]
        return torch.zeros(apart.shape, dtype=dtype, device=frame.device).masked_fill(
            apart, torch.finfo(dtype).min)[:, None]

    def _check_whole_frames(self, which: torch.Tensor, frames: int, per_frame: int) -> None:
        """The class/register tokens are kept for whole frames only: under a patch budget, a frame's class
        token would carry what the frame's other patches hold (or, encoded natively, depend on the set)."""
        counts = torch.bincount(which.flatten(), minlength=frames)
        short = counts[counts != per_frame]
        if len(short):
            raise ValueError(
                f"{self.name}: keep_prefix (the original suite's class/register tokens, also set by "
                f"reference=true) needs whole frames, but a view holds {int(short[0])} of a frame's "
                f"{per_frame} patches; use sampling=uniform, or keep_prefix=false for patch budgets"
            )

    def fingerprint(self) -> str:
        return self._fingerprint

    def vit_shape(self) -> ViTShape:
        c = self.model.config
        mlp = getattr(c, "intermediate_size", None) or int(c.hidden_size * c.mlp_ratio)  # DINOv2: a ratio
        return ViTShape(c.num_hidden_layers, c.hidden_size, mlp, 3 * self.patch_size**2)

    def encode_cost(self, positions: torch.Tensor) -> EncodeCost:
        """Every frame a position points to is encoded once: all its patches, or in "native" mode the
        kept ones, packed (`native_flops`: what runs, padding included)."""
        _, kept = torch.unique(positions[:, 0], return_counts=True)
        shape = self.vit_shape()
        if self.sparse_mode == "full_frames_then_gather" or self.prefix_kept:
            kept = torch.full_like(kept, (self.preprocess.size // self.patch_size) ** 2)
            flops = len(kept) * shape.flops(int(kept[0])) if len(kept) else 0.0
        else:
            flops = self.native_flops(kept.tolist())
        return EncodeCost(frames=len(kept), tokens=int(kept.sum()) + len(kept) * shape.prefix,
                          kept=(len(positions) + len(kept) * self.prefix_kept) * self.layer_count,
                          flops=flops)

    @classmethod
    def build(
        cls,
        name: str,
        checkpoint: str | None = None,
        random_init: bool | None = None,
        dtype: str = "float32",
        seed: int = 0,
        input_size: int | None = None,
        frame_batch: int = 64,
        sparse_mode: str | None = None,
        keep_prefix: bool | None = None,
        reference: bool = False,
        layers: list[int] | None = None,
        **config_overrides: Any,
    ) -> FrameBackbone:
        """Weights from `checkpoint` (folder or repo id in the HF cache) or the entry's released repo;
        `random_init` (the default where there is nothing to load) builds the real architecture from its
        config class with weights seeded by `seed`. `sparse_mode`: one of the family's `sparse_modes`.

        `keep_prefix`: return each frame's class/register tokens ahead of its patch tokens (whole frames
        only). `reference`: the original suite's settings instead of the equal-patch ones, its input size
        and its token set (`reference_size`, `reference_keeps_prefix`); conflicting arguments are errors.
        `layers`: probe these blocks' outputs, concatenated as tokens (`Backbone.set_layers`).
        """
        sparse_mode = sparse_mode or cls.sparse_modes[0]
        if sparse_mode not in cls.sparse_modes:
            raise ValueError(
                f"{name}: sparse_mode={sparse_mode!r} is not one of {', '.join(cls.sparse_modes)}"
            )
        entry = cls.entries[name]
        source = checkpoint or entry.repo_id
        if random_init is None:
            random_init = source is None
        size = input_size or entry.input_size
        if reference:
            size = entry.reference_size or entry.input_size
            for arg, given, theirs in (("input_size", input_size, size),
                                       ("keep_prefix", keep_prefix, cls.reference_keeps_prefix)):
                if given is not None and given != theirs:
                    raise ValueError(f"{name}: reference=true is the original suite's {arg}={theirs}; "
                                     f"drop {arg}={given} or set reference=false")
            keep_prefix = cls.reference_keeps_prefix
        if random_init:
            model, settings = cls.random_model(entry.size, seed, **config_overrides)
            spec = json.dumps({**settings, "seed": seed}, sort_keys=True, default=str)
            fingerprint = "random-" + hashlib.sha256(spec.encode()).hexdigest()[:16]
            model = model.to(parse_dtype(dtype))
        elif source is None:
            raise ValueError(
                f"{name} has no released weights; pass checkpoint=<folder with config.json and "
                "model.safetensors> or random_init=true"
            )
        else:
            folder = resolve_checkpoint_dir(source)
            model, files = cls.load(folder, parse_dtype(dtype), **config_overrides)
            fingerprint = files_fingerprint(files)
        backbone = cls(name, model, size, fingerprint, frame_batch)
        backbone.config_overrides = dict(config_overrides)
        backbone.sparse_mode = sparse_mode
        backbone.reference = reference
        backbone.prefix_kept = backbone.vit_shape().prefix if keep_prefix else 0
        backbone.set_layers(layers)
        if backbone.prefix_kept:
            backbone.tokens += f"; {backbone.prefix_kept} class/register tokens a frame kept"
        if not random_init:
            backbone.preprocess = backbone.folder_preprocess(folder)
        return backbone

    @classmethod
    def load(cls, source: str | Path, dtype: torch.dtype, **config_overrides: Any
             ) -> tuple[nn.Module, list[Path]]:
        """The tower from a folder holding it alone (`save_pretrained`) or a whole released model."""
        folder = resolve_checkpoint_dir(source)
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"no config.json in {folder}; point the checkpoint at a model folder")
        config = cls.config_class.from_pretrained(str(folder), **config_overrides)
        files = safetensors_files(folder)
        state = load_state_dict(files)
        prefix = next((p for p in cls.weight_prefixes if any(k.startswith(p) for k in state)), None)
        if prefix is None:
            raise CheckpointError(
                f"{folder} holds no {cls.model_class.__name__} weights (looked for keys under "
                f"{', '.join(repr(p) for p in cls.weight_prefixes)})"
            )
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        # transformers checks keys and shapes below, but would cast an integer tensor into a float weight.
        # It renames keys on load (DINOv3), so parameters are told by name: weights and biases are floats.
        floats = {k: torch.empty(0) for k in state if k.rsplit(".", 1)[-1] in ("weight", "bias")}
        check_dtypes(floats, state, str(folder))
        model, info = cls.model_class.from_pretrained(
            None, config=config, state_dict=state, dtype=dtype, output_loading_info=True
        )
        problems = {k: sorted(info[k]) for k in ("missing_keys", "mismatched_keys") if info.get(k)}
        if problems:
            raise CheckpointError(
                f"{folder} does not match {cls.model_class.__name__} built from its config.json: {problems}. "
                "Check that config.json belongs to these weights."
            )
        return model, [*files, folder / "config.json"]

    @classmethod
    def register_all(cls) -> None:
        for name in cls.entries:
            register_backbone(partial(cls.build, name), name=name)
