"""What features cost, from the backbone's architecture and the extraction that stored them: analytic
FLOPs against torch's FLOP counter, and the store's cost copied into every record that reuses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import fixtures_dir
from test_run import small
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from backbones import Backbone, create_backbone, list_backbones
from probe.report.results import record_row
from probe.run.main import run
from tasks import Clip, SampledClip, create_sampler
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


BUDGETS = (256, 2048)
NATIVE = ("dinov3_tiny", "siglip2_tiny", "qwen3vit_tiny")  # families with a native and a whole-frame mode
# Each budget on a grid where the whole first frame leaves sparse frames (256 patches are one 16 x 16
# frame): 256 on the tiny entries' 8 x 8 grid (1/16 of 64 frames), 2,048 on the released entries' 16 x 16
# (1/8 of 64 frames; on 8 x 8 it is half of them, where per-frame class tokens alone pass half).
GRIDS = {256: 8, 2048: 16}


@pytest.fixture(scope="module")
def megamind(tmp_path_factory) -> tuple[Clip, str]:
    """A real video and a codec-maps cache shared by this module's views."""
    video = fixtures_dir() / "videos" / "Megamind.avi"
    return Clip(video.stem, video, label=0), str(tmp_path_factory.mktemp("codec-maps"))


def codec_view(backbone: Backbone, budget: int, megamind: tuple[Clip, str]) -> SampledClip:
    """The codec sampler's view of 64 frames at `budget` patches (first frame whole) for `backbone`."""
    clip, cache = megamind
    sampler = create_sampler("codec", num_frames=64, size=backbone.preprocess.size,
                             patch_size=backbone.patch_size, temporal_slots=backbone.temporal_slots,
                             budget=budget, native_sparse=backbone.native_sparse, cache_dir=cache)
    return sampler(clip)[0]


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name", NATIVE)
def test_native_sparse_input_costs_the_kept_patches_on_a_codec_view(name, budget, megamind, mha_as_matmuls):
    """Counted over `encode` on a real video's codec view (the first frame whole, the rest sparse): the
    declared cost is what runs in both modes, and native input costs under half the whole frames."""
    size = GRIDS[budget] * create_backbone(name).patch_size
    counted = {}
    for mode in ("native", "full_frames_then_gather"):
        backbone = create_backbone(name, sparse_mode=mode, input_size=size, attn_implementation="eager")
        view = codec_view(backbone, budget, megamind)
        _, kept = torch.unique(view.positions[:, 0], return_counts=True)  # first frame whole
        assert kept[0] == GRIDS[budget] ** 2 and kept[1:].max() < GRIDS[budget] ** 2 and len(kept) > 8
        counted[mode] = counted_flops(backbone, view.frames[None], view.positions)
        assert backbone.encode_cost(view.positions).flops == pytest.approx(counted[mode], rel=0.05), mode
    assert counted["native"] < counted["full_frames_then_gather"] / 2


ONE_MODE = [name for name in list_backbones("*tiny*") if name not in NATIVE]


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name", ONE_MODE)
def test_every_other_family_costs_what_it_counts_on_a_codec_view(name, budget, megamind, mha_as_matmuls):
    """Within issue 26's 15%: V-JEPA 2 encodes all 64 frames of a view but declares the tubelets up to the
    last one holding a kept patch (5% under at 256 patches)."""
    backbone = create_backbone(name, attn_implementation="eager")
    view = codec_view(backbone, budget, megamind)
    counted = counted_flops(backbone, view.frames[None], view.positions)
    assert backbone.encode_cost(view.positions).flops == pytest.approx(counted, rel=0.15)


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
