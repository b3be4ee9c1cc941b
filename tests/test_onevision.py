"""OneVision-Encoder: reference outputs, rotary layout, token modes, checkpoint loading and errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from backbones import create_backbone
from backbones.onevision import OneVisionConfig, OneVisionConfigError, OneVisionEncoder
from backbones.onevision.rope import Rope3D, apply_rope, grid_positions
from backbones.weights import CheckpointError
from tests.conftest import fixtures_dir

CASES = ["image", "video_dense", "video_positions", "video_packed", "video_sparse64"]
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)


@pytest.fixture(scope="module")
def reference_dir() -> Path:
    return fixtures_dir() / "onevision_reference" / "ov_tiny_layernorm_head"


@pytest.fixture(scope="module")
def reference_cases(reference_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(reference_dir / "cases.safetensors"))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("case", CASES)
def test_reproduces_reference_outputs(reference_dir, reference_cases, case):
    model = OneVisionEncoder.from_pretrained(reference_dir)
    inputs = {
        key: reference_cases[f"{case}.input.{key}"]
        for key in ("patch_positions", "visible_indices")
        if f"{case}.input.{key}" in reference_cases
    }
    with torch.no_grad():
        out = model(reference_cases[f"{case}.input.pixel_values"], output_hidden_states=True, **inputs)
    assert relative_error(out.last_hidden_state, reference_cases[f"{case}.output.last_hidden_state"]) < 1e-5
    assert relative_error(out.pooler_output, reference_cases[f"{case}.output.pooler_output"]) < 1e-5
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    for i, hidden in enumerate(out.hidden_states):
        assert relative_error(hidden, reference_cases[f"{case}.output.hidden_states.{i}"]) < 1e-5


def test_registry_loads_reference_checkpoint(reference_dir, reference_cases):
    backbone = create_backbone("onevision_large", checkpoint=str(reference_dir))
    assert backbone.embed_dim == 64 and backbone.native_sparse
    pixels = reference_cases["video_positions.input.pixel_values"]
    positions = reference_cases["video_positions.input.patch_positions"]
    with torch.no_grad():
        tokens = backbone.model(pixels, patch_positions=positions).last_hidden_state
    expected = reference_cases["video_positions.output.last_hidden_state"]
    assert relative_error(tokens, expected) < 1e-5
    assert (
        backbone.fingerprint()
        == create_backbone("onevision_large", checkpoint=str(reference_dir)).fingerprint()
    )


def test_rope_angles_by_hand():
    rope = Rope3D(head_dim=32, theta=10000.0)  # half 16: 4 temporal, 6 height, 6 width frequencies
    angles = rope(torch.tensor([[[2, 1, 3]]]))[0, 0]
    t = [2 * 10000 ** (-k / 4) for k in range(4)]
    h = [1 * 10000 ** (-k / 6) for k in range(6)]
    w = [3 * 10000 ** (-k / 6) for k in range(6)]
    expected = torch.tensor(t + h + w + t + h + w)
    torch.testing.assert_close(angles, expected)


def test_rope_rotates_interleaved_pairs():
    angles = torch.zeros(1, 1, 1, 32)
    angles[..., 1] = math.pi / 2  # rotate only the pair (0, 1) through the angle of slot 1
    angles[..., 0] = math.pi / 2
    x = torch.zeros(1, 1, 1, 32)
    x[..., 0], x[..., 1] = 1.0, 2.0
    y = apply_rope(x, angles.cos(), angles.sin())
    # q' = q cos + R(q) sin with R(q)[0] = -q[1], R(q)[1] = q[0]
    torch.testing.assert_close(y[..., :2], torch.tensor([[[[-2.0, 1.0]]]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(y[..., 2:], x[..., 2:])


def tiny_model(**overrides) -> OneVisionEncoder:
    torch.manual_seed(0)
    return OneVisionEncoder(OneVisionConfig(**{**TINY, **overrides})).eval()


def test_sparse_packed_and_positions_agree():
    """The same 8 patches of a 64-frame clip: gathered (sparse), packed, or by explicit positions."""
    model = tiny_model()
    video = torch.randn(1, 3, 64, 28, 28)  # 2x2 patches per frame
    keep = torch.tensor([[0, 5, 70, 71, 130, 200, 254, 255]])
    with torch.no_grad():
        sparse = model(video, visible_indices=keep).last_hidden_state
        t, hw = keep // 4, keep % 4
        patches = torch.stack(
            [
                video[0, :, ti, (i // 2) * 14 : (i // 2 + 1) * 14, (i % 2) * 14 : (i % 2 + 1) * 14]
                for ti, i in zip(t[0].tolist(), hw[0].tolist(), strict=True)
            ]
        )  # [8, 3, 14, 14] -> two 2x2 pseudo-frames
        packed_frames = patches.reshape(2, 2, 2, 3, 14, 14).permute(3, 0, 1, 4, 2, 5).reshape(1, 3, 2, 28, 28)
        packed = model(packed_frames, visible_indices=keep).last_hidden_state
        positions = torch.stack([t, hw // 2, hw % 2], dim=-1)
        explicit = model(packed_frames, patch_positions=positions).last_hidden_state
    torch.testing.assert_close(packed, sparse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(explicit, sparse, rtol=1e-5, atol=1e-5)


def test_positions_matter():
    """Reordering or shifting positions changes the output. (The released layout, concat(f, f) with
    interleaved pairs, rotates neighbouring dims by different frequencies, so it is not purely relative.)"""
    model = tiny_model()
    with torch.no_grad():
        for layer in model.encoder.layers:  # sharp attention, so positions carry weight
            layer.self_attn.q_proj.weight.mul_(20)
            layer.self_attn.k_proj.weight.mul_(20)
        video = torch.randn(1, 3, 2, 28, 28)
        base = model(video, visible_indices=torch.arange(8)[None]).last_hidden_state
        shifted = model(video, visible_indices=torch.arange(8)[None] + 40).last_hidden_state
        reordered = model(video, visible_indices=torch.arange(8).flip(0)[None]).last_hidden_state
    assert relative_error(shifted, base) > 1e-3
    assert relative_error(reordered, base) > 1e-2


@pytest.mark.parametrize("size", [(28, 28), (42, 70), (70, 42), (14, 98)])
def test_native_resolution(size):
    model = tiny_model()
    out = model(torch.randn(2, 3, *size))
    assert out.last_hidden_state.shape == (2, (size[0] // 14) * (size[1] // 14), 64)
    assert out.pooler_output.shape == (2, 64)


def test_size_not_divisible_by_patch_is_an_error():
    with pytest.raises(ValueError, match="not divisible by the patch size 14"):
        tiny_model()(torch.randn(1, 3, 30, 28))


def test_frames_beyond_rope_grid_need_positions():
    model = tiny_model(rope_temporal_size=4)
    with pytest.raises(ValueError, match="rope_temporal_size"):
        model(torch.randn(1, 3, 5, 28, 28))
    with pytest.raises(ValueError, match="positions for 3 tokens"):
        model(torch.randn(1, 3, 1, 28, 28), patch_positions=torch.zeros(1, 3, 3, dtype=torch.long))


def test_eager_attention_matches_sdpa():
    sdpa, eager = tiny_model(), tiny_model(attn_implementation="eager")
    x = torch.randn(2, 3, 3, 28, 42)
    with torch.no_grad():
        torch.testing.assert_close(
            eager(x).last_hidden_state, sdpa(x).last_hidden_state, rtol=1e-5, atol=1e-5
        )


def test_bfloat16_runs_close_to_float32():
    model = tiny_model()
    x = torch.randn(1, 3, 2, 28, 28)
    with torch.no_grad():
        full = model(x).last_hidden_state
        half = model.to(torch.bfloat16)(x.bfloat16()).last_hidden_state
    assert half.dtype == torch.bfloat16
    assert relative_error(half.float(), full) < 5e-2


@pytest.mark.parametrize("overrides", [dict(layer_norm_type="rms_norm"), dict(use_head=False)])
def test_save_and_load_round_trip(tmp_path, overrides):
    model = tiny_model(**overrides)
    model.save_pretrained(tmp_path)
    keys = load_file(str(tmp_path / "model.safetensors")).keys()
    assert any(k.startswith("head.") for k in keys) == model.config.use_head
    loaded = OneVisionEncoder.from_pretrained(tmp_path)
    x = torch.randn(1, 3, 2, 28, 28)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert (b.pooler_output is None) == (not model.config.use_head)


def test_sharded_checkpoint(tmp_path, reference_dir):
    state = load_file(str(reference_dir / "model.safetensors"))
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, str(tmp_path / name))
    weight_map = {k: name for name, part in shards.items() for k in part}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    shutil.copy(reference_dir / "config.json", tmp_path)
    model = OneVisionEncoder.from_pretrained(tmp_path, dtype="bfloat16")
    assert model.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    torch.testing.assert_close(
        model.layernorm_pre.weight.float(), state["layernorm_pre.weight"], rtol=1e-2, atol=0
    )


def test_hugging_face_cache_offline(tmp_path, monkeypatch, reference_dir):
    snapshot = tmp_path / "models--lmms-lab-encoder--onevision-encoder-large" / "snapshots" / "abc123"
    shutil.copytree(reference_dir, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(
        "huggingface_hub._snapshot_download.constants.HF_HUB_CACHE", str(tmp_path), raising=False
    )
    backbone = create_backbone("onevision_large")
    assert backbone.embed_dim == 64


def test_missing_weights_say_how_to_download(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="hf download lmms-lab-encoder/onevision-encoder-large"):
        create_backbone("onevision_large")
    with pytest.raises(ValueError, match="random_init=true"):
        create_backbone("onevision_base", random_init=False)


def corrupt_copy(reference_dir: Path, dest: Path, edit) -> Path:
    shutil.copy(reference_dir / "config.json", dest)
    state = load_file(str(reference_dir / "model.safetensors"))
    edit(state)
    save_file(state, str(dest / "model.safetensors"))
    return dest


def test_checkpoint_key_errors_name_the_keys(tmp_path, reference_dir):
    def edit(state):
        del state["layernorm_pre.weight"]
        state["encoder.layers.9.mlp.fc1.weight"] = torch.zeros(1)
        state["head.probe"] = torch.zeros(1, 1, 32)

    folder = corrupt_copy(reference_dir, tmp_path, edit)
    with pytest.raises(CheckpointError) as err:
        OneVisionEncoder.from_pretrained(folder)
    message = str(err.value)
    assert str(folder) in message
    assert "missing keys (1): layernorm_pre.weight" in message
    assert "unexpected keys (1): encoder.layers.9.mlp.fc1.weight" in message
    assert "head.probe: checkpoint (1, 1, 32) vs model (1, 1, 64)" in message


def test_head_dim_not_divisible_by_32_is_a_clear_error(tmp_path):
    with pytest.raises(OneVisionConfigError, match="head_dim .* 48 must be divisible by 32"):
        OneVisionConfig(hidden_size=96, num_attention_heads=2)
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "num_attention_heads": 4}))
    with pytest.raises(OneVisionConfigError, match="divisible by 32"):
        OneVisionEncoder.from_pretrained(tmp_path)


def test_registry_lists_and_rejects():
    from backbones import list_backbones

    assert {"onevision_base", "onevision_large", "onevision_huge", "onevision_tiny"} <= set(
        list_backbones("onevision_*")
    )
    with pytest.raises(
        KeyError, match="unknown backbone 'onevision_gigantic'; registered: .*onevision_large"
    ):
        create_backbone("onevision_gigantic")


def test_suite_backbone_encodes_uint8_frames():
    backbone = create_backbone("onevision_tiny", seed=3)
    frames = torch.randint(0, 256, (2, 4, 112, 112, 3), dtype=torch.uint8)
    positions = grid_positions(4, 8, 8)
    positions[:, 0] *= 21  # 4 frames spread over the 64-slot grid
    tokens = backbone.encode(frames, positions.expand(2, -1, -1))
    assert tokens.shape == (2, 256, backbone.embed_dim)
    assert backbone.fingerprint() == create_backbone("onevision_tiny", seed=3).fingerprint()
    assert backbone.fingerprint() != create_backbone("onevision_tiny", seed=4).fingerprint()
    assert not any(p.requires_grad for p in backbone.parameters())
