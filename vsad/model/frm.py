"""Fusion Refiner Module (paper §3.5, eqs. 9–10)."""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    """A(·): channel weights from global average pooling, bottleneck MLP and a sigmoid."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, 1, 1)
        w = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3))))))
        return w[:, :, None, None]


class FRM(nn.Module):
    """F = Z̃ + f(Z̃) ⊙ A(f(Z̃)), applied to each view independently.

    f is conv3×3 → GroupNorm → SiLU → conv3×3. Its last convolution is zero-initialised so that
    an untrained FRM is the identity (like MVAM's output projection): attaching both to a
    pretrained UNet leaves its output unchanged at step 0.

    Input and output: (B, M, C, H, W) or (N, C, H, W).
    """

    def __init__(self, channels: int, *, reduction: int = 4, groups: int = 8) -> None:
        super().__init__()
        groups = groups if channels % groups == 0 else 1
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.attention = SqueezeExcite(channels, reduction)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if x.dim() == 5:
            x = x.flatten(0, 1)
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"x: got shape {tuple(shape)}, expected (B, M, C={self.channels}, H, W) or "
                f"(N, C={self.channels}, H, W)"
            )
        f = self.conv2(torch.nn.functional.silu(self.norm(self.conv1(x))))
        refined = x + f * self.attention(f)  # eqs. 9–10
        return refined.reshape(shape)
