"""SigLIP2, frame by frame, through transformers: the NaFlex models with `Siglip2VisionModel` (flattened
patches, a patch mask and each image's patch grid), the fixed-resolution ones (released as SigLIP
checkpoints) with `SiglipVisionModel`, as is SigLIP v1. Its tokens are the patch tokens (SigLIP has no
class token), all of them, as the original suite's `model_factory/vit_siglip.py` probes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from transformers import Siglip2VisionConfig, Siglip2VisionModel, SiglipVisionConfig, SiglipVisionModel

from backbones.base import ViTShape
from backbones.frames import Entry, FrameBackbone

WIDTHS = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
    "base": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    "large": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
    "so400m": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16),
}


class Siglip2Backbone(FrameBackbone):
    """Frozen SigLIP2 NaFlex vision tower. Sparse patch sets: natively by default (each frame's kept
    patches with their position embeddings), or `sparse_mode="full_frames_then_gather"`."""

    sparse_modes = ("native", "full_frames_then_gather")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tables: dict[tuple, torch.Tensor] = {}

    model_class = Siglip2VisionModel
    blocks_path, final_norm_path = "encoder.layers", "post_layernorm"
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

    def vit_shape(self) -> ViTShape:
        c = self.model.config
        # The pooling head's key/value projections, run by the whole model (not by the native path).
        head = 4 * c.hidden_size**2 if c.vision_use_head and self.sparse_mode != "native" else 0
        return replace(super().vit_shape(), per_patch=head)

    def _patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """NaFlex patch vectors `[F, L, p * p * C]`: (row, column in patch, channel), raster order."""
        f, c, h, w = pixels.shape
        p = self.patch_size
        return pixels.reshape(f, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(f, -1, p * p * c)

    def frame_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        f, _, h, w = pixels.shape
        gh, gw = h // self.patch_size, w // self.patch_size
        mask = torch.ones(f, gh * gw, dtype=torch.long, device=pixels.device)
        shapes = torch.tensor([[gh, gw]], device=pixels.device).expand(f, 2)
        out = self.model(pixel_values=self._patches(pixels), pixel_attention_mask=mask, spatial_shapes=shapes)
        return out.last_hidden_state

    def _position_table(self, gh: int, gw: int) -> torch.Tensor:
        """The learned position grid resized to `gh` x `gw` as NaFlex resizes it, `[gh * gw, D]`, computed
        once per grid (it depends on the weights only)."""
        weight = self.model.embeddings.position_embedding.weight
        key = (gh, gw, weight.device, weight.dtype)
        if key not in self._tables:
            side = self.model.embeddings.position_embedding_size
            shape = torch.tensor([[gh, gw]], device=weight.device)
            self._tables[key] = self.model.embeddings.resize_positional_embeddings(
                weight.reshape(side, side, -1), shape, max_length=gh * gw)[0]
        return self._tables[key]

    def packed_tokens(self, pixels: torch.Tensor, frame: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """The kept patches, each with the position embedding of its place on the frame's grid (the
        learned grid resized as NaFlex resizes it), through the blocks, attention kept within each frame."""
        model, embeddings = self.model, self.model.embeddings
        patches = self._patches(pixels)
        table = self._position_table(pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
        real = frame >= 0
        hidden = table.new_zeros(*slot.shape, table.shape[-1])
        kept = patches[frame[real], slot[real]].to(table.dtype)
        hidden[real] = embeddings.patch_embedding(kept) + table[slot[real]]
        hidden = model.encoder(inputs_embeds=hidden, attention_mask=self.frame_mask(frame, hidden.dtype))
        return model.post_layernorm(hidden.last_hidden_state)


class Siglip2FixedBackbone(Siglip2Backbone):
    """Frozen fixed-resolution SigLIP2 vision tower (learned position grid of `image_size`; other input
    sizes interpolate it). Sparse patch sets: whole frames encoded, selected tokens kept."""

    sparse_modes = ("full_frames_then_gather",)

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

    def frame_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
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
