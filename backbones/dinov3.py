"""DINOv3 through transformers' `DINOv3ViTModel` (patch 16, RoPE), frame by frame; the class and
register tokens it puts before the patch tokens are dropped, the patch tokens kept."""

from __future__ import annotations

import torch
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from backbones.frames import Entry, FrameBackbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Dinov3Backbone(FrameBackbone):
    """Frozen DINOv3 ViT. Sparse patch sets: whole frames encoded, selected tokens kept."""

    model_class = DINOv3ViTModel
    config_class = DINOv3ViTConfig
    mean = IMAGENET_MEAN
    std = IMAGENET_STD
    sizes = {
        "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                     num_register_tokens=4),
        "small": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6,
                      num_register_tokens=4, layerscale_value=1e-5),
        "base": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     num_register_tokens=4, layerscale_value=1e-5),
        "large": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      num_register_tokens=4, layerscale_value=1e-5),
        "7b": dict(hidden_size=4096, intermediate_size=8192, num_hidden_layers=40, num_attention_heads=32,
                   num_register_tokens=4, layerscale_value=1e-5, use_gated_mlp=True, hidden_act="silu",
                   key_bias=False),
    }
    # Input sizes give OneVision's 16 x 16 patch grid (8 x 8 for the tiny entries): see backbones/frames.py.
    entries = {
        "dinov3_tiny": Entry("tiny", None, 128),
        "dinov3_small": Entry("small", "facebook/dinov3-vits16-pretrain-lvd1689m", 256),
        "dinov3_base": Entry("base", "facebook/dinov3-vitb16-pretrain-lvd1689m", 256),
        "dinov3_large": Entry("large", "facebook/dinov3-vitl16-pretrain-lvd1689m", 256),
        "dinov3_7b": Entry("7b", "facebook/dinov3-vit7b16-pretrain-lvd1689m", 256),
    }

    def patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.model(pixel_values=pixels).last_hidden_state
        return hidden[:, 1 + self.model.config.num_register_tokens :]


Dinov3Backbone.register_all()
