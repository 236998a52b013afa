"""Decision thresholds: a view or sample is NG iff its score is *above* its threshold.

Three sources, in the order they override each other:

- "train-loo" (set by `fit`): from the leave-one-out scores of the training samples — normal
  samples only, so no defect is needed to set them (vsad/memory/feature_banks.py explains how
  those scores are made comparable to a test sample's).
- "validation" (`vsad calibrate --data`): from a labelled split, at a target false-reject rate
  (normal samples only) or at the F1-optimal point (needs both classes).
- "manual": given by the user, checked against the scores seen.

A threshold at a target false-reject rate α from n normal scores is the k-th smallest score,
k = ⌈(1 − α)(n + 1)⌉ (the conformal rule): for a new normal score exchangeable with the n,
P(score > X_(k)) = (n + 1 − k)/(n + 1) ≤ α. The false-reject rate a given threshold achieves is
itself random — it follows Beta(n + 1 − k, k) — and its central 95 % interval is stored beside
the threshold, so a threshold backed by 40 samples says how loose it is. When k > n (α < 1/(n+1),
e.g. α = 0.01 with fewer than 99 samples) no order statistic reaches the target: the largest
normal score is used, `limited` is set and a warning says how many samples the target needs.

Stored as a plain dict (JSON in detector.json):

    {"view": 3.2, "sample": 4.0, "source": "train-loo", "criterion": "fpr", "fpr": 0.05,
     "n_normal": 40, "levels": {"sample": {...}, "view": {...}}}

`levels[level]` holds, per level: source, criterion, n_normal (and n_anomalous for validation),
rank k, expected_frr, frr_interval [lo, hi] (95 %), limited.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np

LEVELS = ("sample", "view")
#: The target when none is configured: resolvable with a station's typical 40 samples (the
#: order statistic needs 19 for 5 %, 99 for 1 %).
DEFAULT_FPR = 0.05
SOURCES = ("train-loo", "validation", "manual")
CONFIDENCE = 0.95


# -- the order-statistic rule ----------------------------------------------------------------
def check_fpr(fpr, what: str = "fpr") -> float:
    """A target false-reject rate strictly inside (0, 1)."""
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float, np.floating)):
        raise ValueError(f"{what}: got {fpr!r}, expected a number in (0, 1) such as 0.05")
    value = float(fpr)
    if not 0.0 < value < 1.0:
        raise ValueError(
            f"{what}: got {fpr!r}, expected a false-reject rate strictly between 0 and 1 "
            "(e.g. 0.05 for 5 %)"
        )
    return value


def order_statistic_rank(n: int, fpr: float) -> tuple[int, bool]:
    """(k, limited): the 1-based rank k = ⌈(1 − fpr)(n + 1)⌉ of the threshold among n sorted
    normal scores, capped at n (limited = True when the cap applied)."""
    if n < 1:
        raise ValueError(f"n: got {n} normal scores, expected at least 1")
    # A hair below the product keeps 0.95 * 20 = 18.999999999999996 from rounding up to 20.
    k = max(1, math.ceil((1.0 - fpr) * (n + 1) - 1e-9))
    return (n, True) if k > n else (k, False)


def samples_needed(fpr: float) -> int:
    """The fewest normal scores for which the order statistic reaches the target fpr."""
    return max(1, math.ceil(1.0 / fpr - 1.0 - 1e-9))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def beta_cdf(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (CDF of Beta(a, b))."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def beta_quantile(q: float, a: float, b: float) -> float:
    """x with I_x(a, b) = q, by bisection (60 halvings: below float resolution)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if beta_cdf(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def frr_interval(n: int, k: int, confidence: float = CONFIDENCE) -> list[float]:
    """Central interval of the false-reject rate that the threshold X_(k) of n normal scores
    achieves on new normal scores: FRR ~ Beta(n + 1 − k, k)."""
    a, b = n + 1 - k, k
    tail = (1.0 - confidence) / 2
    return [beta_quantile(tail, a, b), beta_quantile(1.0 - tail, a, b)]


def fpr_threshold(normal_scores, fpr: float, *, what: str) -> tuple[float, dict]:
    """The threshold at target false-reject rate `fpr` from normal scores, and its details."""
    fpr = check_fpr(fpr)
    scores = _finite_scores(normal_scores, what)
    if scores.size == 0:
        raise ValueError(
            f"{what}: got no normal scores, expected at least one normal sample to set a "
            "threshold at a target false-reject rate"
        )
    n = int(scores.size)
    k, limited = order_statistic_rank(n, fpr)
    threshold = float(np.sort(scores)[k - 1])
    details = {
        "n_normal": n,
        "rank": k,
        "expected_frr": (n + 1 - k) / (n + 1),
        "frr_interval": frr_interval(n, k),
        "limited": limited,
    }
    if limited:
        warnings.warn(
            f"{what}: a false-reject rate of {fpr:g} needs at least {samples_needed(fpr)} normal "
            f"scores, got {n}; the threshold is the largest normal score (expected false-reject "
            f"rate {1 / (n + 1):.3g}). Add normal samples or raise the target.",
            stacklevel=3,
        )
    return threshold, details


def f1_threshold(scores, labels, *, what: str) -> tuple[float, dict]:
    """The F1-optimal threshold (NG iff score > threshold) of labelled scores."""
    from vsad.eval.curves import binary_metrics

    scores = _finite_scores(scores, what)
    labels = np.asarray(labels).astype(bool).ravel()
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(
            f"{what}: the F1-optimal threshold needs normal and defective samples, got "
            f"{negatives} normal and {positives} defective"
        )
    metrics = binary_metrics(scores, labels.astype(np.int64))
    best = float(metrics.f1_threshold)  # positive iff score >= best
    below = scores[scores < best]
    # Halfway to the next lower score, so that "score > threshold" flags exactly what
    # "score >= best" flagged.
    threshold = (
        0.5 * (float(below.max()) + best) if below.size else float(np.nextafter(best, -np.inf))
    )
    return threshold, {"n_normal": negatives, "n_anomalous": positives, "f1": metrics.f1_max}


def check_manual(value, level: str, known: Mapping[str, np.ndarray] | None) -> float:
    """A user's threshold: finite, and where scores are known, inside the range where it
    separates something — not below every normal score (every normal unit would be rejected),
    not at or above every defective score (every defect would escape)."""
    what = f"{level}_threshold"
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: got {value!r}, expected a number") from None
    if not math.isfinite(threshold):
        raise ValueError(f"{what}: got {value!r}, expected a finite number")
    if known is None:
        return threshold
    normal = known.get("normal")
    if normal is not None and len(normal) and threshold < float(np.min(normal)):
        raise ValueError(
            f"{what}: got {threshold:.6g}, below every known normal {level} score (range "
            f"{float(np.min(normal)):.6g} … {float(np.max(normal)):.6g}): every normal unit would "
            "be NG; expected a threshold inside the score range"
        )
    anomalous = known.get("anomalous")
    if anomalous is not None and len(anomalous) and threshold >= float(np.max(anomalous)):
        raise ValueError(
            f"{what}: got {threshold:.6g}, at or above every defective {level} score (the "
            f"highest is {float(np.max(anomalous)):.6g}): no defect would be NG; expected a "
            "threshold inside the score range"
        )
    return threshold


def _finite_scores(scores, what: str) -> np.ndarray:
    array = np.asarray(scores, np.float64).ravel()
    if not np.isfinite(array).all():
        raise ValueError(f"{what}: scores contain NaN or Inf, expected finite scores")
    return array


# -- building and checking the stored dict -----------------------------------------------------
def from_normal_scores(
    sample_scores, view_scores, fpr: float, *, source: str, extra: Mapping | None = None
) -> dict:
    """Thresholds of both levels at target false-reject rate `fpr` from normal scores only
    (view_scores: every normal view, any shape)."""
    levels = {}
    values = {}
    for level, scores in (("sample", sample_scores), ("view", view_scores)):
        values[level], details = fpr_threshold(scores, fpr, what=f"{level} threshold")
        levels[level] = {"source": source, "criterion": "fpr", "fpr": fpr, **details}
    return _assemble(values, levels, extra)


def _assemble(values: Mapping, levels: Mapping, extra: Mapping | None = None) -> dict:
    sources = {levels[level]["source"] for level in LEVELS}
    criteria = {levels[level]["criterion"] for level in LEVELS}
    fprs = {levels[level].get("fpr") for level in LEVELS}
    return {
        "view": float(values["view"]),
        "sample": float(values["sample"]),
        "source": sources.pop() if len(sources) == 1 else "mixed",
        "criterion": criteria.pop() if len(criteria) == 1 else "mixed",
        "fpr": fprs.pop() if len(fprs) == 1 else None,
        "n_normal": levels["sample"].get("n_normal"),
        "levels": {level: dict(levels[level]) for level in LEVELS},
        **(dict(extra) if extra else {}),
    }


def override(thresholds: dict | None, manual: Mapping[str, float]) -> dict:
    """`thresholds` with the given levels replaced by manual values (already checked)."""
    if thresholds is None and set(manual) != set(LEVELS):
        missing = sorted(set(LEVELS) - set(manual))
        raise ValueError(
            f"{', '.join(m + '_threshold' for m in missing)}: missing, and the model has no "
            "thresholds to keep; expected both view and sample thresholds (or calibrate first)"
        )
    values = {level: (thresholds or {}).get(level) for level in LEVELS}
    levels = dict((thresholds or {}).get("levels", {}))
    for level, value in manual.items():
        values[level] = value
        levels[level] = {"source": "manual", "criterion": "manual"}
    return _assemble(values, levels)


def check_thresholds(thresholds, where: str) -> dict | None:
    """A stored thresholds dict, checked (None stays None)."""
    if thresholds is None:
        return None
    if not isinstance(thresholds, Mapping):
        raise ValueError(f"{where}: thresholds: got {type(thresholds).__name__}, expected a dict")
    for level in LEVELS:
        value = thresholds.get(level)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise ValueError(
                f"{where}: thresholds[{level!r}]: got {value!r}, expected a finite number"
            )
    return dict(thresholds)


def summary(thresholds: Mapping | None) -> str:
    """One line: the two thresholds, their source and how many normal samples back them."""
    if thresholds is None:
        return "no thresholds (uncalibrated model: run `vsad calibrate`)"
    text = f"thresholds sample {thresholds['sample']:.4g}, view {thresholds['view']:.4g}"
    source, fpr, n = thresholds.get("source"), thresholds.get("fpr"), thresholds.get("n_normal")
    bits = [str(source)]
    if thresholds.get("criterion") == "fpr" and fpr is not None:
        bits.append(f"target false-reject rate {100 * fpr:g} %")
    elif thresholds.get("criterion") == "f1":
        bits.append("F1-optimal")
    if n is not None and source != "manual":
        bits.append(f"{n} normal samples")
    return f"{text} ({', '.join(bits)})"


__all__ = [
    "DEFAULT_FPR",
    "LEVELS",
    "SOURCES",
    "beta_cdf",
    "beta_quantile",
    "check_fpr",
    "check_manual",
    "check_thresholds",
    "f1_threshold",
    "fpr_threshold",
    "frr_interval",
    "from_normal_scores",
    "order_statistic_rank",
    "override",
    "samples_needed",
    "summary",
]
