"""Cross-view feature fusion at scoring time: each view's features averaged with its neighbours'
features warped into it by the homographies (a parameter-free step beyond the paper).

Why it exists (measured, BENCHMARKS.md "Cross-view fusion"): the learned MVAM of the tiny
default stays close to the identity after its short training, so on its own it changes the
scores by less than the noise between seeds; averaging the aligned features of the views that
see the same surface point is what the multi-view geometry buys here (V-AUROC +2.3 and AUPRO
+1.7 points over five generator seeds, higher on each; S-AUROC −0.4). A defect seen by several
cameras is confirmed by each of them, while a view-specific disturbance is diluted — and so is
a defect that only one camera sees, which is why the neighbours weigh less than the view.
"""

from __future__ import annotations

import math

import torch

from vsad.model.losses import warp_to_view
from vsad.model.view_aligned_unet import feature_grid_homography


def fuse_views(
    features: torch.Tensor,
    homography: torch.Tensor,
    neighbors: torch.Tensor,
    *,
    latent_height: int,
    weight: float,
) -> torch.Tensor:
    """(B, M, C, h, w) features -> the same shape, each view fused with its neighbours:

        fused_i(p) = (F_i(p) + weight · Σ_n F_j(H[i, n]·p)) / (1 + weight · #valid),

    j = neighbors[i, n]. A neighbour counts only at cells whose projection lands inside view j
    (bilinear sampling, the validity rule of `warp_to_view`). `homography` (M, N, 3, 3) maps
    view i's latent pixels to neighbour slot n's, as everywhere in the model, and is rescaled
    to the features' grid (latent_height / h). weight = 0 returns the features unchanged.
    """
    if features.dim() != 5:
        raise ValueError(f"features: got shape {tuple(features.shape)}, expected (B, M, C, h, w)")
    if not 0 <= weight < math.inf:
        raise ValueError(f"weight: got {weight}, expected a finite number >= 0")
    B, M, C, h, w = features.shape
    if neighbors.shape[0] != M or homography.shape[:2] != neighbors.shape:
        raise ValueError(
            f"neighbors: got shape {tuple(neighbors.shape)} and homography "
            f"{tuple(homography.shape)}, expected (M={M}, N) and (M, N, 3, 3)"
        )
    if weight == 0:
        return features
    grid_hom = feature_grid_homography(homography, latent_height / h)
    total = features.clone()
    count = features.new_ones(B, M, 1, h, w)
    # One warp per neighbour slot for all views and samples at once (N grid_sample calls, not
    # M·N); empty slots (-1) read view 0 and are masked out.
    for n in range(neighbors.shape[1]):
        slot = neighbors[:, n].to(features.device)
        source = features[:, slot.clamp(min=0)].flatten(0, 1)
        warped, valid = warp_to_view(source, grid_hom[:, n].expand(B, M, 3, 3).flatten(0, 1))
        valid = valid.reshape(B, M, 1, h, w) & (slot >= 0).view(1, M, 1, 1, 1)
        valid = weight * valid.to(features.dtype)
        total += warped.reshape(B, M, C, h, w) * valid
        count += valid
    return total / count
