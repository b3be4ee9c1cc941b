"""The OneVision-Encoder: a pre-norm ViT with 3-D RoPE, sparse/packed token modes and a pooling head."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from backbones.onevision.config import OneVisionConfig
from backbones.onevision.rope import Rope3D, apply_rope, grid_positions


@dataclass
class OneVisionOutput:
    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


class RMSNorm(nn.Module):
    """weight * x * rsqrt(mean(x^2) + eps), computed in float32; weight only, no bias."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * xf.to(x.dtype)).to(x.dtype)


def make_norm(config: OneVisionConfig) -> nn.Module:
    if config.layer_norm_type == "rms_norm":
        return RMSNorm(config.hidden_size, config.layer_norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact erf GELU


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v in float32 softmax; the reference the SDPA path is checked against."""
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    return scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype) @ v


class Attention(nn.Module):
    def __init__(self, config: OneVisionConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = config.attention_dropout
        self.eager = config.attn_implementation == "eager"

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        q = apply_rope(heads(self.q_proj(x)), cos, sin)
        k = apply_rope(heads(self.k_proj(x)), cos, sin)
        v = heads(self.v_proj(x))
        if self.eager:
            out = eager_attention(q, k, v)
        else:
            dropout = self.dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class EncoderLayer(nn.Module):
    def __init__(self, config: OneVisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = make_norm(config)
        self.self_attn = Attention(config)
        self.layer_norm2 = make_norm(config)
        self.mlp = Mlp(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), cos, sin)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, config: OneVisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))


class PatchEmbedding(nn.Module):
    def __init__(self, config: OneVisionConfig) -> None:
        super().__init__()
        p = config.patch_size
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size, p, stride=p, bias=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """`[B, T, C, H, W]` -> `[B, T*Hp*Wp, D]` with token n = t*Hp*Wp + h*Wp + w."""
        b = frames.shape[0]
        x = self.patch_embedding(frames.flatten(0, 1).to(self.patch_embedding.weight.dtype))
        return x.flatten(2).transpose(1, 2).reshape(b, -1, x.shape[1])


class PoolingHead(nn.Module):
    """A learned probe attends over the sequence; out = r + MLP(RMSNorm(r))."""

    def __init__(self, config: OneVisionConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.probe = nn.Parameter(torch.zeros(1, 1, dim))
        self.attention = nn.MultiheadAttention(dim, config.num_attention_heads, batch_first=True)
        self.norm = RMSNorm(dim, 1e-6)
        self.mlp = Mlp(dim, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probe = self.probe.expand(x.shape[0], -1, -1)
        r = self.attention(probe, x, x, need_weights=False)[0]
        return (r + self.mlp(self.norm(r)))[:, 0]


class PositionError(ValueError):
    pass


class OneVisionEncoder(nn.Module):
    """OneVision-Encoder with the released checkpoints' parameter names.

    `model(pixel_values, visible_indices=None, patch_positions=None, output_hidden_states=False)`:
    `pixel_values` is `[B, C, H, W]` (one frame) or `[B, C, T, H, W]` (video), any H, W divisible
    by the patch size. RoPE positions come from `patch_positions [B, N, 3]` when given; otherwise
    from a `(T_rope, Hp, Wp)` grid indexed by `visible_indices [B, K]` (default: all tokens).
    If K is smaller than the number of input tokens the tokens at those indices are kept
    (sparse mode); if equal, tokens keep their order and the indices only give positions
    (packed mode: K selected patches packed into K/(Hp*Wp) pseudo-frames).
    """

    def __init__(self, config: OneVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = PatchEmbedding(config)
        self.layernorm_pre = make_norm(config)
        self.encoder = Encoder(config)
        self.rope = Rope3D(config.head_dim, config.rope_theta)
        if config.use_head:
            self.layernorm_post = make_norm(config)
            self.head = PoolingHead(config)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):
            nn.init.normal_(module.in_proj_weight, std=std)
            nn.init.zeros_(module.in_proj_bias)
        elif isinstance(module, PoolingHead):
            nn.init.normal_(module.probe, std=std)

    @classmethod
    def from_pretrained(
        cls, folder_or_repo_id: str | Path, dtype: torch.dtype | str | None = None, **config_overrides
    ) -> OneVisionEncoder:
        """Load `config.json` + safetensors weights from a local folder or the Hugging Face cache."""
        from backbones.onevision.checkpoint import load_pretrained

        return load_pretrained(cls, folder_or_repo_id, dtype=dtype, **config_overrides)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write `config.json` + `model.safetensors` in the released checkpoints' format."""
        from backbones.onevision.checkpoint import save_pretrained

        save_pretrained(self, folder)

    def _positions(
        self,
        shape: tuple[int, int, int, int],
        is_video: bool,
        visible_indices: torch.Tensor | None,
        patch_positions: torch.Tensor | None,
        device: torch.device,
    ) -> torch.Tensor:
        batch, frames, hp, wp = shape
        if patch_positions is not None:
            return patch_positions.to(device)
        t_rope = (self.config.rope_temporal_size or frames) if is_video else 1
        grid = grid_positions(t_rope, hp, wp, device)
        if visible_indices is None:
            if frames * hp * wp > grid.shape[0]:
                raise PositionError(
                    f"input has {frames} frames but rope_temporal_size is {t_rope}; pass visible_indices "
                    "or patch_positions, or raise rope_temporal_size"
                )
            return grid[: frames * hp * wp].expand(batch, -1, -1)
        if int(visible_indices.max()) >= grid.shape[0] or int(visible_indices.min()) < 0:
            raise PositionError(
                f"visible_indices must lie in [0, {grid.shape[0]}) for a {t_rope}x{hp}x{wp} position grid"
            )
        return grid[visible_indices.to(device)]

    def forward(
        self,
        pixel_values: torch.Tensor,
        visible_indices: torch.Tensor | None = None,
        patch_positions: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> OneVisionOutput:
        if pixel_values.dim() == 4:
            frames = pixel_values.unsqueeze(1)
        elif pixel_values.dim() == 5:
            frames = pixel_values.transpose(1, 2)
        else:
            raise ValueError(
                f"pixel_values must be [B,C,H,W] or [B,C,T,H,W], got {tuple(pixel_values.shape)}"
            )
        batch, n_frames, _, height, width = frames.shape
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(f"input size {height}x{width} is not divisible by the patch size {p}")
        hp, wp = height // p, width // p

        x = self.embeddings(frames)
        if visible_indices is not None and visible_indices.shape[-1] < x.shape[1]:
            gather = visible_indices.to(x.device).unsqueeze(-1).expand(-1, -1, x.shape[-1])
            x = x.gather(1, gather)
        positions = self._positions(
            (batch, n_frames, hp, wp), pixel_values.dim() == 5, visible_indices, patch_positions, x.device
        )
        if positions.shape[:2] != x.shape[:2]:
            raise PositionError(
                f"got positions for {positions.shape[1]} tokens but the input has {x.shape[1]} tokens"
            )
        angles = self.rope(positions).unsqueeze(1)
        cos, sin = angles.cos(), angles.sin()

        x = self.layernorm_pre(x)
        hidden_states = [x] if output_hidden_states else None
        for layer in self.encoder.layers:
            x = layer(x, cos, sin)
            if hidden_states is not None:
                hidden_states.append(x)
        pooled = None
        if self.config.use_head:
            x = self.layernorm_post(x)
            pooled = self.head(x)
        return OneVisionOutput(
            last_hidden_state=x,
            pooler_output=pooled,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
        )
