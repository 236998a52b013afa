"""PatchKNN: the sanity baseline — raw-pixel patches through the same memory bank, search and
scoring as VSAD, no diffusion model. What VSAD scores above it on your data is what the
learned, view-aligned features add."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vsad.detector.base import BankDetector, register_detector, stage
from vsad.detector.config import PatchKNNConfig


@register_detector
class PatchKNN(BankDetector):
    """Features: each patch_size² pixel patch (pixel-unshuffle, 3·p² values in [−1, 1]); the
    base class averages them over feature_pool² neighbouring patches like every detector's."""

    config_class = PatchKNNConfig
    kind = "PatchKNN"

    def _extract(self, images: torch.Tensor, timings: dict | None = None) -> list[torch.Tensor]:
        B, M = images.shape[:2]
        c = self.config
        with stage(timings, "encode"):
            patches = F.pixel_unshuffle(images.flatten(0, 1) * 2 - 1, c.patch_size)
        return [patches.reshape(B, M, *patches.shape[1:])]
