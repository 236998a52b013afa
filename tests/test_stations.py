"""Detectors on real camera stations: a view pair that does not match is left out of the view
graph instead of stopping fit, and its views are still scored."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_DATA

from vsad.data import make_photo_category
from vsad.detector import UNET_PIPELINE, VSAD, VSADConfig
from vsad.model.training import TrainConfig

PHOTOS = SHARED_DATA / "multiview"


@pytest.mark.skipif(
    not (PHOTOS / "kermit").is_dir() or not (PHOTOS / "et").is_dir(),
    reason=f"the shared multi-view photographs are not at {PHOTOS}",
)
def test_default_view_graph_survives_a_camera_that_matches_no_neighbour():
    # Four cameras on an arc around one object, and a fifth that sees another object: under
    # the default ring graph the pairs 3<->4 and 4<->0 cannot be estimated.
    files = [PHOTOS / "kermit" / f"kermit00{k}.jpg" for k in range(4)] + [PHOTOS / "et/et000.jpg"]
    category = make_photo_category(files, "easy", n_train=3, n_test=4, image_size=128, seed=0)
    config = VSADConfig(**{**UNET_PIPELINE, "image_size": 128}, train=TrainConfig(steps=2))
    assert config.view_graph == "ring" and config.homography_fallback == "drop"
    with pytest.warns(UserWarning, match="left out of the view graph"):
        detector = VSAD(config).fit(category.train, progress=False)
    homs = detector.homographies
    dropped = {(r.i, r.j) for r in homs.dropped_pairs()}
    assert {(3, 4), (4, 3), (0, 4), (4, 0)} <= dropped
    assert (homs.neighbors[4] == -1).all()  # the fifth camera has no neighbour left
    assert {(0, 1), (1, 2), (2, 3)} <= {(r.i, r.j) for r in homs.report if r.status == "ok"}
    assert "left out" in homs.summary()
    prediction = detector.predict(category.test[0])
    assert prediction.maps.shape == (5, 128, 128) and np.isfinite(prediction.maps).all()
    assert np.isfinite(prediction.view_scores).all()


@pytest.mark.skipif(
    not (PHOTOS / "kermit").is_dir() or not (PHOTOS / "et").is_dir(),
    reason=f"the shared multi-view photographs are not at {PHOTOS}",
)
def test_identity_fallbacks_survive_save_and_load(tmp_path):
    """Fusion leaves identity-fallback pairs out; the reloaded detector must know them too."""
    from vsad.detector import load_detector

    files = [PHOTOS / "kermit" / f"kermit00{k}.jpg" for k in range(2)] + [PHOTOS / "et/et000.jpg"]
    category = make_photo_category(
        files, "easy", n_train=3, n_test=2, views=3, image_size=128, seed=1
    )
    config = VSADConfig(
        **{**UNET_PIPELINE, "image_size": 128},
        train=TrainConfig(steps=2),
        homography_fallback="identity",
    )
    with pytest.warns(UserWarning, match="identity fallback"):
        detector = VSAD(config).fit(category.train, progress=False)
    assert detector.homographies.failed_pairs()
    detector.save(tmp_path / "model")
    loaded = load_detector(tmp_path / "model")
    assert [r.to_dict() for r in loaded.homographies.report] == [
        r.to_dict() for r in detector.homographies.report
    ]
    want, got = detector.predict(category.test[0]), loaded.predict(category.test[0])
    np.testing.assert_array_equal(got.maps, want.maps)


@pytest.mark.skipif(
    not (PHOTOS / "kermit").is_dir() or not (PHOTOS / "et").is_dir(),
    reason=f"the shared multi-view photographs are not at {PHOTOS}",
)
def test_a_station_without_any_matching_pair_still_trains():
    files = [PHOTOS / "kermit/kermit000.jpg", PHOTOS / "et/et000.jpg"]
    category = make_photo_category(
        files, "easy", n_train=3, n_test=2, views=2, image_size=128, seed=2
    )
    with pytest.warns(UserWarning, match="left out of the view graph"):
        config = VSADConfig(**{**UNET_PIPELINE, "image_size": 128}, train=TrainConfig(steps=2))
        detector = VSAD(config).fit(category.train, progress=False)
    assert (detector.homographies.neighbors == -1).all()
    assert all(np.isfinite(h["loss"]) for h in detector.history)
    assert np.isfinite(detector.predict(category.test[0]).maps).all()
