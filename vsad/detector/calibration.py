"""Setting a detector's decision thresholds: from its own training samples at fit time, or from
a labelled validation split afterwards (`vsad calibrate`).

Which normal scores fit uses — the leave-one-out (LOO) scores of the training samples, not a
held-out part of train: the position normalisation already searches every training sample
(up to 64) against the bank without it, so their scores cost one pass of the scoring on maps
that exist, and all 40 samples of a typical station both build the bank and back the
threshold. A held-out quarter would leave 10 normal scores — too few for a 5 % target (the
order statistic needs 19) — and a bank of 30. The LOO scores are made comparable to a test
sample's by standardising each sample without its own distance (FeatureBanks.
loo_scored_distances); measured in BENCHMARKS.md ("Thresholds from normal samples").
"""

from __future__ import annotations

import warnings
from collections import deque

import numpy as np
import torch

from vsad.detector import thresholds as thr
from vsad.model.scoring import combine_levels, gaussian_smooth, view_and_sample_scores

#: The fewest training samples for thresholds from LOO scores (standardising a sample without
#: itself leaves n − 1 samples for μ and σ, and σ needs two).
MIN_LOO_SAMPLES = 3


def loo_normal_scores(detector) -> tuple[np.ndarray, np.ndarray]:
    """Sample scores (n,) and view scores (n, M) of the training samples searched against the
    bank without themselves, through the same scoring as predict (standardise → eq. 12 →
    smoothing → maxima). Needs banks finalised with keep_loo=True."""
    per_level = detector.banks.loo_scored_distances()
    n = per_level[0].shape[0]
    batch = max(1, detector.config.batch_size)
    sample_scores, view_scores = [], []
    with torch.no_grad():
        for start in range(0, n, batch):
            chunk = [d[start : start + batch] for d in per_level]
            maps = combine_levels(chunk, detector.config.level_weights, detector.view_size)
            maps = gaussian_smooth(maps, detector.config.smoothing_sigma)
            views, samples = view_and_sample_scores(maps)
            view_scores.append(views.double().cpu().numpy())
            sample_scores.append(samples.double().cpu().numpy())
    return np.concatenate(sample_scores), np.concatenate(view_scores)


def calibrate_on_training(detector) -> None:
    """Sets detector.thresholds (source "train-loo") and detector.normal_scores at
    config.threshold_fpr; leaves both None when threshold_fpr is None or there are too few
    training samples (with a warning)."""
    detector.thresholds, detector.normal_scores = None, None
    fpr = detector.config.threshold_fpr
    banks = detector.banks
    if fpr is None or banks.loo_distances is None:
        return
    samples, views = loo_normal_scores(detector)  # banks keep the LOO maps (a few MB)
    detector.normal_scores = {"sample": samples.tolist(), "view": views.tolist()}
    detector.thresholds = thr.from_normal_scores(samples, views, fpr, source="train-loo")


def thresholds_from_stored(detector, fpr: float) -> dict:
    """Thresholds at another target false-reject rate from the stored LOO normal scores (no
    data needed)."""
    fpr = thr.check_fpr(fpr)
    stored = detector.normal_scores
    if not stored:
        raise ValueError(
            "fpr: this model stores no normal scores from training (saved before decisions "
            "existed, or fitted with threshold_fpr=None); recalibrate with --data on a split "
            "that holds normal samples, or give --view-threshold and --sample-threshold"
        )
    return thr.from_normal_scores(
        np.asarray(stored["sample"]), np.asarray(stored["view"]), fpr, source="train-loo"
    )


def validation_scores(detector, split, *, progress: bool = True) -> dict:
    """Scores and labels of a labelled split: {"sample": (scores, labels), "view": (...)}."""
    sample_scores, sample_labels, view_scores, view_labels = [], [], [], []
    seen: deque = deque()

    def stream():
        for index, sample in enumerate(split):
            _check_labelled(sample, index)
            seen.append(sample)
            yield sample

    for prediction in detector.iter_predict(stream(), progress=progress):
        sample = seen.popleft()
        sample_scores.append(prediction.score)
        sample_labels.append(int(sample.label))
        view_scores.extend(float(s) for s in prediction.view_scores)
        view_labels.extend(int(v) for v in sample.view_labels)
    return {
        "sample": (np.asarray(sample_scores), np.asarray(sample_labels, bool)),
        "view": (np.asarray(view_scores), np.asarray(view_labels, bool)),
    }


def _check_labelled(sample, index: int) -> None:
    """A calibration sample carries its labels: a vsad.data.MultiViewSample (what the readers
    yield), not bare images, whose normal/defective status nobody knows."""
    label = getattr(sample, "label", None)
    view_labels = getattr(sample, "view_labels", None)
    if label is None or view_labels is None:
        raise ValueError(
            f"split[{index}]: got {type(sample).__name__}, expected a labelled "
            "vsad.data.MultiViewSample (with label and view_labels, as open_dataset yields); "
            "thresholds from a split need to know which samples are normal"
        )


def thresholds_from_validation(scores: dict, *, fpr: float | None = None, f1: bool = False) -> dict:
    """Thresholds from validation scores (validation_scores): at target false-reject rate `fpr`
    (normal samples only; defective ones are counted, not used) or F1-optimal."""
    if (fpr is None) == (not f1):
        raise ValueError("fpr, f1: expected exactly one of a target false-reject rate or f1=True")
    (s_scores, s_labels), (v_scores, v_labels) = scores["sample"], scores["view"]
    if not len(s_labels) or s_labels.all():
        raise ValueError(
            f"data: the calibration split holds no normal samples ({int(s_labels.sum())} "
            "defective, 0 normal); thresholds need normal samples — pick a split with normal "
            "samples (e.g. --split test) or give manual thresholds"
        )
    values, levels = {}, {}
    for level, level_scores, labels in (
        ("sample", s_scores, s_labels),
        ("view", v_scores, v_labels),
    ):
        if f1:
            values[level], details = thr.f1_threshold(
                level_scores, labels, what=f"{level} threshold"
            )
            levels[level] = {"source": "validation", "criterion": "f1", **details}
        else:
            values[level], details = thr.fpr_threshold(
                level_scores[~labels], fpr, what=f"{level} threshold"
            )
            details["n_anomalous"] = int(labels.sum())
            levels[level] = {"source": "validation", "criterion": "fpr", "fpr": fpr, **details}
    return thr._assemble(values, levels)


def known_scores(detector, scores: dict | None) -> dict:
    """Per level, the normal and defective scores that a manual threshold is checked against:
    the validation split's when given, else the stored training LOO scores (normal only)."""
    known = {}
    for level in thr.LEVELS:
        if scores is not None:
            values, labels = scores[level]
            known[level] = {"normal": values[~labels], "anomalous": values[labels]}
        elif detector.normal_scores:
            known[level] = {"normal": np.ravel(detector.normal_scores[level])}
        else:
            known[level] = None
    return known


def warn_uncalibrated(where: str) -> None:
    warnings.warn(
        f"{where}: the model has no decision thresholds (saved before vsad made OK/NG "
        "decisions, or fitted with threshold_fpr=None): predictions carry scores with "
        "decision=None. Run `vsad calibrate --run RUN --data ...` (or "
        "detector.calibrate(split)) to set them.",
        stacklevel=3,
    )
