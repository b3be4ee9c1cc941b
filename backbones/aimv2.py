"""AIMv2 vision towers through transformers' `Aimv2VisionModel`, frame by frame. AIMv2 has no class token:
the tokens are all of `last_hidden_state` (patch tokens after the final RMS norm; the attention-pooling
head is not used). The fixed-resolution releases learn one position embedding per patch of their image
size, so they take that size only; the native-resolution release (`is_native`, 2-D sin-cos positions)
takes any multiple of the patch. The original suite probes the native L/14 (`model_factory/vit_aim_v2.py`,
through remote code) at 224 px, `last_hidden_state` whole: so does `aimv2_large14_native`, from a release
folder in transformers' format (no remote code)."""

from __future__ import annotations

from dataclasses import replace

import torch
from transformers import Aimv2VisionConfig, Aimv2VisionModel

from backbones.base import ViTShape
from backbones.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from backbones.frames import Entry, FrameBackbone

LARGE = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=8,
             patch_size=14, use_head=False)


class Aimv2Backbone(FrameBackbone):
    """Frozen AIMv2 vision tower. Sparse patch sets: whole frames encoded, selected tokens kept."""

    model_class = Aimv2VisionModel
    blocks_path, final_norm_path = "encoder.layers", "rms_norm"
    config_class = Aimv2VisionConfig
    mean = OPENAI_CLIP_MEAN  # AIMv2's releases normalise as OpenAI CLIP
    std = OPENAI_CLIP_STD
    weight_prefixes = ("vision_model.", "")  # a whole (LiT) Aimv2Model, or the tower alone
    sizes = {
        "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                     patch_size=14, image_size=112, use_head=False, is_native=True),
        "large14_224": dict(**LARGE, image_size=224),
        "large14_native": dict(**LARGE, image_size=224, is_native=True),
    }
    entries = {
        "aimv2_tiny": Entry("tiny", None, 112),
        "aimv2_large14_224": Entry("large14_224", "apple/aimv2-large-patch14-224", 224),
        "aimv2_large14_native": Entry("large14_native", "apple/aimv2-large-patch14-native", 224),
    }

    def __init__(self, name: str, model: torch.nn.Module, input_size: int, fingerprint: str,
                 frame_batch: int = 64) -> None:
        super().__init__(name, model, input_size, fingerprint, frame_batch)
        config = model.config
        if not config.is_native and input_size != config.image_size:
            raise ValueError(
                f"{name}: input_size {input_size} differs from the {config.image_size} px its position "
                f"embeddings were learned at; use input_size={config.image_size} or a native AIMv2"
            )

    def vit_shape(self) -> ViTShape:
        return replace(super().vit_shape(), gated_mlp=True)  # SwiGLU: gate, up and down projections

    def frame_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).last_hidden_state


Aimv2Backbone.register_all()
