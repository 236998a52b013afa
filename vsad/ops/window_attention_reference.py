"""Plain-PyTorch twin of the MVAM window attention (docs/design.md §3.1): the kernels' oracle.

Readable and differentiable; it materialises every candidate (B·M·H·W·N·R²·C values), so it is
memory-hungry by design. The fused kernels must agree with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Projective depth below which a projected point counts as behind the camera (invalid).
MIN_PROJECTIVE_W = 1e-8


def window_sample_points(
    homography: torch.Tensor, height: int, width: int, window: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidate sample points of every query pixel, in float64.

    Args:
        homography: (B, M, N, 3, 3) float64, view i pixel coords -> neighbour slot n coords.
    Returns:
        sx, sy: (B, M, N, H, W, R*R) sample coordinates (offset index r = b·R + a, δy outer);
        in_front: (B, M, N, H, W) projective w > MIN_PROJECTIVE_W.
    """
    device = homography.device
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64, device=device),
        torch.arange(width, dtype=torch.float64, device=device),
        indexing="ij",
    )
    pixels = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1)  # (H, W, 3) as [x, y, 1]
    proj = torch.einsum("bmnij,hwj->bmnhwi", homography, pixels)
    w = proj[..., 2]
    in_front = w > MIN_PROJECTIVE_W
    safe_w = torch.where(in_front, w, torch.ones_like(w))
    half = (window - 1) / 2
    # Top-left candidate, then integer steps: candidate (a, b) = base + (a, b), i.e. π(H·p) + δ.
    base_x = (proj[..., 0] / safe_w - half).unsqueeze(-1)
    base_y = (proj[..., 1] / safe_w - half).unsqueeze(-1)
    steps = torch.arange(window, dtype=torch.float64, device=device)
    step_x = steps.repeat(window)  # a, inner
    step_y = steps.repeat_interleave(window)  # b, outer
    return base_x + step_x, base_y + step_y, in_front


def window_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos_k: torch.Tensor,
    pos_v: torch.Tensor,
    homography: torch.Tensor,
    neighbors: torch.Tensor,
    *,
    window: int = 3,
    heads: int = 1,
    scale: float | None = None,
) -> torch.Tensor:
    """See :func:`vsad.ops.window_attention` for the contract. Computes in q's dtype."""
    B, M, H, W, C = q.shape
    N = neighbors.shape[1]
    RR = window * window
    d = C // heads
    scale = d**-0.5 if scale is None else scale
    hom = homography.to(torch.float64)
    if hom.dim() == 4:
        hom = hom.unsqueeze(0)
    hom = hom.expand(B, M, N, 3, 3)

    sx, sy, in_front = window_sample_points(hom, H, W, window)
    valid = (
        (neighbors >= 0).view(1, M, N, 1, 1, 1)
        & in_front.unsqueeze(-1)
        & (sx >= 0)
        & (sx <= W - 1)
        & (sy >= 0)
        & (sy <= H - 1)
    )  # (B, M, N, H, W, RR)

    # Bilinear sampling of the neighbour views (grid_sample, align_corners=True: pixel centres at
    # integers). Invalid points get any finite coordinate; they are masked out of the softmax.
    src = neighbors.clamp(min=0).reshape(-1)  # (M*N,)

    def sample(feat: torch.Tensor) -> torch.Tensor:
        views = feat[:, src]  # (B, M*N, H, W, C)
        views = views.reshape(B * M * N, H, W, C).permute(0, 3, 1, 2)
        gx = torch.where(valid, sx, torch.zeros_like(sx)) * (2 / max(W - 1, 1)) - 1
        gy = torch.where(valid, sy, torch.zeros_like(sy)) * (2 / max(H - 1, 1)) - 1
        grid = torch.stack([gx, gy], dim=-1).to(feat.dtype).reshape(B * M * N, H, W * RR, 2)
        out = F.grid_sample(views, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out = out.reshape(B, M, N, C, H, W, RR).permute(0, 1, 4, 5, 2, 6, 3)
        return out.reshape(B, M, H, W, N * RR, C)  # candidates ordered (n, r)

    keys = sample(k) + pos_k.reshape(N * RR, C).to(q.dtype)
    values = sample(v) + pos_v.reshape(N * RR, C).to(q.dtype)

    valid = valid.permute(0, 1, 3, 4, 2, 5).reshape(B, M, H, W, 1, N * RR)
    qh = q.reshape(B, M, H, W, heads, d)
    logits = torch.einsum("bmhwgd,bmhwcgd->bmhwgc", qh, keys.reshape(B, M, H, W, N * RR, heads, d))
    logits = logits * scale
    # Softmax over valid candidates only; rows without any stay finite (logits 0) and are zeroed.
    any_valid = valid.any(dim=-1, keepdim=True)
    masked = torch.where(valid, logits, torch.full_like(logits, float("-inf")))
    masked = torch.where(any_valid, masked, torch.zeros_like(logits))
    alpha = torch.softmax(masked, dim=-1) * valid
    out = torch.einsum(
        "bmhwgc,bmhwcgd->bmhwgd", alpha, values.reshape(B, M, H, W, N * RR, heads, d)
    )
    return out.reshape(B, M, H, W, C)
