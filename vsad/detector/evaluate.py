"""Evaluating a fitted detector on a test split: metrics (streaming), per-sample scores,
ROC curves and overlays, written into one folder atomically file by file."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np

from vsad.eval import Evaluator, metrics_table, write_metrics, write_sample_scores


def evaluate_detector(
    detector,
    split,
    out_dir: str | Path | None = None,
    *,
    name: str = "metrics",
    overlays: int = 16,
    progress: bool = True,
    timings: dict | None = None,
) -> dict[str, float]:
    """Predicts every sample of `split`, returns the metrics (fractions) and, with out_dir,
    writes metrics.{json,csv,md}, scores.csv, roc.png and up to `overlays` overlay panels
    (half anomalous, half normal samples, one colour scale for all)."""
    evaluator = Evaluator()
    seen: deque = deque()

    def samples():
        for sample in split:
            seen.append(sample)
            yield sample

    kept: list[tuple] = []
    quota = {0: overlays - overlays // 2, 1: overlays // 2} if out_dir is not None else {0: 0, 1: 0}
    for prediction in detector.iter_predict(samples(), progress=progress, timings=timings):
        sample = seen.popleft()
        evaluator.add(
            sample,
            prediction.maps,
            view_scores=prediction.view_scores,
            sample_score=prediction.score,
        )
        if quota[sample.label] > 0:
            quota[sample.label] -= 1
            kept.append((sample, prediction))
    metrics = evaluator.compute()
    if out_dir is not None:
        out = Path(out_dir)
        write_metrics(metrics, out, name=name, details=evaluator.details())
        write_sample_scores(evaluator.rows, out / "scores.csv")
        _write_pictures(evaluator, kept, out)
    return metrics


def _write_pictures(evaluator: Evaluator, kept: list[tuple], out: Path) -> None:
    from vsad.viz import plot_roc_curves, roc_points, save_overlays

    rows = evaluator.rows
    curves = {}
    sample_scores = np.array([r["score"] for r in rows])
    sample_labels = np.array([r["label"] for r in rows])
    view_scores = np.array([s for r in rows for s in r["view_scores"]])
    view_labels = np.array([v for r in rows for v in r["view_labels"]])
    for level, scores, labels in (
        ("sample", sample_scores, sample_labels),
        ("view", view_scores, view_labels),
    ):
        if 0 < labels.sum() < len(labels):
            curves[level] = roc_points(scores, labels)
    if curves:
        plot_roc_curves(curves, out / "roc.png", title="ROC")
    if not kept:
        return
    # One colour scale for every panel: from the lowest normal view score to the highest score.
    normal = view_scores[view_labels == 0]
    vmin = float(normal.min()) if normal.size else float(view_scores.min())
    vmax = float(view_scores.max())
    for sample, prediction in kept:
        save_overlays(
            out / "overlays",
            sample.sample_id,
            sample.images,
            prediction.maps,
            masks=sample.masks,
            view_scores=prediction.view_scores,
            sample_score=prediction.score,
            vmin=vmin,
            vmax=vmax,
        )


def print_table(metrics: dict, title: str | None = None) -> str:
    table = metrics_table({title or "result": metrics})
    print(table)
    return table
