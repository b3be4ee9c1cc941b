"""The attentive probe: a SigLIP2-style attention-pooling head over frozen tokens.

One learned query cross-attends to the tokens, a residual MLP refines the pooled vector, and a
LayerNorm plus linear layer classify it. `depth > 0` adds self-attention blocks over the tokens
before the pooling, as V-JEPA 2's frozen evaluation does. Image backbones see frames one at a time,
so the probe can add a temporal embedding of each token's frame index `positions[..., 0]`.

Two options beyond that reference recipe, off by default:
- `norm="batch"` standardises every channel with statistics over the training tokens (a BatchNorm
  without affine parameters, as MAE's linear probe) instead of layer-norming each token. Tokens
  that share one large common direction (random-weight encoders; some pretrained ones) keep it
  under a per-token LayerNorm, which leaves the clip-to-clip differences a few thousandths of the
  token norm; per-channel standardisation brings them to unit scale.
- `positions="rope"` lets the pooling read where tokens are. A token's content need not say where
  it sits (OneVision has no absolute position embedding, only RoPE inside attention), and a pooled
  set of tokens cannot tell a digit moving left from one moving right. With this option the keys
  and values of the pooling are rotated by their (t, h, w) position, RoPE-style with the learned
  query at the origin, with one frequency vector over (t, h, w) per rotated pair ("mixed" RoPE,
  Heo et al. 2024) rather than one axis per pair. The pooled vector then holds spatiotemporal
  Fourier coefficients of the token field, phase-aligned by the query; a translation over time
  (motion) is a pattern in those coefficients whatever the start position, which one-axis
  frequencies cannot express. The query then starts at zero (uniform attention): a random query,
  kept as a residual, would otherwise outweigh those coefficients several times over and the probe
  would take many epochs (a number that depends on the seed) to pick motion up.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from probe import distributed

CLASSIFIER_INIT_SCALE = 1e-3


class Attention(nn.Module):
    """Multi-head attention of `queries` over `tokens`; `mask` [B, N] is True for real tokens.

    `rotation` (unit complex numbers `[B, heads, N, head_dim / 2]`) rotates the tokens' keys and values.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        queries: torch.Tensor,
        tokens: torch.Tensor,
        mask: torch.Tensor | None,
        rotation: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, m, d = queries.shape
        n = tokens.shape[1]
        h = self.num_heads
        q = self.q(queries).view(b, m, h, d // h).transpose(1, 2)
        kv = self.kv(tokens).view(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)
        if rotation is not None:
            kv = rotate_pairs(kv, rotation)
        k, v = kv
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


POOL_NORMS: dict[str, Callable[[int], nn.Module]] = {"layer": nn.LayerNorm, "rms": nn.RMSNorm}
KV_NORMS: dict[str, Callable[[int], nn.Module]] = {"layer": nn.LayerNorm, "none": lambda dim: nn.Identity()}


class AttentionPool(nn.Module):
    """SigLIP2's MAP head: one learned query cross-attends to the tokens, then a residual MLP.

    Reference settings (V-JEPA's pooler): the tokens are layer-normed first (`kv_norm="layer"`: they
    come straight from the store or from the probe's own blocks) and the query is kept as a residual
    around the cross-attention (`query_residual`), which makes the head start learning sooner on small
    data; LayerNorm before the MLP (`pool_norm`). The original suite's pooling head has neither of the
    first two and RMSNorm before the MLP (`kv_norm="none"`, `query_residual=False`, `pool_norm="rms"`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        kv_norm: str = "layer",
        pool_norm: str = "layer",
        query_residual: bool = True,
        query_init_std: float = 0.02,
    ) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.query_init_std = query_init_std
        self.norm_kv = KV_NORMS[kv_norm](dim)
        self.attn = Attention(dim, num_heads)
        self.norm = POOL_NORMS[pool_norm](dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.query_residual = query_residual

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        rotation: torch.Tensor | None = None,
    ) -> torch.Tensor:
        q = self.query.expand(x.shape[0], -1, -1)
        pooled = self.attn(q, self.norm_kv(x), mask, rotation)
        q = q + pooled if self.query_residual else pooled
        q = q + self.mlp(self.norm(q))
        return q[:, 0]


def rotate_pairs(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs (2j, 2j+1) of `x` [..., D] by unit complex numbers `rotation` [..., D/2]."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)


# Spread of the spatial frequencies, in patches: about one wavelength across an 8-patch span.
SPATIAL_SPAN = 8


class MixedRope(nn.Module):
    """Rotation angles for tokens at (t, h, w): pair j of head k turns by `freqs[k, j] . (t, h, w)`.

    The frequency vectors are drawn once from the global generator (the trainer seeds it), Gaussian
    with a standard deviation of one turn over `temporal_slots` in t and over `SPATIAL_SPAN` patches
    in h and w, and kept fixed (a state-dict buffer): learning them measured no better and cost a
    third of the training step.
    """

    def __init__(self, head_dim: int, num_heads: int, temporal_slots: int) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"positions='rope' needs an even head dimension, got {head_dim}")
        scale = 2 * math.pi / torch.tensor([float(temporal_slots), SPATIAL_SPAN, SPATIAL_SPAN])
        self.register_buffer("freqs", torch.randn(num_heads, head_dim // 2, 3) * scale)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """positions [B, N, 3] -> unit complex rotations [B, heads, N, head_dim / 2] (complex64)."""
        heads, pairs, _ = self.freqs.shape
        angles = positions.float() @ self.freqs.reshape(-1, 3).T
        angles = angles.unflatten(-1, (heads, pairs)).transpose(1, 2)
        return torch.complex(angles.cos(), angles.sin())  # torch.polar is several times slower on CPU


class TokenStandardize(nn.Module):
    """Per-channel standardisation over the real tokens of a batch, with running statistics for eval.

    BatchNorm1d without affine parameters, except that padding (`mask` False) never enters the
    statistics. Under data parallelism (`probe.distributed`) they are the statistics of the global
    batch (`_moments`).
    """

    def __init__(self, dim: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.training:
            real = x.reshape(-1, x.shape[-1]) if mask is None or bool(mask.all()) else x[mask]
            mean, var, count = _moments(real.float())
            with torch.no_grad():
                unbiased = var * count / max(count - 1, 1)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(unbiased, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return ((x.float() - mean) * torch.rsqrt(var + self.eps)).to(x.dtype)


def _moments(real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean, variance, count) over the real tokens of the batch (of every process's batch under data
    parallelism), in two passes: random-weight encoders give channels whose mean is thousands of times
    their spread, where float32 sums of raw values (let alone E[x^2] - E[x]^2) lose the spread. Each
    process takes its mean about one of its tokens; the means are combined by token counts (a few
    terms: no cancellation); then the squared deviations from that common mean are summed. A process
    may hold no tokens (a last batch smaller than the process count); it still takes part. Tokens are
    stored features: no gradient flows through the statistics."""
    n = len(real)
    local = real[0] + (real - real[0]).mean(0) if n else real.new_zeros(real.shape[-1])
    if distributed.world_size() > 1:
        totals = distributed.all_reduce_sum(torch.cat([real.new_full((1,), n), n * local]))
        count, mean = int(totals[0].item()), totals[1:] / totals[0]
    else:
        count, mean = n, local
    centred = real - mean
    var = distributed.all_reduce_sum((centred * centred).sum(0)) / count
    return mean, var, count


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


class LayerNormTokens(nn.LayerNorm):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


class NoNorm(nn.Identity):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return x


INPUT_NORMS: dict[str, Callable[[int], nn.Module]] = {
    "layer": LayerNormTokens, "batch": TokenStandardize, "none": lambda dim: NoNorm(),
}
POSITIONS = ("none", "rope")


class AttentiveProbe(nn.Module):
    """Attention-pooling classifier over frozen tokens.

    forward(tokens [B, N, D], positions [B, N, 3] (t, h, w) or None, mask [B, N] bool or None)
    -> logits [B, num_classes]; `mask` is True for real tokens and False for padding.
    Tokens are normalised on entry because stored features of different backbones differ in scale
    (`norm`: "layer", the reference, "batch", see the module docstring, or "none" as the original); the
    temporal embedding (if any) is added after that norm so its scale is comparable.
    `positions="rope"` rotates the pooling's keys and values by token position (module docstring).
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
        norm: str = "layer",
        positions: str = "none",
        kv_norm: str = "layer",
        pool_norm: str = "layer",
        query_residual: bool = True,
        query_init_std: float = 0.02,
    ) -> None:
        super().__init__()
        for name, value, known in (
            ("temporal_pos", temporal_pos, TEMPORAL_EMBEDDINGS),
            ("norm", norm, INPUT_NORMS),
            ("positions", positions, POSITIONS),
            ("kv_norm", kv_norm, KV_NORMS),
            ("pool_norm", pool_norm, POOL_NORMS),
        ):
            if value not in known:
                raise ValueError(f"{name} {value!r} is unknown; choose one of {sorted(known)}")
        if positions == "rope" and temporal_slots is None:
            raise ValueError("positions='rope' needs temporal_slots (the extent of the token time index)")
        heads = num_heads or max(1, embed_dim // 64)
        self.norm_in = INPUT_NORMS[norm](embed_dim)
        self.time = TEMPORAL_EMBEDDINGS[temporal_pos](embed_dim, temporal_slots)
        self.blocks = nn.ModuleList(Block(embed_dim, heads, mlp_ratio) for _ in range(depth))
        self.pool = AttentionPool(
            embed_dim, heads, mlp_ratio, kv_norm, pool_norm, query_residual, query_init_std
        )
        self.rope = MixedRope(embed_dim // heads, heads, temporal_slots) if positions == "rope" else None
        self.norm_out = nn.LayerNorm(embed_dim)
        self.classifier = nn.Linear(embed_dim, num_classes)
        self.apply(_init_weights)
        with torch.no_grad():
            self.classifier.weight.mul_(CLASSIFIER_INIT_SCALE)
            self.classifier.bias.mul_(CLASSIFIER_INIT_SCALE)
            if self.rope is not None:
                # Start from uniform attention with nothing added: the pooled vector is then exactly the
                # average of the rotated values, instead of a random query ten times its size.
                self.pool.query.zero_()

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if positions is None and (self.time is not None or self.rope is not None):
            raise ValueError("this probe encodes where tokens are and needs token positions")
        x = self.norm_in(tokens, mask)
        if self.time is not None:
            x = x + self.time(positions[..., 0]).to(x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        rotation = None if self.rope is None else self.rope(positions)
        return self.classifier(self.norm_out(self.pool(x, mask, rotation)))


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
        nn.init.trunc_normal_(module.query, std=module.query_init_std)


class OriginalPool(nn.Module):
    """The original suite's pooling head (`Siglip2MultiheadAttentionPoolingHead` of its
    `model_factory/layers.py`), with its parameter names: a probe drawn from N(0, 1) attends to the raw
    tokens through `nn.MultiheadAttention`; then y = a + MLP(RMSNorm(a)) on the attention output a (no
    residual of the probe, no norm of keys and values)."""

    def __init__(self, dim: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, dim))
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.RMSNorm(dim)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        probe = self.probe.expand(x.shape[0], -1, -1).to(x.dtype)
        padding = None if mask is None or bool(mask.all()) else ~mask
        a = self.attention(probe, x, x, key_padding_mask=padding, need_weights=False)[0]
        return (a + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm(a)))))[:, 0]


class InterleavedSinusoidalTime(nn.Module):
    """The original's temporal embedding for image backbones: sin and cos of t * 10000^(-2k/D)
    interleaved per frequency (channel 2k: sin, 2k+1: cos), added to the raw tokens of frame t."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        freqs = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        self.register_buffer("freqs", freqs, persistent=False)
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[..., None] * self.freqs
        return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)[..., : self.dim]


class OriginalProbe(nn.Module):
    """The original suite's classification head (`ClassificationHead` of its `attentive_probe.py`):
    `OriginalPool` with max(1, D // 64) heads and a 4 D MLP, LayerNorm, linear classifier. Linear
    layers (the attention's output projection included) start from a truncated normal of std 0.02 and
    zero bias, the classifier is then scaled by 1e-3, the attention's input projection keeps torch's
    Xavier init and the probe its N(0, 1). Parameter names are the original's, so its state dicts load
    either way. `temporal_pos="sinusoidal"` adds the original's embedding for image backbones.
    """

    def __init__(self, embed_dim: int, num_classes: int, num_heads: int | None = None,
                 mlp_ratio: float = 4.0, temporal_pos: str = "none") -> None:
        super().__init__()
        if temporal_pos not in ("none", "sinusoidal"):
            raise ValueError(f"the original head takes temporal_pos none or sinusoidal, not {temporal_pos!r}")
        self.time = InterleavedSinusoidalTime(embed_dim) if temporal_pos == "sinusoidal" else None
        self.pool = OriginalPool(embed_dim, num_heads or max(1, embed_dim // 64), int(embed_dim * mlp_ratio))
        self.norm = nn.LayerNorm(embed_dim)
        self.fc = nn.Linear(embed_dim, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.fc.weight.mul_(CLASSIFIER_INIT_SCALE)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = tokens
        if self.time is not None:
            if positions is None:
                raise ValueError("this probe encodes where tokens are and needs token positions")
            x = x + self.time(positions[..., 0]).to(x.dtype)
        return self.fc(self.norm(self.pool(x, mask)))


HEADS: dict[str, type[nn.Module]] = {"attentive": AttentiveProbe, "original": OriginalProbe}
