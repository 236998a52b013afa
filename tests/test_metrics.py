"""Metrics against scikit-learn and a brute-force AUPRO; streaming, bounds, reports."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest

sklearn_metrics = pytest.importorskip(
    "sklearn.metrics", reason="scikit-learn is the oracle of these tests (test extra)"
)
ndimage = pytest.importorskip("scipy.ndimage", reason="scipy comes with scikit-learn")

from vsad.eval import (  # noqa: E402
    METRIC_KEYS,
    Evaluator,
    PixelMetricAccumulator,
    auroc,
    average_precision,
    binary_metrics,
    evaluate,
    f1_max,
    metrics_table,
    write_metrics,
    write_sample_scores,
)
from vsad.eval.curves import (  # noqa: E402
    aupro_from_counts,
    binary_metrics_from_counts,
    exact_counts,
    merge_negative_runs,
    sorted_exact_groups,
)


@pytest.fixture
def np_rng() -> np.random.Generator:
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"numpy seed = {seed}")
    return np.random.default_rng(seed)


# ------------------------------------------------------------------ oracles


def sklearn_f1_max(labels, scores) -> float:
    precision, recall, _ = sklearn_metrics.precision_recall_curve(labels, scores)
    denominator = precision + recall
    f1 = np.where(
        denominator > 0, 2 * precision * recall / np.where(denominator > 0, denominator, 1), 0
    )
    return float(f1.max())


def brute_force_aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> float:
    """PRO and FPR evaluated at every distinct score, regions = 8-connected components (scipy),
    trapezoidal area up to max_fpr (curve interpolated there), divided by max_fpr."""
    regions = []
    for score_map, mask in zip(maps, masks, strict=True):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [score_map[labelled == r] for r in range(1, count + 1)]
    thresholds = np.unique(maps)[::-1]

    def fraction_at_or_above(values):  # for every threshold, vectorised
        ordered = np.sort(values)
        return (len(ordered) - np.searchsorted(ordered, thresholds, side="left")) / len(ordered)

    fprs = fraction_at_or_above(maps[~masks])
    pros = np.mean([fraction_at_or_above(r) for r in regions], axis=0)
    points = [(0.0, 0.0), *zip(fprs.tolist(), pros.tolist(), strict=True)]
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


def random_maps(rng, n=6, size=(24, 28), ties=False):
    """Maps whose defect regions (random rectangles and blobs, some touching diagonally) score
    higher on average; `ties` rounds the scores so that many are equal."""
    h, w = size
    maps = rng.gamma(2.0, 1.0, (n, h, w))
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        if i % 3 == 0:
            continue  # some defect-free images
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            masks[i, y : y + rng.integers(1, 5), x : x + rng.integers(1, 5)] = True
        masks[i, 0, 0] = masks[i, 1, 1] = True  # 8-connected only
    maps[masks] += rng.uniform(0.5, 3.0)
    if ties:
        maps = np.round(maps, 1)
    return maps.astype(np.float32 if not ties else np.float64), masks


# ------------------------------------------------------------------ exact 1-D metrics


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("positive_rate", [0.05, 0.5])
def test_exact_metrics_equal_sklearn(np_rng, ties, positive_rate):
    n = 500
    labels = (np_rng.random(n) < positive_rate).astype(int)
    labels[:2] = [0, 1]
    scores = np_rng.normal(size=n) + labels * np_rng.uniform(0.3, 2.0)
    if ties:
        scores = np.round(scores, 1)
    assert auroc(scores, labels) == pytest.approx(
        sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12
    )
    assert average_precision(scores, labels) == pytest.approx(
        sklearn_metrics.average_precision_score(labels, scores), abs=1e-12
    )
    assert f1_max(scores, labels) == pytest.approx(sklearn_f1_max(labels, scores), abs=1e-12)
    m = binary_metrics(scores, labels)
    predicted = scores >= m.f1_threshold
    f1_at_threshold = sklearn_metrics.f1_score(labels, predicted)
    assert f1_at_threshold == pytest.approx(m.f1_max, abs=1e-12)
    assert m.auroc_bound == m.ap_bound == m.f1_bound == 0


def test_one_class_gives_nan(np_rng):
    scores = np_rng.random(10)
    m = binary_metrics(scores, np.zeros(10))
    assert math.isnan(m.auroc) and math.isnan(m.ap) and math.isnan(m.f1_max)
    with pytest.raises(ValueError, match="labels"):
        binary_metrics(scores, np.zeros(9))
    with pytest.raises(ValueError, match="scores"):
        binary_metrics(np.full(3, np.nan), np.array([0, 1, 0]))


# ------------------------------------------------------------------ pixel metrics


@pytest.mark.parametrize("ties", [False, True])
def test_pixel_exact_mode_equals_sklearn_and_brute_force_aupro(np_rng, ties):
    maps, masks = random_maps(np_rng, ties=ties)
    acc = PixelMetricAccumulator(exact_budget=10**9)
    for score_map, mask in zip(maps, masks, strict=True):
        acc.update(score_map, mask)
    result = acc.compute()
    assert result.exact and result.num_pixels == maps.size
    y, s = masks.ravel(), maps.ravel()
    assert result.binary.auroc == pytest.approx(sklearn_metrics.roc_auc_score(y, s), abs=1e-12)
    assert result.binary.ap == pytest.approx(
        sklearn_metrics.average_precision_score(y, s), abs=1e-12
    )
    assert result.binary.f1_max == pytest.approx(sklearn_f1_max(y, s), abs=1e-12)
    assert result.aupro == pytest.approx(brute_force_aupro(maps, masks), abs=1e-12)
    assert result.num_regions == sum(ndimage.label(m, np.ones((3, 3)))[1] for m in masks)


def _all_metrics(pos, neg, thresholds, weight, num_regions, binned, max_fpr=0.3):
    binary = binary_metrics_from_counts(pos, neg, thresholds, binned=binned)
    return binary, aupro_from_counts(weight, neg, num_regions, max_fpr, binned=binned)


@pytest.mark.parametrize("binned", [False, True])
def test_merging_normal_only_runs_changes_no_metric(np_rng, binned):
    groups = int(np_rng.integers(50, 400))
    pos = np_rng.integers(0, 4, groups) * (np_rng.random(groups) < 0.15)  # mostly normal-only
    neg = np_rng.integers(0, 6, groups)  # empty groups too, as histogram bins have
    neg[0] += 1
    pos[-1] += 1
    thresholds = np.cumsum(np_rng.uniform(0.1, 1.0, groups))
    weight = pos * np_rng.uniform(0.01, 0.2, groups)
    regions = int(np.ceil(weight.sum())) + 1
    merged = merge_negative_runs(pos, neg, thresholds, weight)
    assert len(merged[0]) < groups and merged[0].sum() == pos.sum()
    assert merged[1].sum() == neg.sum()
    for max_fpr in (0.3, 0.05, 1.0):
        (a, a_pro), (b, b_pro) = (
            _all_metrics(*groups_, regions, binned, max_fpr)
            for groups_ in ((pos, neg, thresholds, weight), merged)
        )
        assert a == b  # every binary metric, threshold and bound, bit for bit
        np.testing.assert_allclose(b_pro, a_pro, rtol=0, atol=1e-13)


@pytest.mark.parametrize("ties", [False, True])
def test_exact_groups_give_the_metrics_of_distinct_value_groups(np_rng, ties):
    maps, masks = random_maps(np_rng, ties=ties)
    acc = PixelMetricAccumulator(exact_budget=10**9)
    acc.update(maps, masks)
    weights = np.concatenate(acc._weight_parts)
    neg = np.concatenate(acc._neg_parts)
    pos = np.concatenate(acc._pos_parts)
    # The reference twin: one group per distinct value (np.unique), nothing merged.
    scores = np.concatenate([neg, pos])
    labels = np.r_[np.zeros(neg.size, bool), np.ones(pos.size, bool)]
    values, ref_pos, ref_neg, ref_weight = exact_counts(scores, labels, weights)
    pos_before = pos.copy()
    fast = sorted_exact_groups(neg.copy(), pos, weights)
    np.testing.assert_array_equal(pos, pos_before)  # only the normal scores are sorted in place
    assert len(fast[0]) < len(values) and fast[0].sum() == pos.size
    ref = _all_metrics(ref_pos, ref_neg, values, ref_weight, acc.num_regions, False)
    got = _all_metrics(*fast, acc.num_regions, False)
    assert got[0] == ref[0]
    np.testing.assert_allclose(got[1], ref[1], rtol=0, atol=1e-13)


def test_compute_leaves_the_accumulator_as_it_was(np_rng):
    maps, masks = random_maps(np_rng, n=6)
    streamed, whole = PixelMetricAccumulator(), PixelMetricAccumulator()
    for score_map, mask in zip(maps, masks, strict=True):
        streamed.update(score_map, mask)
        streamed.compute()  # must not sort or consume the kept scores
    whole.update(maps, masks)
    assert streamed.compute() == whole.compute()


@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 1.0])
def test_aupro_integration_limit(np_rng, max_fpr):
    maps, masks = random_maps(np_rng, n=4)
    acc = PixelMetricAccumulator(max_fpr=max_fpr)
    acc.update(maps, masks)
    assert acc.compute().aupro == pytest.approx(brute_force_aupro(maps, masks, max_fpr), abs=1e-12)


@pytest.mark.parametrize("num_bins", [16, 64, 4096, 1 << 20])
@pytest.mark.parametrize("ties", [False, True])
def test_binned_metrics_stay_within_their_bounds(np_rng, num_bins, ties):
    maps, masks = random_maps(np_rng, n=9, size=(40, 36), ties=ties)
    exact = PixelMetricAccumulator(exact_budget=10**9)
    binned = PixelMetricAccumulator(exact_budget=0, num_bins=num_bins)
    for score_map, mask in zip(maps, masks, strict=True):
        exact.update(score_map, mask)
        binned.update(score_map, mask)
    e, b = exact.compute(), binned.compute()
    assert not b.exact and b.bin_width > 0
    pairs = [
        (e.binary.auroc, b.binary.auroc, b.binary.auroc_bound),
        (e.binary.ap, b.binary.ap, b.binary.ap_bound),
        (e.binary.f1_max, b.binary.f1_max, b.binary.f1_bound),
        (e.aupro, b.aupro, b.aupro_bound),
    ]
    for exact_value, binned_value, bound in pairs:
        assert abs(binned_value - exact_value) <= bound + 1e-12
    assert b.binary.f1_max <= e.binary.f1_max + 1e-12  # bin edges are exact thresholds
    if num_bins == 1 << 20 and not ties:
        assert max(p[2] for p in pairs) < 1e-4  # the target's tolerance, met with room
    if num_bins == 16:
        assert max(abs(p[1] - p[0]) for p in pairs) > 0  # coarse bins do change the values


def test_histogram_grows_by_exact_merges(np_rng):
    """Images of widening score ranges force coarser grids and shifts; the final histogram
    equals binning every score directly on the final grid."""
    acc = PixelMetricAccumulator(exact_budget=0, num_bins=256)
    scores, labels = [], []
    for scale, offset in [(1e-3, 0.0), (1.0, 0.5), (30.0, -20.0), (1e-2, 7.0), (500.0, 100.0)]:
        score_map = (offset + scale * np_rng.random((16, 16))).astype(np.float32)
        mask = np_rng.random((16, 16)) < 0.1
        acc.update(score_map, mask)
        scores.append(score_map.ravel().astype(np.float64))
        labels.append(mask.ravel())
    scores, labels = np.concatenate(scores), np.concatenate(labels)
    direct = np.floor(scores * 2.0 ** (-acc._e)).astype(np.int64) - acc._k0
    assert direct.min() >= 0 and direct.max() < 256
    np.testing.assert_array_equal(acc._all, np.bincount(direct, minlength=256))
    np.testing.assert_array_equal(acc._pos, np.bincount(direct[labels], minlength=256))
    result = acc.compute()
    exact = sklearn_metrics.roc_auc_score(labels, scores)
    assert abs(result.binary.auroc - exact) <= result.binary.auroc_bound + 1e-12


def test_constant_then_spread_scores(np_rng):
    acc = PixelMetricAccumulator(exact_budget=0)
    acc.update(np.full((8, 8), 3.0), np.zeros((8, 8), bool))
    spread = np_rng.normal(size=(8, 8)) * 1e3
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:5] = True
    acc.update(spread, mask)
    scores = np.concatenate([np.full(64, 3.0), spread.ravel()])
    labels = np.concatenate([np.zeros(64, bool), mask.ravel()])
    result = acc.compute()
    exact = sklearn_metrics.roc_auc_score(labels, scores)
    assert abs(result.binary.auroc - exact) <= result.binary.auroc_bound + 1e-12


def test_extreme_score_ranges(np_rng):
    """Scores spanning 1e-6 to 1e300 (float64) force many coarsenings; bounds still hold."""
    acc = PixelMetricAccumulator(exact_budget=0, num_bins=1024)
    parts = [np.zeros((6, 6)), np_rng.random((6, 6)) * 1e-6, np_rng.random((6, 6)) * 1e30]
    parts.append(np_rng.random((6, 6)) * 1e300)
    labels = [np_rng.random((6, 6)) < 0.3 for _ in parts]
    for score_map, mask in zip(parts, labels, strict=True):
        acc.update(score_map, mask)
    result = acc.compute()
    y = np.concatenate([m.ravel() for m in labels])
    s = np.concatenate([p.ravel() for p in parts])
    exact = sklearn_metrics.roc_auc_score(y, s)
    assert abs(result.binary.auroc - exact) <= result.binary.auroc_bound + 1e-12
    assert result.num_pixels == 4 * 36


def test_switch_from_exact_to_binned_midway(np_rng):
    maps, masks = random_maps(np_rng, n=9, size=(32, 32))
    acc = PixelMetricAccumulator(exact_budget=3 * 32 * 32)
    for score_map, mask in zip(maps, masks, strict=True):
        acc.update(score_map, mask)
    result = acc.compute()
    assert not result.exact and result.num_pixels == maps.size
    y, s = masks.ravel(), maps.ravel()
    assert (
        abs(result.binary.auroc - sklearn_metrics.roc_auc_score(y, s))
        <= result.binary.auroc_bound + 1e-12
    )
    assert (
        abs(result.binary.ap - sklearn_metrics.average_precision_score(y, s))
        <= result.binary.ap_bound + 1e-12
    )
    assert abs(result.aupro - brute_force_aupro(maps, masks)) <= result.aupro_bound + 1e-12


def test_batches_and_tensors_equal_single_updates(np_rng):
    torch = pytest.importorskip("torch")
    maps, masks = random_maps(np_rng, n=4)
    one = PixelMetricAccumulator(exact_budget=0)
    for score_map, mask in zip(maps, masks, strict=True):
        one.update(score_map, mask)
    batched = PixelMetricAccumulator(exact_budget=0)
    batched.update(
        torch.from_numpy(maps.reshape(2, 2, *maps.shape[1:])), masks.reshape(2, 2, *masks.shape[1:])
    )
    a, b = one.compute(), batched.compute()
    assert (a.binary.auroc, a.binary.ap, a.aupro) == (b.binary.auroc, b.binary.ap, b.aupro)


def test_pixel_bad_input_names_the_argument(np_rng):
    acc = PixelMetricAccumulator()
    with pytest.raises(ValueError, match="scores, mask"):
        acc.update(np_rng.random((4, 5)), np.zeros((5, 4), bool))
    bad = np_rng.random((4, 5))
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="scores"):
        acc.update(bad, np.zeros((4, 5), bool))
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match="scores"):
        acc.update(bad, np.zeros((4, 5), bool))
    assert acc.num_pixels == 0
    with pytest.raises(ValueError, match="num_bins"):
        PixelMetricAccumulator(num_bins=4)
    with pytest.raises(ValueError, match="max_fpr"):
        PixelMetricAccumulator(max_fpr=0)
    with pytest.raises(ValueError, match="exact_budget"):
        PixelMetricAccumulator(exact_budget=-1)


# ------------------------------------------------------------------ evaluator


def random_test_set(rng, n_samples=12, n_views=3, size=(20, 24)):
    maps, masks = [], []
    for s in range(n_samples):
        m, k = random_maps(rng, n=n_views, size=size)
        if s % 2 == 0:
            k[:] = False  # normal sample
        maps.append(m.astype(np.float32))
        masks.append(k)
    return maps, masks


def test_evaluate_matches_sklearn_at_every_level(np_rng):
    maps, masks = random_test_set(np_rng)
    metrics = evaluate(maps, masks, exact_budget=10**9)
    assert tuple(metrics) == METRIC_KEYS
    view_scores = np.array([m.max(axis=(1, 2)) for m in maps])
    view_labels = np.array([k.any(axis=(1, 2)) for k in masks])
    sample_scores, sample_labels = view_scores.max(axis=1), view_labels.any(axis=1)
    y, s = np.concatenate([k.ravel() for k in masks]), np.concatenate([m.ravel() for m in maps])
    expected = {
        "S-AUROC": sklearn_metrics.roc_auc_score(sample_labels, sample_scores),
        "V-AUROC": sklearn_metrics.roc_auc_score(view_labels.ravel(), view_scores.ravel()),
        "P-AUROC": sklearn_metrics.roc_auc_score(y, s),
        "AUPRO": brute_force_aupro(np.concatenate(maps), np.concatenate(masks)),
        "S-AP": sklearn_metrics.average_precision_score(sample_labels, sample_scores),
        "V-AP": sklearn_metrics.average_precision_score(view_labels.ravel(), view_scores.ravel()),
        "P-AP": sklearn_metrics.average_precision_score(y, s),
        "S-F1max": sklearn_f1_max(sample_labels, sample_scores),
        "V-F1max": sklearn_f1_max(view_labels.ravel(), view_scores.ravel()),
        "P-F1max": sklearn_f1_max(y, s),
    }
    for key in METRIC_KEYS:
        assert metrics[key] == pytest.approx(expected[key], abs=1e-12), key
    binned = evaluate(maps, masks, exact_budget=0)
    for key in METRIC_KEYS:
        assert binned[key] == pytest.approx(expected[key], abs=1e-4), key


def test_evaluator_takes_samples_explicit_scores_and_labels(np_rng):
    from vsad.data import make_category

    category = make_category(n_train=0, n_test=4, n_views=2, image_size=32, defect_rate=0.5, seed=1)
    evaluator = Evaluator()
    for sample in category.test:
        maps = np_rng.random((2, 32, 32)) + np.stack(sample.masks)
        evaluator.add(sample, maps)
    assert [r["sample_id"] for r in evaluator.rows] == category.test.sample_ids
    assert [r["label"] for r in evaluator.rows] == category.test.labels.tolist()
    assert evaluator.compute()["S-AUROC"] == 1.0  # defect pixels score >= 1 > normal ones
    # Explicit view labels and scores override what the maps and masks say.
    other = Evaluator(pixel=False)
    other.update(view_scores=[0.2, 0.9], view_labels=[0, 1])
    other.update(view_scores=[0.5, 0.1], view_labels=[0, 0], sample_score=0.95)
    metrics = other.compute()
    assert metrics["S-AUROC"] == 0.0 and metrics["V-AUROC"] == 1.0
    assert math.isnan(metrics["P-AUROC"]) and math.isnan(metrics["AUPRO"])


def test_evaluator_bad_input_leaves_it_unchanged(np_rng):
    evaluator = Evaluator()
    maps = np_rng.random((2, 8, 8))
    with pytest.raises(ValueError, match="score_maps, masks"):
        evaluator.update(maps, np.zeros((2, 8, 9), bool))
    with pytest.raises(ValueError, match="masks"):
        evaluator.update(maps, None, [0, 1])
    with pytest.raises(ValueError, match="view_scores"):
        evaluator.update(maps, np.zeros((2, 8, 8), bool), view_scores=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="view_labels"):
        evaluator.update(maps, None)
    bad = maps.copy()
    bad[1, 3, 3] = np.nan
    with pytest.raises(ValueError, match="score"):
        evaluator.update(bad, np.zeros((2, 8, 8), bool))
    with pytest.raises(ValueError, match="score_maps"):
        evaluator.update(np_rng.random((8, 8)), np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match="score_maps"):
        Evaluator().update(view_scores=[0.3], view_labels=[1])  # pixel metrics need maps
    assert evaluator.rows == [] and len(evaluator.views) == 0
    assert evaluator.pixels.num_pixels == 0


# ------------------------------------------------------------------ reports


def test_write_metrics_files(tmp_path, np_rng):
    maps, masks = random_test_set(np_rng, n_samples=6)
    evaluator = Evaluator()
    for m, k in zip(maps, masks, strict=True):
        evaluator.update(m, k)
    metrics = evaluator.compute()
    rows = {"cat_a": metrics, "cat_b": {**metrics, "S-AUROC": float("nan")}}
    paths = write_metrics(rows, tmp_path / "out", details={"cat_a": evaluator.details()})
    assert [p.name for p in paths] == ["metrics.json", "metrics.csv", "metrics.md"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)
    data = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert data["metrics"]["cat_a"]["P-AUROC"] == pytest.approx(metrics["P-AUROC"])
    assert data["metrics"]["cat_b"]["S-AUROC"] is None
    assert data["mean"]["S-AUROC"] == pytest.approx(metrics["S-AUROC"])  # NaN ignored
    details = data["details"]["cat_a"]
    assert details["error_bounds"]["P-AUROC"] == 0.0 and details["counts"]["samples"] == 6
    with open(tmp_path / "out" / "metrics.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["name", *METRIC_KEYS]
    assert float(table[1][1]) == metrics["S-AUROC"] and table[2][1] == ""
    markdown = (tmp_path / "out" / "metrics.md").read_text()
    assert "| mean |" in markdown and f"{100 * metrics['V-AUROC']:.2f}" in markdown
    assert "n/a" in markdown
    single = metrics_table(metrics, percent=False)
    assert single.count("\n|") == 2 and "| all |" in single
    with pytest.raises(ValueError, match="formats"):
        write_metrics(metrics, tmp_path, formats=("xml",))
    path = write_sample_scores(evaluator.rows, tmp_path / "out" / "scores.csv")
    with open(path, newline="") as f:
        scores = list(csv.reader(f))
    assert len(scores) == 7 and scores[0][:3] == ["sample_id", "label", "score"]
    assert [float(v) for v in scores[1][4].split(";")] == evaluator.rows[0]["view_scores"]
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind
