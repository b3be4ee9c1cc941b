"""SigLIP2, frame by frame, through transformers: the NaFlex models with `Siglip2VisionModel` (flattened
patches, a patch mask and each image's patch grid), the fixed-resolution ones (released as SigLIP
checkpoints) with `SiglipVisionModel`, as is SigLIP v1. Its tokens are the patch tokens (SigLIP has no
class token), all of them, as the original suite's `model_factory/vit_siglip.py` probes."""

from __future__ import annotations

import torch
from transformers import Siglip2VisionConfig, Siglip2VisionModel, SiglipVisionConfig, SiglipVisionModel

from backbones.frames import Entry, FrameBackbone

WIDTHS = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
    "base": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    "large": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
    "so400m": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16),
}


class Siglip2Backbone(FrameBackbone):
    """Frozen SigLIP2 vision tower. Sparse patch sets: whole frames encoded, selected tokens kept."""

    model_class = Siglip2VisionModel
    config_class = Siglip2VisionConfig
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
    weight_prefixes = ("vision_model.", "")  # a whole Siglip2Model, or the tower saved alone
    sizes = {
        "tiny": dict(**WIDTHS["tiny"], patch_size=14, num_patches=64),
        "base": dict(**WIDTHS["base"], patch_size=16, num_patches=256),
        "so400m": dict(**WIDTHS["so400m"], patch_size=16, num_patches=256),
    }
    # Input sizes give OneVision's 16 x 16 patch grid at 224/14 (8 x 8 for the tiny entries), so a patch
    # budget selects the same frame regions for every backbone.
    entries = {
        "siglip2_tiny": Entry("tiny", None, 112),
        "siglip2_base16_naflex": Entry("base", "google/siglip2-base-patch16-naflex", 256),
        "siglip2_so400m16_naflex": Entry("so400m", "google/siglip2-so400m-patch16-naflex", 256),
    }

    def patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        f, c, h, w = pixels.shape
        p = self.patch_size
        gh, gw = h // p, w // p
        # NaFlex patch vectors are (row in patch, column in patch, channel), patches in raster order.
        patches = pixels.reshape(f, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(f, gh * gw, p * p * c)
        mask = torch.ones(f, gh * gw, dtype=torch.long, device=pixels.device)
        shapes = torch.tensor([[gh, gw]], device=pixels.device).expand(f, 2)
        out = self.model(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes)
        return out.last_hidden_state


class Siglip2FixedBackbone(Siglip2Backbone):
    """Frozen fixed-resolution SigLIP2 vision tower (learned position grid of `image_size`; other input
    sizes interpolate it). Sparse patch sets: whole frames encoded, selected tokens kept."""

    model_class = SiglipVisionModel
    config_class = SiglipVisionConfig
    sizes = {
        "tiny": dict(**WIDTHS["tiny"], patch_size=14, image_size=112),
        "base16_224": dict(**WIDTHS["base"], patch_size=16, image_size=224),
        "base16_256": dict(**WIDTHS["base"], patch_size=16, image_size=256),
        "large16_256": dict(**WIDTHS["large"], patch_size=16, image_size=256),
        "so400m14_384": dict(**WIDTHS["so400m"], patch_size=14, image_size=384),
    }
    # Native grids: the same budget is the same number of patches, on each model's own grid. Inputs are
    # whole patches, so so400m/14 at 384 sees 378 px (the 27 x 27 patches its convolution keeps of 384).
    entries = {
        "siglip2_fixed_tiny": Entry("tiny", None, 112),
        "siglip2_base16_224": Entry("base16_224", "google/siglip2-base-patch16-224", 224),
        "siglip2_base16_256": Entry("base16_256", "google/siglip2-base-patch16-256", 256),
        "siglip2_large16_256": Entry("large16_256", "google/siglip2-large-patch16-256", 256),
        "siglip2_so400m14_384": Entry("so400m14_384", "google/siglip2-so400m-patch14-384", 378),
    }

    def patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        resized = self.off_native_grid(pixels)
        return self.model(pixel_values=pixels, interpolate_pos_encoding=resized).last_hidden_state


class SiglipBackbone(Siglip2FixedBackbone):
    """Frozen SigLIP (v1) vision tower: the same library class and tokens as the fixed-resolution SigLIP2
    (whose tiny entry, `siglip2_fixed_tiny`, is this architecture), with SigLIP's own releases."""

    entries = {
        "siglip_base16_224": Entry("base16_224", "google/siglip-base-patch16-224", 224),
        "siglip_large16_256": Entry("large16_256", "google/siglip-large-patch16-256", 256),
        "siglip_so400m14_384": Entry("so400m14_384", "google/siglip-so400m-patch14-384", 378),
    }


Siglip2Backbone.register_all()
Siglip2FixedBackbone.register_all()
SiglipBackbone.register_all()
