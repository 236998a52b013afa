"""Metrics of OK/NG decisions at fixed thresholds (NG iff score > threshold), beside the
threshold-free ones: what a line sees.

- false-reject rate (FRR) = FP / normal: good units thrown out;
- escape rate = FN / defective: defects shipped;
- precision = TP / NG, recall = TP / defective = 1 − escape rate;
- confusion matrices (tp, fp, tn, fn) of the sample level, the view level, and each camera.

View decisions are the detector's (vsad.detector.base.view_decisions): a view is NG only in an
NG sample, so a defective view of a sample that passed counts as an escape — what the line
ships — and the view false-reject rate is at most the view threshold's own target.

`decision_metrics(Evaluator.rows, thresholds)` returns the JSON-ready dict that `vsad test`
writes under "decisions" in metrics.json:

    {"thresholds": {...}, "sample": {"frr", "escape_rate", "precision", "recall", "accuracy",
     "confusion": {"tp", "fp", "tn", "fn"}, "n_normal", "n_defective"},
     "view": {... same ...}, "per_view": [{... same, "view": k}, ...]}

A rate whose denominator is 0 (e.g. precision with no NG) is None.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def confusion(scores, labels, threshold: float, ng=None) -> dict:
    """The decision counts and rates of scores against 0/1 labels at one threshold (ng: the
    decisions, when they are not simply score > threshold)."""
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).astype(bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores, labels: {scores.size} scores and {labels.size} labels")
    ng = scores > threshold if ng is None else np.asarray(ng, bool).ravel()
    tp, fp = int((ng & labels).sum()), int((ng & ~labels).sum())
    fn, tn = int((~ng & labels).sum()), int((~ng & ~labels).sum())

    def rate(num: int, den: int) -> float | None:
        return num / den if den else None

    return {
        "frr": rate(fp, fp + tn),
        "escape_rate": rate(fn, fn + tp),
        "precision": rate(tp, tp + fp),
        "recall": rate(tp, tp + fn),
        "accuracy": rate(tp + tn, scores.size),
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
        "n_normal": fp + tn,
        "n_defective": tp + fn,
        "threshold": float(threshold),
    }


def decision_metrics(rows: Sequence[Mapping], thresholds: Mapping) -> dict:
    """Decision metrics of evaluated samples (Evaluator.rows) at `thresholds`."""
    from vsad.detector.base import view_decisions

    sample_scores = np.array([r["score"] for r in rows], np.float64)
    sample_labels = np.array([r["label"] for r in rows], bool)
    views = {len(r["view_scores"]) for r in rows}
    view_scores = np.concatenate([np.asarray(r["view_scores"], np.float64) for r in rows])
    view_labels = np.concatenate([np.asarray(r["view_labels"], bool) for r in rows])
    view_ng = np.concatenate([view_decisions(r["view_scores"], thresholds) for r in rows])
    per_view = []
    if len(views) == 1:  # one station: camera k is view k of every sample
        count = views.pop()
        grid = [a.reshape(-1, count) for a in (view_scores, view_labels, view_ng)]
        for k in range(count):
            entry = confusion(grid[0][:, k], grid[1][:, k], thresholds["view"], grid[2][:, k])
            per_view.append({"view": k, **entry})
    return {
        "thresholds": dict(thresholds),
        "sample": confusion(sample_scores, sample_labels, thresholds["sample"]),
        "view": confusion(view_scores, view_labels, thresholds["view"], view_ng),
        "per_view": per_view,
    }


def flat_rates(decisions: Mapping) -> dict[str, float]:
    """The headline rates as flat keys (fractions, NaN where undefined): S-FRR, S-Escape,
    S-Precision, S-Recall and the same with V- for views."""
    out = {}
    for prefix, level in (("S", "sample"), ("V", "view")):
        entry = decisions[level]
        for key, name in (
            ("frr", "FRR"),
            ("escape_rate", "Escape"),
            ("precision", "Precision"),
            ("recall", "Recall"),
        ):
            value = entry[key]
            out[f"{prefix}-{name}"] = float("nan") if value is None else float(value)
    return out


__all__ = ["confusion", "decision_metrics", "flat_rates"]
