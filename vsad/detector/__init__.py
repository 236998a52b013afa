"""Detectors with one API: `fit(train_samples)`, `predict(views)`, `predict_many(samples)`,
`save(dir)` / `load(dir)`.

- `VSAD`: ViewSense-AD, the paper's model (homographies, VALDM with MVAM + FRM, DDIM-inversion
  features, multi-level memory bank).
- `PatchKNN`: raw-pixel patches through the same bank and scoring — the sanity baseline
  (or, with `backbone=`, frozen ImageNet features).
- `PatchCore`: PatchKNN on pretrained EfficientNet-Lite features with PatchCore's settings
  (global coreset bank, raw distances).
"""

from vsad.detector.base import BankDetector, Prediction, load_detector
from vsad.detector.config import (
    UNET_PIPELINE,
    DetectorConfig,
    PatchCoreConfig,
    PatchKNNConfig,
    VSADConfig,
)
from vsad.detector.patchknn import PatchCore, PatchKNN
from vsad.detector.vsad_model import VSAD

__all__ = [
    "UNET_PIPELINE",
    "VSAD",
    "BankDetector",
    "DetectorConfig",
    "PatchCore",
    "PatchCoreConfig",
    "PatchKNN",
    "PatchKNNConfig",
    "Prediction",
    "VSADConfig",
    "load_detector",
]
