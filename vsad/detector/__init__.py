"""Detectors with one API: `fit(train_samples)`, `predict(views)`, `predict_many(samples)`,
`save(dir)` / `load(dir)`.

- `VSAD`: ViewSense-AD, the paper's model (homographies, VALDM with MVAM + FRM, DDIM-inversion
  features, multi-level memory bank).
- `PatchKNN`: raw-pixel patches through the same bank and scoring — the sanity baseline.
"""

from vsad.detector.base import BankDetector, Prediction, load_detector
from vsad.detector.config import DetectorConfig, PatchKNNConfig, VSADConfig
from vsad.detector.patchknn import PatchKNN
from vsad.detector.vsad_model import VSAD

__all__ = [
    "VSAD",
    "BankDetector",
    "DetectorConfig",
    "PatchKNN",
    "PatchKNNConfig",
    "Prediction",
    "VSADConfig",
    "load_detector",
]
