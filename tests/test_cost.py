"""What features cost, from the backbone's architecture and the extraction that stored them: analytic
FLOPs against torch's FLOP counter, and the store's cost copied into every record that reuses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_run import small
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from backbones import create_backbone
from probe.report.results import record_row
from probe.run.main import run
from tasks.sampling.samplers import dense_positions

TINY = ["onevision_tiny", "dinov3_tiny", "siglip2_tiny", "siglip2_fixed_tiny", "qwen3vit_tiny"]


def counted_flops(backbone, frames: torch.Tensor, positions: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        backbone.encode(frames, positions[None])
    return counter.get_total_flops()


WHOLE = [(name, "full_frames_then_gather") for name in ("dinov3_tiny", "siglip2_tiny", "qwen3vit_tiny")]
WHOLE += [(name, None) for name in ("clip_tiny", "dinov2reg_tiny")]  # class (and register) tokens counted
# timm and open_clip towers (PE's and open_clip CLIP's class token counted)
LIBS = ("timm_aimv2_tiny", "timm_pe_tiny", "openclip_tiny", "openclip_siglip_tiny")
WHOLE += [(name, None) for name in LIBS]
CASES = [(name, None) for name in TINY] + WHOLE


@pytest.fixture
def mha_as_matmuls():
    """`nn.MultiheadAttention` (open_clip's CLIP blocks) off its fused inference path and its attention in
    the math kernel (matrix products): torch's FLOP counter sees neither fused kernel on a CPU."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    with sdpa_kernel(SDPBackend.MATH):
        yield
    torch.backends.mha.set_fastpath_enabled(enabled)


@pytest.mark.parametrize("name, mode", CASES)
def test_declared_flops_match_the_counted_forward(name, mode, mha_as_matmuls):
    sparse = {"sparse_mode": mode} if mode else {}
    backbone = create_backbone(name, attn_implementation="eager", **sparse)  # attention as matmuls: counted
    size, grid = backbone.preprocess.size, backbone.preprocess.size // backbone.patch_size
    frames = torch.randint(0, 256, (1, 3, size, size, 3), dtype=torch.uint8, generator=torch.Generator())
    whole = dense_positions(np.arange(3), grid)
    cost = backbone.encode_cost(whole)
    assert (cost.frames, cost.kept) == (3, 3 * grid**2)
    assert cost.flops == pytest.approx(counted_flops(backbone, frames, whole), rel=0.05)
    if backbone.native_sparse:
        return
    some = whole[torch.arange(0, 2 * grid**2, 5)]  # patches of frames 0 and 1 only: two frames encoded
    cost = backbone.encode_cost(some)
    assert (cost.frames, cost.kept) == (2, len(some))
    encoded = len(some) if backbone.sparse_mode == "native" else 2 * grid**2
    assert cost.tokens == encoded + 2 * backbone.vit_shape().prefix
    assert cost.flops == pytest.approx(counted_flops(backbone, frames, some), rel=0.05)


def test_records_carry_the_cost_of_the_extraction_that_made_their_features(tmp_path):
    first = {name: run(small(tmp_path, f"backbone={name}", "sampling=codec")) for name in TINY[:2]}
    for record in first.values():
        eval_cost = record["cost"]["eval"]
        assert eval_cost["clips"] == record["data"]["eval_clips"]
        assert eval_cost["tokens_kept_per_clip"] == record["sampling"]["budget"] == 4 * 64
        assert eval_cost["encode_s_per_clip"] > 0 and eval_cost["flops_per_clip"] > 0
    ov, dino = first["onevision_tiny"]["cost"]["eval"], first["dinov3_tiny"]["cost"]["eval"]
    assert ov["frames_encoded_per_clip"] == 4  # four packed pseudo-frames hold the budget
    assert ov["tokens_encoded_per_clip"] == 4 * 64
    assert dino["frames_encoded_per_clip"] > 4  # every frame a kept patch falls in
    # natively: the kept patches plus each frame's class and 4 register tokens
    assert dino["tokens_encoded_per_clip"] == 4 * 64 + dino["frames_encoded_per_clip"] * 5

    # A new run on the same features encodes nothing and reports what making them cost.
    again = run(small(tmp_path, "backbone=dinov3_tiny", "sampling=codec", "extract.batch_size=3"))
    assert again["run_id"] != first["dinov3_tiny"]["run_id"]
    assert again["timings"]["extract_eval_encode_s"] == 0.0
    assert again["cost"] == first["dinov3_tiny"]["cost"]
    row = record_row(again)
    assert row["seconds_per_clip"] == dino["encode_s_per_clip"]
    assert row["flops_per_clip"] == dino["flops_per_clip"]
    assert row["frames_per_clip"] == dino["frames_encoded_per_clip"]
