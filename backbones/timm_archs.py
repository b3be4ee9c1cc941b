"""Architectures the suite registers with timm (its `register_model`), so that open_clip, which names its
timm towers (`timm_model_name`) and passes them no sizes, can build a tiny one: SigLIP so400m/14's
architecture at the tiny entries' sizes. No released weights exist for them."""

from __future__ import annotations

from typing import Any

from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer, vit_so400m_patch14_siglip_384

TINY = dict(depth=2, embed_dim=64, num_heads=2, img_size=112)


@register_model
def ovprobe_siglip_tiny_patch14_112(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """timm's `vit_so400m_patch14_siglip_384` (no class token, attention-pool head) with `TINY` sizes and
    that model's pretrained config (SigLIP's normalisation)."""
    if pretrained:
        raise ValueError("ovprobe_siglip_tiny_patch14_112 has no released weights")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's, for released weights
        kwargs.pop(key, None)
    return vit_so400m_patch14_siglip_384(pretrained=False, **{**TINY, **kwargs})
