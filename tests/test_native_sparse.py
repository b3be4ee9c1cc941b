"""Native sparse input for image backbones: only the kept patches (with their own positions) go through
the model. All patches kept gives the whole-frame tokens; fewer cost less; whole frames stay an option."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backbones import create_backbone
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
    # Frames batched with padding give each frame's tokens as when it is encoded alone.
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
