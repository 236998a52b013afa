"""Fixed 2-D sinusoidal embedding γ(δ) of window offsets (paper §3.3, Vaswani et al. 2017)."""

from __future__ import annotations

import math

import torch


def window_offsets(window: int, dtype=torch.float64) -> torch.Tensor:
    """(R·R, 2) offsets δ = (δx, δy) = (a − (R−1)/2, b − (R−1)/2), row-major r = b·R + a."""
    steps = torch.arange(window, dtype=dtype) - (window - 1) / 2
    dy, dx = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([dx.reshape(-1), dy.reshape(-1)], dim=-1)


def sinusoidal_offset_embedding(
    offsets: torch.Tensor, channels: int, *, max_period: float = 100.0
) -> torch.Tensor:
    """γ(δ) for offsets (..., 2) -> (..., channels).

    The first half of the channels encodes δx, the second δy, each as [sin(ω_k δ), cos(ω_k δ)]
    of the phase θ_k = ω_k·δ·2π/8, ω_k = max_period^(−k/K): the fastest component turns once per
    8 px, so every offset of a window up to 8 px wide gets a distinct code, and the slowest turns
    once per 8·max_period px. (Token-position embeddings span 1..10000; window offsets are a
    few pixels.) Channels that do not fit the 4-channel pattern (channels % 4) are zero.
    """
    if channels < 1:
        raise ValueError(f"channels: got {channels}, expected >= 1")
    per_axis = channels // 4  # frequencies per axis
    out = offsets.new_zeros((*offsets.shape[:-1], channels))
    if per_axis == 0:
        return out
    k = torch.arange(per_axis, dtype=offsets.dtype, device=offsets.device)
    freqs = max_period ** (-k / per_axis) if per_axis > 1 else torch.ones_like(k)
    for axis in range(2):
        phase = offsets[..., axis : axis + 1] * freqs * (2 * math.pi / 8)
        start = axis * 2 * per_axis
        out[..., start : start + per_axis] = torch.sin(phase)
        out[..., start + per_axis : start + 2 * per_axis] = torch.cos(phase)
    return out
