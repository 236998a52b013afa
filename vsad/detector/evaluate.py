"""Evaluating a fitted detector on a test split: metrics (streaming), per-sample scores,
decisions at the stored thresholds, ROC / PR curves, score histograms, overlays and an HTML
report, written into one folder atomically file by file."""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vsad.eval import Evaluator, metrics_table, write_metrics, write_sample_scores
from vsad.eval.decisions import decision_metrics

#: Largest tile height of the panels embedded in report.html: photos do not compress, and a
#: report of 2 × 4 five-view samples stays at a few megabytes.
REPORT_TILE_HEIGHT = 128


def evaluate_detector(
    detector,
    split,
    out_dir: str | Path | None = None,
    *,
    name: str = "metrics",
    overlays: int = 16,
    progress: bool = True,
    timings: dict | None = None,
    decisions: dict | None = None,
    report: bool = True,
    worst: int = 4,
    run_config: Mapping | None = None,
    title: str | None = None,
    predictions: Iterable[tuple[Any, Any]] | None = None,
) -> dict[str, float]:
    """Predicts every sample of `split`, returns the threshold-free metrics (fractions) and,
    with out_dir, writes metrics.{json,csv,md}, scores.csv, roc.png, curves.png (ROC + PR),
    scores_hist.png, up to `overlays` overlay panels (half anomalous, half normal samples, one
    colour scale for all) and, with `report`, report.html (vsad/eval/html_report.py).

    When the detector has thresholds, the metrics at those thresholds (false-reject and escape
    rates, precision, recall, confusion matrices; vsad/eval/decisions.py) go into metrics.json
    under "decisions" and, if `decisions` is a dict, into it. worst: how many of the
    highest-scoring normal and lowest-scoring defective samples the report shows.

    predictions: (sample, Prediction) pairs of `split` in order, computed elsewhere (e.g.
    `vsad.distributed.evaluate.iter_sharded_predictions`, several processes); by default the
    detector predicts them here.
    """
    evaluator = Evaluator()
    pairs = predictions if predictions is not None else _predict(detector, split, progress, timings)

    kept: list[tuple] = []
    quota = {0: overlays - overlays // 2, 1: overlays // 2} if out_dir is not None else {0: 0, 1: 0}
    # The worst cases for the report: min-heaps keyed so that the least bad case is popped.
    keep_worst = worst if out_dir is not None and report else 0
    worst_heaps: dict[int, list] = {0: [], 1: []}
    order = itertools.count()
    for sample, prediction in pairs:
        evaluator.add(
            sample,
            prediction.maps,
            view_scores=prediction.view_scores,
            sample_score=prediction.score,
        )
        if quota[sample.label] > 0:
            quota[sample.label] -= 1
            kept.append((sample, prediction))
        if keep_worst:
            # Normal: high score is bad; defective: low score is bad.
            badness = prediction.score if sample.label == 0 else -prediction.score
            heap = worst_heaps[int(sample.label)]
            entry = (badness, next(order), sample, prediction)
            if len(heap) < keep_worst:
                heapq.heappush(heap, entry)
            elif badness > heap[0][0]:
                heapq.heapreplace(heap, entry)
    metrics = evaluator.compute()
    thresholds = getattr(detector, "thresholds", None)
    found = decision_metrics(evaluator.rows, thresholds) if thresholds is not None else None
    if decisions is not None and found is not None:
        decisions.update(found)
    if out_dir is not None:
        out = Path(out_dir)
        extra = {"decisions": found}
        write_metrics(metrics, out, name=name, details=evaluator.details(), extra=extra)
        write_sample_scores(evaluator.rows, out / "scores.csv")
        scale = _color_range(evaluator)
        pictures = _write_pictures(evaluator, kept, out, thresholds, scale)
        if report:
            worst_cases = {
                label: [e[2:] for e in sorted(heap, key=lambda e: -e[0])]
                for label, heap in worst_heaps.items()
            }
            _write_report(
                out / "report.html",
                detector=detector,
                evaluator=evaluator,
                metrics=metrics,
                decisions=found,
                pictures=pictures,
                worst_cases=worst_cases,
                scale=scale,
                run_config=run_config,
                title=title,
            )
    return metrics


def _predict(detector, split, progress: bool, timings: dict | None):
    """(sample, Prediction) pairs of `split`, predicted in batches by the detector."""
    seen: deque = deque()

    def samples():
        for sample in split:
            seen.append(sample)
            yield sample

    for prediction in detector.iter_predict(samples(), progress=progress, timings=timings):
        yield seen.popleft(), prediction


def _levels(evaluator: Evaluator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rows = evaluator.rows
    return {
        "sample": (
            np.array([r["score"] for r in rows], np.float64),
            np.array([r["label"] for r in rows], np.int64),
        ),
        "view": (
            np.array([s for r in rows for s in r["view_scores"]], np.float64),
            np.array([v for r in rows for v in r["view_labels"]], np.int64),
        ),
    }


def _color_range(evaluator: Evaluator) -> tuple[float, float]:
    """One colour scale for every panel: from the lowest normal view score to the highest."""
    view_scores, view_labels = _levels(evaluator)["view"]
    normal = view_scores[view_labels == 0]
    vmin = float(normal.min()) if normal.size else float(view_scores.min())
    return vmin, max(float(view_scores.max()), vmin)


def _write_pictures(evaluator, kept, out: Path, thresholds, scale) -> dict[str, Path]:
    """roc.png, curves.png (ROC + PR), scores_hist.png and the overlays; returns the
    figures written."""
    from vsad.viz import (
        plot_metric_curves,
        plot_roc_curves,
        plot_score_histograms,
        roc_points,
        save_overlays,
    )

    levels = _levels(evaluator)
    both = {k: v for k, v in levels.items() if 0 < v[1].sum() < len(v[1])}
    written: dict[str, Path] = {}
    if both:
        curves = {level: roc_points(*pair) for level, pair in both.items()}
        plot_roc_curves(curves, out / "roc.png", title="ROC")
        written["curves"] = plot_metric_curves(out / "curves.png", **both)
    histogram = {
        level: (scores, labels, None if thresholds is None else thresholds[level])
        for level, (scores, labels) in levels.items()
    }
    written["histogram"] = plot_score_histograms(histogram, out / "scores_hist.png")
    for sample, prediction in kept:
        save_overlays(
            out / "overlays",
            sample.sample_id,
            sample.images,
            prediction.maps,
            masks=sample.masks,
            view_scores=prediction.view_scores,
            sample_score=prediction.score,
            threshold=None if thresholds is None else thresholds["view"],
            sample_threshold=None if thresholds is None else thresholds["sample"],
            vmin=scale[0],
            vmax=scale[1],
        )
    return written


def panel_png(sample, prediction, thresholds, scale, tile_height=REPORT_TILE_HEIGHT) -> bytes:
    """A sample's overlay panel (thresholds marked) as PNG bytes."""
    import cv2

    from vsad.viz import view_panel

    panel = view_panel(
        sample.images,
        prediction.maps,
        masks=sample.masks,
        view_scores=prediction.view_scores,
        sample_score=prediction.score,
        threshold=None if thresholds is None else thresholds["view"],
        sample_threshold=None if thresholds is None else thresholds["sample"],
        vmin=scale[0],
        vmax=scale[1],
        title=str(sample.sample_id),
        tile_height=max(16, min(tile_height, max(im.shape[0] for im in sample.images))),
    )
    bgr = cv2.cvtColor(panel, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise ValueError(f"panel of {sample.sample_id!r}: OpenCV could not encode it as PNG")
    return buffer.tobytes()


def _write_report(
    path: Path,
    *,
    detector,
    evaluator,
    metrics,
    decisions,
    pictures,
    worst_cases,
    scale,
    run_config,
    title,
) -> None:
    from vsad.eval.html_report import Case, write_report

    thresholds = getattr(detector, "thresholds", None)

    def cases(label: int) -> list[Case]:
        return [
            Case(
                sample_id=str(sample.sample_id),
                label=int(sample.label),
                score=float(prediction.score),
                decision=prediction.decision,
                view_scores=[float(s) for s in prediction.view_scores],
                png=panel_png(sample, prediction, thresholds, scale),
                defect_type=getattr(sample, "defect_type", "") or "",
            )
            for sample, prediction in worst_cases[label]
        ]

    counts = evaluator.details()["counts"]
    info = {
        "detector": type(detector).__name__,
        "samples": f"{counts['samples']} ({counts['anomalous_samples']} defective)",
        "views": f"{counts['views']} ({counts['anomalous_views']} defective)",
    }
    config = run_config if run_config is not None else {"config": detector.config.to_dict()}
    write_report(
        path,
        title=title or f"vsad test report — {type(detector).__name__}",
        info=info,
        metrics=metrics,
        decisions=decisions,
        curves_png=pictures["curves"].read_bytes() if "curves" in pictures else None,
        histogram_png=pictures["histogram"].read_bytes() if "histogram" in pictures else None,
        false_rejects=cases(0),
        escapes=cases(1),
        config=config,
    )


def print_table(metrics: dict, title: str | None = None) -> str:
    table = metrics_table({title or "result": metrics})
    print(table)
    return table
