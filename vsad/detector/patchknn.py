"""PatchKNN: the sanity baseline — raw-pixel patches through the same memory bank, search and
scoring as VSAD, no diffusion model. What VSAD scores above it on your data is what the
learned, view-aligned features add.

PatchCore: the same detector on frozen ImageNet features (`backbone=`), with PatchCore's
published settings (PatchCoreConfig): the standard baseline of industrial anomaly detection,
and on real photos far ahead of anything trained from scratch on a few dozen samples
(docs/design.md §4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vsad.detector.base import BankDetector, register_detector, stage
from vsad.detector.config import PatchCoreConfig, PatchKNNConfig
from vsad.model.pretrained import PretrainedFeatures, make_features


@register_detector
class PatchKNN(BankDetector):
    """Features: each patch_size² pixel patch (pixel-unshuffle, 3·p² values in [−1, 1]), or with
    `backbone` a pretrained encoder's frozen stage features (raw: PatchCore compares them
    unstandardised); the base class averages them over feature_pool² neighbouring cells like
    every detector's."""

    config_class = PatchKNNConfig
    kind = "PatchKNN"

    def __init__(self, config: PatchKNNConfig | dict | None = None) -> None:
        super().__init__(config)
        self._backbone: PretrainedFeatures | None = None  # built on first use, never saved

    def backbone(self) -> PretrainedFeatures | None:
        """The frozen feature extractor (None for raw pixels), rebuilt from the installed
        weights package — a saved detector does not store it."""
        c = self.config
        if c.backbone != "pixels" and self._backbone is None:
            self._backbone = make_features(c.backbone, c.backbone_stages).to(self.device)
        return self._backbone

    def _move_to(self, device: torch.device) -> None:
        if self._backbone is not None:
            self._backbone.to(device)

    def _extract(self, images: torch.Tensor, timings: dict | None = None) -> list[torch.Tensor]:
        B, M = images.shape[:2]
        c = self.config
        backbone = self.backbone()
        with stage(timings, "encode"):
            if backbone is None:
                patches = F.pixel_unshuffle(images.flatten(0, 1) * 2 - 1, c.patch_size)
            else:
                patches = backbone(images.flatten(0, 1))
        return [patches.reshape(B, M, *patches.shape[1:])]


@register_detector
class PatchCore(PatchKNN):
    """PatchCore (Roth et al., 2022): pretrained mid-level features (EfficientNet-Lite0 stages
    2 + 4 by default), 3×3 local averaging, a global bank per view thinned by the greedy coreset
    to 10 %, raw nearest-neighbour distances; maps, scores and evaluation as every detector's."""

    config_class = PatchCoreConfig
    kind = "PatchCore"
