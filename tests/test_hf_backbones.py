"""SigLIP2, DINOv3, CLIP / MetaCLIP 2, DINOv2, AIMv2, the Qwen3-VL vision tower and V-JEPA 2: the
libraries' own models, loaded offline, encoding frames and patch sets, and running the whole pipeline at the
same patch budget as OneVision."""

from __future__ import annotations

import re
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import safetensors.torch
import torch
from test_run import small
from transformers import VJEPA2Config, VJEPA2Model
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches
from transformers.vision_utils import get_vision_position_ids

from backbones import create_backbone, list_backbones
from backbones.aimv2 import Aimv2Backbone
from backbones.clip import ClipBackbone, MetaClip2Backbone
from backbones.dinov2 import Dinov2Backbone, Dinov2RegBackbone
from backbones.dinov3 import Dinov3Backbone
from backbones.frames import FrameBackbone
from backbones.qwen3_vit import Qwen3VitBackbone
from backbones.siglip2 import Siglip2Backbone, Siglip2FixedBackbone, SiglipBackbone
from backbones.vjepa2 import Vjepa2Backbone
from backbones.weights import CheckpointError
from probe.report.results import backbone_label, format_table, record_row
from probe.run.main import build_sampler, compose_config, run
from tasks import create_task
from tasks.sampling.samplers import dense_positions

CONF = Path(__file__).resolve().parents[1] / "probe" / "conf" / "backbone"
FAMILIES: dict[str, type[FrameBackbone]] = {
    "siglip2_tiny": Siglip2Backbone,
    "siglip2_fixed_tiny": Siglip2FixedBackbone,
    "dinov3_tiny": Dinov3Backbone,
    "qwen3vit_tiny": Qwen3VitBackbone,
    "clip_tiny": ClipBackbone,
    "metaclip2_tiny": MetaClip2Backbone,
    "dinov2reg_tiny": Dinov2RegBackbone,
    "dinov2_tiny": Dinov2Backbone,
    "aimv2_tiny": Aimv2Backbone,
}
IMAGENET = ("dinov3_tiny", "dinov2reg_tiny", "dinov2_tiny")
VIDEO = ["vjepa2_tiny"]  # video encoders: whole clips in, one token per tubelet
# One end-to-end run per family's code path (dinov2_tiny's is dinov2reg_tiny's, without registers).
END_TO_END = ["onevision_tiny", *(n for n in FAMILIES if n != "dinov2_tiny"), *VIDEO]


def random_frames(backbone: FrameBackbone, num_frames: int, seed: int = 0) -> torch.Tensor:
    size = backbone.preprocess.size
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, num_frames, size, size, 3), dtype=torch.uint8, generator=generator)


def all_positions(backbone: FrameBackbone, num_frames: int) -> torch.Tensor:
    return dense_positions(np.arange(num_frames), backbone.preprocess.size // backbone.patch_size)[None]


def library_tokens(name: str, model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Raster-order patch tokens `[F, L, D]` of the library model, its input laid out by the library's
    own processing code (normalised pixels `[F, 3, H, W]` in)."""
    config = model.config
    if name in IMAGENET:  # class token, then registers (none in plain DINOv2), then the patches
        registers = getattr(config, "num_register_tokens", 0)
        return model(pixel_values=pixels).last_hidden_state[:, 1 + registers :]
    if name in ("siglip2_fixed_tiny", "aimv2_tiny"):  # no class token
        return model(pixel_values=pixels).last_hidden_state
    if name in ("clip_tiny", "metaclip2_tiny"):  # before post_layernorm, class token dropped
        return model(pixel_values=pixels).last_hidden_state[:, 1:]
    grid = pixels.shape[-1] // config.patch_size
    if name == "siglip2_tiny":
        patches = torch.stack([convert_image_to_patches(p, config.patch_size) for p in pixels])
        mask = torch.ones(patches.shape[:2], dtype=torch.long)
        shapes = torch.tensor([[grid, grid]] * len(pixels))
        return model(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes).last_hidden_state
    processor = Qwen2VLImageProcessor(
        do_resize=False, do_rescale=False, do_normalize=False, patch_size=config.patch_size,
        temporal_patch_size=config.temporal_patch_size, merge_size=config.spatial_merge_size,
    )
    inputs = processor(images=list(pixels), return_tensors="pt", input_data_format="channels_first")
    grid_thw = inputs["image_grid_thw"]
    hidden = model(hidden_states=inputs["pixel_values"], grid_thw=grid_thw).last_hidden_state
    hw = get_vision_position_ids(grid_thw, config.spatial_merge_size)
    raster = torch.empty_like(hidden)
    frame = torch.arange(len(pixels)).repeat_interleave(grid * grid)
    raster[frame * grid * grid + hw[:, 0] * grid + hw[:, 1]] = hidden
    return raster.reshape(len(pixels), grid * grid, -1)


@pytest.mark.parametrize("name", FAMILIES)
def test_tiny_entries_declare_how_they_take_patches(name):
    backbone = create_backbone(name)
    assert isinstance(backbone, FAMILIES[name])
    assert backbone.temporal_slots is None and backbone.native_sparse is False
    assert backbone.sparse_mode == FAMILIES[name].sparse_modes[0]  # native, where the family offers it
    assert backbone.preprocess.size // backbone.patch_size == 8  # OneVision tiny's grid: same regions
    assert backbone.fingerprint().startswith("random-")
    assert create_backbone(name).fingerprint() == backbone.fingerprint()
    assert create_backbone(name, seed=1).fingerprint() != backbone.fingerprint()
    openai = ("clip_tiny", "metaclip2_tiny", "aimv2_tiny")
    expected_mean = {**dict.fromkeys(IMAGENET, (0.485, 0.456, 0.406)),
                     **dict.fromkeys(openai, (0.48145466, 0.4578275, 0.40821073))}
    expected_mean = expected_mean.get(name, (0.5, 0.5, 0.5))
    assert backbone.preprocess.mean == expected_mean


def test_every_registered_entry_has_a_valid_config_a_grid_and_a_config_file():
    registered = list_backbones()
    # SigLIP v1 has siglip2_fixed_tiny's architecture; V-JEPA 2 is tested apart (whole clips, not frames)
    for family in {*FAMILIES.values(), SiglipBackbone, Vjepa2Backbone}:
        for name, entry in family.entries.items():
            config = family.config_class(**family.sizes[entry.size])
            unit = config.patch_size * getattr(config, "spatial_merge_size", 1)
            assert entry.input_size % unit == 0, name
            assert name in registered
            assert (CONF / f"{name}.yaml").is_file(), f"{name} has no config file in {CONF}"
            assert compose_config([f"backbone={name}"])["backbone"]["name"] == name


@pytest.mark.parametrize("name", FAMILIES)
def test_tower_saved_by_the_library_loads_offline_and_encodes_bit_identically(name, tmp_path):
    family = FAMILIES[name]
    torch.manual_seed(1)
    model = family.model_class(family.config_class(**family.sizes["tiny"])).eval()
    model.save_pretrained(tmp_path / "tower")

    # whole frames: the library's own forward (test_native_sparse checks the native path against it)
    tower = str(tmp_path / "tower")
    backbone = create_backbone(name, checkpoint=tower, sparse_mode="full_frames_then_gather")
    assert not backbone.fingerprint().startswith("random-")
    frames = random_frames(backbone, 3)
    tokens = backbone.encode(frames, all_positions(backbone, 3))

    pixels = backbone.preprocess.normalize(frames[0]).transpose(0, 1)
    with torch.no_grad():
        expected = library_tokens(name, model, pixels)
    assert tokens.shape == (1, expected.shape[0] * expected.shape[1], backbone.embed_dim)
    assert torch.equal(tokens[0], expected.reshape(-1, expected.shape[-1]))


@pytest.mark.parametrize("name", FAMILIES)
def test_a_tower_saved_with_integer_weights_is_refused_by_name(name, tmp_path):
    family = FAMILIES[name]
    model = family.model_class(family.config_class(**family.sizes["tiny"]))
    model.save_pretrained(tmp_path / "tower")
    weights = tmp_path / "tower" / "model.safetensors"
    state = safetensors.torch.load_file(weights)
    key = next(k for k, v in state.items() if k.endswith("weight") and v.dim() == 2)
    state[key] = state[key].to(torch.int8)  # what a quantised or mis-saved export looks like
    safetensors.torch.save_file(state, weights)
    expected = rf"tower.*wrong dtype \(1\): {re.escape(key)}: checkpoint torch.int8"
    with pytest.raises(CheckpointError, match=expected):
        create_backbone(name, checkpoint=str(tmp_path / "tower"))


def test_qwen3vit_takes_its_tower_out_of_a_whole_qwen3vl_checkpoint(tmp_path):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, head_dim=32, vocab_size=64,
                rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [8, 4, 4]})
    torch.manual_seed(2)
    vlm = Qwen3VLForConditionalGeneration(
        Qwen3VLConfig(vision_config=Qwen3VitBackbone.sizes["tiny"], text_config=text)
    ).eval()
    vlm.save_pretrained(tmp_path / "vlm")

    for tokens in ("pre_merge", "merged"):
        loaded = create_backbone("qwen3vit_tiny", checkpoint=str(tmp_path / "vlm"), tokens=tokens)
        reference = Qwen3VitBackbone("reference", vlm.model.visual, 128, "unused")
        reference.tokens, reference.sparse_mode = tokens, loaded.sparse_mode
        frames = random_frames(loaded, 2)
        positions = all_positions(loaded, 2)
        out = loaded.encode(frames, positions)
        assert torch.equal(out, reference.encode(frames, positions))
    # merged: the four patches of a 2x2 merge block carry one token (of the merger's width)
    assert out.shape[-1] == loaded.embed_dim == 96
    grid = out[0, :64].reshape(8, 8, -1)
    assert torch.equal(grid[0, 0], grid[1, 1]) and not torch.equal(grid[0, 0], grid[0, 2])


@pytest.mark.parametrize("name", ["clip_tiny", "metaclip2_tiny"])
def test_clip_takes_its_tower_out_of_a_whole_released_clip_model(name, tmp_path):
    from transformers import CLIPConfig, CLIPModel, MetaClip2Config, MetaClip2Model

    config_class, model_class = {"clip_tiny": (CLIPConfig, CLIPModel),
                                 "metaclip2_tiny": (MetaClip2Config, MetaClip2Model)}[name]
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=64, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(3)
    whole = model_class(
        config_class(vision_config=FAMILIES[name].sizes["tiny"], text_config=text, projection_dim=16)
    ).eval()
    whole.save_pretrained(tmp_path / "release")
    backbone = create_backbone(name, checkpoint=str(tmp_path / "release"))
    assert sum(p.numel() for p in backbone.model.parameters()) == sum(
        p.numel() for p in whole.vision_model.parameters()
    )  # the text tower and the projections stay on disk
    frames = random_frames(backbone, 2)
    tokens = backbone.encode(frames, all_positions(backbone, 2))
    with torch.no_grad():
        hidden = whole.vision_model(pixel_values=backbone.preprocess.normalize(frames[0]).transpose(0, 1))
    assert torch.equal(tokens[0], hidden.last_hidden_state[:, 1:].reshape(-1, backbone.embed_dim))
    # the probed tokens precede post_layernorm (which CLIP applies to the pooled class token only)
    assert not torch.allclose(tokens[0, :64], whole.vision_model.post_layernorm(tokens[0, :64]))


def test_vjepa2_saved_by_the_library_gives_each_patch_its_tubelet_token(tmp_path):
    torch.manual_seed(4)
    model = VJEPA2Model(VJEPA2Config(**Vjepa2Backbone.sizes["tiny"])).eval()
    model.save_pretrained(tmp_path / "vjepa2")
    backbone = create_backbone("vjepa2_tiny", checkpoint=str(tmp_path / "vjepa2"))
    assert backbone.sparse_mode == "whole_clip_then_gather"
    assert backbone.preprocess.size // backbone.patch_size == 8
    frames = random_frames(backbone, 4).expand(2, -1, -1, -1, -1).contiguous()
    frames[1, 3] = 0
    tokens = backbone.encode(frames, all_positions(backbone, 4).expand(2, -1, -1))
    video = backbone.preprocess.normalize(frames).transpose(1, 2)
    with torch.no_grad():
        expected = model(pixel_values_videos=video, skip_predictor=True).last_hidden_state  # [2, 2 * 64, D]
    per_frame = expected.reshape(2, 2, 1, 64, -1).expand(-1, -1, 2, -1, -1)  # both frames of a tubelet
    assert torch.equal(tokens, per_frame.reshape(2, 256, -1))
    # an odd frame count: the last frame fills the last tubelet
    odd = backbone.encode(frames[:, :3], all_positions(backbone, 3).expand(2, -1, -1))
    assert torch.equal(odd[0], backbone.encode(frames[:1, [0, 1, 2, 2]], all_positions(backbone, 3))[0])


def test_missing_weights_and_bad_arguments_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    repo = "facebook/dinov3-vits16-pretrain-lvd1689m"
    with pytest.raises(CheckpointError, match=rf"{repo}.*empty-cache.*hf download {repo}"):
        create_backbone("dinov3_small")
    (tmp_path / "no-config").mkdir()
    with pytest.raises(CheckpointError, match="no config.json in .*no-config"):
        create_backbone("siglip2_tiny", checkpoint=str(tmp_path / "no-config"))
    with pytest.raises(ValueError, match="tokens='cls' is not one of"):
        create_backbone("qwen3vit_tiny", tokens="cls")
    with pytest.raises(ValueError, match=r"input_size 112 is not a multiple of patch x spatial merge \(32\)"):
        create_backbone("qwen3vit_tiny", input_size=112)
    with pytest.raises(ValueError, match="input_size 120 is not a multiple of patch 16"):
        create_backbone("dinov3_tiny", input_size=120)
    with pytest.raises(ValueError, match="aimv2_tiny: input_size 140 differs from the 112 px.*=112"):
        create_backbone("aimv2_tiny", is_native=False, input_size=140)  # learned positions: one size


@pytest.mark.parametrize("name", FAMILIES)
def test_sparse_patch_sets_encode_only_the_frames_they_touch(name, monkeypatch):
    backbone = create_backbone(name, sparse_mode="full_frames_then_gather")
    frames = random_frames(backbone, 6).expand(2, -1, -1, -1, -1).contiguous()
    frames[1, 2] = 0  # the second clip's frames differ from the first's
    dense = backbone.encode(frames, all_positions(backbone, 6).expand(2, -1, -1))

    seen: list[int] = []
    original = type(backbone).frame_tokens

    def counting(self, pixels):
        seen.append(len(pixels))
        return original(self, pixels)

    monkeypatch.setattr(type(backbone), "frame_tokens", counting)
    generator = torch.Generator().manual_seed(0)
    keep = torch.stack([torch.randperm(2 * 64, generator=generator)[:40].sort().values for _ in range(2)])
    keep[1] += 3 * 64  # clip 0 keeps patches of frames 0-1, clip 1 of frames 3-4
    positions = all_positions(backbone, 6)[0][keep]
    sparse = backbone.encode(frames, positions)
    assert sum(seen) == 4
    assert torch.allclose(sparse, torch.stack([dense[b, keep[b]] for b in range(2)]), atol=1e-5)


def test_codec_sampler_gives_every_tiny_backbone_the_same_patches(tmp_path):
    task = create_task("synthetic", cache_dir=tmp_path / "cache", num_train=4, num_test=4, num_frames=16)
    clip = task.clips("test")[0]
    sampling = compose_config(["sampling=codec"])["sampling"]
    chosen = {}
    for name in ["onevision_tiny", *FAMILIES, *VIDEO]:
        backbone = create_backbone(name)
        (view,) = build_sampler(sampling, backbone, str(tmp_path / "cache"))(clip)
        assert view.layout == ("packed" if name == "onevision_tiny" else "sparse")
        chosen[name] = sorted(map(tuple, view.positions.tolist()))
        if view.layout == "sparse":  # the frames the kept patches point to hold pixels
            assert all(view.frames[t].any() for t in {t for t, _, _ in chosen[name]})
    assert len(chosen["onevision_tiny"]) == 8 * 64
    assert all(positions == chosen["onevision_tiny"] for positions in chosen.values())


def test_every_tiny_backbone_runs_the_pipeline_at_the_same_budget(tmp_path):
    records = [
        run(small(tmp_path, f"backbone={name}", f"sampling={sampling}"))
        for name in END_TO_END
        for sampling in ("uniform", "codec")
    ]
    assert {(r["backbone"]["name"], r["sampling"]["name"]) for r in records} == {
        (name, s) for name in END_TO_END for s in ("uniform", "codec")
    }
    assert {r["sampling"]["tokens_per_clip"] for r in records} == {256}
    assert all(r["metrics"]["num_test"] == 16 and r["backbone"]["random_weights"] for r in records)
    assert {r["backbone"]["embed_dim"] for r in records if r["backbone"]["name"] != "onevision_tiny"} == {64}
    table = format_table([record_row(r) for r in records])
    assert all(f"| {backbone_label(name, random_weights=True)} |" in table for name in END_TO_END[1:])
