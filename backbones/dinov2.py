"""DINOv2 through transformers, frame by frame: with registers (`Dinov2WithRegistersModel`) and, as the
original OneVision-Encoder suite evaluates it (`model_factory/vit_dinov2.py`: `Dinov2Model`, class token
dropped), without. Tokens are the patch tokens of `last_hidden_state` (after the final layer norm); the
class and register tokens before them are dropped, as the original does (`reference=true` changes nothing;
`keep_prefix=true` keeps them, for whole frames)."""

from __future__ import annotations

from dataclasses import replace

import torch
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from backbones.base import ViTShape
from backbones.dinov3 import IMAGENET_MEAN, IMAGENET_STD
from backbones.frames import Entry, FrameBackbone

# DINOv2 is trained at 518 px (37 x 37 patches of 14); its position embeddings are always interpolated to
# the input, so 224 px gives OneVision's 16 x 16 grid (112 px the tiny entries' 8 x 8).
RELEASED = dict(patch_size=14, image_size=518)
WIDTHS = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=112),
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, **RELEASED),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, **RELEASED),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, **RELEASED),
    "giant": dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, use_swiglu_ffn=True,
                  **RELEASED),
}


class Dinov2RegBackbone(FrameBackbone):
    """Frozen DINOv2 with registers. Sparse patch sets: whole frames encoded, selected tokens kept."""

    model_class = Dinov2WithRegistersModel
    blocks_path, final_norm_path = "encoder.layer", "layernorm"
    config_class = Dinov2WithRegistersConfig
    mean = IMAGENET_MEAN
    std = IMAGENET_STD
    sizes = {name: {**w, "num_register_tokens": 4} for name, w in WIDTHS.items()}
    entries = {
        "dinov2reg_tiny": Entry("tiny", None, 112),
        "dinov2reg_small": Entry("small", "facebook/dinov2-with-registers-small", 224),
        "dinov2reg_base": Entry("base", "facebook/dinov2-with-registers-base", 224),
        "dinov2reg_large": Entry("large", "facebook/dinov2-with-registers-large", 224),
        "dinov2reg_giant": Entry("giant", "facebook/dinov2-with-registers-giant", 224),
    }

    def vit_shape(self) -> ViTShape:
        return replace(super().vit_shape(), prefix=1 + getattr(self.model.config, "num_register_tokens", 0))

    def frame_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).last_hidden_state


class Dinov2Backbone(Dinov2RegBackbone):
    """Frozen DINOv2 without registers (the original suite's `dinov2_base` / `dinov2_large`)."""

    model_class = Dinov2Model
    config_class = Dinov2Config
    sizes = WIDTHS
    entries = {
        "dinov2_tiny": Entry("tiny", None, 112),
        "dinov2_small": Entry("small", "facebook/dinov2-small", 224),
        "dinov2_base": Entry("base", "facebook/dinov2-base", 224),
        "dinov2_large": Entry("large", "facebook/dinov2-large", 224),
        "dinov2_giant": Entry("giant", "facebook/dinov2-giant", 224),
    }


Dinov2RegBackbone.register_all()
Dinov2Backbone.register_all()
