"""OneVision's 3-D rotary position embedding with the 4:6:6 (t:h:w) frequency split."""

from __future__ import annotations

import torch
from torch import nn


class Rope3D(nn.Module):
    """Angles for tokens at (t, h, w).

    With head_dim D, half = D/2 frequencies are split 4:6:6 between t, h and w; each axis uses
    inverse frequencies theta^(-k/n), k = 0..n-1 (k/n, not 2k/D). The D angles are the half
    repeated twice: F = concat(f, f).
    """

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 32:
            raise ValueError(f"head_dim {head_dim} must be divisible by 32 for the 4:6:6 3-D RoPE")
        unit = head_dim // 2 // 16
        self.axis_sizes = (4 * unit, 6 * unit, 6 * unit)
        self.theta = theta

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """positions `[B, N, 3]` (t, h, w) -> angles `[B, N, D]` in float32."""
        pos = positions.float()
        freqs = torch.cat(
            [
                pos[..., axis : axis + 1]
                * self.theta ** (-torch.arange(n, dtype=torch.float64, device=pos.device) / n).float()
                for axis, n in enumerate(self.axis_sizes)
            ],
            dim=-1,
        )
        return torch.cat([freqs, freqs], dim=-1)


def rotate_interleaved(x: torch.Tensor) -> torch.Tensor:
    """R(x)[2j] = -x[2j+1], R(x)[2j+1] = x[2j]."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x `[B, H, N, D]`; cos/sin `[B, 1, N, D]` float32. Rotation in float32, result in x's dtype."""
    xf = x.float()
    return (xf * cos + rotate_interleaved(xf) * sin).to(x.dtype)


def grid_positions(t: int, h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """All (t, h, w) of a `t x h x w` grid in raster order, `[t*h*w, 3]` int64."""
    axes = [torch.arange(n, device=device) for n in (t, h, w)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
