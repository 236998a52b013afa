"""The tiny UNet and view geometry of the distributed training tests (deterministic)."""

from __future__ import annotations

import torch
from window_attention_cases import random_homographies, ring_neighbors

M = 3


def make_model_and_geometry(seed: int):
    from vsad.model.backbone import build_tiny_unet
    from vsad.model.view_aligned_unet import ViewAlignedUNet

    torch.manual_seed(seed)
    model = ViewAlignedUNet(build_tiny_unet())
    gen = torch.Generator().manual_seed(seed)
    hom = random_homographies((M, 2), gen, shift=1.0, perspective=0.001)
    return model, hom, ring_neighbors(M, 2)
