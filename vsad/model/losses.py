"""Training objective of VALDM: L = L_denoise + λ·L_refine (paper eqs. 8 and 11)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vsad.model.view_aligned_unet import feature_grid_homography

REFINE_MODES = ("warped", "literal")


def warp_to_view(
    source: torch.Tensor, homography: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples `source` (N, C, H, W) at H·p for every pixel p of the target grid.

    Returns the warped features (N, C, H, W) and the validity mask (N, 1, H, W): the projected
    point is in front of the camera and inside the source image. `homography` (N, 3, 3) maps
    target pixel coordinates to source pixel coordinates (pixel centres at integers).
    """
    n, _, h, w = source.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64, device=source.device),
        torch.arange(w, dtype=torch.float64, device=source.device),
        indexing="ij",
    )
    pixels = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(-1, 3)
    proj = torch.einsum("nij,pj->npi", homography.to(torch.float64), pixels)
    depth = proj[..., 2]
    in_front = depth > 1e-8
    safe = torch.where(in_front, depth, torch.ones_like(depth))
    sx, sy = proj[..., 0] / safe, proj[..., 1] / safe
    valid = in_front & (sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)
    grid = torch.stack([sx * 2 / max(w - 1, 1) - 1, sy * 2 / max(h - 1, 1) - 1], dim=-1)
    grid = torch.where(valid[..., None], grid, torch.zeros_like(grid))
    warped = F.grid_sample(
        source, grid.to(source.dtype).reshape(n, h, w, 2), align_corners=True, padding_mode="zeros"
    )
    return warped, valid.reshape(n, 1, h, w)


def refine_loss(
    features: list[torch.Tensor],
    homography: torch.Tensor,
    neighbors: torch.Tensor,
    latent_height: int,
    *,
    mode: str = "warped",
) -> torch.Tensor:
    """Eq. 11: mean over levels and neighbour pairs of the squared distance between refined
    features of neighbouring views.

    mode="warped" (default, docs/design.md §4): F_j is warped into view i by the level's homography
    and compared over the valid overlap only — views of a fixed station see the object from
    different angles, so pixel (u, v) of view i and of view j are different surface points.
    mode="literal": ‖F_i − F_j‖² at the same pixel, as eq. 11 is written.
    Distances are averaged over channels and pixels so levels of different width weigh alike.
    """
    if mode not in REFINE_MODES:
        raise ValueError(f"mode: got {mode!r}, expected one of {REFINE_MODES}")
    # Read on the host once (neighbors may live on a GPU: one transfer, not one per slot).
    pairs = [
        (i, n, j) for i, row in enumerate(neighbors.tolist()) for n, j in enumerate(row) if j >= 0
    ]
    if not pairs:
        raise ValueError("neighbors: every slot is -1, so there is no neighbour pair to align")
    total = features[0].new_zeros(())
    for feat in features:
        B, M, C, h, w = feat.shape
        level_loss = feat.new_zeros(())
        hom = None
        if mode == "warped":
            hom = feature_grid_homography(homography, latent_height / h)
            if hom.dim() == 4:
                hom = hom.unsqueeze(0).expand(B, -1, -1, -1, -1)
        for i, n, j in pairs:
            if mode == "literal":
                level_loss = level_loss + (feat[:, i] - feat[:, j]).square().mean()
                continue
            warped, valid = warp_to_view(feat[:, j], hom[:, i, n])
            diff = (feat[:, i] - warped).square().mean(dim=1, keepdim=True)
            level_loss = level_loss + (diff * valid).sum() / valid.sum().clamp(min=1)
        total = total + level_loss / len(pairs)
    return total / len(features)
