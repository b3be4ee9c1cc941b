"""CLIP-architecture vision towers through transformers, frame by frame: OpenAI CLIP and MetaCLIP (both
released as `CLIPModel`, loaded with `CLIPVisionModel`) and MetaCLIP 2 (`MetaClip2VisionModel`, its own
release ids). A checkpoint folder may hold the tower alone or the whole released CLIP model (the tower's
weights sit under `vision_model.` in both; the text tower and projections are not loaded).

Which tokens: the original OneVision-Encoder suite (`model_factory/vit_clip.py`, `vit_metaclip.py`) probes
the tower's `last_hidden_state`, the output of the last encoder layer *before* `post_layernorm` (which CLIP
applies to the pooled class token only), class token included. We probe the same hidden states, before
`post_layernorm`, and drop the class token so that each token is the patch at its position (the samplers'
budgets count patches, and a sparse patch set has no class token to keep). This is the one declared
departure: the original's probe also attends to the class token (197 tokens for B/16 at 224, we give 196);
`reference=true` (or `keep_prefix=true`) keeps it, for whole frames.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, MetaClip2VisionConfig, MetaClip2VisionModel

from backbones.base import ViTShape
from backbones.frames import Entry, FrameBackbone

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, patch_size=14,
            image_size=112)
BASE16 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              patch_size=16, image_size=224)
LARGE14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
               patch_size=14, image_size=224)
HUGE14 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
              patch_size=14, image_size=224)


class ClipBackbone(FrameBackbone):
    """Frozen CLIP / MetaCLIP vision tower: pre-`post_layernorm` patch tokens, class token dropped (see the
    module docstring). Sparse patch sets: whole frames encoded, selected tokens kept."""

    model_class = CLIPVisionModel
    blocks_path = "encoder.layers"  # no final norm: `last_hidden_state` precedes `post_layernorm`
    config_class = CLIPVisionConfig
    mean = OPENAI_CLIP_MEAN  # MetaCLIP and MetaCLIP 2 ship OpenAI's normalisation too
    std = OPENAI_CLIP_STD
    weight_prefixes = ("vision_model.", "")  # a whole CLIP model (text tower not loaded), or the tower alone
    reference_keeps_prefix = True  # `model_factory/vit_clip.py`, `vit_metaclip.py`: last_hidden_state whole
    sizes = {"tiny": TINY, "base16": BASE16, "large14": LARGE14}
    # Native grids (learned position embeddings of the release's image size): L/14 at 224 is OneVision's
    # 16 x 16; B/16 at 224 is 14 x 14 (`input_size=256` gives 16 x 16 by interpolating its positions).
    entries = {
        "clip_tiny": Entry("tiny", None, 112),
        "clip_base16": Entry("base16", "openai/clip-vit-base-patch16", 224),
        "clip_large14": Entry("large14", "openai/clip-vit-large-patch14", 224),
        # MetaCLIP's Hugging Face releases hold pytorch_model.bin only: convert them to safetensors first.
        "metaclip_base16": Entry("base16", "facebook/metaclip-b16-fullcc2.5b", 224),
        "metaclip_large14": Entry("large14", "facebook/metaclip-l14-fullcc2.5b", 224),
    }

    def vit_shape(self) -> ViTShape:
        return replace(super().vit_shape(), prefix=1)  # the class token

    def frame_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixels, interpolate_pos_encoding=self.off_native_grid(pixels))
        return out.last_hidden_state


class MetaClip2Backbone(ClipBackbone):
    """Frozen MetaCLIP 2 (worldwide) vision tower; tokens as CLIP's. (The original suite's `metaclip2_large14`
    loads MetaCLIP 1's `facebook/metaclip-l14-fullcc2.5b`; here MetaCLIP 2 is MetaCLIP 2's release.)"""

    model_class = MetaClip2VisionModel
    config_class = MetaClip2VisionConfig
    sizes = {"tiny": TINY, "large14": LARGE14, "huge14": HUGE14}
    entries = {
        "metaclip2_tiny": Entry("tiny", None, 112),
        "metaclip2_large14": Entry("large14", "facebook/metaclip-2-worldwide-l14", 224),
        "metaclip2_huge14": Entry("huge14", "facebook/metaclip-2-worldwide-huge-quickgelu", 224),
    }


ClipBackbone.register_all()
MetaClip2Backbone.register_all()
