"""Streaming pixel-level metrics: P-AUROC, P-AP, P-F1max and AUPRO.

Memory does not grow with the number of images. Scores are kept exactly while they are few (up
to `exact_budget` pixels, the metrics are then exact); beyond that they are counted in a
histogram of `num_bins` bins on a dyadic grid: bin = floor(score / 2^e) - k0. Such a grid
covers a wider range by doubling the bin width, which merges bins pairwise exactly (no
re-binning error), and float64 computes floor(score * 2^-e) exactly for float32 and float64
scores, so the binning is one monotone quantisation of all scores seen. The binned metrics are
then the exact metrics of the quantised scores, and each comes with a bound on its distance to
the exact value, computed from the same histogram (see vsad/eval/curves.py). With the default
2^20 bins the bounds on anomaly maps are of order 1e-6.

Computing the metrics adds little to the kept scores (~50 MB at the default budget, against
~350 MB for one group per distinct value): the normal scores are sorted in place and each run
of groups without defective pixels is merged into one, which changes no metric
(vsad/eval/curves.py: sorted_exact_groups, merge_negative_runs; bench/test_eval_memory.py).

AUPRO follows the MVTec AD definition: ground-truth regions are the 8-connected components of
each mask; PRO(t) is the mean over all regions of all images of the fraction of the region
scoring >= t; FPR(t) the fraction of all normal pixels scoring >= t; AUPRO the area under PRO
over FPR in [0, max_fpr], linearly interpolated at max_fpr, divided by max_fpr. It streams as a
histogram of region weights: each defective pixel adds 1 / (its region's area) to its bin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from vsad.eval.curves import (
    BinaryMetrics,
    aupro_from_counts,
    binary_metrics_from_counts,
    merge_negative_runs,
    sorted_exact_groups,
)

DEFAULT_NUM_BINS = 1 << 20
DEFAULT_EXACT_BUDGET = 1 << 22  # pixels kept exactly (~40 MB) before switching to the histogram
_MAX_ABS_INDEX = float(1 << 52)  # keeps bin indices exact in float64


@dataclass(frozen=True)
class PixelMetrics:
    """Pixel-level results: `binary` holds P-AUROC / P-AP / P-F1max (with bounds)."""

    binary: BinaryMetrics
    aupro: float
    aupro_bound: float
    exact: bool
    num_pixels: int
    num_regions: int
    bin_width: float  # 0 when exact


def to_numpy(array, what: str) -> np.ndarray:
    """np.asarray that also takes torch tensors (any device) and names the argument on
    failure."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    try:
        return np.asarray(array)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what}: cannot be converted to an array ({exc})") from exc


def region_weights(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """1 / area of its 8-connected region for every defective pixel of `mask` (in the order
    of mask[mask]), and the number of regions."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    inverse_area = 1.0 / np.maximum(stats[:, cv2.CC_STAT_AREA], 1).astype(np.float64)
    return inverse_area[labels[mask]], count - 1


class PixelMetricAccumulator:
    """Accumulates anomaly maps and ground-truth masks one image (or batch) at a time.

    Args:
        num_bins: histogram resolution once the exact budget is exceeded.
        exact_budget: number of pixels kept exactly (metrics are exact while not exceeded);
            0 bins from the first image.
        max_fpr: AUPRO integration limit (0.3 is the usual one).
    """

    def __init__(
        self,
        *,
        num_bins: int = DEFAULT_NUM_BINS,
        exact_budget: int = DEFAULT_EXACT_BUDGET,
        max_fpr: float = 0.3,
    ) -> None:
        if num_bins < 16:
            raise ValueError(f"num_bins: got {num_bins}, expected >= 16")
        if exact_budget < 0:
            raise ValueError(f"exact_budget: got {exact_budget}, expected >= 0")
        if not 0 < max_fpr <= 1:
            raise ValueError(f"max_fpr: got {max_fpr}, expected 0 < max_fpr <= 1")
        self.num_bins, self.exact_budget, self.max_fpr = int(num_bins), int(exact_budget), max_fpr
        self.num_pixels = 0
        self.num_regions = 0
        # Exact storage: normal scores; defective scores with their region weights.
        self._neg_parts: list[np.ndarray] = []
        self._pos_parts: list[np.ndarray] = []
        self._weight_parts: list[np.ndarray] = []
        # Histogram (allocated when the budget is exceeded).
        self._all: np.ndarray | None = None  # every pixel, int64
        self._pos: np.ndarray | None = None  # defective pixels, int64
        self._weight: np.ndarray | None = None  # region weights, float64
        self._e = 0  # bin width 2^e
        self._k0 = 0  # absolute index of bin 0
        self._occupied: tuple[int, int] | None = None  # absolute index range holding counts
        self._buffer = np.empty(0, np.float64)
        self._index = np.empty(0, np.intp)

    @property
    def exact(self) -> bool:
        return self._all is None

    # ----------------------------------------------------------------------- update

    def update(self, scores, mask) -> None:
        """Adds one anomaly map (H, W) with its mask (H, W), or a batch (..., H, W) of both.

        scores: float array or tensor (float16/32/64, finite); mask: bool or 0/1 array (any
        non-zero = defective), same shape.
        """
        scores = to_numpy(scores, "scores")
        mask = to_numpy(mask, "mask")
        if scores.shape != mask.shape:
            raise ValueError(
                f"scores, mask: shapes differ, {scores.shape} vs {mask.shape}; resize the "
                "anomaly map to its mask's size first"
            )
        if scores.ndim < 2:
            raise ValueError(f"scores: got shape {scores.shape}, expected (..., H, W)")
        if not np.issubdtype(scores.dtype, np.floating):
            scores = scores.astype(np.float64)
        elif scores.dtype == np.float16:
            scores = scores.astype(np.float32)
        mask = mask.astype(bool, copy=False)
        if scores.size == 0:
            return
        images = scores.reshape(-1, *scores.shape[-2:])
        masks = mask.reshape(-1, *mask.shape[-2:])
        ranges = [(float(image.min()), float(image.max())) for image in images]
        if not all(math.isfinite(low) and math.isfinite(high) for low, high in ranges):
            raise ValueError("scores: contain NaN or Inf, expected finite anomaly scores")
        for image, image_mask, (low, high) in zip(images, masks, ranges, strict=True):
            self._update_one(
                np.ascontiguousarray(image), np.ascontiguousarray(image_mask), low, high
            )

    def _update_one(self, scores: np.ndarray, mask: np.ndarray, low: float, high: float) -> None:
        if mask.any():
            weights, regions = region_weights(mask)
        else:
            weights, regions = np.empty(0, np.float64), 0
        self.num_regions += regions
        self.num_pixels += scores.size
        if self.exact and self.num_pixels <= self.exact_budget:
            self._neg_parts.append(scores[~mask].astype(np.float64))
            self._pos_parts.append(scores[mask].astype(np.float64))
            self._weight_parts.append(weights)
            return
        if self.exact:
            self._start_histogram(low, high)
        self._add_to_histogram(scores.ravel(), mask.ravel(), weights, low, high)

    # -------------------------------------------------------------- histogram grid

    def _abs_index(self, value: float) -> int:
        try:
            scaled = math.ldexp(value, -self._e)
        except OverflowError:
            scaled = math.copysign(math.inf, value)
        if not abs(scaled) < _MAX_ABS_INDEX:  # far outside the grid: force a coarser one
            return int(math.copysign(_MAX_ABS_INDEX, scaled))
        return math.floor(scaled)

    def _start_histogram(self, low: float, high: float) -> None:
        """Allocates the histogram on a grid fitting the scores kept so far and [low, high],
        then moves the kept scores into it."""
        kept = [p for p in self._neg_parts + self._pos_parts if p.size]
        low = min([low, *(float(p.min()) for p in kept)])
        high = max([high, *(float(p.max()) for p in kept)])
        span = high - low
        # Leave half the bins free so later images rarely force a coarser grid.
        if span > 0:
            self._e = math.ceil(math.log2(span / (self.num_bins / 2)))
        else:
            self._e = math.frexp(abs(low) or 1.0)[1] - 30
        self._e = min(max(self._e, -1000), 1000)
        B = self.num_bins
        self._all = np.zeros(B, np.int64)
        self._pos = np.zeros(B, np.int64)
        self._weight = np.zeros(B, np.float64)
        a, b = self._abs_index(low), self._abs_index(high)
        self._k0 = a - (B - (b - a + 1)) // 2
        self._occupied = None
        neg, pos, weights = self._neg_parts, self._pos_parts, self._weight_parts
        self._neg_parts, self._pos_parts, self._weight_parts = [], [], []
        for n, p, w in zip(neg, pos, weights, strict=True):
            values = np.concatenate([n, p])
            is_pos = np.zeros(values.size, bool)
            is_pos[n.size :] = True
            if values.size:
                self._add_to_histogram(values, is_pos, w, values.min(), values.max())

    def _coarsen(self, steps: int) -> None:
        """Multiplies the bin width by 2^steps: absolute bin j merges into j // 2^steps.
        Exact: the new bins are unions of old ones."""
        factor = 1 << steps
        new_k0 = self._k0 // factor
        absolute = np.arange(self.num_bins, dtype=np.int64) + self._k0
        target = absolute // factor - new_k0  # non-decreasing
        starts = np.concatenate([[0], np.flatnonzero(np.diff(target)) + 1])
        for name in ("_all", "_pos", "_weight"):
            old = getattr(self, name)
            new = np.zeros_like(old)
            new[target[starts]] = np.add.reduceat(old, starts)
            setattr(self, name, new)
        self._e += steps
        self._k0 = new_k0
        if self._occupied is not None:
            self._occupied = (self._occupied[0] // factor, self._occupied[1] // factor)

    def _fit(self, low: float, high: float) -> None:
        """Makes the grid cover [low, high] plus everything already counted."""
        B = self.num_bins
        while True:
            lo, hi = self._abs_index(low), self._abs_index(high)
            if self._occupied is not None:
                lo, hi = min(lo, self._occupied[0]), max(hi, self._occupied[1])
            magnitude = max(abs(lo), abs(hi)) + B
            if hi - lo + 1 <= B and magnitude < _MAX_ABS_INDEX / 2:
                break
            steps = max(
                1,
                math.ceil(math.log2((hi - lo + 1) / B)),
                math.ceil(math.log2(magnitude / (_MAX_ABS_INDEX / 4))),
            )
            self._coarsen(min(steps, 60))
        if lo < self._k0 or hi >= self._k0 + B:
            new_k0 = lo - (B - (hi - lo + 1)) // 2
            move = self._k0 - new_k0  # old bin i -> new bin i + move
            for name in ("_all", "_pos", "_weight"):
                old = getattr(self, name)
                new = np.zeros_like(old)
                src = slice(max(0, -move), min(B, B - move))
                if src.start < src.stop:
                    new[src.start + move : src.stop + move] = old[src]
                setattr(self, name, new)
            self._k0 = new_k0
        self._occupied = (lo, hi)

    def _bin_indices(self, values: np.ndarray) -> np.ndarray:
        if self._buffer.size < values.size:
            self._buffer = np.empty(values.size, np.float64)
            self._index = np.empty(values.size, np.intp)
        buffer, index = self._buffer[: values.size], self._index[: values.size]
        # float64 arithmetic even for float32 scores; exact, the factor is a power of two.
        np.multiply(values, math.ldexp(1.0, -self._e), out=buffer, dtype=np.float64)
        np.floor(buffer, out=buffer)
        np.subtract(buffer, float(self._k0), out=buffer)
        np.copyto(index, buffer, casting="unsafe")
        return index

    def _add_to_histogram(
        self, values: np.ndarray, is_pos: np.ndarray, weights, low: float, high: float
    ) -> None:
        low, high = float(low), float(high)
        self._fit(low, high)
        index = self._bin_indices(values)
        first, last = self._abs_index(low) - self._k0, self._abs_index(high) - self._k0
        # Counting only over the occupied span keeps bincount's output small.
        if first > 0:
            np.subtract(index, first, out=index)
        counts = np.bincount(index, minlength=last - first + 1)
        self._all[first : last + 1] += counts
        pos_index = index[is_pos]
        if pos_index.size:
            self._pos[first : last + 1] += np.bincount(pos_index, minlength=last - first + 1)
            self._weight[first : last + 1] += np.bincount(
                pos_index, weights=weights, minlength=last - first + 1
            )

    # ----------------------------------------------------------------------- results

    def compute(self) -> PixelMetrics:
        """P-AUROC / P-AP / P-F1max and AUPRO of everything added so far."""
        # Both paths hand the metrics groups with the normal-only runs merged
        # (merge_negative_runs: same results, temporaries sized by the defective groups).
        if self.exact:
            neg = np.concatenate(self._neg_parts) if self._neg_parts else np.empty(0)
            pos = np.concatenate(self._pos_parts) if self._pos_parts else np.empty(0)
            weights = np.concatenate(self._weight_parts) if self._weight_parts else np.empty(0)
            pos_count, neg_count, thresholds, weight = sorted_exact_groups(neg, pos, weights)
            del neg
            width = 0.0
        else:
            lo, hi = (self._occupied[0] - self._k0, self._occupied[1] - self._k0 + 1)
            width = math.ldexp(1.0, self._e)
            thresholds = (np.arange(lo, hi, dtype=np.float64) + self._k0) * width
            pos_count = self._pos[lo:hi]
            pos_count, neg_count, thresholds, weight = merge_negative_runs(
                pos_count, self._all[lo:hi] - pos_count, thresholds, self._weight[lo:hi]
            )
        binned = not self.exact
        binary = binary_metrics_from_counts(pos_count, neg_count, thresholds, binned=binned)
        aupro, aupro_bound = aupro_from_counts(
            weight, neg_count, self.num_regions, self.max_fpr, binned=binned
        )
        return PixelMetrics(
            binary=binary,
            aupro=aupro,
            aupro_bound=aupro_bound,
            exact=self.exact,
            num_pixels=self.num_pixels,
            num_regions=self.num_regions,
            bin_width=width,
        )


__all__ = ["DEFAULT_EXACT_BUDGET", "DEFAULT_NUM_BINS", "PixelMetricAccumulator", "PixelMetrics"]
