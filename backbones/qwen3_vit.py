"""The vision tower of Qwen3-VL through transformers' `Qwen3VLVisionModel`, frame by frame.

The tower takes `hidden_states` of flattened `temporal_patch_size x patch x patch` groups, ordered by
2x2 spatial-merge blocks, with each image's `grid_thw`. A frame is fed as Qwen3-VL feeds an image: repeated
over the temporal patch. `tokens="pre_merge"` probes the last block's patch tokens; `tokens="merged"`
probes the merger's output, each patch position carrying the token of its merge block.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import Qwen3VLVisionConfig, Qwen3VLVisionModel
from transformers.vision_utils import get_vision_interpolation_indices_and_weights, get_vision_position_ids

from backbones.base import ViTShape
from backbones.frames import Entry, FrameBackbone

TOKENS = ("pre_merge", "merged")


class Qwen3VitBackbone(FrameBackbone):
    """Frozen Qwen3-VL vision tower. Sparse patch sets: natively by default (each frame's kept patch
    groups packed with their positions; `tokens="pre_merge"` only), or
    `sparse_mode="full_frames_then_gather"`."""

    sparse_modes = ("native", "full_frames_then_gather")

    model_class = Qwen3VLVisionModel
    config_class = Qwen3VLVisionConfig
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
    weight_prefixes = ("model.visual.", "visual.", "")  # a whole Qwen3-VL, or the tower saved alone
    sizes = {
        "tiny": dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=96,
                     num_position_embeddings=64, deepstack_visual_indexes=[1]),
        "2b": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                   deepstack_visual_indexes=[5, 11, 17]),
        "4b": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2560,
                   deepstack_visual_indexes=[5, 11, 17]),
        "8b": dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                   deepstack_visual_indexes=[8, 16, 24]),
    }
    # Input sizes are multiples of patch x spatial merge (32) and give OneVision's 16 x 16 patch grid
    # (8 x 8 for the tiny entry): see backbones/frames.py.
    entries = {
        "qwen3vit_tiny": Entry("tiny", None, 128),
        "qwen3vit_2b": Entry("2b", "Qwen/Qwen3-VL-2B-Instruct", 256),
        "qwen3vit_4b": Entry("4b", "Qwen/Qwen3-VL-4B-Instruct", 256),
        "qwen3vit_8b": Entry("8b", "Qwen/Qwen3-VL-8B-Instruct", 256),
    }

    tokens: str = "pre_merge"

    @classmethod
    def build(cls, name: str, tokens: str = "pre_merge", sparse_mode: str | None = None,
              **kwargs: Any) -> Qwen3VitBackbone:
        if tokens not in TOKENS:
            raise ValueError(f"{name}: tokens={tokens!r} is not one of {', '.join(TOKENS)}")
        if tokens == "merged":  # the merger takes whole 2 x 2 blocks
            if sparse_mode == "native":
                raise ValueError(f"{name}: tokens=merged needs whole 2x2 merge blocks; use "
                                 "sparse_mode=full_frames_then_gather")
            sparse_mode = "full_frames_then_gather"
        backbone = super().build(name, sparse_mode=sparse_mode, **kwargs)
        merge = backbone.model.config.spatial_merge_size
        if backbone.preprocess.size % (backbone.patch_size * merge):
            raise ValueError(
                f"{name}: input_size {backbone.preprocess.size} is not a multiple of patch x spatial merge "
                f"({backbone.patch_size * merge})"
            )
        backbone.tokens = tokens
        if tokens == "merged":
            backbone.embed_dim = backbone.model.config.out_hidden_size
        return backbone

    def vit_shape(self) -> ViTShape:
        """Patches of `temporal_patch_size` frames; with whole frames the merger and each deepstack merger
        (run whatever `tokens` is) map every 2 x 2 block through two linear layers of 4 x width (the
        native path runs the blocks only)."""
        c = self.model.config
        merged = c.spatial_merge_size**2 * c.hidden_size
        mergers = 0 if self.sparse_mode == "native" else 1 + len(c.deepstack_visual_indexes)
        per_patch = mergers * 2 * (merged * merged + merged * c.out_hidden_size) / c.spatial_merge_size**2
        patch_dim = 3 * c.temporal_patch_size * self.patch_size**2
        return ViTShape(c.depth, c.hidden_size, c.intermediate_size, patch_dim, per_patch=per_patch)

    def _groups(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The tower's input for whole frames: `temporal_patch_size x patch x patch` groups `[F * L, .]` in
        2 x 2 merge-block order, and each frame's grid_thw."""
        f, c, h, w = pixels.shape
        config = self.model.config
        p, m, tp = self.patch_size, config.spatial_merge_size, config.temporal_patch_size
        gh, gw = h // p, w // p
        groups = (
            pixels[:, :, None]
            .expand(f, c, tp, h, w)
            .reshape(f, c, tp, gh // m, m, p, gw // m, m, p)
            .permute(0, 3, 6, 4, 7, 1, 2, 5, 8)  # frame, merge block (row, col), patch in block, C, T, y, x
            .reshape(f * gh * gw, c * tp * p * p)
        )
        return groups, torch.tensor([[1, gh, gw]], device=pixels.device).expand(f, 3)

    def native_flops(self, counts: list[int]) -> float:
        """One attention segment per frame (`cu_seqlens`), padding dropped: each frame its kept patches."""
        return sum(self.vit_shape().flops(k) for k in counts)

    def packed_tokens(self, pixels: torch.Tensor, frame: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """The packed sequences' patch groups (padding dropped) with their learned-grid position embeddings
        and (h, w) rotary positions, through the blocks, one attention segment per frame (`cu_seqlens`)."""
        if self.tokens == "merged":
            raise ValueError(f"{self.name}: tokens=merged needs whole 2x2 merge blocks; use "
                             "sparse_mode=full_frames_then_gather")
        model, m = self.model, self.model.config.spatial_merge_size
        groups, grid_thw = self._groups(pixels)
        gh, gw = int(grid_thw[0, 1]), int(grid_thw[0, 2])
        taps, weights = get_vision_interpolation_indices_and_weights(
            grid_thw[:1], model.num_grid_per_side, model.interpolation_mode,
            model.interpolation_align_corners, m,
        )
        hw = get_vision_position_ids(grid_thw[:1], m)  # per row of the block order, one frame
        block_row = torch.empty(gh * gw, dtype=torch.long, device=pixels.device)
        block_row[hw[:, 0] * gw + hw[:, 1]] = torch.arange(gh * gw, device=pixels.device)  # raster -> row
        real = frame >= 0
        rows = block_row[slot[real]]  # the kept patches, sequence by sequence, frame by frame
        hidden = model.patch_embed(groups[frame[real] * gh * gw + rows])
        hidden = hidden + (model.pos_embed(taps[rows]) * weights[rows, :, None]).sum(1).to(hidden.dtype)
        rotary = model.rotary_pos_emb(hidden, hw[rows])
        owner = (torch.arange(len(frame), device=frame.device)[:, None] * len(pixels) + frame)[real]
        lengths = torch.unique_consecutive(owner, return_counts=True)[1]  # one segment per frame
        cu_seqlens = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        for block in model.blocks:
            hidden = block(hidden, cu_seqlens=cu_seqlens, max_seqlen=int(lengths.max()),
                           position_embeddings=rotary)
        out = hidden.new_zeros(*slot.shape, hidden.shape[-1])
        out[real] = hidden
        return out

    def frame_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        f, _, h, w = pixels.shape
        m = self.model.config.spatial_merge_size
        gh, gw = h // self.patch_size, w // self.patch_size
        groups, grid_thw = self._groups(pixels)
        out = self.model(hidden_states=groups, grid_thw=grid_thw)
        if self.tokens == "merged":
            merged = out.pooler_output.reshape(f, gh // m, 1, gw // m, 1, -1)
            return merged.expand(f, gh // m, m, gw // m, m, merged.shape[-1]).reshape(f, gh * gw, -1)
        blocks = out.last_hidden_state.reshape(f, gh // m, gw // m, m, m, -1)
        return blocks.permute(0, 1, 3, 2, 4, 5).reshape(f, gh * gw, -1)


Qwen3VitBackbone.register_all()
