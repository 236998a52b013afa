"""Evaluation of multi-view anomaly detection: S-AUROC, V-AUROC, P-AUROC (paper §4.1), AUPRO
(FPR <= 0.3), AP and F1-max at each level.

- `Evaluator` streams one sample at a time (`add(sample, maps)` or `update(maps, masks, ...)`)
  and returns the ten metrics of METRIC_KEYS as fractions; `details()` adds error bounds,
  thresholds and counts.
- Sample and view metrics are exact. Pixel metrics are exact up to `exact_budget` pixels, then
  binned on a dyadic histogram whose error bound is computed and reported (typically ~1e-6);
  memory stays constant whatever the number of images (vsad/eval/pixel.py).
- `auroc`, `average_precision`, `f1_max`: exact metrics of 1-D score arrays (scikit-learn
  semantics, no scikit-learn needed).
- `write_metrics` writes metrics.json / .csv / .md atomically.
- `decision_metrics`: false-reject and escape rates, precision, recall and confusion matrices
  at fixed thresholds (vsad/eval/decisions.py); `html_report.write_report`: report.html.
"""

from __future__ import annotations

from vsad.eval.curves import BinaryMetrics, auroc, average_precision, binary_metrics, f1_max
from vsad.eval.decisions import decision_metrics
from vsad.eval.evaluator import METRIC_KEYS, Evaluator, ScoreAccumulator, evaluate
from vsad.eval.pixel import PixelMetricAccumulator, PixelMetrics
from vsad.eval.report import metrics_table, write_metrics, write_sample_scores

__all__ = [
    "METRIC_KEYS",
    "BinaryMetrics",
    "Evaluator",
    "PixelMetricAccumulator",
    "PixelMetrics",
    "ScoreAccumulator",
    "auroc",
    "average_precision",
    "binary_metrics",
    "decision_metrics",
    "evaluate",
    "f1_max",
    "metrics_table",
    "write_metrics",
    "write_sample_scores",
]
