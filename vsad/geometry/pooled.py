"""Per-category homographies between camera views, estimated from many normal samples.

A fixed multi-camera station photographs a new object each time, so every training sample
offers another set of matches between the same two views. One sample may have glare, a
featureless placement or an object slightly off its usual pose; pooling many of them gives a
homography that depends on no single one.

Pooling choice: the ratio-test matches of all samples are concatenated and fitted by a single
RANSAC + robust refinement (estimate.pool_estimate), then refined by guided matching in every
sample. The alternative, a robust median of per-sample estimates, needs every sample to reach
`min_inliers` on its own (a weakly textured sample contributes nothing) and weighs a sample
with 15 inliers as much as one with 500; the pooled consensus uses every correct match, and
wrong matches of a bad sample are outvoted by the other samples' inliers. Measured on a noisy
two-view case (tests/test_geometry.py) the pooled estimate beats the median single-sample one.

Each unordered pair {i, j} is estimated once, as i -> j with i < j; H[j -> i] is its inverse,
so the two directions are exactly consistent (the refinement loss warps both ways).

Memory: the features of every used sample are kept for the guided stage, ~150 bytes per
keypoint (at most `max_features` keypoints per image): about 1 MB per 5-view sample at
256 x 256; `max_samples` bounds the total.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Iterable

import numpy as np

from vsad.geometry.errors import HomographyError
from vsad.geometry.estimate import check_parameters, correspondences, pool_estimate
from vsad.geometry.features import (
    COLORS,
    DEFAULT_MAX_FEATURES,
    Features,
    detect_features,
    ratio_matches,
)
from vsad.geometry.fitting import HomographyEstimate, transfer_errors
from vsad.geometry.graphs import check_neighbors
from vsad.geometry.views import PairReport, ViewHomographies

logger = logging.getLogger("vsad.geometry")

FALLBACKS = ("drop", "error", "identity")


def _select(samples: Iterable, max_samples: int | None) -> Iterable:
    """At most `max_samples` samples: evenly spread over a sized, indexable split (so a split
    ordered by acquisition date or defect folder is sampled throughout), else the first ones."""
    if max_samples is None:
        return samples
    if hasattr(samples, "__len__") and hasattr(samples, "__getitem__"):
        n = len(samples)
        if n > max_samples:
            indices = np.unique(np.linspace(0, n - 1, max_samples).round().astype(int))
            return (samples[int(k)] for k in indices)
        return samples
    return itertools.islice(samples, max_samples)


def _views_of(sample, k: int, num_views: int) -> list:
    images = sample.images if hasattr(sample, "images") else sample
    try:
        images = list(images)
    except TypeError:
        raise ValueError(
            f"samples: sample {k} is a {type(sample).__name__}, expected a MultiViewSample or a "
            "sequence of view images"
        ) from None
    if len(images) != num_views:
        raise ValueError(
            f"samples: sample {k} has {len(images)} views, expected {num_views} (one per row of "
            "neighbors)"
        )
    return images


def _inverse_error(H_inverse: np.ndarray, inlier_points: np.ndarray) -> float:
    """Median transfer error of the reverse map over the same inliers, in source-view pixels."""
    if not len(inlier_points):
        return float("nan")
    swapped = inlier_points[:, [2, 3, 0, 1]]
    return float(np.median(transfer_errors(H_inverse, swapped)))


def estimate_view_homographies(
    samples: Iterable,
    neighbors,
    *,
    color: str = "rgb",
    max_samples: int | None = None,
    progress: bool = False,
    fallback: str = "drop",
    ratio: float = 0.75,
    ransac_threshold: float = 3.0,
    min_inliers: int = 12,
    max_features: int = DEFAULT_MAX_FEATURES,
    guided: bool = True,
) -> ViewHomographies:
    """H[i -> j] for every slot of the view graph, pooled over normal samples.

    samples:   an iterable of multi-view samples, each a MultiViewSample (its `.images`) or a
               sequence of M uint8 images (H, W, 3) in `color` order ("rgb", what the readers
               yield), all of one size. A lazy split is read one sample at a time.
    neighbors: (M, N) int64 neighbour views, -1 = empty slot (see view_graph).
    max_samples: use at most this many samples (evenly spread over an indexable split).
    progress:  show a progress bar over the samples.
    fallback:  what to do with a pair that fails the quality check (too few RANSAC inliers, a
               degenerate map). "drop" (default): leave it out of the view graph — its slot
               becomes -1, so each of its two views is scored without that neighbour — with a
               warning naming the pair and the reason, status "dropped" in the report. This is
               what makes a ring graph safe on an open arc of cameras, whose two ends rarely
               overlap. "error": raise HomographyError naming every such pair; "identity": use
               the identity, status "fallback", and warn (MVAM then attends to the same
               position in the neighbour view: harmless for roughly aligned cameras,
               uninformative otherwise).
    ratio, ransac_threshold, min_inliers, max_features, guided: as in match_homography;
               min_inliers applies to the pooled inliers of a pair.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback: got {fallback!r}, expected one of {FALLBACKS}")
    if color not in COLORS:
        raise ValueError(f"color: got {color!r}, expected one of {COLORS}")
    check_parameters(ratio, ransac_threshold, min_inliers)
    if max_samples is not None and (
        isinstance(max_samples, bool)
        or not isinstance(max_samples, (int, np.integer))
        or max_samples < 1
    ):
        raise ValueError(f"max_samples: got {max_samples!r}, expected None or an int >= 1")
    table = check_neighbors(neighbors).copy()  # dropped pairs are cleared in this copy
    M = table.shape[0]
    pairs = sorted({(min(i, int(j)), max(i, int(j))) for i in range(M) for j in table[i] if j >= 0})
    views = sorted({v for pair in pairs for v in pair})

    matches: dict[tuple[int, int], list[np.ndarray]] = {pair: [] for pair in pairs}
    kept: dict[tuple[int, int], list[tuple[Features, Features]]] = {pair: [] for pair in pairs}
    image_size: tuple[int, int] | None = None
    count = 0
    from tqdm.auto import tqdm

    chosen = _select(samples, max_samples)
    total = None
    if hasattr(samples, "__len__"):
        total = len(samples) if max_samples is None else min(len(samples), max_samples)
    for k, sample in enumerate(
        tqdm(chosen, total=total, desc="homographies", disable=not progress)
    ):
        images = _views_of(sample, k, M)
        features: dict[int, Features] = {}
        for v in views:
            name = f"samples: sample {k} view {v}"
            features[v] = detect_features(
                images[v], color=color, max_features=max_features, name=name
            )
            if image_size is None:
                image_size = features[v].image_size
            elif features[v].image_size != image_size:
                raise ValueError(
                    f"{name}: image is {features[v].image_size[0]}x{features[v].image_size[1]}, "
                    f"expected {image_size[0]}x{image_size[1]} like the first view"
                )
        for a, b in pairs:
            ia, ib = ratio_matches(features[a], features[b], ratio)
            matches[(a, b)].append(correspondences(features[a], features[b], ia, ib))
            if guided:
                kept[(a, b)].append((features[a], features[b]))
        count += 1
    if count == 0:
        raise ValueError("samples: got no samples, expected at least one multi-view sample")

    estimates: dict[tuple[int, int], HomographyEstimate] = {}
    for pair in pairs:
        estimates[pair] = pool_estimate(
            matches[pair],
            kept[pair] if guided else None,
            image_size=image_size,
            ransac_threshold=ransac_threshold,
            min_inliers=min_inliers,
            ratio=ratio,
        )
        del matches[pair], kept[pair]  # release the features as soon as possible

    failed = [(pair, e) for pair, e in estimates.items() if not e.ok]
    if failed and fallback == "error":
        lines = "; ".join(f"views {a} -> {b}: {e.reason}" for (a, b), e in failed)
        raise HomographyError(
            f"cannot estimate {len(failed)} of {len(pairs)} view pairs from {count} samples: "
            f"{lines}. Pass fallback='drop' to leave them out of the view graph, "
            "fallback='identity' to use identity homographies for them, or supply homographies "
            "(load_homographies)."
        )

    H = np.broadcast_to(np.eye(3), (*table.shape, 3, 3)).copy()
    report: list[PairReport] = []
    warned: set[tuple[int, int]] = set()
    for i in range(M):
        for n, j in enumerate(table[i]):
            j = int(j)
            if j < 0:
                continue
            estimate = estimates[(min(i, j), max(i, j))]
            common = dict(
                i=i,
                j=j,
                inliers=estimate.inliers,
                matches=estimate.matches,
                samples_used=estimate.samples_used,
            )
            if not estimate.ok:
                dropped = fallback == "drop"
                if dropped:
                    table[i, n] = -1
                if (min(i, j), max(i, j)) not in warned:  # one warning per pair
                    action = "left out of the view graph" if dropped else "identity fallback"
                    message = f"homography {i} -> {j}: {action} ({estimate.reason})"
                    warned.add((min(i, j), max(i, j)))
                    logger.warning(message)
                    warnings.warn(message, stacklevel=2)
                report.append(
                    PairReport(
                        **common,
                        reprojection_error_px=float("nan"),
                        status="dropped" if dropped else "fallback",
                        reason=estimate.reason,
                    )
                )
                continue
            if i < j:
                H[i, n] = estimate.H
                error = estimate.reprojection_error_px
            else:
                inverse = np.linalg.inv(estimate.H)
                H[i, n] = inverse / inverse[2, 2]
                error = _inverse_error(H[i, n], estimate.inlier_points)
            report.append(PairReport(**common, reprojection_error_px=error, status="ok"))
    return ViewHomographies(H, table, image_size, report)


__all__ = ["FALLBACKS", "estimate_view_homographies"]
