"""DINOv3 through transformers' `DINOv3ViTModel` (patch 16, RoPE), frame by frame; the class and
register tokens it puts before the patch tokens are dropped, the patch tokens kept, at 256 px (OneVision's
16 x 16 grid). The original suite (`model_factory/vit_dinov3.py`, `eval_dinov3_large.sh`) probes the whole
`last_hidden_state` at 224 px, class and 4 register tokens included (201 tokens a frame):
`reference=true` gives that."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from backbones.base import ViTShape
from backbones.frames import Entry, FrameBackbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Dinov3Backbone(FrameBackbone):
    """Frozen DINOv3 ViT. Sparse patch sets: natively by default (each frame's kept patches with their
    RoPE positions, plus its class and register tokens), or `sparse_mode="full_frames_then_gather"`."""

    sparse_modes = ("native", "full_frames_then_gather")

    model_class = DINOv3ViTModel
    blocks_path, final_norm_path = "model.layer", "norm"
    config_class = DINOv3ViTConfig
    mean = IMAGENET_MEAN
    std = IMAGENET_STD
    reference_keeps_prefix = True
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
        "dinov3_small": Entry("small", "facebook/dinov3-vits16-pretrain-lvd1689m", 256, 224),
        "dinov3_base": Entry("base", "facebook/dinov3-vitb16-pretrain-lvd1689m", 256, 224),
        "dinov3_large": Entry("large", "facebook/dinov3-vitl16-pretrain-lvd1689m", 256, 224),
        "dinov3_7b": Entry("7b", "facebook/dinov3-vit7b16-pretrain-lvd1689m", 256, 224),
    }

    def vit_shape(self) -> ViTShape:
        c = self.model.config
        return replace(super().vit_shape(), prefix=1 + c.num_register_tokens, gated_mlp=c.use_gated_mlp)

    def frame_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).last_hidden_state

    def packed_tokens(self, pixels: torch.Tensor, frame: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """Each frame's class and register tokens and kept patch tokens, the patches rotated by their own
        (h, w) RoPE positions (the class and register tokens by none: cos 1, sin 0), through the blocks,
        attention kept within each frame."""
        model, embeddings = self.model, self.model.embeddings
        conv = embeddings.patch_embeddings  # applied to the kept patches only, as a matrix product
        patches = F.unfold(pixels, kernel_size=self.patch_size, stride=self.patch_size).transpose(1, 2)
        real = frame >= 0
        is_patch, is_prefix = real & (slot >= 0), real & (slot < 0)
        hidden = patches.new_zeros(*slot.shape, conv.weight.shape[0])
        hidden[is_patch] = patches[frame[is_patch], slot[is_patch]] @ conv.weight.flatten(1).T + conv.bias
        prefix = torch.cat([embeddings.cls_token, embeddings.register_tokens], dim=1)[0]
        hidden[is_prefix] = prefix[-1 - slot[is_prefix]]
        cos, sin = model.rope_embeddings(pixels[:0])  # no pixels: their shape, dtype and device set the table
        keep = is_patch[..., None]
        cos = torch.where(keep, cos[slot.clamp(min=0)], 1.0)[:, None]  # [S, 1, L, head]
        sin = torch.where(keep, sin[slot.clamp(min=0)], 0.0)[:, None]
        mask = self.frame_mask(frame, hidden.dtype)
        for layer in model.model.layer:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=(cos, sin))
        return model.norm(hidden)


Dinov3Backbone.register_all()
