"""The attentive probe: a SigLIP2-style attention-pooling head over frozen tokens.

One learned query cross-attends to the tokens, a residual MLP refines the pooled vector, and a
LayerNorm plus linear layer classify it. `depth > 0` adds self-attention blocks over the tokens
before the pooling, as V-JEPA 2's frozen evaluation does. Image backbones see frames one at a time,
so the probe can add a temporal embedding of each token's frame index `positions[..., 0]`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

CLASSIFIER_INIT_SCALE = 1e-3


class Attention(nn.Module):
    """Multi-head attention of `queries` over `tokens`; `mask` [B, N] is True for real tokens."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, m, d = queries.shape
        n = tokens.shape[1]
        h = self.num_heads
        q = self.q(queries).view(b, m, h, d // h).transpose(1, 2)
        k, v = self.kv(tokens).view(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, m, d))


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class Block(nn.Module):
    """Pre-norm transformer block (self-attention, then MLP)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, mask)
        return x + self.mlp(self.norm2(x))


class AttentionPool(nn.Module):
    """SigLIP2's MAP head: one learned query cross-attends to the tokens, then a residual MLP.

    As in V-JEPA's pooler, the tokens are layer-normed first (they come straight from the store or
    from the probe's own blocks) and the query is kept as a residual around the cross-attention,
    which makes the head start learning sooner on small data.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q = self.query.expand(x.shape[0], -1, -1)
        q = q + self.attn(q, self.norm_kv(x), mask)
        q = q + self.mlp(self.norm(q))
        return q[:, 0]


class SinusoidalTime(nn.Module):
    """Fixed sin/cos embedding of the frame index (any range of t)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half, 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[..., None] * self.freqs
        emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
        return F.pad(emb, (0, self.dim - emb.shape[-1]))


class LearnedTime(nn.Module):
    """A learned vector per temporal slot."""

    def __init__(self, dim: int, slots: int) -> None:
        super().__init__()
        self.table = nn.Embedding(slots, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        slots = self.table.num_embeddings
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= slots):
            raise ValueError(
                f"token time index range [{int(t.min())}, {int(t.max())}] falls outside the learned "
                f"temporal table of {slots} slots; raise temporal_slots in the probe config"
            )
        return self.table(t)


def _no_time(dim: int, slots: int | None) -> None:
    return None


def _learned_time(dim: int, slots: int | None) -> LearnedTime:
    if slots is None:
        raise ValueError("temporal_pos='learned' needs temporal_slots (the number of frame indices)")
    return LearnedTime(dim, slots)


TEMPORAL_EMBEDDINGS: dict[str, Callable[[int, int | None], nn.Module | None]] = {
    "none": _no_time,
    "sinusoidal": lambda dim, slots: SinusoidalTime(dim),
    "learned": _learned_time,
}


class AttentiveProbe(nn.Module):
    """Attention-pooling classifier over frozen tokens.

    forward(tokens [B, N, D], positions [B, N, 3] (t, h, w) or None, mask [B, N] bool or None)
    -> logits [B, num_classes]; `mask` is True for real tokens and False for padding.
    Tokens are layer-normed on entry because stored features of different backbones differ in scale;
    the temporal embedding (if any) is added after that norm so its scale is comparable.
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        depth: int = 0,
        temporal_pos: str = "none",
        temporal_slots: int | None = None,
    ) -> None:
        super().__init__()
        if temporal_pos not in TEMPORAL_EMBEDDINGS:
            raise ValueError(
                f"temporal_pos {temporal_pos!r} is unknown; choose one of {sorted(TEMPORAL_EMBEDDINGS)}"
            )
        heads = num_heads or max(1, embed_dim // 64)
        self.norm_in = nn.LayerNorm(embed_dim)
        self.time = TEMPORAL_EMBEDDINGS[temporal_pos](embed_dim, temporal_slots)
        self.blocks = nn.ModuleList(Block(embed_dim, heads, mlp_ratio) for _ in range(depth))
        self.pool = AttentionPool(embed_dim, heads, mlp_ratio)
        self.norm_out = nn.LayerNorm(embed_dim)
        self.classifier = nn.Linear(embed_dim, num_classes)
        self.apply(_init_weights)
        with torch.no_grad():
            self.classifier.weight.mul_(CLASSIFIER_INIT_SCALE)
            self.classifier.bias.mul_(CLASSIFIER_INIT_SCALE)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.norm_in(tokens)
        if self.time is not None:
            if positions is None:
                raise ValueError("this probe adds a temporal embedding and needs token positions")
            x = x + self.time(positions[..., 0]).to(x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        return self.classifier(self.norm_out(self.pool(x, mask)))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.trunc_normal_(module.weight, std=0.02)
    elif isinstance(module, AttentionPool):
        nn.init.trunc_normal_(module.query, std=0.02)
