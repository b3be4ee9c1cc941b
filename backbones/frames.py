"""What the per-frame image encoders (SigLIP2, DINOv3, Qwen3-ViT) share: building the library's own model
(seeded random weights from its config class, or weights from a local folder / the Hugging Face cache,
offline) and `Backbone.encode` for the "dense" and "sparse" layouts.

A family subclasses `FrameBackbone`, declares its library classes, sizes, released checkpoints and
preprocessing as class data, and implements `patch_tokens` (normalised frames -> raster-order patch
tokens). Sparse patch sets are taken by encoding the whole frames they fall in and keeping the selected
tokens (`sparse_mode`), so the compute is that of the frames touched, not of the K patches.

Identical patch budgets: the samplers select on each backbone's own patch grid, so every entry's default
input size gives the same grid as OneVision's (16 x 16 patches, 8 x 8 for the tiny entries) whatever its
patch size. A budget of K patches is then the same K frame regions for every backbone (`input_size`
overrides it).
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

from backbones.base import Backbone, PreprocessSpec
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


class FrameBackbone(Backbone):
    """A frozen image encoder applied frame by frame; tokens are kept at the requested positions."""

    temporal_slots = None
    native_sparse = False
    sparse_mode: ClassVar[str] = "full_frames_then_gather"

    model_class: ClassVar[type]
    config_class: ClassVar[type]
    mean: ClassVar[tuple[float, float, float]]
    std: ClassVar[tuple[float, float, float]]
    sizes: ClassVar[dict[str, dict[str, Any]]]
    entries: ClassVar[dict[str, Entry]]
    # Where the tower's weights sit in a released checkpoint (a full vision-language model holds more).
    weight_prefixes: ClassVar[tuple[str, ...]] = ("",)

    def __init__(self, name: str, model: nn.Module, input_size: int, fingerprint: str,
                 frame_batch: int = 64) -> None:
        super().__init__()
        self.name = name
        self.model = model.eval().requires_grad_(False)
        self.patch_size = int(model.config.patch_size)
        self.embed_dim = int(model.config.hidden_size)
        if input_size % self.patch_size:
            raise ValueError(f"{name}: input_size {input_size} is not a multiple of patch {self.patch_size}")
        self.preprocess = PreprocessSpec(self.mean, self.std, input_size)
        self.frame_batch = frame_batch
        self._fingerprint = fingerprint

    def patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised frames `[F, 3, H, W]` -> patch tokens `[F, (H/p) * (W/p), D]` in raster order."""
        raise NotImplementedError

    def off_native_grid(self, pixels: torch.Tensor) -> bool:
        """Whether frames `[F, 3, H, W]` leave the learned position grid of the model's `image_size` (whole
        patches: 384 / 14 -> 27), so the model must interpolate its position embeddings."""
        grid = self.model.config.image_size // self.patch_size
        return pixels.shape[-2] // self.patch_size != grid or pixels.shape[-1] // self.patch_size != grid

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Encode each frame some position points to (once), then gather the tokens at `positions`."""
        b, t, h, w, _ = frames.shape
        grid_w = w // self.patch_size
        param = next(self.model.parameters())
        positions = positions.to(frames.device)
        frame_ids = torch.arange(b, device=frames.device)[:, None] * t + positions[..., 0]
        needed, which = torch.unique(frame_ids, return_inverse=True)
        pixels = frames.reshape(b * t, h, w, 3)[needed]
        tokens = torch.cat([
            self.patch_tokens(
                self.preprocess.normalize(pixels[i : i + self.frame_batch].to(param.device))
                .transpose(0, 1)
                .to(param.dtype)
            )
            for i in range(0, len(needed), self.frame_batch)
        ])
        patch = (positions[..., 1] * grid_w + positions[..., 2]).to(tokens.device)
        return tokens[which.to(tokens.device), patch]

    def fingerprint(self) -> str:
        return self._fingerprint

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
        **config_overrides: Any,
    ) -> FrameBackbone:
        """Weights from `checkpoint` (folder or repo id in the HF cache) or the entry's released repo;
        `random_init` (the default where there is nothing to load) builds the real architecture from its
        config class with weights seeded by `seed`."""
        entry = cls.entries[name]
        source = checkpoint or entry.repo_id
        if random_init is None:
            random_init = source is None
        size = input_size or entry.input_size
        if random_init:
            config = cls.config_class(**{**cls.sizes[entry.size], **config_overrides})
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = cls.model_class(config)
            spec = json.dumps({**config.to_dict(), "seed": seed, "class": cls.model_class.__name__},
                              sort_keys=True, default=str)
            fingerprint = "random-" + hashlib.sha256(spec.encode()).hexdigest()[:16]
            return cls(name, model.to(parse_dtype(dtype)), size, fingerprint, frame_batch)
        if source is None:
            raise ValueError(
                f"{name} has no released weights; pass checkpoint=<folder with config.json and "
                "model.safetensors> or random_init=true"
            )
        model, files = cls.load(source, parse_dtype(dtype), **config_overrides)
        return cls(name, model, size, files_fingerprint(files), frame_batch)

    @classmethod
    def load(cls, source: str, dtype: torch.dtype, **config_overrides: Any) -> tuple[nn.Module, list[Path]]:
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
