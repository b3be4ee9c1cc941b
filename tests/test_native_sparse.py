"""Native sparse input for image backbones: only the kept patches (with their own positions) go through
the model. All patches kept gives the whole-frame tokens; fewer cost less; whole frames stay an option."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backbones import create_backbone
from backbones.siglip2 import Siglip2Backbone
from tasks import Clip, create_sampler
from tasks.sampling.samplers import dense_positions

WHOLE = "full_frames_then_gather"
NATIVE = ["dinov3_tiny", "siglip2_tiny", "qwen3vit_tiny"]  # families implementing kept-patch input


def clips(size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (2, 4, size, size, 3), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize("name", NATIVE)
def test_all_patches_kept_gives_the_whole_frame_tokens(name):
    native, whole = create_backbone(name), create_backbone(name, sparse_mode=WHOLE)
    assert native.sparse_mode == "native" and native.feature_identity() != whole.feature_identity()
    grid = native.preprocess.size // native.patch_size
    frames = clips(native.preprocess.size)
    positions = dense_positions(np.arange(4), grid)[None].expand(2, -1, -1)
    torch.testing.assert_close(native.encode(frames, positions), whole.encode(frames, positions))
    a, b = native.encode_cost(positions[0]), whole.encode_cost(positions[0])
    assert (a.frames, a.tokens, a.kept) == (b.frames, b.tokens, b.kept)
    assert a.flops <= b.flops  # the same blocks; SigLIP2's pooling head is not run natively


@pytest.mark.parametrize("name", NATIVE)
def test_kept_patches_are_encoded_alone_per_frame_and_cost_less(name):
    native, whole = create_backbone(name), create_backbone(name, sparse_mode=WHOLE)
    grid = native.preprocess.size // native.patch_size
    frames = clips(native.preprocess.size, seed=1)
    keep = torch.randperm(4 * grid**2, generator=torch.Generator().manual_seed(2))[:100].sort().values
    positions = dense_positions(np.arange(4), grid)[keep][None].expand(2, -1, -1)
    tokens = native.encode(frames, positions)
    # Frames packed into shared sequences give each frame's tokens as when it is encoded alone.
    for b in range(2):
        for t in range(4):
            alone = positions[b, positions[b, :, 0] == t]
            expected = native.encode(frames[b : b + 1], alone[None])[0]
            torch.testing.assert_close(tokens[b, positions[b, :, 0] == t], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(tokens, whole.encode(frames, positions), atol=1e-3)  # attention: kept set
    cost, full = native.encode_cost(positions[0]), whole.encode_cost(positions[0])
    prefix = native.vit_shape().prefix
    assert (cost.frames, cost.kept, cost.tokens) == (4, 100, 100 + 4 * prefix)
    assert full.tokens == 4 * (grid**2 + prefix) and cost.flops < full.flops / 2


def test_an_unknown_sparse_mode_is_refused_by_name():
    with pytest.raises(ValueError, match="sparse_mode='packed' is not one of native, full_frames_then"):
        create_backbone("dinov3_tiny", sparse_mode="packed")
    with pytest.raises(ValueError, match="is not one of full_frames_then_gather"):
        create_backbone("siglip2_fixed_tiny", sparse_mode="native")
    with pytest.raises(ValueError, match="tokens=merged needs whole 2x2 merge blocks"):
        create_backbone("qwen3vit_tiny", tokens="merged", sparse_mode="native")
    assert create_backbone("qwen3vit_tiny", tokens="merged").sparse_mode == WHOLE


def codec_view(backbone, fixtures, tmp_path):
    """The codec sampler's 256 patches of 64 frames of a real video (first frame whole, the rest sparse)."""
    sampler = create_sampler("codec", num_frames=64, size=backbone.preprocess.size,
                             patch_size=backbone.patch_size, budget=256, cache_dir=str(tmp_path))
    return sampler(Clip("Megamind", fixtures / "videos" / "Megamind.avi", label=0))[0]


def masked_whole_frame(backbone, frame: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The library's own forward of a whole normalised frame `[1, 3, H, W]` with attention keys limited to
    the kept patches `keep` (raster order, bool) and its class/register tokens: each kept patch keeps the
    embedding and position the library gives it, and sees exactly what native input feeds."""
    model = backbone.model
    if isinstance(backbone, Siglip2Backbone):  # NaFlex takes a patch mask: the kept patches are the valid
        grid = frame.shape[-1] // backbone.patch_size
        out = model(pixel_values=backbone._patches(frame), pixel_attention_mask=keep[None].long(),
                    spatial_shapes=torch.tensor([[grid, grid]]))
        return out.last_hidden_state[0, keep]
    prefix = backbone.vit_shape().prefix  # DINOv3: its layers over the whole frame, other keys masked
    keys = torch.cat([keep.new_ones(prefix), keep])
    mask = torch.zeros(len(keys)).masked_fill(~keys, torch.finfo(torch.float32).min)[None, None, None]
    hidden, rope = model.embeddings(frame), model.rope_embeddings(frame)
    for layer in model.model.layer:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rope)
    return model.norm(hidden)[0, prefix:][keep]


@pytest.mark.parametrize("name", ["dinov3_tiny", "siglip2_tiny"])
def test_a_codec_view_gives_each_frame_the_tokens_of_its_kept_patches_alone(name, fixtures, tmp_path):
    """On a real video's codec view, native input (frames packed into sequences, attention within each)
    gives the whole first frame the whole-frame mode's tokens, and every frame the tokens of the library's
    forward over the whole frame with attention limited to its kept patches."""
    native, whole = create_backbone(name), create_backbone(name, sparse_mode=WHOLE)
    view = codec_view(native, fixtures, tmp_path)
    frames, positions = view.frames[None], view.positions
    tokens = native.encode(frames, positions[None])[0]
    slots, kept = torch.unique(positions[:, 0], return_counts=True)
    grid = native.preprocess.size // native.patch_size
    assert kept[0] == grid**2 and len(set(kept[1:].tolist())) > 3  # a whole frame, sparse ones of many sizes
    first = positions[:, 0] == slots[0]
    torch.testing.assert_close(tokens[first], whole.encode(frames, positions[None])[0][first])
    pixels = native.preprocess.normalize(frames[0, slots]).transpose(0, 1)
    for i, slot in enumerate(slots.tolist()):
        rows = positions[:, 0] == slot
        keep = torch.zeros(grid**2, dtype=torch.bool)
        raster = positions[rows, 1] * grid + positions[rows, 2]
        keep[raster] = True
        expected = masked_whole_frame(native, pixels[i : i + 1], keep)  # raster order of the kept patches
        torch.testing.assert_close(tokens[rows][torch.argsort(raster)], expected, rtol=1e-4, atol=1e-4)
