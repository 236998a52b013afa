"""The detector API end to end: VSAD and PatchKNN fit/predict on synthetic views, a pasted
defect scores above normal samples and is localised, save/load reproduces scores bit-exactly,
bad input gets clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsad.data import make_category
from vsad.detector import UNET_PIPELINE, VSAD, PatchKNN, PatchKNNConfig, VSADConfig, load_detector

# The UNet pipeline with tiny everything: a 64² model input, a few training steps, one
# inversion step (the default, the pretrained level alone, is tested in test_pretrained.py).
TINY = {
    **UNET_PIPELINE,
    "image_size": 64,
    "train": {"steps": 3, "batch_size": 1, "checkpoint_every": 100},
    "inversion_steps": 1,
    "batch_size": 3,
    "smoothing_sigma": 2.0,
}


@pytest.fixture(scope="module")
def category():
    return make_category(n_train=6, n_test=4, n_views=3, image_size=96, seed=3, defect_rate=0.5)


@pytest.fixture(scope="module")
def fitted_vsad(category):
    return VSAD(VSADConfig.from_dict(TINY)).fit(
        category.train, homographies=category.homographies, progress=False
    )


@pytest.fixture(scope="module")
def fitted_knn(category):
    return PatchKNN(PatchKNNConfig(image_size=64, smoothing_sigma=2.0)).fit(
        category.train, progress=False
    )


def paste_defect(views: list[np.ndarray], rng: np.random.Generator, view: int = 1):
    """A 16×16 patch of one saturated colour (green or blue, at a random place) in one view —
    nothing like the brick texture; returns the views and the defect mask."""
    views = [v.copy() for v in views]
    h, w = views[view].shape[:2]
    y, x = int(rng.integers(20, h - 36)), int(rng.integers(20, w - 36))
    views[view][y : y + 16, x : x + 16] = [(0, 230, 40), (20, 40, 240)][int(rng.integers(2))]
    mask = np.zeros((h, w), bool)
    mask[y : y + 16, x : x + 16] = True
    return views, mask


@pytest.mark.parametrize("which", ["vsad", "knn"])
def test_pasted_defect_scores_above_normal_samples_and_is_localised(
    which, fitted_vsad, fitted_knn, category, rng
):
    detector = fitted_vsad if which == "vsad" else fitted_knn
    np_rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=rng)))
    normal = [s for s in category.test if s.label == 0]
    assert normal, "the fixture must hold normal test samples"
    normal_scores = [detector.predict(s).score for s in normal]
    views, mask = paste_defect(normal[0].images, np_rng)
    result = detector.predict(views)
    assert result.maps.shape == (3, 96, 96) and result.maps.dtype == np.float32
    assert result.score > max(normal_scores)
    assert int(np.argmax(result.view_scores)) == 1
    y, x = np.unravel_index(np.argmax(result.maps[1]), mask.shape)
    ys, xs = np.nonzero(mask)
    # The peak lies on the patch (smoothing and the 1/4-resolution grid may move it a little).
    assert ys.min() - 6 <= y <= ys.max() + 6 and xs.min() - 6 <= x <= xs.max() + 6
    assert result.score == pytest.approx(float(result.maps.max()))
    assert np.allclose(result.view_scores, result.maps.reshape(3, -1).max(1))


def _extractor(fitted, **config):
    """A detector sharing `fitted`'s geometry and text embedding, with other levels or placement
    (untrained modules: only the shapes are looked at)."""
    detector = VSAD(VSADConfig.from_dict({**TINY, **config}))
    detector.num_views, detector.view_size = 3, (96, 96)
    detector.homographies = fitted.homographies
    detector._build()
    detector.null_text = fitted.null_text
    return detector


def test_feature_levels_and_shapes(fitted_vsad, category):
    images = torch.rand(2, 3, 3, 64, 64)
    features = fitted_vsad._extract(images)
    # Default: placement "resnet", levels = the two ResBlocks of the finest decoder block of the
    # tiny UNet (32 channels at the 16² latent resolution of a 64² input).
    assert [tuple(f.shape) for f in features] == [(2, 3, 32, 16, 16)] * 2
    assert fitted_vsad.model.num_levels == 6  # 3 decoder blocks × 2 ResBlocks
    every_resblock = _extractor(fitted_vsad, feature_levels=list(range(6)))
    shapes = [tuple(f.shape) for f in every_resblock._extract(images)]
    assert shapes == [(2, 3, 64, 4, 4)] * 2 + [(2, 3, 64, 8, 8)] * 2 + [(2, 3, 32, 16, 16)] * 2
    # "block": one level per decoder block, read after its upsampler.
    every_block = _extractor(fitted_vsad, placement="block", feature_levels=[0, 1, 2])
    shapes = [tuple(f.shape) for f in every_block._extract(images)]
    assert shapes == [(2, 3, 64, 8, 8), (2, 3, 64, 16, 16), (2, 3, 32, 16, 16)]


@pytest.mark.parametrize("which", ["vsad", "knn"])
def test_save_load_reproduces_scores_exactly(which, fitted_vsad, fitted_knn, category, tmp_path):
    detector = fitted_vsad if which == "vsad" else fitted_knn
    before = detector.predict_many(category.test, progress=False)
    detector.save(tmp_path / "model")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp folder left"
    loaded = load_detector(tmp_path / "model")
    assert type(loaded) is type(detector)
    after = loaded.predict_many(category.test, progress=False)
    for a, b in zip(before, after, strict=True):
        assert np.array_equal(a.maps, b.maps)
        assert a.score == b.score
    # Saving again over the folder replaces it atomically.
    loaded.save(tmp_path / "model")
    reloaded = load_detector(tmp_path / "model")
    assert reloaded.predict(category.test[0]).score == loaded.predict(category.test[0]).score


def test_batched_prediction_equals_one_at_a_time(fitted_knn, category):
    batched = fitted_knn.predict_many(category.test, batch_size=3, progress=False)
    single = [fitted_knn.predict(s) for s in category.test]
    for a, b in zip(batched, single, strict=True):
        np.testing.assert_allclose(a.maps, b.maps, rtol=1e-5, atol=1e-6)
    assert [p.sample_id for p in batched] == category.test.sample_ids


def test_global_and_local_banks_agree_with_infinite_radius(category):
    local = PatchKNN(PatchKNNConfig(image_size=64, bank_radius=16)).fit(
        category.train, progress=False
    )
    glob = PatchKNN(PatchKNNConfig(image_size=64, bank_mode="global")).fit(
        category.train, progress=False
    )
    sample = category.test[0]
    np.testing.assert_allclose(
        local.predict(sample).maps, glob.predict(sample).maps, rtol=1e-4, atol=1e-5
    )


def test_bad_input_gets_clear_errors(fitted_knn, category):
    views = category.test[0].images
    with pytest.raises(ValueError, match="got 2 views, expected 3"):
        fitted_knn.predict(views[:2])
    with pytest.raises(ValueError, match=r"views\[1\]: is 90x96 but view 0 is 96x96"):
        fitted_knn.predict([views[0], views[1][:90], views[2]])
    with pytest.raises(ValueError, match="expected 96x96 as in training"):
        fitted_knn.predict([v[:80, :80] for v in views])
    bad = [v.astype(np.float32) / 255 for v in views]
    bad[2][5, 5, 0] = np.nan
    with pytest.raises(ValueError, match=r"views\[2\]: contains NaN"):
        fitted_knn.predict(bad)
    with pytest.raises(ValueError, match=r"views\[0\]: got shape \(96, 96\)"):
        fitted_knn.predict([v[..., 0] for v in views])
    with pytest.raises(RuntimeError, match="not fitted"):
        PatchKNN().predict(views)
    with pytest.raises(ValueError, match="train: got no samples"):
        PatchKNN().fit([], progress=False)
    with pytest.raises(ValueError, match=r"train\[1\]: got 2 views, expected 3"):
        PatchKNN().fit([views, views[:2]], progress=False)


def test_config_validation_and_overrides(tmp_path):
    config = VSADConfig.from_dict(UNET_PIPELINE).with_overrides(
        ["train.steps=7", "bank_mode=global", "use_mvam=false"]
    )
    assert (config.train.steps, config.bank_mode, config.use_mvam) == (7, "global", False)
    assert VSADConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown key"):
        VSADConfig().with_overrides(["no_such_key=1"])
    with pytest.raises(ValueError, match="bank_mode: got 'nearest'"):
        VSADConfig(bank_mode="nearest")
    with pytest.raises(ValueError, match="coreset_ratio"):
        VSADConfig(coreset_ratio=0.1)
    with pytest.raises(ValueError, match="needs stable_diffusion"):
        VSADConfig(encoder="vae")
    with pytest.raises(ValueError, match="image_size: got 100"):
        VSADConfig.from_dict({**UNET_PIPELINE, "image_size": 100})
    with pytest.raises(ValueError, match="level_weights: got 2 weights, expected 3 .*latent"):
        VSADConfig(level_weights=[0.5, 0.5], feature_levels=[-2, -1])  # two decoder + latent
    with pytest.raises(ValueError, match=r"level_weights: got 3 weights, expected 1 \(one per"):
        VSADConfig(level_weights=[0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="latent_level: got 'yes'"):
        VSADConfig(latent_level="yes")
    with pytest.raises(ValueError, match="feature_levels.*the 6 feature levels .*ResBlock"):
        detector = VSAD(VSADConfig(feature_levels=[6]))  # 3 blocks × 2 ResBlocks: 0…5
        detector.num_views, detector.view_size = 3, (64, 64)
        detector._build()


def test_missing_stable_diffusion_parts_are_named(tmp_path, category):
    (tmp_path / "sd" / "unet").mkdir(parents=True)
    (tmp_path / "sd" / "unet" / "config.json").write_text("{}")
    detector = VSAD(VSADConfig(stable_diffusion=str(tmp_path / "sd"), feature_levels=[-2, -1]))
    with pytest.raises(FileNotFoundError, match=r"vae[/\\]config.json is missing"):
        detector.fit(category.train, homographies=category.homographies, progress=False)


def test_ablation_switches_build_what_they_say(category):
    for use_mvam, use_frm in ((False, True), (True, False)):
        config = VSADConfig.from_dict({**TINY, "use_mvam": use_mvam, "use_frm": use_frm})
        detector = VSAD(config).fit(
            category.train, homographies=category.homographies, progress=False
        )
        assert detector.model.use_mvam is use_mvam and detector.model.use_frm is use_frm
        assert np.isfinite(detector.predict(category.test[0]).score)


def test_latent_level_scores_the_encoder_latent_and_round_trips(fitted_vsad, category, tmp_path):
    detector = VSAD(VSADConfig.from_dict({**TINY, "latent_level": True})).fit(
        category.train, homographies=category.homographies, progress=False
    )
    # The decoder levels are those of the model without it (same seed, same training), and the
    # latent (4×4 pixel patches: 48 channels at 16²) follows them unfused.
    images = torch.rand(2, 3, 3, 64, 64)
    features, plain = detector._extract(images), fitted_vsad._extract(images)
    assert [tuple(f.shape) for f in features] == [(2, 3, 32, 16, 16)] * 2 + [(2, 3, 48, 16, 16)]
    for got, want in zip(features[:2], plain, strict=True):
        torch.testing.assert_close(got, want)
    latents = detector.encoder.encode(images.flatten(0, 1)).reshape(2, 3, 48, 16, 16)
    assert torch.equal(features[2], latents)
    assert len(detector.banks.shapes) == 3
    sample = category.test[0]
    with_latent = detector.predict(sample)
    assert not np.allclose(with_latent.maps, fitted_vsad.predict(sample).maps)
    detector.save(tmp_path / "model")
    loaded = load_detector(tmp_path / "model")
    assert loaded.config.latent_level is True
    assert np.array_equal(loaded.predict(sample).maps, with_latent.maps)
