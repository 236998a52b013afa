"""Multi-View Alignment Module (paper §3.3, eqs. 1–5; docs/design.md §3.1)."""

from __future__ import annotations

import torch
from torch import nn

from vsad.model.offset_embedding import sinusoidal_offset_embedding, window_offsets
from vsad.ops import window_attention


class MVAM(nn.Module):
    """Aligns each view's features with its neighbours' through homography-projected windows.

    For query pixel p of view i and neighbour j = neighbors[i, n], the R×R window around
    H[i, n]·p in view j is attended to with keys W_k(X_j(p_j) + γ(δ)) and values
    W_v(X_j(p_j) + γ(δ)) (eqs. 2–3). Both are linear, so they split into the projected features,
    sampled bilinearly by the fused op, plus fixed per-offset terms pos_k = W_k γ(δ) and
    pos_v = W_v γ(δ). The result goes through a zero-initialised output projection and is added
    to the input, so an untrained MVAM is the identity and a pretrained UNet is unchanged at
    step 0 (docs/design.md §3.1, a choice beyond eq. 5).

    Input and output: (B, M, C, H, W).
    """

    def __init__(
        self,
        channels: int,
        heads: int = 1,
        window: int = 3,
        *,
        max_period: float = 100.0,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if channels % heads != 0:
            raise ValueError(f"heads: got {heads}, expected a divisor of channels={channels}")
        if window < 1:
            raise ValueError(f"window: got {window}, expected >= 1")
        self.channels, self.heads, self.window, self.backend = channels, heads, window, backend
        # W_q, W_k, W_v as one GEMM (1×1 convolutions on channels-last features).
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        gamma = sinusoidal_offset_embedding(window_offsets(window), channels, max_period=max_period)
        # Kept in float64 (cast per call): it is tiny and exact γ keeps float64 checks exact.
        self.register_buffer("offset_embedding", gamma, persistent=False)

    def forward(
        self, x: torch.Tensor, homography: torch.Tensor, neighbors: torch.Tensor
    ) -> torch.Tensor:
        if x.dim() != 5 or x.shape[2] != self.channels:
            raise ValueError(
                f"x: got shape {tuple(x.shape)}, expected (B, M, C={self.channels}, H, W)"
            )
        C = self.channels
        x_last = x.permute(0, 1, 3, 4, 2)  # (B, M, H, W, C)
        q, k, v = self.qkv(x_last).split(C, dim=-1)
        _, w_k, w_v = self.qkv.weight.split(C, dim=0)
        gamma = self.offset_embedding.to(x.dtype)
        n_slots = neighbors.shape[-1]
        pos_k = (gamma @ w_k.T).expand(n_slots, -1, -1)
        pos_v = (gamma @ w_v.T).expand(n_slots, -1, -1)
        aligned = window_attention(
            q, k, v, pos_k, pos_v, homography, neighbors,
            window=self.window, heads=self.heads, backend=self.backend,
        )  # fmt: skip
        out = x_last + self.proj_out(aligned)
        return out.permute(0, 1, 4, 2, 3).contiguous()

    def extra_repr(self) -> str:
        return f"channels={self.channels}, heads={self.heads}, window={self.window}"
