"""Pictures of anomaly maps and metric curves.

- `overlay`: one view's anomaly map as a heat map over its image, ground truth outlined.
- `view_panel` / `save_overlays`: all views of a sample in one picture (inputs above,
  overlays below, scores, colour scale), written atomically with optional per-view overlays.
- `plot_score_histograms`: normal vs defective score histograms with the threshold drawn.
- `roc_points` / `pr_points`: curve points thinned for plotting, with AUROC / AP computed
  from the same counts as vsad.eval; `plot_roc_curves` / `plot_metric_curves` draw them
  (matplotlib Figure + Agg canvas, pyplot is never touched) and write the file atomically.

Pass one colour range (vmin, vmax) to every picture that is to be compared: each map's own
min / max would make every map, even a normal one, look equally hot.
"""

from __future__ import annotations

from vsad.viz.curves import (
    OneClassError,
    PrCurve,
    RocCurve,
    plot_metric_curves,
    plot_roc_curves,
    pr_points,
    roc_points,
    thin_curve,
)
from vsad.viz.histogram import plot_score_histograms
from vsad.viz.overlay import COLORMAPS, colorize, overlay
from vsad.viz.panel import safe_name, save_overlays, view_panel

__all__ = [
    "COLORMAPS",
    "OneClassError",
    "PrCurve",
    "RocCurve",
    "colorize",
    "overlay",
    "plot_metric_curves",
    "plot_roc_curves",
    "plot_score_histograms",
    "pr_points",
    "roc_points",
    "safe_name",
    "save_overlays",
    "thin_curve",
    "view_panel",
]
