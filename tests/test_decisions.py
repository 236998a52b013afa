"""OK/NG decisions: the order-statistic threshold rule and its interval, leave-one-out scores
free of in-sample bias, thresholds stored with the model, old models without them,
recalibration (stored scores, validation split, F1, manual) and the errors of bad input."""

from __future__ import annotations

import json
import math
import types
import warnings

import numpy as np
import pytest
import torch

from vsad.data import make_category
from vsad.detector import PatchKNN, PatchKNNConfig, load_detector
from vsad.detector import thresholds as thr
from vsad.detector.calibration import loo_normal_scores
from vsad.eval.decisions import decision_metrics
from vsad.memory.feature_banks import FeatureBanks
from vsad.model.scoring import combine_levels, view_and_sample_scores


def _seed(rng: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=rng))


# -- the threshold rule ------------------------------------------------------------------------
def test_order_statistic_rank_rule(rng):
    np_rng = np.random.default_rng(_seed(rng))
    for _ in range(200):
        n = int(np_rng.integers(1, 500))
        fpr = float(np_rng.uniform(0.001, 0.5))
        k, limited = thr.order_statistic_rank(n, fpr)
        exact = math.ceil((1 - fpr) * (n + 1) - 1e-9)
        assert (k, limited) == ((n, True) if exact > n else (exact, False))
        if not limited:
            # The smallest rank whose conformal guarantee holds: P(new > X_(k)) <= fpr.
            assert (n + 1 - k) / (n + 1) <= fpr + 1e-12
            assert k == 1 or (n + 2 - k) / (n + 1) > fpr - 1e-12
    assert thr.order_statistic_rank(40, 0.05) == (39, False)
    assert thr.order_statistic_rank(19, 0.05) == (19, False)  # 0.95 · 20 = 19 exactly
    assert thr.order_statistic_rank(40, 0.01) == (40, True)
    assert thr.samples_needed(0.05) == 19 and thr.samples_needed(0.01) == 99


def test_threshold_is_that_order_statistic_and_too_few_samples_warn(rng):
    np_rng = np.random.default_rng(_seed(rng))
    scores = np_rng.normal(size=40)
    value, details = thr.fpr_threshold(scores, 0.05, what="sample threshold")
    assert value == np.sort(scores)[38] and details["rank"] == 39 and not details["limited"]
    assert details["expected_frr"] == pytest.approx(2 / 41)
    with pytest.warns(UserWarning, match=r"0.01 needs at least 99 normal scores, got 40"):
        value, details = thr.fpr_threshold(scores, 0.01, what="sample threshold")
    assert value == scores.max() and details["limited"]


def test_frr_interval_matches_the_beta_distribution(rng):
    stats = pytest.importorskip("scipy.stats")
    np_rng = np.random.default_rng(_seed(rng))
    for _ in range(20):
        n = int(np_rng.integers(2, 3000))
        k = int(np_rng.integers(1, n + 1))
        lo, hi = thr.frr_interval(n, k)
        want = stats.beta.ppf([0.025, 0.975], n + 1 - k, k)
        np.testing.assert_allclose([lo, hi], want, rtol=1e-6, atol=1e-9)


def test_conformal_threshold_achieves_its_expected_frr(rng):
    """Exchangeable normal scores: the achieved FRR averages (n + 1 − k)/(n + 1)."""
    np_rng = np.random.default_rng(_seed(rng))
    n, fpr, trials = 40, 0.05, 4000
    calibration = np_rng.standard_t(4, size=(trials, n))  # heavy tails: the rule is free of them
    k, _ = thr.order_statistic_rank(n, fpr)
    t = np.sort(calibration, axis=1)[:, k - 1]
    fresh = np_rng.standard_t(4, size=(trials, 50))
    achieved = (fresh > t[:, None]).mean()
    assert achieved == pytest.approx((n + 1 - k) / (n + 1), abs=0.006)


# -- leave-one-out scores without in-sample bias -------------------------------------------------
def _gaussian_trial(seed: int, n=40, views=2, dim=8, size=8, fresh=300):
    """FRR on fresh normal samples of thresholds from the LOO scores of n Gaussian samples:
    corrected (what fit uses) and biased (standardised with statistics that include the
    sample)."""
    g = torch.Generator().manual_seed(seed)
    banks = FeatureBanks("local", radius=1, normalization="position")
    banks.add([torch.randn(n, views, dim, size, size, generator=g)])
    banks.finalize(keep_loo=True)
    config = types.SimpleNamespace(batch_size=8, level_weights=None, smoothing_sigma=0.0)
    detector = types.SimpleNamespace(banks=banks, view_size=(size, size), config=config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corrected = thr.from_normal_scores(*loo_normal_scores(detector), 0.05, source="train-loo")
        biased_maps = combine_levels(banks.standardize(banks.loo_distances), None, (size, size))
        views_b, samples_b = view_and_sample_scores(biased_maps)
        biased = thr.from_normal_scores(samples_b.numpy(), views_b.numpy(), 0.05, source="x")
    test = torch.randn(fresh, views, dim, size, size, generator=g)
    maps = combine_levels(banks.standardize(banks.search([test])), None, (size, size))
    view_scores, sample_scores = view_and_sample_scores(maps)
    return (
        float((sample_scores.numpy() > corrected["sample"]).mean()),
        float((view_scores.numpy() > corrected["view"]).mean()),
        float((sample_scores.numpy() > biased["sample"]).mean()),
    )


def test_loo_thresholds_hit_the_target_on_fresh_normal_samples(rng):
    seed = _seed(rng)
    results = np.array([_gaussian_trial(seed + t) for t in range(12)])
    sample_frr, view_frr, biased_frr = results.mean(0)
    # Target 5 % (expected 2/41 = 4.9 %); the spread of the mean over 12 trials is ~0.8 points.
    assert 0.025 < sample_frr < 0.09
    assert 0.025 < view_frr < 0.09
    # Without the correction the thresholds reject several times the target: the test is
    # sensitive to the bias it guards against.
    assert biased_frr > 0.15 and biased_frr > 2.5 * sample_frr


def test_loo_downdate_equals_statistics_recomputed_without_the_sample(rng):
    g = torch.Generator().manual_seed(_seed(rng))
    banks = FeatureBanks("local", radius=1, normalization="position")
    banks.add([torch.randn(7, 2, 4, 5, 5, generator=g)])
    banks.finalize(keep_loo=True)
    loo = banks.loo_distances[0].double()
    got = banks.loo_scored_distances()[0]
    floor = banks._std_floor(*reversed(banks._stats[0])).double()
    for s in range(loo.shape[0]):
        others = torch.cat([loo[:s], loo[s + 1 :]])
        want = (loo[s] - others.mean(0)) / others.std(0).clamp_min(floor)
        torch.testing.assert_close(got[s], want.float(), rtol=1e-5, atol=1e-5)


# -- detectors: fit, save/load, old models, recalibration ----------------------------------------
@pytest.fixture(scope="module")
def category():
    return make_category(n_train=20, n_test=10, n_views=3, image_size=64, seed=11, defect_rate=0.5)


@pytest.fixture(scope="module")
def fitted(category):
    return PatchKNN(PatchKNNConfig(image_size=64, smoothing_sigma=2.0)).fit(
        category.train, progress=False
    )


def test_fit_sets_thresholds_and_predict_decides(fitted, category):
    t = fitted.thresholds
    assert t["source"] == "train-loo" and t["fpr"] == 0.05 and t["n_normal"] == 20
    assert t["levels"]["view"]["n_normal"] == 60  # every view of every training sample
    assert len(fitted.normal_scores["sample"]) == 20
    for prediction in fitted.predict_many(category.test, progress=False):
        assert prediction.ng == (prediction.score > t["sample"])
        # Cameras that saw the defect: only in an NG sample, and at least its worst view.
        above = prediction.view_scores > min(t["view"], t["sample"])
        np.testing.assert_array_equal(prediction.view_ng, above & prediction.ng)
        assert prediction.view_ng.any() == prediction.ng
        assert prediction.decision in ("OK", "NG") and len(prediction.view_decisions) == 3
        assert prediction.thresholds["sample"] == t["sample"]


def test_thresholds_round_trip_and_old_models_warn(fitted, category, tmp_path):
    fitted.save(tmp_path / "model")
    loaded = load_detector(tmp_path / "model")
    assert loaded.thresholds == json.loads(json.dumps(fitted.thresholds))
    before = [p.decision for p in fitted.predict_many(category.test, progress=False)]
    assert [p.decision for p in loaded.predict_many(category.test, progress=False)] == before

    meta_path = tmp_path / "model" / "detector.json"
    meta = json.loads(meta_path.read_text())
    del meta["thresholds"], meta["normal_scores"]
    del meta["config"]["threshold_fpr"]  # as written before decisions existed
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="no decision thresholds.*vsad calibrate"):
        old = load_detector(tmp_path / "model")
    prediction = old.predict(category.test[0])
    assert prediction.decision is None and prediction.ng is None and prediction.view_ng is None
    assert np.isfinite(prediction.score)
    with pytest.raises(ValueError, match="stores no normal scores.*--data"):
        old.calibrate(fpr=0.1)
    # A labelled split recalibrates it; the new thresholds are rewritten in place.
    old.calibrate(category.test, fpr=0.2, progress=False)
    old.save_thresholds(tmp_path / "model")
    assert load_detector(tmp_path / "model").thresholds["source"] == "validation"


def test_recalibration_targets_f1_and_manual_override(fitted, category):
    detector = PatchKNN(fitted.config)
    detector.__dict__.update({k: v for k, v in fitted.__dict__.items() if k != "thresholds"})
    looser = detector.calibrate(fpr=0.25)
    assert looser["source"] == "train-loo" and looser["sample"] <= fitted.thresholds["sample"]
    k = looser["levels"]["sample"]["rank"]
    assert looser["sample"] == np.sort(fitted.normal_scores["sample"])[k - 1]

    f1 = detector.calibrate(category.test, f1=True, progress=False)
    assert f1["criterion"] == "f1" and f1["levels"]["sample"]["n_anomalous"] > 0
    scores = np.array([p.score for p in detector.predict_many(category.test, progress=False)])
    labels = np.array([s.label for s in category.test], bool)
    ng = scores > f1["sample"]
    tp, fp, fn = (ng & labels).sum(), (ng & ~labels).sum(), (~ng & labels).sum()
    assert 2 * tp / (2 * tp + fp + fn) == pytest.approx(f1["levels"]["sample"]["f1"])

    normal = np.asarray(fitted.normal_scores["view"]).ravel()
    chosen = float(np.median(normal))
    manual = detector.calibrate(view_threshold=chosen)
    assert manual["view"] == chosen and manual["sample"] == f1["sample"]
    assert manual["source"] == "mixed" and manual["levels"]["view"]["source"] == "manual"


def test_bad_calibration_input_is_named(fitted, category):
    detector = PatchKNN(fitted.config)
    detector.__dict__.update(fitted.__dict__)
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match=rf"fpr: got {bad}, expected .*between 0 and 1"):
            detector.calibrate(fpr=bad)
    with pytest.raises(ValueError, match=r"threshold_fpr: got 1.0, expected > 0 and < 1"):
        PatchKNNConfig(threshold_fpr=1.0)
    lowest = float(np.min(fitted.normal_scores["sample"]))
    with pytest.raises(ValueError, match=r"sample_threshold: got .*below every known normal"):
        detector.calibrate(sample_threshold=lowest - 1.0)
    with pytest.raises(ValueError, match=r"view_threshold: got nan, expected a finite"):
        detector.calibrate(view_threshold=float("nan"))
    defective = [s for s in category.test if s.label == 1]
    with pytest.raises(ValueError, match=r"at or above every defective sample score"):
        detector.calibrate(category.test, sample_threshold=1e9, progress=False)
    with pytest.raises(ValueError, match=r"holds no normal samples \(\d+ defective, 0 normal\)"):
        detector.calibrate(defective, fpr=0.05, progress=False)
    with pytest.raises(ValueError, match=r"F1-optimal threshold needs normal and defective"):
        detector.calibrate([s for s in category.test if s.label == 0], f1=True, progress=False)
    with pytest.raises(ValueError, match="f1: the F1-optimal threshold needs a labelled split"):
        detector.calibrate(f1=True)
    assert detector.thresholds == fitted.thresholds  # nothing half-applied


def test_threshold_fpr_none_and_too_few_samples_give_no_decisions(category):
    none = PatchKNN(PatchKNNConfig(image_size=64, threshold_fpr=None)).fit(
        category.train, progress=False
    )
    assert none.thresholds is None and none.predict(category.test[0]).decision is None
    with pytest.warns(UserWarning, match="fewer than the 3 needed"):
        tiny = PatchKNN(PatchKNNConfig(image_size=64)).fit(
            [category.train[0], category.train[1]], progress=False
        )
    assert tiny.thresholds is None


def test_decision_metrics_count_what_they_say(rng):
    np_rng = np.random.default_rng(_seed(rng))
    rows = []
    for i in range(30):
        labels = (np_rng.random(3) < 0.3).astype(int).tolist()
        scores = (np_rng.normal(size=3) + 2 * np.array(labels)).tolist()
        rows.append({"sample_id": str(i), "label": int(any(labels)), "score": max(scores),
                     "view_labels": labels, "view_scores": scores})  # fmt: skip
    t = {"sample": 1.0, "view": 0.5}
    d = decision_metrics(rows, t)
    s = np.array([r["score"] for r in rows])
    y = np.array([r["label"] for r in rows], bool)
    c = d["sample"]["confusion"]
    assert c == {"tp": int(((s > 1) & y).sum()), "fp": int(((s > 1) & ~y).sum()),
                 "tn": int(((s <= 1) & ~y).sum()), "fn": int(((s <= 1) & y).sum())}  # fmt: skip
    assert d["sample"]["frr"] == pytest.approx(c["fp"] / (~y).sum())
    assert d["sample"]["escape_rate"] == pytest.approx(c["fn"] / y.sum())
    per_view_total = sum(e["confusion"]["tp"] + e["confusion"]["fp"] for e in d["per_view"])
    view = d["view"]["confusion"]
    assert per_view_total == view["tp"] + view["fp"] and len(d["per_view"]) == 3


def test_loo_with_a_coreset_searches_the_other_samples_coreset_rows(rng):
    """Raw distances with a global coreset: sample s against the kept rows of the others,
    as a test sample searches the coreset (checked by brute force)."""
    g = torch.Generator().manual_seed(_seed(rng))
    features = torch.randn(6, 2, 5, 4, 4, generator=g)  # (S, M, D, h, w)
    banks = FeatureBanks("global", coreset_ratio=0.3, normalization="none")
    banks.add([features])
    banks.finalize(keep_loo=True)
    (loo,) = banks.loo_scored_distances()
    assert loo.shape == (6, 2, 4, 4)
    for view in range(2):
        kept = banks._kept[(0, view)]
        owner = kept // 16
        rows = features[:, view].permute(0, 2, 3, 1).reshape(-1, 5)[kept]
        for s in range(6):
            query = features[s, view].permute(1, 2, 0).reshape(-1, 5)
            want = torch.cdist(query.double(), rows[owner != s].double()).min(1).values
            torch.testing.assert_close(loo[s, view].reshape(-1), want.float(), rtol=1e-4, atol=1e-4)
