"""Sample-, view- and pixel-level evaluation of multi-view anomaly scores.

Levels (paper §4.1): a view's score is the maximum of its pixel map, a sample's score the
maximum over its views; S-AUROC ranks samples (a sample is anomalous iff any view is), V-AUROC
ranks views, P-AUROC ranks pixels. Sample and view metrics are exact (their scores are few and
kept); pixel metrics stream (vsad/eval/pixel.py).

    evaluator = Evaluator()
    for sample in test_split:                       # vsad.data.MultiViewSample
        maps = model.anomaly_maps(sample)           # (M, H, W), same size as the masks
        evaluator.add(sample, maps)
    metrics = evaluator.compute()                   # {"S-AUROC": ..., ..., "P-F1max": ...}
    write_metrics({"my_category": metrics}, "out/", details=evaluator.details())
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from vsad.eval.curves import BinaryMetrics, binary_metrics
from vsad.eval.pixel import (
    DEFAULT_EXACT_BUDGET,
    DEFAULT_NUM_BINS,
    PixelMetricAccumulator,
    PixelMetrics,
    to_numpy,
)

METRIC_KEYS = (
    "S-AUROC",
    "V-AUROC",
    "P-AUROC",
    "AUPRO",
    "S-AP",
    "V-AP",
    "P-AP",
    "S-F1max",
    "V-F1max",
    "P-F1max",
)


class ScoreAccumulator:
    """Scores and 0/1 labels of one level (samples or views), kept exactly."""

    def __init__(self) -> None:
        self._scores: list[float] = []
        self._labels: list[int] = []

    def __len__(self) -> int:
        return len(self._scores)

    def update(self, scores, labels) -> None:
        scores = np.asarray(to_numpy(scores, "scores"), np.float64).ravel()
        labels = np.asarray(to_numpy(labels, "labels")).ravel()
        if scores.shape != labels.shape:
            raise ValueError(
                f"scores, labels: got {scores.size} scores and {labels.size} labels, expected "
                "one label per score"
            )
        if not np.all(np.isfinite(scores)):
            raise ValueError("scores: contain NaN or Inf, expected finite anomaly scores")
        if not np.all((labels == 0) | (labels == 1)):
            raise ValueError(f"labels: expected 0 or 1, got {sorted(set(labels.tolist()))}")
        self._scores.extend(scores.tolist())
        self._labels.extend(int(v) for v in labels)

    def compute(self) -> BinaryMetrics:
        return binary_metrics(np.array(self._scores), np.array(self._labels, dtype=np.int64))


def _as_views(array, what: str, sample_id: str) -> list[np.ndarray]:
    """(M, H, W) array/tensor or a sequence of (H, W) arrays -> list of M (H, W) arrays."""
    if isinstance(array, (list, tuple)):
        views = [to_numpy(v, what) for v in array]
    else:
        stacked = to_numpy(array, what)
        if stacked.ndim != 3:
            raise ValueError(
                f"{what}: got shape {stacked.shape} for sample {sample_id!r}, expected (M, H, W) "
                "or a list of M (H, W) maps"
            )
        views = list(stacked)
    for view in views:
        if view.ndim != 2:
            raise ValueError(
                f"{what}: a view has shape {view.shape} in sample {sample_id!r}, expected (H, W)"
            )
    return views


class Evaluator:
    """Streams test results and computes the ten metrics of METRIC_KEYS.

    Args:
        pixel: compute pixel-level metrics (P-AUROC, AUPRO, P-AP, P-F1max); False skips them
            (they are then NaN) and makes `add` cost only the maxima of the maps.
        num_bins, exact_budget, max_fpr: see PixelMetricAccumulator.
    """

    def __init__(
        self,
        *,
        pixel: bool = True,
        num_bins: int = DEFAULT_NUM_BINS,
        exact_budget: int = DEFAULT_EXACT_BUDGET,
        max_fpr: float = 0.3,
    ) -> None:
        self.samples = ScoreAccumulator()
        self.views = ScoreAccumulator()
        self.pixels = (
            PixelMetricAccumulator(num_bins=num_bins, exact_budget=exact_budget, max_fpr=max_fpr)
            if pixel
            else None
        )
        self.rows: list[dict] = []

    def update(
        self,
        score_maps=None,
        masks=None,
        view_labels: Sequence[int] | None = None,
        *,
        view_scores: Sequence[float] | None = None,
        sample_score: float | None = None,
        sample_id: str | None = None,
        defect_type: str | None = None,
    ) -> None:
        """Adds one multi-view sample.

        score_maps: (M, H, W) anomaly maps (array, tensor or list of (H, W)), or None when only
            view scores are given (pixel metrics then cannot be computed).
        masks: (M, H, W) ground truth matching the maps; None is read as all-normal and is
            only allowed when every view label is 0.
        view_labels: M labels; default: a view is anomalous iff its mask has a defective pixel.
        view_scores: default max of each map; sample_score: default max of the view scores.
        """
        sample_id = str(len(self.rows)) if sample_id is None else str(sample_id)
        maps = None if score_maps is None else _as_views(score_maps, "score_maps", sample_id)
        mask_views = None if masks is None else _as_views(masks, "masks", sample_id)
        if view_labels is None:
            if mask_views is None:
                raise ValueError(
                    f"view_labels: None and masks None for sample {sample_id!r}; give one of them"
                )
            view_labels = [int(np.any(m)) for m in mask_views]
        labels = [int(v) for v in view_labels]
        if view_scores is None:
            if maps is None:
                raise ValueError(
                    f"view_scores: None and score_maps None for sample {sample_id!r}; give one"
                )
            view_scores = [float(np.max(m)) for m in maps]
        scores = [float(s) for s in view_scores]
        count = len(labels)
        for name, items in (("view_scores", scores), ("score_maps", maps), ("masks", mask_views)):
            if items is not None and len(items) != count:
                raise ValueError(
                    f"{name}: {len(items)} views for sample {sample_id!r}, but view_labels has "
                    f"{count}"
                )
        if count == 0:
            raise ValueError(f"view_labels: sample {sample_id!r} has no views")
        if sample_score is None:
            sample_score = max(scores)
        label = int(any(labels))
        # Validate before recording anything, so a bad sample leaves the evaluator unchanged.
        if not all(np.isfinite(x) for x in [*scores, sample_score]):
            raise ValueError(
                f"view_scores: sample {sample_id!r} has a NaN or Inf score ({scores}, sample "
                f"{sample_score}), expected finite anomaly scores"
            )
        if maps is not None and not all(np.isfinite(np.min(m)) for m in maps):
            raise ValueError(f"score_maps: sample {sample_id!r} has NaN or Inf in a map")

        if self.pixels is not None:
            if maps is None:
                raise ValueError(
                    f"score_maps: None for sample {sample_id!r} but pixel metrics are on; pass "
                    "the maps or create the Evaluator with pixel=False"
                )
            if mask_views is None:
                if label:
                    raise ValueError(
                        f"masks: None for sample {sample_id!r}, which has anomalous views; pixel "
                        "metrics need its masks"
                    )
                mask_views = [np.zeros(m.shape, dtype=bool) for m in maps]
            for k, (score_map, mask) in enumerate(zip(maps, mask_views, strict=True)):
                if score_map.shape != mask.shape:
                    raise ValueError(
                        f"score_maps, masks: view {k} of sample {sample_id!r} has a "
                        f"{score_map.shape} map and a {mask.shape} mask; resize the map to the "
                        "mask's size first"
                    )
                self.pixels.update(score_map, mask)
        # Scores are checked (finite) before anything is recorded.
        self.views.update(scores, labels)
        self.samples.update([sample_score], [label])
        self.rows.append(
            {
                "sample_id": sample_id,
                "label": label,
                "score": float(sample_score),
                "defect_type": defect_type or "",
                "view_labels": labels,
                "view_scores": scores,
            }
        )

    def add(self, sample, score_maps, *, view_scores=None, sample_score=None) -> None:
        """Adds a vsad.data.MultiViewSample with its anomaly maps (M, H, W)."""
        self.update(
            score_maps,
            sample.masks,
            sample.view_labels,
            view_scores=view_scores,
            sample_score=sample_score,
            sample_id=sample.sample_id,
            defect_type=sample.defect_type,
        )

    def _levels(self) -> tuple[BinaryMetrics, BinaryMetrics, PixelMetrics | None]:
        pixel = self.pixels.compute() if self.pixels is not None else None
        return self.samples.compute(), self.views.compute(), pixel

    def compute(self) -> dict[str, float]:
        """The ten metrics (fractions; NaN where a level lacks positives or negatives)."""
        return self._metrics(*self._levels())

    @staticmethod
    def _metrics(s: BinaryMetrics, v: BinaryMetrics, p: PixelMetrics | None) -> dict[str, float]:
        nan = float("nan")
        return {
            "S-AUROC": s.auroc,
            "V-AUROC": v.auroc,
            "P-AUROC": p.binary.auroc if p else nan,
            "AUPRO": p.aupro if p else nan,
            "S-AP": s.ap,
            "V-AP": v.ap,
            "P-AP": p.binary.ap if p else nan,
            "S-F1max": s.f1_max,
            "V-F1max": v.f1_max,
            "P-F1max": p.binary.f1_max if p else nan,
        }

    def details(self) -> dict:
        """Everything behind compute(): metrics, error bounds of the binned pixel metrics (0
        when exact), F1-max thresholds and counts; JSON-serialisable."""
        s, v, p = self._levels()
        bounds = dict.fromkeys(METRIC_KEYS, 0.0)
        if p is not None:
            bounds.update(
                {
                    "P-AUROC": p.binary.auroc_bound,
                    "AUPRO": p.aupro_bound,
                    "P-AP": p.binary.ap_bound,
                    "P-F1max": p.binary.f1_bound,
                }
            )
        return {
            "metrics": self._metrics(s, v, p),
            "error_bounds": bounds,
            "f1_thresholds": {
                "sample": s.f1_threshold,
                "view": v.f1_threshold,
                "pixel": p.binary.f1_threshold if p else None,
            },
            "counts": {
                "samples": len(self.samples),
                "anomalous_samples": s.num_positive,
                "views": len(self.views),
                "anomalous_views": v.num_positive,
                "pixels": p.num_pixels if p else 0,
                "defective_pixels": p.binary.num_positive if p else 0,
                "defect_regions": p.num_regions if p else 0,
            },
            "pixel_metrics_exact": p.exact if p else None,
            "pixel_bin_width": p.bin_width if p else None,
        }


def evaluate(
    score_maps: Iterable,
    masks: Iterable,
    view_labels: Iterable[Sequence[int]] | None = None,
    *,
    pixel: bool = True,
    num_bins: int = DEFAULT_NUM_BINS,
    exact_budget: int = DEFAULT_EXACT_BUDGET,
    max_fpr: float = 0.3,
) -> dict[str, float]:
    """The ten metrics of per-sample anomaly maps against their masks.

    score_maps, masks: iterables over samples, each item (M, H, W) (an (S, M, H, W) array
    works too); consumed lazily, one sample at a time. view_labels: per-sample view labels
    (default: from the masks).
    """
    evaluator = Evaluator(
        pixel=pixel, num_bins=num_bins, exact_budget=exact_budget, max_fpr=max_fpr
    )
    labels_iter = iter(view_labels) if view_labels is not None else None
    for maps, mask in zip(score_maps, masks, strict=True):
        labels = next(labels_iter) if labels_iter is not None else None
        evaluator.update(maps, mask, labels)
    return evaluator.compute()


__all__ = ["METRIC_KEYS", "Evaluator", "ScoreAccumulator", "evaluate"]
