"""V-JEPA 2, a video encoder, through transformers' `VJEPA2Model` (encoder only: `skip_predictor`).

It embeds tubelets of 2 frames x 16 x 16 pixels (3-D RoPE, so any frame count and size), so it sees the
sampled frames as one clip, not frame by frame: the frames are encoded together (an odd count gets its last
frame repeated to fill the last tubelet) and each requested patch position `(t, h, w)` receives the token
of its tubelet `(t // 2, h, w)`. Under uniform sampling (an even frame count) every tubelet token is given
exactly twice, and an attentive probe's softmax pooling over a set with every token doubled equals the
pooling over the tokens once: the probe sees V-JEPA 2's native tubelets. Tokens are the encoder's
`last_hidden_state` (after its final layer norm), the last layer only.

Codec patch sets: `VJEPA2Model` applies its masks after the encoder, so kept tubelets save no compute; the
whole clip of the view is encoded, its frames without a kept patch blank as the sampler's sparse layout
gives them, and the tokens of the tubelets the kept patches fall in are given
(`sparse_mode = "whole_clip_then_gather"`, declared in the record).
"""

from __future__ import annotations

import torch
from transformers import VJEPA2Config, VJEPA2Model

from backbones.base import EncodeCost, ViTShape
from backbones.dinov3 import IMAGENET_MEAN, IMAGENET_STD
from backbones.frames import Entry, FrameBackbone

PREDICTOR_TINY = dict(pred_hidden_size=32, pred_num_attention_heads=2, pred_num_hidden_layers=1)


class Vjepa2Backbone(FrameBackbone):
    """Frozen V-JEPA 2 encoder; one token per tubelet, given to both of its frames' patch positions."""

    sparse_modes = ("whole_clip_then_gather",)
    model_class = VJEPA2Model
    blocks_path, final_norm_path = "encoder.layer", "encoder.layernorm"
    config_class = VJEPA2Config
    mean = IMAGENET_MEAN
    std = IMAGENET_STD
    sizes = {
        "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, crop_size=128,
                     frames_per_clip=16, num_pooler_layers=1, **PREDICTOR_TINY),
        "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
        "huge": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16),
        "giant": dict(hidden_size=1408, num_hidden_layers=40, num_attention_heads=22, mlp_ratio=48 / 11),
    }
    # 256 px at patch 16 is OneVision's 16 x 16 grid (128 px the tiny entries' 8 x 8).
    entries = {
        "vjepa2_tiny": Entry("tiny", None, 128),
        "vjepa2_large": Entry("large", "facebook/vjepa2-vitl-fpc64-256", 256),
        "vjepa2_huge": Entry("huge", "facebook/vjepa2-vith-fpc64-256", 256),
        "vjepa2_giant": Entry("giant", "facebook/vjepa2-vitg-fpc64-256", 256),
    }

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        b, t, h, w, _ = frames.shape
        k = int(self.model.config.tubelet_size)
        if t % k:  # fill the last tubelet with the last frame
            frames = torch.cat([frames, frames[:, -1:].expand(b, k - t % k, h, w, 3)], dim=1)
        param = next(self.model.parameters())
        video = self.preprocess.normalize(frames.to(param.device)).transpose(1, 2).to(param.dtype)
        tokens = self.layer_outputs(
            lambda: self.model(pixel_values_videos=video, skip_predictor=True).last_hidden_state
        )
        gh, gw = h // self.patch_size, w // self.patch_size
        positions = positions.to(tokens.device)
        index = (positions[..., 0] // k) * gh * gw + positions[..., 1] * gw + positions[..., 2]
        index = index[None, ..., None].expand(len(tokens), -1, -1, tokens.shape[-1])
        return self.layer_after_layer(torch.gather(tokens, 2, index))

    def vit_shape(self) -> ViTShape:
        c = self.model.config
        return ViTShape(c.num_hidden_layers, c.hidden_size, int(c.hidden_size * c.mlp_ratio),
                        3 * int(c.tubelet_size) * self.patch_size**2)

    def encode_cost(self, positions: torch.Tensor) -> EncodeCost:
        """One sequence of every tubelet of the view's frames (up to the last one a position points to,
        filled to whole tubelets), whatever was kept."""
        k = int(self.model.config.tubelet_size)
        frames = int(positions[:, 0].max()) + 1 if len(positions) else 0
        tubelets = -(-frames // k) * (self.preprocess.size // self.patch_size) ** 2
        return EncodeCost(frames=frames, tokens=tubelets, kept=len(positions) * self.layer_count,
                          flops=self.vit_shape().flops(tubelets))


Vjepa2Backbone.register_all()
