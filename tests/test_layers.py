"""Multi-layer features (`backbone.args.layers`): the chosen blocks' outputs, each through the model's final
norm as its output is, concatenated as tokens layer after layer (V-JEPA 2's probe of ViT-L blocks 17, 19,
21 and 23). Checked against the model's own output and the libraries' `output_hidden_states`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_run import small

from backbones import create_backbone
from probe.report.results import record_row
from probe.run.main import run
from tasks.sampling.samplers import dense_positions

FAMILIES = ["onevision_tiny", "clip_tiny", "metaclip2_tiny", "dinov2_tiny", "dinov2reg_tiny", "dinov3_tiny",
            "siglip2_tiny", "siglip2_fixed_tiny", "aimv2_tiny", "vjepa2_tiny"]


def _inputs(backbone, frames: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    size, grid = backbone.preprocess.size, backbone.preprocess.size // backbone.patch_size
    pixels = torch.randint(0, 256, (2, frames, size, size, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    return pixels, dense_positions(np.arange(frames), grid)[None].expand(2, -1, -1)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_last_block_is_the_output_and_layers_follow_one_another(name):
    frames, positions = _inputs(create_backbone(name))
    output = create_backbone(name).encode(frames, positions)
    last = create_backbone(name, layers=[-1])
    assert torch.equal(last.encode(frames, positions), output)  # the final norm, as the output has it
    two = create_backbone(name, layers=[-1, 0])  # any order: ascending blocks, layer after layer
    assert two.layers == (0, len(two.model.get_submodule(two.blocks_path)) - 1)
    tokens = two.encode(frames, positions)
    n = positions.shape[1]
    assert tokens.shape == (2, 2 * n, output.shape[-1])
    assert torch.equal(tokens[:, n:], output) and not torch.allclose(tokens[:, :n], output)
    assert torch.equal(two.token_positions(positions), torch.cat([positions, positions], dim=1))
    assert two.encode_cost(positions[0]).kept == 2 * n
    assert two.tokens.startswith(f"blocks 0, {two.layers[1]} of")
    assert two.feature_identity() != last.feature_identity()


def test_a_middle_block_is_the_libraries_hidden_state_through_the_final_norm():
    clip = create_backbone("clip_tiny", layers=[0])
    frames, positions = _inputs(clip, frames=1)
    pixels = clip.preprocess.normalize(frames[:, 0]).transpose(0, 1)
    states = clip.model(pixel_values=pixels, output_hidden_states=True).hidden_states
    torch.testing.assert_close(clip.encode(frames[:, :1], positions), states[1][:, 1:])  # no final norm

    dino = create_backbone("dinov2_tiny", layers=[0])  # ImageNet's normalisation, the same 112 px frames
    pixels = dino.preprocess.normalize(frames[:, 0]).transpose(0, 1)
    states = dino.model(pixel_values=pixels, output_hidden_states=True).hidden_states
    torch.testing.assert_close(dino.encode(frames[:, :1], positions), dino.model.layernorm(states[1])[:, 1:])

    ov = create_backbone("onevision_tiny", layers=[1])
    frames, positions = _inputs(ov)
    out = ov.model(ov.preprocess.normalize(frames), patch_positions=positions, output_hidden_states=True)
    expected = states = out.hidden_states[2]  # [0] is the embeddings
    if ov.model.config.use_head:
        expected = ov.model.layernorm_post(states)
    torch.testing.assert_close(ov.encode(frames, positions), expected)


def test_bad_layers_are_refused_with_the_blocks_there_are():
    with pytest.raises(ValueError, match="out of range: it has 2 blocks"):
        create_backbone("clip_tiny", layers=[2])
    with pytest.raises(ValueError, match="names a block twice"):
        create_backbone("clip_tiny", layers=[1, -1])
    with pytest.raises(ValueError, match="layers is not offered"):
        create_backbone("qwen3vit_tiny", layers=[0])


def test_a_multi_layer_run_stores_every_layers_tokens(tmp_path):
    record = run(small(tmp_path, "backbone=onevision_tiny", "backbone.args.layers=[1,3]"))
    assert record["sampling"]["tokens_per_clip"] == 2 * 4 * 64  # two blocks of 4 frames of 8 x 8 patches
    assert record["backbone"]["tokens"].startswith("blocks 1, 3 of 4")
    assert record["backbone"]["feature_identity"]["tokens"] == record["backbone"]["tokens"]
    assert record["cost"]["eval"]["tokens_kept_per_clip"] == 2 * 4 * 64
    row = record_row(record)  # a row of its own in the report
    assert row["backbone"] == "onevision_tiny@blocks1,3"
    assert row["backbone_label"] == "OneVision-Encoder tiny (blocks 1, 3) (random weights)"
    plain = run(small(tmp_path, "backbone=onevision_tiny"))
    assert plain["sampling"]["tokens_per_clip"] == 4 * 64
    assert plain["data"]["eval_features"] != record["data"]["eval_features"]
