"""ROC and precision-recall curves of the sample, view and pixel levels, plotted to a file.

The curve points come from the same per-threshold counts as the metrics in vsad/eval/curves.py
(binary_metrics_from_counts), so the AUROC / AP in a legend is the value the evaluator reports.
Pixel level has millions of distinct scores: a line with that many vertices makes a slow,
multi-megabyte figure that looks exactly like a few thousand well-chosen vertices, so every
curve is thinned to at most `max_points` (keeping the corners of long segments). Beyond
`exact_budget` scores the counts are taken on a histogram of `num_bins` equal bins, computed one
array at a time without concatenating; its points are exact points of the curve (thresholds at
bin edges) and only the area under it becomes approximate (to about 1e-6 with 2^20 bins).

Figures are built with matplotlib.figure.Figure and the Agg canvas, never pyplot: plotting from
a script, a notebook or a GUI session neither switches the user's backend nor leaves figures
open in pyplot's registry.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vsad._atomic import atomic_write_bytes
from vsad.eval.curves import binary_metrics_from_counts, exact_counts
from vsad.eval.pixel import to_numpy

DEFAULT_MAX_POINTS = 2000
DEFAULT_EXACT_BUDGET = 1 << 22
DEFAULT_NUM_BINS = 1 << 20
FIGURE_FORMATS = ("png", "pdf", "svg")
# One colour per level whatever subset is plotted, so figures of different runs compare.
LEVEL_COLORS = {"sample": "C0", "view": "C1", "pixel": "C2"}


class OneClassError(ValueError):
    """The labels hold a single class: a ROC or PR curve is undefined."""


class RocCurve(NamedTuple):
    """ROC points from (0, 0) to (1, 1), thresholds descending, and the AUROC."""

    fpr: np.ndarray
    tpr: np.ndarray
    auc: float


class PrCurve(NamedTuple):
    """Precision-recall points, recall ascending from (0, 1), and the average precision."""

    recall: np.ndarray
    precision: np.ndarray
    ap: float


def _parts(values, what: str) -> list[np.ndarray]:
    """An array, or a sequence of arrays of any shapes (e.g. maps of views of different
    sizes) -> list of arrays."""
    if isinstance(values, (list, tuple)) and values and not np.isscalar(values[0]):
        return [to_numpy(v, f"{what}[{i}]") for i, v in enumerate(values)]
    return [to_numpy(values, what)]


def _paired_parts(scores, labels) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Flat score and label parts of equal sizes. Parts are compared shape by shape when both
    sides are grouped alike (a transposed mask is an error, not a relabelling); otherwise,
    e.g. a list of maps with one stacked mask array, only the totals must agree."""
    score_parts, label_parts = _parts(scores, "scores"), _parts(labels, "labels")
    if len(score_parts) == len(label_parts):
        for i, (s, l) in enumerate(zip(score_parts, label_parts, strict=True)):
            if s.shape != l.shape and (s.ndim > 1 or l.ndim > 1):
                where = "" if len(score_parts) == 1 else f"[{i}]"
                raise ValueError(
                    f"scores{where}, labels{where}: shapes {s.shape} vs {l.shape}, expected "
                    "one label per score"
                )
    score_parts = [s.ravel() for s in score_parts]
    label_parts = [l.ravel() for l in label_parts]
    if len(score_parts) != len(label_parts) or any(
        s.size != l.size for s, l in zip(score_parts, label_parts, strict=True)
    ):
        score_parts = [np.concatenate(score_parts)]
        label_parts = [np.concatenate(label_parts)]
    if score_parts[0].size != label_parts[0].size:
        raise ValueError(
            f"scores, labels: {score_parts[0].size} scores and {label_parts[0].size} labels, "
            "expected one label per score"
        )
    return score_parts, label_parts


def _grouped_counts(scores, labels, exact_budget: int, num_bins: int):
    """(thresholds ascending, pos, neg, binned): per distinct score, or per histogram bin
    when there are more than exact_budget scores."""
    score_parts, label_parts = _paired_parts(scores, labels)
    total = sum(s.size for s in score_parts)
    if total == 0:
        raise ValueError("scores: got no scores, expected at least one positive and one negative")
    for i, s in enumerate(score_parts):
        if s.dtype == bool or not (
            np.issubdtype(s.dtype, np.integer) or np.issubdtype(s.dtype, np.floating)
        ):
            raise ValueError(f"scores: part {i} has dtype {s.dtype}, expected real numbers")
        if s.size and not np.isfinite(s).all():
            raise ValueError("scores: contain NaN or Inf, expected finite scores")
    for l in label_parts:
        if l.dtype != bool and not np.all((l == 0) | (l == 1)):
            raise ValueError(f"labels: expected 0/1 or bool, got values {np.unique(l)[:5]}")
    label_parts = [l.astype(bool, copy=False) for l in label_parts]

    low = min(float(s.min()) for s in score_parts if s.size)
    high = max(float(s.max()) for s in score_parts if s.size)
    if total <= exact_budget or not high > low:
        values, pos, neg = exact_counts(np.concatenate(score_parts), np.concatenate(label_parts))
        binned = False
    else:
        width = (high - low) / num_bins
        pos = np.zeros(num_bins, np.int64)
        neg = np.zeros(num_bins, np.int64)
        for s, l in zip(score_parts, label_parts, strict=True):
            index = np.floor((s.astype(np.float64) - low) / width).astype(np.int64)
            np.clip(index, 0, num_bins - 1, out=index)
            pos += np.bincount(index[l], minlength=num_bins)
            neg += np.bincount(index[~l], minlength=num_bins)
        values = low + np.arange(num_bins, dtype=np.float64) * width
        binned = True
    P, N = int(pos.sum()), int(neg.sum())
    if P == 0 or N == 0:
        raise OneClassError(
            f"labels: got {P} positives and {N} negatives, a curve needs at least one of each"
        )
    return values, pos, neg, binned


def _check_max_points(max_points) -> int:
    if not isinstance(max_points, (int, np.integer)) or max_points < 4:
        raise ValueError(f"max_points: got {max_points!r}, expected an int >= 4")
    return int(max_points)


def thin_curve(x: np.ndarray, y: np.ndarray, max_points: int = DEFAULT_MAX_POINTS):
    """At most max_points vertices of a polyline, spread evenly along its length (|dx| + |dy|),
    always with both ends and both ends of any long segment, so corners stay sharp and the
    drawn curve is off by at most ~2 / max_points of the axis."""
    max_points = _check_max_points(max_points)
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size <= max_points:
        return x, y
    length = np.concatenate([[0.0], np.cumsum(np.abs(np.diff(x)) + np.abs(np.diff(y)))])
    targets = np.linspace(0.0, length[-1], max_points // 2)
    index = np.searchsorted(length, targets, side="left")
    keep = np.unique(np.concatenate([[0, x.size - 1], index, np.maximum(index - 1, 0)]))
    keep = keep[keep < x.size]
    if keep.size > max_points:  # only with degenerate lengths; fall back to even spacing
        keep = np.unique(np.linspace(0, x.size - 1, max_points).round().astype(np.int64))
    return x[keep], y[keep]


def roc_points(
    scores,
    labels,
    max_points: int = DEFAULT_MAX_POINTS,
    *,
    exact_budget: int = DEFAULT_EXACT_BUDGET,
    num_bins: int = DEFAULT_NUM_BINS,
) -> RocCurve:
    """The ROC curve of scores against 0/1 labels (higher score = more anomalous), thinned to
    at most max_points, with its AUROC (scikit-learn semantics: ties count half).

    scores / labels: arrays of any (equal) shape, e.g. (N,) sample scores or (M, H, W) maps and
    masks, or equal-length sequences of such arrays (maps of differently sized views).
    """
    max_points = _check_max_points(max_points)
    values, pos, neg, binned = _grouped_counts(scores, labels, exact_budget, num_bins)
    metrics = binary_metrics_from_counts(pos, neg, values, binned=binned)
    tp = np.concatenate([[0], np.cumsum(pos[::-1])])
    fp = np.concatenate([[0], np.cumsum(neg[::-1])])
    fpr, tpr = thin_curve(fp / fp[-1], tp / tp[-1], max_points)
    return RocCurve(fpr, tpr, float(metrics.auroc))


def pr_points(
    scores,
    labels,
    max_points: int = DEFAULT_MAX_POINTS,
    *,
    exact_budget: int = DEFAULT_EXACT_BUDGET,
    num_bins: int = DEFAULT_NUM_BINS,
) -> PrCurve:
    """The precision-recall curve (one point per threshold, plus (0, 1)), thinned to at most
    max_points, with the average precision. Arguments as roc_points."""
    max_points = _check_max_points(max_points)
    values, pos, neg, binned = _grouped_counts(scores, labels, exact_budget, num_bins)
    metrics = binary_metrics_from_counts(pos, neg, values, binned=binned)
    tp = np.cumsum(pos[::-1]).astype(np.float64)
    fp = np.cumsum(neg[::-1]).astype(np.float64)
    used = (tp + fp) > 0
    recall = np.concatenate([[0.0], tp[used] / tp[-1]])
    precision = np.concatenate([[1.0], tp[used] / (tp[used] + fp[used])])
    recall, precision = thin_curve(recall, precision, max_points)
    return PrCurve(recall, precision, float(metrics.ap))


def _check_curves(curves, what: str) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError(f"{what}: got {type(curves).__name__}, expected a non-empty dict")
    checked = {}
    for name, curve in curves.items():
        try:
            x, y, area = curve
        except (TypeError, ValueError):
            raise ValueError(
                f"{what}[{name!r}]: expected a (x, y, area) triple such as roc_points returns"
            ) from None
        x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
        if x.size != y.size or x.size < 2:
            raise ValueError(
                f"{what}[{name!r}]: got {x.size} and {y.size} coordinates, expected two equal "
                "lengths >= 2"
            )
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError(f"{what}[{name!r}]: coordinates contain NaN or Inf")
        if x.min() < -1e-9 or x.max() > 1 + 1e-9 or y.min() < -1e-9 or y.max() > 1 + 1e-9:
            raise ValueError(f"{what}[{name!r}]: coordinates outside [0, 1]")
        checked[str(name)] = (x, y, float(area))
    return checked


def _figure_format(path: Path) -> str:
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"path: extension {path.suffix!r} of '{path}', expected .png/.pdf/.svg")
    return fmt


def _new_figure(width: float, height: float):
    """A Figure on its own Agg canvas, unknown to pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format=_figure_format(path))
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _draw_roc(axes, curves, max_points: int) -> None:
    axes.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    for index, (name, (fpr, tpr, area)) in enumerate(curves.items()):
        fpr, tpr = thin_curve(fpr, tpr, max_points)
        color = LEVEL_COLORS.get(name, f"C{3 + index}")
        axes.plot(fpr, tpr, linewidth=1.6, color=color, label=f"{name} (AUROC {area:.3f})")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    axes.set_aspect("equal")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")


def _draw_pr(axes, curves, max_points: int) -> None:
    for index, (name, (recall, precision, area)) in enumerate(curves.items()):
        recall, precision = thin_curve(recall, precision, max_points)
        axes.plot(
            recall,
            precision,
            linewidth=1.6,
            color=LEVEL_COLORS.get(name, f"C{3 + index}"),
            drawstyle="steps-pre",
            label=f"{name} (AP {area:.3f})",
        )
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision")
    axes.set_aspect("equal")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize="small")


def plot_roc_curves(
    curves: Mapping[str, tuple],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
) -> Path:
    """Plots ROC curves, e.g. {"sample": roc_points(...), "view": ..., "pixel": ...}, in one
    figure and writes it atomically to path (.png, .pdf or .svg). Each value is (fpr, tpr,
    auroc); long curves are thinned to max_points. Returns the path."""
    checked = _check_curves(curves, "curves")
    path = Path(path)
    _figure_format(path)
    max_points = _check_max_points(max_points)
    figure = _new_figure(5.2, 5.2)
    axes = figure.add_subplot()
    _draw_roc(axes, checked, max_points)
    if title is not None:
        axes.set_title(str(title))
    return _save(figure, path)


def plot_metric_curves(
    path: str | os.PathLike,
    *,
    sample=None,
    view=None,
    pixel=None,
    title: str | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
) -> Path:
    """ROC (left) and precision-recall (right) curves of the given levels in one figure,
    written atomically to path (.png, .pdf or .svg). Returns the path.

    Each level is a (scores, labels) pair: sample = (N scores, N labels), view = (N*M view
    scores, their labels), pixel = (maps, masks) as arrays or equal-length lists of per-view
    arrays. A level whose labels hold a single class has no curve and is left out (named in the
    title); at least one level must have both classes.
    """
    path = Path(path)
    _figure_format(path)
    max_points = _check_max_points(max_points)
    rocs, prs, skipped = {}, {}, []
    for name, pair in (("sample", sample), ("view", view), ("pixel", pixel)):
        if pair is None:
            continue
        try:
            scores, labels = pair
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected a (scores, labels) pair") from None
        try:
            rocs[name] = roc_points(scores, labels, max_points)
        except OneClassError:
            skipped.append(name)
            continue
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from exc
        prs[name] = pr_points(scores, labels, max_points)
    if not rocs:
        raise ValueError(
            "sample, view, pixel: no level with both normal and anomalous labels "
            f"(given: {skipped or 'none'}), nothing to plot"
        )
    figure = _new_figure(10.4, 5.2)
    roc_axes, pr_axes = figure.subplots(1, 2)
    _draw_roc(roc_axes, rocs, max_points)
    _draw_pr(pr_axes, prs, max_points)
    roc_axes.set_title("ROC")
    pr_axes.set_title("precision-recall")
    heading = [str(title)] if title is not None else []
    if skipped:
        heading.append(f"(no curve for {', '.join(skipped)}: one class only)")
    if heading:
        figure.suptitle("  ".join(heading))
    return _save(figure, path)


__all__ = [
    "OneClassError",
    "PrCurve",
    "RocCurve",
    "plot_metric_curves",
    "plot_roc_curves",
    "pr_points",
    "roc_points",
    "thin_curve",
]
