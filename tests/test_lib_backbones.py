"""Backbones released for timm and open_clip, through those libraries: the tiny entries equal the library's
own model called directly, round-trip through the library's release layout (a folder, or the repo id in the
Hugging Face cache) offline with the release's preprocessing, give the same tokens as transformers' wrappers
of the same weights, and run the whole pipeline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import open_clip
import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from open_clip.push_to_hf_hub import save_config_for_hf
from test_run import small
from timm.models import save_for_hf
from transformers import (
    Aimv2VisionConfig,
    Aimv2VisionModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from backbones import create_backbone, list_backbones
from backbones.open_clip_vit import OpenClipBackbone, OpenClipTimmBackbone
from backbones.timm_vit import TimmVitBackbone
from backbones.weights import CheckpointError
from probe.report.results import backbone_label, format_table, record_row
from probe.run.main import compose_config, run
from tasks.sampling.samplers import dense_positions

CONF = Path(__file__).resolve().parents[1] / "probe" / "conf" / "backbone"
TIMM = {"timm_aimv2_tiny": "aimv2_tiny", "timm_pe_tiny": "pe_tiny"}
OPEN_CLIP = {"openclip_tiny": OpenClipBackbone, "openclip_siglip_tiny": OpenClipTimmBackbone}
TINY = [*TIMM, *OPEN_CLIP]
PREFIX = {"timm_aimv2_tiny": 0, "timm_pe_tiny": 1, "openclip_tiny": 1, "openclip_siglip_tiny": 0}


def frames_for(backbone, count: int, seed: int = 0) -> torch.Tensor:
    size = backbone.preprocess.size
    return torch.randint(0, 256, (1, count, size, size, 3), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def whole(backbone, count: int) -> torch.Tensor:
    return dense_positions(np.arange(count), backbone.preprocess.size // backbone.patch_size)[None]


def library_sequence(name: str, model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The library's own per-frame sequence `[F, prefix + patches, D]` (normalised pixels in)."""
    with torch.no_grad():
        if name in TIMM:
            return model.forward_features(pixels)
        if name == "openclip_siglip_tiny":
            return model.trunk.forward_features(pixels)
        out = model.forward_intermediates(pixels, indices=1, intermediates_only=True, output_fmt="NLC",
                                          output_extra_tokens=True)  # before ln_post, as CLIP's
        return torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], dim=1)


def library_model(name: str, seed: int = 1) -> torch.nn.Module:
    """A tiny model built by the library alone (whole model for open_clip), seeded."""
    settings = dict(TimmVitBackbone.sizes[TIMM[name]] if name in TIMM else OPEN_CLIP[name].sizes["tiny"])
    settings.pop("pretrained", None)
    create = timm.create_model if name in TIMM else open_clip.create_model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create(settings.pop("model"), **settings).eval()


def save_release(name: str, model: torch.nn.Module, folder: Path) -> None:
    """The library's release layout: timm's `save_for_hf`; open_clip's config writer and weights file."""
    if name in TIMM:
        save_for_hf(model, str(folder), safe_serialization=True)
        return
    folder.mkdir(parents=True)
    settings = dict(OPEN_CLIP[name].sizes["tiny"])
    config = {**open_clip.get_model_config(settings.pop("model")),
              **{k: v for k, v in settings.items() if k != "pretrained"}}
    save_config_for_hf(model, folder / "open_clip_config.json", model_config=config)
    safetensors.torch.save_file(model.state_dict(), folder / "open_clip_model.safetensors")


def tower(name: str, model: torch.nn.Module) -> torch.nn.Module:
    return model if name in TIMM else model.visual


@pytest.mark.parametrize("name", TINY)
def test_tiny_entries_build_the_library_model_with_its_preprocessing(name):
    backbone = create_backbone(name)
    assert backbone.preprocess.size // backbone.patch_size == 8  # OneVision tiny's grid: same regions
    assert backbone.fingerprint().startswith("random-")
    assert create_backbone(name).fingerprint() == backbone.fingerprint()
    assert create_backbone(name, seed=1).fingerprint() != backbone.fingerprint()
    assert backbone.vit_shape().prefix == PREFIX[name]
    if name in TIMM:
        assert backbone.model.num_prefix_tokens == PREFIX[name]
        expected = timm.data.resolve_data_config(model=backbone.model)["mean"]
    else:
        expected = open_clip.get_pretrained_cfg(*(OPEN_CLIP[name].sizes["tiny"][k]
                                                  for k in ("model", "pretrained")))["mean"]
    assert backbone.preprocess.mean == tuple(expected)
    assert backbone.preprocess.mean == ((0.5,) * 3 if name in ("timm_pe_tiny", "openclip_siglip_tiny")
                                        else (0.48145466, 0.4578275, 0.40821073))  # PE, SigLIP vs OpenAI


@pytest.mark.parametrize("name", TINY)
def test_tokens_are_the_library_models_own_whole_frames_and_patch_sets(name):
    backbone = create_backbone(name)
    frames = frames_for(backbone, 3)
    tokens = backbone.encode(frames, whole(backbone, 3))
    pixels = backbone.preprocess.normalize(frames[0]).transpose(0, 1)
    sequence = library_sequence(name, backbone.model, pixels)
    prefix = PREFIX[name]
    assert sequence.shape[1] == prefix + 64
    assert torch.equal(tokens[0], sequence[:, prefix:].reshape(-1, backbone.embed_dim))

    # a patch set: only the frames it touches are encoded, and its tokens are those of the whole frames
    generator = torch.Generator().manual_seed(0)
    keep = torch.randperm(2 * 64, generator=generator)[:40].sort().values + 64  # frames 1 and 2
    sparse = backbone.encode(frames, whole(backbone, 3)[:, keep])
    torch.testing.assert_close(sparse[0], tokens[0, keep], atol=1e-5, rtol=1e-5)
    assert backbone.encode_cost(whole(backbone, 3)[0, keep]).frames == 2

    if prefix:  # keep_prefix: each frame's class token ahead of its patches, as the library gives it
        kept = create_backbone(name, keep_prefix=True).encode(frames, whole(backbone, 3))
        assert torch.equal(kept[0, :3], sequence[:, 0])
        assert torch.equal(kept[0, 3:], tokens[0])


@pytest.mark.parametrize("name", TINY)
def test_layers_are_the_libraries_intermediates(name):
    backbone = create_backbone(name, layers=[0, -1])
    frames = frames_for(backbone, 1)
    pixels = backbone.preprocess.normalize(frames[0]).transpose(0, 1)
    tokens = backbone.encode(frames, whole(backbone, 1))
    model = backbone.model.trunk if name == "openclip_siglip_tiny" else backbone.model
    with torch.no_grad():
        if name != "openclip_tiny":  # timm: blocks' outputs through the final norm, prefix dropped
            first = model.forward_intermediates(pixels, indices=[0], norm=True, output_fmt="NLC",
                                                intermediates_only=True)[0]
        else:  # open_clip's CLIP tower: no final norm (its tokens precede ln_post)
            first = backbone.model.forward_intermediates(pixels, indices=[0], output_fmt="NLC",
                                                         intermediates_only=True)["image_intermediates"][0]
    torch.testing.assert_close(tokens[0, :64], first[0], atol=1e-6, rtol=1e-6)
    assert torch.equal(tokens[:, 64:], create_backbone(name).encode(frames, whole(backbone, 1)))


@pytest.mark.parametrize("name", TINY)
def test_a_release_folder_loads_offline_through_the_library_bit_identically(name, tmp_path):
    model = library_model(name)
    folder = tmp_path / "release"
    save_release(name, model, folder)
    # the release's preprocessing is read from its config
    config_file = folder / ("config.json" if name in TIMM else "open_clip_config.json")
    config = json.loads(config_file.read_text())
    pre = config["pretrained_cfg"] if name in TIMM else config["preprocess_cfg"]
    pre.update(mean=[0.25, 0.5, 0.75], interpolation="bilinear")
    config_file.write_text(json.dumps(config))

    backbone = create_backbone(name, checkpoint=str(folder))
    assert not backbone.fingerprint().startswith("random-")
    assert backbone.preprocess.mean == (0.25, 0.5, 0.75) and backbone.preprocess.interpolation == "bilinear"
    frames = frames_for(backbone, 2)
    tokens = backbone.encode(frames, whole(backbone, 2))
    pixels = backbone.preprocess.normalize(frames[0]).transpose(0, 1)
    expected = library_sequence(name, tower(name, model), pixels)[:, PREFIX[name]:]
    assert torch.equal(tokens[0], expected.reshape(-1, backbone.embed_dim))

    # the same folder as a repo id in the Hugging Face cache, offline
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny" / "snapshots" / "abc123"
    snapshot.parent.mkdir(parents=True)
    folder.rename(snapshot)
    (cache / "models--someone--tiny" / "refs").mkdir()
    (cache / "models--someone--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch = pytest.MonkeyPatch()
    with monkeypatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
        cached = create_backbone(name, checkpoint="someone/tiny")
    assert torch.equal(cached.encode(frames, whole(backbone, 2)), tokens)
    assert cached.fingerprint() == backbone.fingerprint()


@pytest.mark.parametrize("name", TINY)
def test_a_folder_without_the_librarys_files_is_refused_by_name(name, tmp_path):
    model = library_model(name)
    save_release(name, model, tmp_path / "release")
    weights = "model.safetensors" if name in TIMM else "open_clip_model.safetensors"
    (tmp_path / "release" / weights).rename(tmp_path / "release" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"release.*(model\.safetensors|open_clip_model\.safetensors)"):
        create_backbone(name, checkpoint=str(tmp_path / "release"))
    if name in TIMM:  # a transformers folder is not a timm one
        (tmp_path / "release" / "pytorch_model.bin").rename(tmp_path / "release" / weights)
        (tmp_path / "release" / "config.json").write_text(json.dumps({"model_type": "aimv2_vision_model"}))
        with pytest.raises(CheckpointError, match="config.json names no timm 'architecture'"):
            create_backbone(name, checkpoint=str(tmp_path / "release"))


@pytest.mark.parametrize("name", OPEN_CLIP)
def test_open_clips_pickled_weights_load_with_weights_only(name, tmp_path):
    model = library_model(name)
    save_release(name, model, tmp_path / "release")
    (tmp_path / "release" / "open_clip_model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "release" / "open_clip_pytorch_model.bin")
    backbone = create_backbone(name, checkpoint=str(tmp_path / "release"))
    frames = frames_for(backbone, 1)
    pixels = backbone.preprocess.normalize(frames[0]).transpose(0, 1)
    expected = library_sequence(name, model.visual, pixels)[:, PREFIX[name]:]
    assert torch.equal(backbone.encode(frames, whole(backbone, 1))[0], expected[0])


@pytest.mark.parametrize("name", TINY)
def test_integer_weights_are_refused_by_name(name, tmp_path):
    save_release(name, library_model(name), tmp_path / "release")
    weights = tmp_path / "release" / ("model.safetensors" if name in TIMM else "open_clip_model.safetensors")
    state = safetensors.torch.load_file(weights)
    key = next(k for k, v in state.items() if k.endswith("weight") and v.dim() == 2)
    state[key] = state[key].to(torch.int8)  # what a quantised or mis-saved export looks like
    safetensors.torch.save_file(state, weights)
    with pytest.raises(CheckpointError, match=rf"wrong dtype \(1\): {re.escape(key)}: checkpoint torch.int8"):
        create_backbone(name, checkpoint=str(tmp_path / "release"))


def _renamed_blocks(sd: dict[str, torch.Tensor], count: int, block: str, qkv: str, attn: str,
                    renames: tuple[tuple[str, str], ...], params: tuple[str, ...] = ("weight", "bias")
                    ) -> dict[str, torch.Tensor]:
    """The `count` blocks' weights (`block.format(i)` their prefix) under transformers' `encoder.layers.{i}.`
    names: the fused projection `qkv.format(param)` split into `attn`'s q, k and v, the rest by `renames`."""
    out = {}
    for i in range(count):
        ours, layer = block.format(i), f"encoder.layers.{i}."
        for p in params:
            for j, part in enumerate(sd[f"{ours}{qkv.format(p)}"].chunk(3)):
                out[f"{layer}{attn}.{'qkv'[j]}_proj.{p}"] = part
            for src, dst in renames:
                out[f"{layer}{dst}.{p}"] = sd[f"{ours}{src}.{p}"]
    return out


def _clip_to_transformers(visual: torch.nn.Module) -> dict[str, torch.Tensor]:
    """open_clip's CLIP tower's weights under transformers' `CLIPVisionModel` names."""
    sd = visual.state_dict()
    out = {"embeddings.patch_embedding.weight": sd["conv1.weight"],
           "embeddings.class_embedding": sd["class_embedding"],
           "embeddings.position_embedding.weight": sd["positional_embedding"]}
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        out |= {f"{theirs}.{p}": sd[f"{ours}.{p}"] for p in ("weight", "bias")}
    return out | _renamed_blocks(
        sd, len(visual.transformer.resblocks), "transformer.resblocks.{}.", "attn.in_proj_{}", "self_attn",
        (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")),
    )


def _timm_to_siglip(trunk: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A timm SigLIP trunk's weights under transformers' `SiglipVisionModel` names (head left out)."""
    sd = trunk.state_dict()
    out = {"embeddings.patch_embedding.weight": sd["patch_embed.proj.weight"],
           "embeddings.patch_embedding.bias": sd["patch_embed.proj.bias"],
           "embeddings.position_embedding.weight": sd["pos_embed"][0]}
    out |= {f"post_layernorm.{p}": sd[f"norm.{p}"] for p in ("weight", "bias")}
    return out | _renamed_blocks(
        sd, len(trunk.blocks), "blocks.{}.", "attn.qkv.{}", "self_attn",
        (("attn.proj", "self_attn.out_proj"), ("norm1", "layer_norm1"), ("norm2", "layer_norm2"),
         ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")),
    )


def _timm_to_aimv2(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm's AIMv2 weights under transformers' `Aimv2VisionModel` names (SwiGLU: gate fc1_g, up fc1_x)."""
    sd = model.state_dict()
    out = {"embeddings.patch_embed.weight": sd["patch_embed.proj.weight"],
           "embeddings.patch_embed.bias": sd["patch_embed.proj.bias"],
           "embeddings.rms_norm.weight": sd["patch_embed.norm.weight"],
           "embeddings.position_embedding.weight": sd["pos_embed"][0], "rms_norm.weight": sd["norm.weight"]}
    return out | _renamed_blocks(
        sd, len(model.blocks), "blocks.{}.", "attn.qkv.{}", "attention",
        (("attn.proj", "attention.out_proj"), ("norm1", "rms_norm1"), ("norm2", "rms_norm2"),
         ("mlp.fc1_g", "ffn.gate_proj"), ("mlp.fc1_x", "ffn.up_proj"), ("mlp.fc2", "ffn.down_proj")),
        params=("weight",),
    )


@pytest.mark.parametrize("name, theirs", [("openclip_tiny", "clip_tiny"),
                                          ("openclip_siglip_tiny", "siglip2_fixed_tiny"),
                                          ("timm_aimv2_tiny", "aimv2_tiny")])
def test_timm_open_clip_and_transformers_give_the_same_tokens_for_the_same_weights(name, theirs, tmp_path):
    ours = create_backbone(name, keep_prefix=True) if PREFIX[name] else create_backbone(name)
    visual = ours.model
    sizes = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=112)
    if name == "openclip_tiny":
        hf = CLIPVisionModel(CLIPVisionConfig(**sizes, intermediate_size=256, hidden_act="quick_gelu",
                                              layer_norm_eps=1e-5))
        state = _clip_to_transformers(visual)
    elif name == "openclip_siglip_tiny":  # timm's SigLIP computes exact GELU (transformers': tanh's)
        hf = SiglipVisionModel(SiglipVisionConfig(**sizes, intermediate_size=239, hidden_act="gelu",
                                                  layer_norm_eps=1e-6, vision_use_head=False))
        state = _timm_to_siglip(visual.trunk)
    else:  # AIMv2 at a fixed size: learned positions, as timm's
        hf = Aimv2VisionModel(Aimv2VisionConfig(**sizes, intermediate_size=176, use_head=False))
        state = _timm_to_aimv2(visual)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if "position_ids" not in k]
    hf.save_pretrained(tmp_path / "transformers")
    other = create_backbone(theirs, checkpoint=str(tmp_path / "transformers"),
                            **({"keep_prefix": True} if PREFIX[name] else {}))
    assert other.preprocess.mean == ours.preprocess.mean
    frames = frames_for(ours, 2)
    positions = whole(ours, 2)
    a, b = ours.encode(frames, positions), other.encode(frames, positions)
    assert a.shape == b.shape == (1, 2 * (PREFIX[name] + 64), 64)
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    assert ours.tokens == other.tokens


def test_every_entry_has_a_config_file_and_a_label():
    registered = list_backbones()
    for family in (TimmVitBackbone, OpenClipBackbone, OpenClipTimmBackbone):
        for name in family.entries:
            assert name in registered
            assert (CONF / f"{name}.yaml").is_file(), f"{name} has no config file in {CONF}"
            assert compose_config([f"backbone={name}"])["backbone"]["name"] == name
            assert backbone_label(name).split()[0] in ("timm", "open_clip")
    # the released entries name the library's own architectures and tags
    assert "vit_pe_core_large_patch14_336.fb" in timm.list_pretrained("vit_pe_core_large*")
    assert "aimv2_large_patch14_224.apple_pt" in timm.list_pretrained("aimv2_large_patch14_224*")
    assert open_clip.get_pretrained_cfg("ViT-L-14-quickgelu", "metaclip_fullcc")["hf_hub"].startswith(
        OpenClipBackbone.entries["openclip_metaclip_large14"].repo_id)
    assert open_clip.get_pretrained_cfg("ViT-SO400M-14-SigLIP-384", "webli")["hf_hub"].startswith(
        OpenClipTimmBackbone.entries["openclip_siglip_so400m14_384"].repo_id)


def test_a_frame_of_the_models_grid_but_fewer_pixels_is_padded_where_the_model_never_reads():
    # as SigLIP so400m/14 at 384 takes 378 px frames (27 x 27 patches either way): a tiny model of 120 px
    # (8 x 8 patches of 14, 8 px no patch reads) takes the entry's 112 px frames, padded
    backbone = create_backbone("timm_pe_tiny", img_size=120)
    assert tuple(backbone.model.patch_embed.img_size) == (120, 120) and backbone.preprocess.size == 112
    frames = frames_for(backbone, 1)
    pixels = backbone.preprocess.normalize(frames[0]).transpose(0, 1)
    tokens = backbone.encode(frames, whole(backbone, 1))
    for value in (0.0, 3.0):
        with torch.no_grad():
            expected = backbone.model.forward_features(F.pad(pixels, (0, 8, 0, 8), value=value))
        assert torch.equal(tokens[0], expected[0, 1:])
    with pytest.raises(ValueError, match="timm_pe_tiny: input_size 140 gives another patch grid"):
        create_backbone("timm_pe_tiny", input_size=140)


@pytest.mark.parametrize("sampling", ["uniform", "codec"])
def test_every_tiny_entry_runs_the_pipeline(tmp_path, sampling):
    records = [run(small(tmp_path, f"backbone={name}", f"sampling={sampling}")) for name in TINY]
    assert [r["backbone"]["name"] for r in records] == TINY
    assert {r["sampling"]["tokens_per_clip"] for r in records} == {256}
    assert all(r["metrics"]["num_test"] == 16 and r["backbone"]["random_weights"] for r in records)
    table = format_table([record_row(r) for r in records])
    assert all(f"| {backbone_label(name, random_weights=True)} |" in table for name in TINY)
