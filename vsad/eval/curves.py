"""Threshold metrics computed from per-group counts, exact or binned.

Every metric here is computed from scores grouped into ordered groups (ascending score): either
the distinct score values (exact) or histogram bins (binned). Per group k the caller gives the
number of positives pos[k] and negatives neg[k]. Thresholds sit between groups ("score >= group
k" is positive), which is what scikit-learn does with distinct values: ties inside a group
count half in the AUROC, and precision/recall are evaluated once per group.

Binned error bounds. A bin holds scores that the exact computation may still order; every
exact threshold inside bin k sees between the counts above the bin (TP_{k-1}, FP_{k-1}) and
those including it (TP_k, FP_k). That bounds the difference to the exact value, and the bound is
computed from the same histogram:

- AUROC: only positive/negative pairs inside one bin may be misordered, and they were counted
  1/2: |binned - exact| <= sum_k pos_k * neg_k / (2 P N).
- AP: the precision at every positive of bin k lies in
  [(TP_{k-1}+1) / (TP_{k-1}+1+FP_k), TP_k / (TP_k+FP_{k-1})]; the bin's contribution (pos_k / P
  times a precision in that interval) can move by at most pos_k / P times the distance from the
  binned precision to the farther end.
- F1-max: bin edges are a subset of the exact thresholds, so the binned value is a lower bound;
  an exact threshold inside bin k has F1 <= 2 TP_k / (TP_k + FP_{k-1} + P), whose maximum over
  k is an upper bound.
- AUPRO: inside bin k both FPR and PRO are monotone, so the exact curve stays in the box
  [FPR_{k-1}, FPR_k] x [PRO_{k-1}, PRO_k] while the binned curve is its diagonal: the areas differ
  by at most dFPR_k * dPRO_k / 2 per bin up to max_fpr (divided by max_fpr).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BinaryMetrics:
    """AUROC, average precision and F1-max of one level, with their error bounds (0 when
    exact) and the threshold that achieves F1-max (positive iff score >= f1_threshold)."""

    auroc: float
    ap: float
    f1_max: float
    f1_threshold: float
    auroc_bound: float = 0.0
    ap_bound: float = 0.0
    f1_bound: float = 0.0
    num_positive: int = 0
    num_negative: int = 0


def _descending_cumsums(pos: np.ndarray, neg: np.ndarray):
    pos_d = np.asarray(pos, np.float64)[::-1]
    neg_d = np.asarray(neg, np.float64)[::-1]
    return pos_d, neg_d, np.cumsum(pos_d), np.cumsum(neg_d)


def binary_metrics_from_counts(
    pos: np.ndarray, neg: np.ndarray, thresholds: np.ndarray, *, binned: bool
) -> BinaryMetrics:
    """Metrics from per-group counts in ascending score order; thresholds[k] is the lowest
    score of group k. binned=False: groups are distinct values and the result is exact."""
    pos_d, neg_d, tp, fp = _descending_cumsums(pos, neg)
    P, N = (tp[-1], fp[-1]) if len(tp) else (0.0, 0.0)
    nan = float("nan")
    if P == 0 or N == 0:
        return BinaryMetrics(nan, nan, nan, nan, nan, nan, nan, int(P), int(N))
    tp_before, fp_before = tp - pos_d, fp - neg_d

    auroc = float(np.sum(neg_d * (tp_before + 0.5 * pos_d)) / (P * N))
    auroc_bound = float(np.sum(pos_d * neg_d) / (2 * P * N)) if binned else 0.0

    has_pos = pos_d > 0
    precision = tp[has_pos] / (tp[has_pos] + fp[has_pos])
    share = pos_d[has_pos] / P
    ap = float(np.sum(share * precision))
    ap_bound = 0.0
    if binned:
        low = (tp_before[has_pos] + 1) / (tp_before[has_pos] + 1 + fp[has_pos])
        high = tp[has_pos] / (tp[has_pos] + fp_before[has_pos])
        ap_bound = float(np.sum(share * np.maximum(high - precision, precision - low)))

    f1 = 2 * tp / (tp + fp + P)
    best = int(np.argmax(f1))
    f1_max = float(f1[best])
    f1_bound = 0.0
    if binned:
        f1_upper = 2 * tp / (tp + fp_before + P)
        f1_bound = float(max(np.max(f1_upper) - f1_max, 0.0))
    threshold = float(np.asarray(thresholds)[::-1][best])
    return BinaryMetrics(
        auroc, ap, f1_max, threshold, auroc_bound, ap_bound, f1_bound, int(P), int(N)
    )


def aupro_from_counts(
    region_weight: np.ndarray, neg: np.ndarray, num_regions: int, max_fpr: float, *, binned: bool
) -> tuple[float, float]:
    """(AUPRO, bound): the area under PRO(FPR) for FPR in [0, max_fpr], divided by max_fpr.

    region_weight[k]: sum over the defective pixels of group k of 1 / (area of their connected
    ground-truth region), so that PRO(threshold) = sum of weights above it / num_regions, the
    mean over regions of the fraction of each region above the threshold. neg[k]: normal pixels.
    """
    nan = float("nan")
    w_d, neg_d = np.asarray(region_weight, np.float64)[::-1], np.asarray(neg, np.float64)[::-1]
    N = float(neg_d.sum())
    if num_regions == 0 or N == 0:
        return nan, nan
    fpr = np.concatenate([[0.0], np.cumsum(neg_d) / N])
    pro = np.concatenate([[0.0], np.cumsum(w_d) / num_regions])
    fpr[-1] = 1.0  # the lowest threshold takes every pixel (guards the last cumsum's rounding)
    pro = np.minimum(pro, 1.0)
    # Points up to max_fpr, then the curve interpolated linearly at max_fpr.
    inside = int(np.searchsorted(fpr, max_fpr, side="right"))
    x, y = fpr[:inside], pro[:inside]
    if inside < len(fpr) and x[-1] < max_fpr:
        x0, x1, y0, y1 = fpr[inside - 1], fpr[inside], pro[inside - 1], pro[inside]
        y_end = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
        x, y = np.append(x, max_fpr), np.append(y, y_end)
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2)) / max_fpr
    bound = 0.0
    if binned:
        # Boxes of every bin that starts below max_fpr (the crossing bin counted whole).
        stop = min(inside, len(fpr) - 1)
        boxes = np.diff(fpr[: stop + 1]) * np.diff(pro[: stop + 1]) / 2
        bound = float(np.sum(boxes)) / max_fpr
    return area, bound


def exact_counts(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None):
    """Groups scores by distinct value: (values ascending, pos counts, neg counts[, weights])."""
    values, inverse = np.unique(np.asarray(scores, np.float64), return_inverse=True)
    labels = np.asarray(labels).astype(bool).ravel()
    inverse = inverse.ravel()
    pos = np.bincount(inverse[labels], minlength=len(values))
    neg = np.bincount(inverse[~labels], minlength=len(values))
    if weights is None:
        return values, pos, neg
    summed = np.bincount(inverse[labels], weights=weights, minlength=len(values))
    return values, pos, neg, summed


def merge_negative_runs(pos, neg, thresholds, weight=None):
    """The same ascending groups with every run of consecutive groups without positives merged
    into one (keeping the run's lowest threshold): (pos, neg, thresholds[, weight]).

    No metric here changes, exact or binned, bounds included. Inside such a run TP stays
    constant, so its negatives all enter the AUROC sum with the same TP (integer products,
    summed exactly in float64 while P·N < 2^53, to rounding beyond); AP and its bound read
    positive groups only; F1 and its upper bound fall along the run (FP grows) and peak at a
    positive group; PRO is flat along it, so AUPRO gets the same rectangle (to float rounding)
    and a zero-height box. What it saves: the metrics' float64 temporaries (about 15 per
    group) then scale with the groups holding defective pixels, a few percent of a map, not
    with every distinct value or bin.
    """
    pos, neg = np.asarray(pos), np.asarray(neg)
    has_pos = pos > 0
    # A group starts a merged group unless both it and the one before it lack positives.
    starts = np.flatnonzero(np.r_[True, has_pos[1:] | has_pos[:-1]]) if len(pos) else pos[:0]
    if len(starts) == len(pos):
        merged = (pos, neg, np.asarray(thresholds))
        return merged if weight is None else (*merged, np.asarray(weight))
    merged = (
        np.add.reduceat(pos, starts),
        np.add.reduceat(neg, starts),
        np.asarray(thresholds)[starts],
    )
    return merged if weight is None else (*merged, np.add.reduceat(weight, starts))


def sorted_exact_groups(neg: np.ndarray, pos: np.ndarray, weights: np.ndarray):
    """Exact groups of normal scores `neg` and defective scores `pos` (with their `weights`),
    in the form merge_negative_runs gives: every distinct defective value a group (with the
    normal scores equal to it), the normal scores between two of them one group.
    (pos counts, neg counts, thresholds, weight sums), ascending. Sorts `neg` in place.

    Memory: `neg` is sorted where it lies and only searched; the arrays made scale with the
    defective pixels, so the peak is the caller's float64 copy of the normal scores.
    """
    neg.sort()
    order = np.argsort(pos, kind="stable")
    pos, weights = pos[order], weights[order]
    if len(pos):
        values, first = np.unique(pos, return_index=True)
        pos_count = np.diff(np.r_[first, len(pos)])
        weight = np.add.reduceat(weights, first)
    else:
        values, pos_count, weight = pos[:0], np.zeros(0, np.int64), np.zeros(0)
    left = np.searchsorted(neg, values, "left")
    right = np.searchsorted(neg, values, "right")
    # Normal-only gap k holds the normal scores below value k and above value k - 1.
    gap_start = np.r_[0, right]
    gap_count = np.r_[left, len(neg)] - gap_start
    K = len(values)
    out_pos = np.zeros(2 * K + 1, np.int64)
    out_neg = np.zeros(2 * K + 1, np.int64)
    out_thr = np.zeros(2 * K + 1, np.float64)
    out_w = np.zeros(2 * K + 1, np.float64)
    out_neg[0::2] = gap_count
    out_thr[0::2] = neg[np.minimum(gap_start, max(len(neg) - 1, 0))] if len(neg) else 0.0
    out_pos[1::2], out_neg[1::2], out_thr[1::2], out_w[1::2] = (
        pos_count,
        right - left,
        values,
        weight,
    )
    keep = np.ones(2 * K + 1, bool)
    keep[0::2] = gap_count > 0  # empty gaps are no group
    return out_pos[keep], out_neg[keep], out_thr[keep], out_w[keep]


def binary_metrics(scores, labels) -> BinaryMetrics:
    """Exact AUROC, AP and F1-max of 1-D scores against 0/1 labels (scikit-learn semantics)."""
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(
            f"scores, labels: got {scores.shape[0]} scores and {labels.shape[0]} labels, "
            "expected one label per score"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores: contain NaN or Inf, expected finite values")
    values, pos, neg = exact_counts(scores, labels)
    return binary_metrics_from_counts(pos, neg, values, binned=False)


def auroc(scores, labels) -> float:
    """Exact area under the ROC curve (equals sklearn.metrics.roc_auc_score)."""
    return binary_metrics(scores, labels).auroc


def average_precision(scores, labels) -> float:
    """Exact average precision (equals sklearn.metrics.average_precision_score)."""
    return binary_metrics(scores, labels).ap


def f1_max(scores, labels) -> float:
    """Exact maximum F1 over all thresholds."""
    return binary_metrics(scores, labels).f1_max


__all__ = [
    "BinaryMetrics",
    "aupro_from_counts",
    "auroc",
    "average_precision",
    "binary_metrics",
    "binary_metrics_from_counts",
    "exact_counts",
    "f1_max",
    "merge_negative_runs",
    "sorted_exact_groups",
]
