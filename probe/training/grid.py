"""A grid of attentive probes as one module: one forward and one backward for every probe of the grid.

`StackedProbes` holds the parameters of P probes of one architecture stacked along a leading axis and
computes exactly what each `AttentiveProbe` computes (up to float rounding), for the heads whose pooling
sees no positions (`positions="none"`, `depth=0`: the reference head). It never materialises a probe's
keys and values. With one learned query, a head's attention logits are the tokens' dot products with
one vector per head, the query pulled back through the key projection; its output is the value
projection of the attention-weighted mean of the tokens. The per-token LayerNorms (the probe's input
norm and the pooling's key/value norm) fold into the same dot products: a token's statistics under
probe p's affine input norm are linear in a few per-token moments. So every probe reads the shared,
normalised tokens through matrix products with P x heads columns, instead of P projections of width
2 D. That is ~D / heads times less work per probe. The token-sized work (reading, standardising) is
shared by the grid.

Invariance used: adding a constant to every logit of a softmax changes nothing, so the key bias and
the key norm's bias (constant over tokens) are left out of the logits; their gradients are then exactly
zero rather than rounding noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.adamw import adamw

from probe.training.head import AttentiveProbe, SinusoidalTime, TokenStandardize


def stack_unsupported(kind: str, depth: int, positions: str, temporal_pos: str) -> str | None:
    """Why a head cannot be trained stacked (None: it can)."""
    if kind != "attentive":
        return f"head kind {kind!r}"
    if depth:
        return f"depth {depth} (self-attention blocks)"
    if positions != "none":
        return f"positions={positions!r} (keys and values rotated per token)"
    if temporal_pos not in ("none", "sinusoidal"):
        return f"temporal_pos={temporal_pos!r} (a learned table per probe)"
    return None


class StackedProbes(nn.Module):
    """P `AttentiveProbe`s built alike (depth 0, no positions), trained as one.

    forward(tokens [B, N, D], positions [B, N, 3] or None, mask [B, N] or None) -> logits [P, B, K].
    `probe_state(p)` is probe p's `AttentiveProbe` state dict (same names), so checkpoints of the
    selected probe load into a plain `AttentiveProbe`.
    """

    def __init__(self, heads: Sequence[AttentiveProbe]) -> None:
        super().__init__()
        ref = heads[0]
        self.names = [name for name, _ in ref.named_parameters()]
        self.stacked = nn.ParameterList(
            nn.Parameter(torch.stack([dict(h.named_parameters())[n].detach() for h in heads]))
            for n in self.names
        )
        self.num_probes = len(heads)
        self.num_heads = ref.pool.attn.num_heads
        self.template = {name: tuple(t.shape) for name, t in ref.state_dict().items()}
        # Parameter-free parts every probe computes alike: shared (their buffers move with .to()).
        self.standardize = ref.norm_in if isinstance(ref.norm_in, TokenStandardize) else None
        self.time = ref.time if isinstance(ref.time, SinusoidalTime) else None
        self.input_layer_norm = isinstance(ref.norm_in, nn.LayerNorm)
        self.input_eps = ref.norm_in.eps if self.input_layer_norm else 0.0
        kv = ref.pool.norm_kv
        self.kv_eps = kv.eps if isinstance(kv, nn.LayerNorm) else None
        self.pool_norm = type(ref.pool.norm)
        self.pool_eps = ref.pool.norm.eps
        self.query_residual = ref.pool.query_residual
        self.out_eps = ref.norm_out.eps

    def weight(self, name: str) -> torch.Tensor:
        return self.stacked[self.names.index(name)]

    def probe_state(self, p: int) -> dict[str, torch.Tensor]:
        """Probe p as an `AttentiveProbe` state dict (shared buffers copied into it)."""
        out = {}
        for name in self.template:
            if name in self.names:
                out[name] = self.weight(name)[p].detach().clone()
            else:  # a shared buffer (the input standardisation's running statistics)
                out[name] = self.get_buffer(name.replace("norm_in.", "standardize.", 1)).detach().clone()
        return out

    def decayed(self) -> list[bool]:
        """Per stacked parameter: does weight decay apply? As in the loop trainer: to a probe's parameters
        of more than one dimension (matrices and the query), not to biases and norms."""
        return [len(self.template[n]) > 1 for n in self.names]

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.time is not None and positions is None:
            raise ValueError("this probe encodes where tokens are and needs token positions")
        P, H = self.num_probes, self.num_heads
        B, N, D = tokens.shape
        d = D // H
        # Shared tokens x and per-probe affine input norm: token n of probe p is g[p] * x_n + b[p] + e_n.
        if self.standardize is not None:
            x = self.standardize(tokens, mask)
        elif self.input_layer_norm:
            x = F.layer_norm(tokens, (D,), eps=self.input_eps)
        else:
            x = tokens
        e = None if self.time is None else self.time(positions[..., 0]).to(x.dtype)
        g = self.weight("norm_in.weight") if self.input_layer_norm else None  # [P, D]
        b = self.weight("norm_in.bias") if self.input_layer_norm else None
        mu, rstd = self._kv_statistics(x, e, g, b)  # [B, N, P] or [B, N, 1], or None (no kv norm)

        # Query pulled back through the key projection: u[p, h] . k_n is head h's logit of token n.
        query = self.weight("pool.query").reshape(P, D)
        w_q, b_q = self.weight("pool.attn.q.weight"), self.weight("pool.attn.q.bias")
        w_kv, b_kv = self.weight("pool.attn.kv.weight"), self.weight("pool.attn.kv.bias")
        q = (torch.einsum("poi,pi->po", w_q, query) + b_q).view(P, H, d)
        u = torch.einsum("pho,phoi->phi", q, w_kv[:, :D].reshape(P, H, d, D)) / math.sqrt(d)
        if rstd is not None:
            u = u * self.weight("pool.norm_kv.weight")[:, None]  # the kv norm's scale
        scores = self._dot(x, e, g, b, u)  # [B, N, P, H]: token n (as probe p sees it) . u[p, h]
        if rstd is not None:  # LayerNorm of the token: (y - mu) / sigma, then the scale folded into u
            scores = (scores - mu[..., None] * u.sum(-1)) * rstd[..., None]
        scores = scores.reshape(B, N, P, H).permute(0, 2, 3, 1)  # [B, P, H, N]
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        attn = scores.softmax(-1)

        # Attention-weighted mean of the keys/values' input, then the value projection.
        w = attn if rstd is None else attn * rstd.permute(0, 2, 1)[:, :, None, :]
        flat = w.reshape(B, P * H, N)
        mean = (flat @ x).view(B, P, H, D)
        if g is not None:
            mean = mean * g[:, None] + w.sum(-1, keepdim=True) * b[:, None]
        if e is not None:
            mean = mean + (flat @ e).view(B, P, H, D)
        if rstd is not None:
            shift = (w * mu.permute(0, 2, 1)[:, :, None, :]).sum(-1, keepdim=True)
            mean = (mean - shift) * self.weight("pool.norm_kv.weight")[:, None] + self.weight(
                "pool.norm_kv.bias"
            )[:, None]
        w_v = w_kv[:, D:].reshape(P, H, d, D)
        values = torch.einsum("bphi,phoi->bpho", mean, w_v) + b_kv[:, D:].reshape(P, H, d)
        pooled = self._linear(values.reshape(B, P, D), "pool.attn.proj")
        h = query + pooled if self.query_residual else pooled  # [B, P, D]
        h = h + self._mlp(self._norm(h, "pool.norm", self.pool_norm, self.pool_eps))
        logits = self._linear(self._norm(h, "norm_out", nn.LayerNorm, self.out_eps), "classifier")
        return logits.transpose(0, 1)

    def _kv_statistics(
        self, x: torch.Tensor, e: torch.Tensor | None, g: torch.Tensor | None, b: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Mean and 1/std over channels of each token as each probe feeds it to the key/value norm."""
        if self.kv_eps is None:
            return None, None
        y = x if e is None else x + e
        if g is None:  # no per-probe affine: one set of statistics, computed directly
            var, mu = torch.var_mean(y, dim=-1, unbiased=False, keepdim=True)
            return mu, torch.rsqrt(var + self.kv_eps)
        # y_p = g_p * x + b_p + e: its first two moments are linear in per-token moments of (x, e).
        D = x.shape[-1]
        s1 = x @ g.T + b.sum(-1)
        s2 = (x * x) @ (g * g).T + 2 * x @ (g * b).T + (b * b).sum(-1)
        if e is not None:
            s1 = s1 + e.sum(-1, keepdim=True)
            s2 = s2 + 2 * (x * e) @ g.T + 2 * e @ b.T + (e * e).sum(-1, keepdim=True)
        mu = s1 / D
        var = (s2 / D - mu * mu).clamp_min(0)
        return mu, torch.rsqrt(var + self.kv_eps)

    @staticmethod
    def _dot(
        x: torch.Tensor,
        e: torch.Tensor | None,
        g: torch.Tensor | None,
        b: torch.Tensor | None,
        u: torch.Tensor,
    ) -> torch.Tensor:
        """(g_p * x_n + b_p + e_n) . u[p, h] for every token, probe and head: [B, N, P, H]."""
        P, H, D = u.shape
        cols = u if g is None else u * g[:, None]
        out = (x @ cols.reshape(P * H, D).T).view(*x.shape[:2], P, H)
        if b is not None:
            out = out + (u * b[:, None]).sum(-1)
        if e is not None:
            out = out + (e @ u.reshape(P * H, D).T).view(*x.shape[:2], P, H)
        return out

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Probe p's linear layer `name` on x[:, p]: [B, P, in] -> [B, P, out]."""
        return torch.einsum("bpi,poi->bpo", x, self.weight(f"{name}.weight")) + self.weight(f"{name}.bias")

    def _norm(self, x: torch.Tensor, name: str, kind: type, eps: float | None) -> torch.Tensor:
        D = x.shape[-1]
        if kind is nn.RMSNorm:
            return F.rms_norm(x, (D,), eps=eps) * self.weight(f"{name}.weight")
        return F.layer_norm(x, (D,), eps=eps) * self.weight(f"{name}.weight") + self.weight(f"{name}.bias")

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self._linear(F.gelu(self._linear(x, "pool.mlp.0")), "pool.mlp.2")


class StackedAdamW:
    """AdamW on stacked parameters, each probe with its own learning rate, weight decay and linear decay
    to `final_lr`, and its own gradient-norm clip (torch's `clip_grad_norm_` rule, per probe).

    The update is torch's fused AdamW kernel (`torch.optim.adamw.adamw(fused=True)`) on each probe's
    slices, the clip folded into its gradient scale: one pass over the parameters, where the grid's
    optimiser state dominates a step's memory traffic for wide probes (20 ViT-L probes hold 250M
    parameters)."""

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        decayed: Sequence[bool],
        lrs: Sequence[float],
        wds: Sequence[float],
        betas: tuple[float, float],
        final_lr: float,
        total_steps: int,
        grad_clip: float,
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        # Indices of the parameters with and without weight decay: one kernel call per probe and group.
        self.groups = [(d, [k for k, dk in enumerate(decayed) if dk == d]) for d in (True, False)]
        self.groups = [(d, idx) for d, idx in self.groups if idx]
        self.base_lrs, self.wds = list(lrs), list(wds)
        self.betas, self.eps, self.grad_clip = betas, eps, grad_clip
        self.final_lr, self.total_steps = final_lr, total_steps
        self.steps = 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        device = self.params[0].device
        # The kernel counts steps per tensor (float32 on the parameters' device): one counter per slice.
        self._counters = [
            [torch.zeros((), dtype=torch.float32, device=device) for _ in self.params] for _ in lrs
        ]

    def current_lrs(self) -> list[float]:
        """Each probe's learning rate for the next step (the loop trainer's LambdaLR linear decay)."""
        frac = min(self.steps, self.total_steps) / self.total_steps
        return [lr * (1.0 + (self.final_lr / lr - 1.0) * frac) for lr in self.base_lrs]

    @torch.no_grad()
    def step(self) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        num = len(self.base_lrs)
        norms = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.reshape(num, -1), dim=1) for g in grads]), dim=0
        )
        # clip_grad_norm_ multiplies by min(1, clip / (norm + 1e-6)); the kernel divides by its scale
        unscale = ((norms + 1e-6) / self.grad_clip).clamp(min=1.0).float()
        lrs = self.current_lrs()
        self.steps += 1
        for i in range(num):
            for decay, idx in self.groups:
                adamw(
                    [self.params[k][i] for k in idx],
                    [grads[k][i] for k in idx],
                    [self.exp_avg[k][i] for k in idx],
                    [self.exp_avg_sq[k][i] for k in idx],
                    [],
                    [self._counters[i][k] for k in idx],
                    fused=True,
                    grad_scale=unscale[i],
                    amsgrad=False,
                    beta1=self.betas[0],
                    beta2=self.betas[1],
                    lr=lrs[i],
                    weight_decay=self.wds[i] if decay else 0.0,
                    eps=self.eps,
                    maximize=False,
                )

    def state_dict(self) -> dict[str, object]:
        return {"steps": self.steps, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.steps = int(state["steps"])
        for mine, saved in ((self.exp_avg, state["exp_avg"]), (self.exp_avg_sq, state["exp_avg_sq"])):
            for t, s in zip(mine, saved, strict=True):
                t.copy_(s)
        for counters in self._counters:
            for c in counters:
                c.fill_(self.steps)
