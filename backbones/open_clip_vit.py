"""Vision towers released for open_clip, through open_clip itself, frame by frame: MetaCLIP L/14
(`ViT-L-14-quickgelu`, tag `metaclip_fullcc`, held by `timm/vit_large_patch14_clip_224.metaclip_2pt5b`) and
SigLIP so400m/14 at 384 (`ViT-SO400M-14-SigLIP-384`, tag `webli`, `timm/ViT-SO400M-14-SigLIP-384`), beside
the transformers release folders of the same weights.

Built with `open_clip.create_model`: the model config by name (a `*_tiny` entry overrides its
`vision_cfg`/`text_cfg` with small sizes; weights seeded), or a release folder in open_clip's Hugging Face
layout (`open_clip_config.json` with `model_cfg` and `preprocess_cfg`, and `open_clip_model.safetensors` or
`open_clip_pytorch_model.bin`, which open_clip reads with `torch.load(weights_only=True)`) as
`local-dir:`, found as a folder or as the repo id in the Hugging Face cache, offline. The whole model is
built (open_clip checks every key of it) and its `visual` tower kept. Preprocessing (mean, std,
interpolation) is the tower's `preprocess_cfg`: the release's, or for random weights the registered tag's.

Tokens, chosen so that the same weights give the same tokens through open_clip and through transformers:
- open_clip's own `VisionTransformer` (CLIP, MetaCLIP): the last block's output *before* `ln_post`
  (`forward_intermediates(normalize_intermediates=False)`), as transformers' CLIP `last_hidden_state` (which
  precedes `post_layernorm`) and as the original suite probes; the class token is the prefix (dropped; kept
  by `keep_prefix`/`reference`). open_clip's own `output_tokens` would give them after `ln_post`.
- a timm tower (`TimmModel`: SigLIP): the trunk's `forward_features`, after its final norm, as
  transformers' SigLIP `last_hidden_state` (after `post_layernorm`); SigLIP has no class token. The MAP head
  is not run. timm's SigLIP uses exact GELU where transformers' SigLIP config says `gelu_pytorch_tanh`, so
  real releases agree between the libraries to float tolerance, not bit for bit.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

import backbones.timm_archs  # noqa: F401  (registers the tiny SigLIP tower open_clip names)
from backbones.base import PreprocessSpec, ViTShape
from backbones.frames import Entry, FrameBackbone
from backbones.timm_vit import check_grid, fit_to_model, set_attention, timm_tokens, timm_vit_shape
from backbones.weights import CheckpointError, check_file_dtypes, resolve_checkpoint_dir

log = logging.getLogger(__name__)

CONFIG = "open_clip_config.json"
# The weight files open_clip's `local-dir:` loader takes, in its order of preference (factory.py
# `_find_checkpoint_in_dir`); a folder holding only other files (timm's `model.safetensors`) is refused.
WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
           "open_clip_pytorch_model.bin")
PREPROCESS = ("mean", "std", "interpolation", "resize_mode")
TINY_TEXT = dict(context_length=16, vocab_size=64, width=32, heads=2, layers=1)


class OpenClipBackbone(FrameBackbone):
    """Frozen open_clip `VisionTransformer` (CLIP, MetaCLIP): tokens before `ln_post`, class token dropped
    (see the module docstring). Sparse patch sets: whole frames encoded, selected tokens kept."""

    blocks_path = "transformer.resblocks"  # no final norm: the tokens precede ln_post
    reference_keeps_prefix = True  # the original suite's MetaCLIP: CLIP's last_hidden_state, class token kept
    # open_clip model config names, the pretrained tag whose preprocessing random weights take, and for the
    # tiny entries the configs' overrides.
    sizes = {
        "tiny": dict(model="ViT-L-14-quickgelu", pretrained="metaclip_fullcc", embed_dim=32,
                     vision_cfg=dict(image_size=112, layers=2, width=64, patch_size=14, head_width=32),
                     text_cfg=TINY_TEXT),
        "metaclip_large14": dict(model="ViT-L-14-quickgelu", pretrained="metaclip_fullcc"),
    }
    entries = {
        "openclip_tiny": Entry("tiny", None, 112),
        "openclip_metaclip_large14": Entry("metaclip_large14",
                                           "timm/vit_large_patch14_clip_224.metaclip_2pt5b", 224),
    }

    def __init__(self, name: str, model: nn.Module, input_size: int, fingerprint: str,
                 frame_batch: int = 64) -> None:
        super().__init__(name, model, input_size, fingerprint, frame_batch)
        check_grid(name, input_size, self.patch_size, tuple(model.image_size), dynamic=False)

    @staticmethod
    def model_dims(model: nn.Module) -> tuple[int, int]:
        return int(model.patch_size[0]), int(model.transformer.width)

    def model_preprocess(self, model: nn.Module, input_size: int) -> PreprocessSpec:
        cfg = model.preprocess_cfg
        return PreprocessSpec(tuple(cfg["mean"]), tuple(cfg["std"]), input_size, cfg["interpolation"])

    def folder_preprocess(self, folder: Path) -> PreprocessSpec:
        """The release's preprocessing is the tower's `preprocess_cfg` (from its open_clip_config.json)."""
        size = self.model.preprocess_cfg["size"]
        size = size[0] if isinstance(size, (tuple, list)) else size
        if size != self.preprocess.size:
            log.warning("%s: %s/%s declares input size %d; the suite uses %d (the same patch grid, padded)",
                        self.name, folder, CONFIG, size, self.preprocess.size)
        return self.preprocess

    @classmethod
    def random_model(cls, size: str, seed: int, **config_overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
        settings = {**cls.sizes[size], **config_overrides}
        kwargs = {k: v for k, v in settings.items()
                  if k not in ("model", "pretrained", "attn_implementation")}
        tag = open_clip.get_pretrained_cfg(settings["model"], settings["pretrained"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(settings["model"], force_preprocess_cfg={
                k: tag[k] for k in PREPROCESS if k in tag}, **kwargs)
        set_attention(model.visual, settings.get("attn_implementation"))
        return model.visual, {**settings, "class": f"open_clip.{type(model.visual).__name__}",
                              "open_clip": open_clip.__version__}

    @classmethod
    def load(cls, source: str | Path, dtype: torch.dtype, **config_overrides: Any
             ) -> tuple[nn.Module, list[Path]]:
        """open_clip's own loader on the folder (`local-dir:`), strict on every key; the tower is kept."""
        folder = resolve_checkpoint_dir(source)
        weights = next((folder / w for w in WEIGHTS if (folder / w).is_file()), None)
        if not (folder / CONFIG).is_file() or weights is None:
            raise CheckpointError(
                f"{folder} is not an open_clip release folder: it needs {CONFIG} and one of "
                f"{', '.join(WEIGHTS)} (open_clip.push_to_hf_hub.save_for_hf writes them)"
            )
        overrides = dict(config_overrides)
        attn = overrides.pop("attn_implementation", None)
        try:
            model = open_clip.create_model(f"local-dir:{folder}", **overrides)
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"open_clip cannot build {folder} from its {CONFIG} and weights: {err}"
                                  ) from err
        if weights.suffix == ".safetensors":
            check_file_dtypes(model, weights)
        set_attention(model.visual, attn)
        return model.visual.to(dtype), [weights, folder / CONFIG]

    def vit_shape(self) -> ViTShape:
        blocks = self.model.transformer.resblocks
        return ViTShape(len(blocks), self.embed_dim, blocks[0].mlp.c_fc.out_features,
                        self.model.conv1.in_channels * self.patch_size**2, prefix=1)

    def frame_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model.forward_intermediates(
            fit_to_model(pixels, self.model.image_size), indices=1, intermediates_only=True,
            normalize_intermediates=False, output_fmt="NLC", output_extra_tokens=True,
        )
        return torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], dim=1)


class OpenClipTimmBackbone(OpenClipBackbone):
    """Frozen open_clip tower holding a timm trunk (SigLIP): the trunk's `forward_features`, after its
    final norm (see the module docstring). Sparse patch sets: whole frames encoded, selected tokens kept."""

    blocks_path, final_norm_path = "trunk.blocks", "trunk.norm"
    reference_keeps_prefix = False  # SigLIP has no class token
    sizes = {
        "tiny": dict(model="ViT-SO400M-14-SigLIP-384", pretrained="webli", embed_dim=64,
                     vision_cfg=dict(image_size=112, timm_model_name="ovprobe_siglip_tiny_patch14_112",
                                     timm_model_pretrained=False, timm_pool="map", timm_proj="none"),
                     text_cfg=dict(TINY_TEXT, width=64, no_causal_mask=True, proj_bias=True,
                                   pool_type="last")),
        "siglip_so400m14_384": dict(model="ViT-SO400M-14-SigLIP-384", pretrained="webli"),
    }
    # so400m/14 at 384 px sees the 27 x 27 patches of 378 px: frames of 378 px are padded to 384 where its
    # patch convolution never reads (the transformers entry `siglip_so400m14_384` takes 378 px likewise).
    entries = {
        "openclip_siglip_tiny": Entry("tiny", None, 112),
        "openclip_siglip_so400m14_384": Entry("siglip_so400m14_384", "timm/ViT-SO400M-14-SigLIP-384", 378),
    }

    @staticmethod
    def model_dims(model: nn.Module) -> tuple[int, int]:
        return int(model.trunk.patch_embed.patch_size[0]), int(model.trunk.embed_dim)

    def vit_shape(self) -> ViTShape:
        return timm_vit_shape(self.model.trunk)

    def frame_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return timm_tokens(self.model.trunk, pixels)


OpenClipBackbone.register_all()
OpenClipTimmBackbone.register_all()
