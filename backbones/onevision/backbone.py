"""OneVision-Encoder in the suite's registry: sizes and released checkpoints as data, one wrapper."""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path

import torch

from backbones.base import Backbone, PreprocessSpec, ViTShape, release_preprocess
from backbones.onevision.config import OneVisionConfig
from backbones.onevision.model import OneVisionEncoder
from backbones.registry import register_backbone
from backbones.weights import files_fingerprint, parse_dtype

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=2),
    "small": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6),
    "base": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    "large": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
    "huge": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20),
}

# name -> size, released Hugging Face repo (None: no released weights), video input size.
PRETRAINED: dict[str, dict] = {
    "onevision_tiny": {"size": "tiny", "repo_id": None, "input_size": 112},
    "onevision_small": {"size": "small", "repo_id": None, "input_size": 224},
    "onevision_base": {"size": "base", "repo_id": None, "input_size": 224},
    "onevision_large": {
        "size": "large",
        "repo_id": "lmms-lab-encoder/onevision-encoder-large",
        "input_size": 224,
    },
    "onevision_large_lang": {
        "size": "large",
        "repo_id": "lmms-lab-encoder/onevision-encoder-large-lang",
        "input_size": 224,
    },
    "onevision_large_si": {
        "size": "large",
        "repo_id": "lmms-lab-encoder/onevision-encoder-large-si",
        "input_size": 224,
    },
    "onevision_huge": {"size": "huge", "repo_id": None, "input_size": 224},
}


class OneVisionBackbone(Backbone):
    """Frozen OneVision-Encoder: takes any patch set with its (t, h, w) positions natively."""

    native_sparse = True

    def __init__(self, name: str, model: OneVisionEncoder, input_size: int, fingerprint: str) -> None:
        super().__init__()
        self.name = name
        self.model = model.eval().requires_grad_(False)
        config = model.config
        self.patch_size = config.patch_size
        self.embed_dim = config.hidden_size
        self.temporal_slots = config.rope_temporal_size or 64
        self.preprocess = PreprocessSpec(CLIP_MEAN, CLIP_STD, input_size)
        self._fingerprint = fingerprint
        self.blocks_path = "encoder.layers"
        self.final_norm_path = "layernorm_post" if config.use_head else None  # as `last_hidden_state`

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        dtype = self.model.embeddings.patch_embedding.weight.dtype
        device = self.model.embeddings.patch_embedding.weight.device
        pixels = self.preprocess.normalize(frames.to(device)).to(dtype)
        positions = positions.to(device)
        tokens = self.layer_outputs(lambda: self.model(pixels, patch_positions=positions).last_hidden_state)
        return self.layer_after_layer(tokens)

    def fingerprint(self) -> str:
        return self._fingerprint

    def vit_shape(self) -> ViTShape:
        c = self.model.config
        head = 4 * c.hidden_size**2 if c.use_head else 0  # the pooling head's key/value projections
        return ViTShape(c.num_hidden_layers, c.hidden_size, c.intermediate_size, 3 * c.patch_size**2,
                        per_patch=head)


def build_onevision(
    name: str,
    checkpoint: str | None = None,
    random_init: bool | None = None,
    dtype: str = "float32",
    seed: int = 0,
    input_size: int | None = None,
    layers: list[int] | None = None,
    **config_overrides,
) -> OneVisionBackbone:
    """Load a released/local checkpoint, or build the architecture with seeded random weights; `layers`:
    probe these blocks' outputs, concatenated as tokens (`Backbone.set_layers`)."""
    entry = PRETRAINED[name]
    source = checkpoint or entry["repo_id"]
    if random_init is None:
        random_init = source is None
    size = input_size or entry["input_size"]
    if random_init:
        config = OneVisionConfig(**{**SIZES[entry["size"]], **config_overrides})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = OneVisionEncoder(config)
        spec = json.dumps({**config.to_dict(), "seed": seed}, sort_keys=True)
        fingerprint = "random-" + hashlib.sha256(spec.encode()).hexdigest()[:16]
        model = model.to(parse_dtype(dtype))
    elif source is None:
        raise ValueError(
            f"{name} has no released weights; pass checkpoint=<folder with config.json and "
            "model.safetensors> or random_init=true"
        )
    else:
        model = OneVisionEncoder.from_pretrained(source, dtype=dtype, **config_overrides)
        fingerprint = files_fingerprint(
            [*model.checkpoint_files, Path(model.checkpoint_files[0]).parent / "config.json"]
        )
    backbone = OneVisionBackbone(name, model, size, fingerprint)
    backbone.config_overrides = dict(config_overrides)
    backbone.set_layers(layers)
    if not random_init:
        folder = Path(model.checkpoint_files[0]).parent
        backbone.preprocess = release_preprocess(folder, backbone.preprocess, name)
    return backbone


for _name in PRETRAINED:
    register_backbone(partial(build_onevision, _name), name=_name)
