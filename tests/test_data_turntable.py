"""Units that turn (vsad.data.photo.turntable) on the shared turntable photographs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_DATA

from vsad.data.imageio import read_image
from vsad.data.photo.turntable import make_turntable_category, product_mask, read_projections

DINOSAUR = SHARED_DATA / "turntable" / "dinosaur"
pytestmark = pytest.mark.skipif(
    not DINOSAUR.is_dir(),
    reason=f"the shared turntable photographs are not at {DINOSAUR} (../shared/data/turntable)",
)


def _category(**kwargs):
    settings = dict(n_train=6, n_test=10, image_size=96, seed=3)
    return make_turntable_category(DINOSAUR, **{**settings, **kwargs})


def test_a_unit_at_pose_d_shows_camera_k_photograph_first_plus_k_step_plus_d():
    category = _category(first_view=30, camera_step=3, train_poses=(0, 2), test_poses=(1,))
    photos = sorted(DINOSAUR.glob("*.jpg"))
    for pose in (0, 1, 2):
        station = category.station_at(pose)
        for k in range(5):
            expected = read_image(photos[(30 + 3 * k + pose) % 36]).astype(np.float32)
            np.testing.assert_array_equal(station.photos[k], expected)
    # Camera k at pose `step` sees what camera k + 1 sees at pose 0.
    wide = _category(camera_step=2, train_poses=(0, 2), test_poses=(0,))
    np.testing.assert_array_equal(wide.station_at(2).photos[0], wide.station_at(0).photos[1])


def test_poses_cycle_and_every_test_pose_gets_normal_and_defective_units():
    category = _category(n_train=7, n_test=20)
    assert category.train.poses == [0, 2, 4, 0, 2, 4, 0]
    assert category.seen_poses == {0, 2, 4}
    labels = [r.label for r in category.test.records]
    for pose in (0, 1, 2, 3, 4):
        at = [label for label, p in zip(labels, category.test.poses, strict=True) if p == pose]
        assert sorted(set(at)) == [0, 1], (pose, at)
    assert category.projections.shape == (36, 3, 4)


def test_units_at_different_poses_differ_and_rendering_is_deterministic():
    category = _category()
    a, b = category.train[0], category.train[1]  # poses 0 and 2
    assert np.abs(a.images[0].astype(int) - b.images[0].astype(int)).mean() > 10
    again = _category()
    for k in range(5):
        np.testing.assert_array_equal(category.test[3].images[k], again.test[3].images[k])


def test_defects_lie_on_the_product_not_on_the_backdrop():
    category = _category(n_test=20, defect_rate=1.0, image_size=192)
    for station in category.stations.values():
        for k in range(station.num_views):
            xs, ys = station._candidates[k].astype(int).T
            assert station.product_masks[k][ys, xs].all()
    on_product = []
    for index in range(len(category.test)):
        sample = category.test[index]
        clean = category.test.render(index, with_defects=False)
        for view, mask in zip(clean.images, sample.masks, strict=True):
            if mask.any():
                ys, xs = np.nonzero(mask)
                centre = (int(np.median(ys)), int(np.median(xs)))
                on_product.append(bool(product_mask(view)[centre]))
    assert len(on_product) >= 20
    # The first view's defect is centred on the product (the sites above); one carried into a
    # neighbouring view by the photos' homography lands only near the same spot of a 3-D
    # object (measured 70 % on the product, 9 px inside its outline).
    assert np.mean(on_product) > 0.6, on_product


def test_product_mask_separates_an_object_from_a_one_colour_backdrop():
    rng = np.random.default_rng(0)
    photo = np.empty((120, 160, 3), np.uint8)
    photo[:] = (60, 70, 160)  # blue backdrop
    photo += rng.integers(0, 8, photo.shape, dtype=np.uint8)
    photo[40:90, 50:110] = (200, 120, 50)  # an orange object
    mask = product_mask(photo)
    assert mask[50:80, 60:100].all() and not mask[:30].any() and not mask[:, :40].any()


def test_read_projections_checks_the_shape(tmp_path):
    (tmp_path / "cameras.json").write_text('{"projection_matrices": [[[1, 2, 3]]]}')
    with pytest.raises(ValueError, match=r"projection_matrices has shape \(1, 1, 3\)"):
        read_projections(tmp_path)
    assert read_projections(tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"views": 0}, "views"),
        ({"camera_step": True}, "camera_step"),
        ({"views": 12, "camera_step": 4}, "views, camera_step, poses"),
        ({"train_poses": ()}, "train_poses"),
        ({"test_poses": (0.5,)}, "train_poses, test_poses"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}"):
        _category(**kwargs)
