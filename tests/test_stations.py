"""Detectors on real camera stations: a view pair that does not match is left out of the view
graph instead of stopping fit, and its views are still scored."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_DATA

from vsad.data import make_photo_category
from vsad.detector import VSAD, VSADConfig
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
    config = VSADConfig(image_size=128, train=TrainConfig(steps=2))
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
