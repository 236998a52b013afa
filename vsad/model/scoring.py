"""Anomaly maps and scores from per-level nearest-prototype distances (paper eq. 12).

S_pixel(u, v) = Σ_l w_l · min_m ‖F_q^(l)(u, v) − m‖₂, each level's distance map upsampled to
the image size first (bilinear, pixel centres aligned), then optionally smoothed with a Gaussian;
a view's score is the maximum of its map and a sample's score the maximum over its views.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def combine_levels(
    distances: Sequence[torch.Tensor],
    weights: Sequence[float] | None,
    size: tuple[int, int],
) -> torch.Tensor:
    """Σ_l w_l · upsample(d_l): distances are (B, M, h_l, w_l); returns (B, M, H, W) float32.

    align_corners=False puts the centre of latent cell x at image coordinate s·x + (s − 1)/2,
    the same convention the homographies use (docs/design.md §4).
    """
    if not distances:
        raise ValueError("distances: got no feature level, expected at least one")
    if weights is None:
        weights = [1.0 / len(distances)] * len(distances)
    if len(weights) != len(distances):
        raise ValueError(f"weights: got {len(weights)} weights for {len(distances)} feature levels")
    total = None
    for dist, weight in zip(distances, weights, strict=True):
        B, M = dist.shape[:2]
        up = F.interpolate(
            dist.reshape(B * M, 1, *dist.shape[-2:]).float(),
            size=size,
            mode="bilinear",
            align_corners=False,
        ).reshape(B, M, *size)
        total = weight * up if total is None else total + weight * up
    return total


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (..., H, W) maps (reflect padding; truncated at 4σ)."""
    if sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma: got {sigma}, expected a finite value >= 0")
    if sigma == 0:
        return maps
    radius = max(int(4 * sigma + 0.5), 1)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    lead, (H, W) = maps.shape[:-2], maps.shape[-2:]
    flat = maps.reshape(-1, 1, H, W)
    pad_y, pad_x = min(radius, H - 1), min(radius, W - 1)
    ky = kernel[radius - pad_y : radius + pad_y + 1].view(1, 1, -1, 1)
    kx = kernel[radius - pad_x : radius + pad_x + 1].view(1, 1, 1, -1)
    # Trimming the kernel for tiny maps keeps reflect padding legal; renormalise what is left.
    flat = F.conv2d(F.pad(flat, (0, 0, pad_y, pad_y), mode="reflect"), ky / ky.sum())
    flat = F.conv2d(F.pad(flat, (pad_x, pad_x, 0, 0), mode="reflect"), kx / kx.sum())
    return flat.reshape(*lead, H, W)


def view_and_sample_scores(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, M, H, W) maps -> view scores (B, M) = max of each map, sample scores (B,) = max over
    views."""
    view = maps.flatten(-2).amax(-1)
    return view, view.amax(-1)
