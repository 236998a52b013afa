"""Score histograms of normal vs defective samples (and views) with the decision threshold
drawn: where the threshold sits between the two populations is what sets the false-reject and
escape rates, and a glance at the overlap says whether a better threshold exists at all.

Matplotlib Figure + Agg canvas (never pyplot), written atomically like the curves.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from vsad.viz.curves import _figure_format, _new_figure, _save

NORMAL_COLOR = "#3a9a48"
DEFECT_COLOR = "#d0412c"


def _check_level(name: str, entry) -> tuple[np.ndarray, np.ndarray, float | None]:
    try:
        scores, labels, threshold = entry
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a (scores, labels, threshold) triple") from None
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).astype(bool).ravel()
    if scores.size == 0 or scores.shape != labels.shape:
        raise ValueError(
            f"{name}: got {scores.size} scores and {labels.size} labels, expected equal, > 0"
        )
    if not np.isfinite(scores).all():
        raise ValueError(f"{name}: scores contain NaN or Inf, expected finite scores")
    if threshold is not None:
        threshold = float(threshold)
        if not np.isfinite(threshold):
            raise ValueError(f"{name}: threshold {threshold!r}, expected a finite number or None")
    return scores, labels, threshold


def plot_score_histograms(
    levels: Mapping[str, tuple],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    bins: int = 40,
) -> Path:
    """One histogram per level, e.g. {"sample": (scores, labels, threshold), "view": ...}:
    normal (green) and defective (red) scores on shared bins, the threshold as a dashed line
    with the shares of normal and defective scores above it (threshold None: no line).
    Written atomically to path (.png, .pdf or .svg); returns the path."""
    if not isinstance(levels, Mapping) or not levels:
        raise ValueError("levels: expected a non-empty {name: (scores, labels, threshold)} dict")
    if not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins: got {bins!r}, expected an int >= 2")
    path = Path(path)
    _figure_format(path)
    checked = {str(k): _check_level(str(k), v) for k, v in levels.items()}
    figure = _new_figure(5.0 * len(checked), 3.6)
    axes_list = figure.subplots(1, len(checked), squeeze=False)[0]
    for axes, (name, (scores, labels, threshold)) in zip(axes_list, checked.items(), strict=True):
        low, high = float(scores.min()), float(scores.max())
        if threshold is not None:
            low, high = min(low, threshold), max(high, threshold)
        if high <= low:
            high = low + 1.0
        edges = np.linspace(low, high, bins + 1)
        for mask, color, label in ((~labels, NORMAL_COLOR, "normal"),
                                   (labels, DEFECT_COLOR, "defective")):  # fmt: skip
            if mask.any():
                axes.hist(scores[mask], bins=edges, color=color, alpha=0.55,
                          label=f"{label} ({int(mask.sum())})")  # fmt: skip
        if threshold is not None:
            above = scores > threshold
            normal = above[~labels].mean() if (~labels).any() else float("nan")
            defective = above[labels].mean() if labels.any() else float("nan")
            axes.axvline(threshold, color="black", linestyle="--", linewidth=1.4,
                         label=f"threshold {threshold:.3g}")  # fmt: skip
            # Shares above this threshold alone (the view decisions also need an NG sample).
            axes.set_title(
                f"{name}: above the threshold: {100 * normal:.1f} % of normal, "
                f"{100 * defective:.1f} % of defective",
                fontsize="medium",
            )
        else:
            axes.set_title(f"{name} scores", fontsize="medium")
        axes.set(xlabel=f"{name} score", ylabel="count")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    if title is not None:
        figure.suptitle(str(title))
    return _save(figure, path)


__all__ = ["plot_score_histograms"]
