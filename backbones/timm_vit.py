"""ViTs released for timm, through timm itself, frame by frame: AIMv2 (`aimv2_large_patch14_224.apple_pt`)
and Perception Encoder core (`vit_pe_core_large_patch14_336.fb`), beside the transformers release folders.

Built with `timm.create_model`: the architecture by name (a `*_tiny` entry passes small sizes: depth,
embed_dim, num_heads, img_size; weights seeded), or a release folder in timm's Hugging Face layout
(`config.json` with `architecture`, `model_args` and `pretrained_cfg`, `model.safetensors`; what
`timm.models.save_for_hf` writes and the `timm/<name>` repos hold) as `local-dir:`, found as a folder or as
the repo id in the Hugging Face cache, offline. Preprocessing (mean, std, interpolation) is the model's
`pretrained_cfg` as `timm.data.resolve_data_config` reads it.

Tokens: `forward_features`, the last block's output through the final norm (`norm`), as transformers'
`last_hidden_state` of the same weights; the model's `num_prefix_tokens` class/register tokens (none for
AIMv2, PE's class token) are the `vit_shape().prefix` and dropped, as for the other families (`keep_prefix`
keeps them). The heads (AIMv2's, PE's attention pool) are not run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from backbones.base import PreprocessSpec, ViTShape
from backbones.frames import Entry, FrameBackbone
from backbones.weights import CheckpointError, check_file_dtypes, resolve_checkpoint_dir

log = logging.getLogger(__name__)

TINY = dict(depth=2, embed_dim=64, num_heads=2, img_size=112)


def set_attention(model: nn.Module, attn_implementation: str | None) -> None:
    """timm's attention as one fused kernel (`sdpa`, its default) or as matrix products (`eager`: what
    torch's FLOP counter sees); the same tokens up to float rounding."""
    if attn_implementation not in (None, "sdpa", "eager"):
        raise ValueError(f"attn_implementation={attn_implementation!r} is not one of sdpa, eager")
    if attn_implementation:
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = attn_implementation == "sdpa"


def check_grid(name: str, input_size: int, patch: int, size: tuple[int, int], dynamic: bool) -> None:
    """A model with learned positions of a fixed `size` takes frames of its own patch grid only (a
    smaller frame of that grid is padded where its patch embedding never reads, `fit_to_model`)."""
    if not dynamic and any(input_size // patch != s // patch for s in size):
        raise ValueError(
            f"{name}: input_size {input_size} gives another patch grid than the {size[0]} px its position "
            f"embeddings were learned at; use input_size={size[0]} (or dynamic_img_size=true, timm only)"
        )


def fit_to_model(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Frames of the model's grid but fewer pixels (SigLIP so400m/14 at 378 of 384 px: 27 x 27 patches
    either way) padded at the bottom and right, in pixels the strided patch convolution never reads."""
    h, w = pixels.shape[-2:]
    return F.pad(pixels, (0, size[1] - w, 0, size[0] - h)) if (h, w) != tuple(size) else pixels


def timm_vit_shape(model: nn.Module) -> ViTShape:
    """FLOP sizes of a timm ViT (`VisionTransformer`, `Eva`) from its modules."""
    mlp = model.blocks[0].mlp
    gated = hasattr(mlp, "fc1_g")  # SwiGLU: gate and value projections of the same width
    hidden = (mlp.fc1_g if gated else mlp.fc1).out_features
    patch = model.patch_embed.patch_size
    return ViTShape(len(model.blocks), model.embed_dim, hidden, model.patch_embed.proj.in_channels
                    * patch[0] * patch[1], prefix=model.num_prefix_tokens, gated_mlp=gated)


def timm_tokens(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """`forward_features`: prefix tokens, then the patches in raster order, after the final norm."""
    if not getattr(model, "dynamic_img_size", False):
        pixels = fit_to_model(pixels, model.patch_embed.img_size)
    return model.forward_features(pixels)


class TimmVitBackbone(FrameBackbone):
    """A frozen timm ViT; tokens: `forward_features` (see the module docstring). Sparse patch sets: whole
    frames encoded, selected tokens kept."""

    blocks_path, final_norm_path = "blocks", "norm"
    # timm model names (with the pretrained tag of the release) and, for the tiny entries, small sizes.
    sizes = {
        "aimv2_tiny": dict(model="aimv2_large_patch14_224", **TINY),
        "pe_tiny": dict(model="vit_pe_core_large_patch14_336", **TINY),
        "aimv2_large14_224": dict(model="aimv2_large_patch14_224.apple_pt"),
        "pe_core_large14_336": dict(model="vit_pe_core_large_patch14_336.fb"),
    }
    # Native sizes: AIMv2 L/14 at 224 is OneVision's 16 x 16 grid; PE core L/14 keeps its 336 (24 x 24).
    entries = {
        "timm_aimv2_tiny": Entry("aimv2_tiny", None, 112),
        "timm_pe_tiny": Entry("pe_tiny", None, 112),
        "timm_aimv2_large14_224": Entry("aimv2_large14_224", "timm/aimv2_large_patch14_224.apple_pt", 224),
        "timm_pe_core_large14_336": Entry("pe_core_large14_336", "timm/vit_pe_core_large_patch14_336.fb",
                                          336),
    }

    def __init__(self, name: str, model: nn.Module, input_size: int, fingerprint: str,
                 frame_batch: int = 64) -> None:
        super().__init__(name, model, input_size, fingerprint, frame_batch)
        check_grid(name, input_size, self.patch_size, tuple(model.patch_embed.img_size),
                   getattr(model, "dynamic_img_size", False))

    @staticmethod
    def model_dims(model: nn.Module) -> tuple[int, int]:
        return int(model.patch_embed.patch_size[0]), int(model.embed_dim)

    def model_preprocess(self, model: nn.Module, input_size: int) -> PreprocessSpec:
        data = timm.data.resolve_data_config(model=model)
        return PreprocessSpec(tuple(data["mean"]), tuple(data["std"]), input_size, data["interpolation"])

    def folder_preprocess(self, folder: Path) -> PreprocessSpec:
        """The release's preprocessing is the model's `pretrained_cfg` (read from its config.json)."""
        size = self.model.pretrained_cfg.get("input_size", (3, self.preprocess.size))[-1]
        if size != self.preprocess.size:
            log.warning("%s: %s/config.json declares input size %d; the suite uses %d; set "
                        "backbone.args.input_size=%d for the release's", self.name, folder, size,
                        self.preprocess.size, size)
        return self.preprocess

    @classmethod
    def random_model(cls, size: str, seed: int, **config_overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
        settings = {**cls.sizes[size], **config_overrides}
        kwargs = {k: v for k, v in settings.items() if k not in ("model", "attn_implementation")}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(settings["model"], pretrained=False, **kwargs)
        set_attention(model, settings.get("attn_implementation"))
        return model, {**settings, "class": f"timm.{type(model).__name__}", "timm": timm.__version__}

    @classmethod
    def load(cls, source: str | Path, dtype: torch.dtype, **config_overrides: Any
             ) -> tuple[nn.Module, list[Path]]:
        """timm's own loader on the folder (`local-dir:`), which checks every key and shape."""
        folder = resolve_checkpoint_dir(source)
        config, weights = folder / "config.json", folder / "model.safetensors"
        for path in (config, weights):
            if not path.is_file():
                raise CheckpointError(
                    f"no {path.name} in {folder}; a timm release folder holds config.json and "
                    "model.safetensors (save one with timm.models.save_for_hf(model, DIR, "
                    "safe_serialization=True))"
                )
        try:
            architecture = json.loads(config.read_text()).get("architecture")
        except (json.JSONDecodeError, AttributeError) as err:
            raise CheckpointError(f"{config} is not a JSON object: {err}") from err
        if architecture is None:
            raise CheckpointError(f"{config} names no timm 'architecture': a transformers release folder "
                                  "loads with the transformers entries (e.g. aimv2_large14_224)")
        overrides = dict(config_overrides)
        attn = overrides.pop("attn_implementation", None)
        try:
            model = timm.create_model(f"local-dir:{folder}", pretrained=True, **overrides)
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"timm cannot build {folder} from its config.json and weights: {err}"
                                  ) from err
        check_file_dtypes(model, weights)
        set_attention(model, attn)
        return model.to(dtype), [weights, config]

    def vit_shape(self) -> ViTShape:
        return timm_vit_shape(self.model)

    def frame_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return timm_tokens(self.model, pixels)


TimmVitBackbone.register_all()
