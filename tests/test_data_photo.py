"""The real-photo benchmark builder (vsad.data.photo) on the shared multi-view photographs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import SHARED_DATA, fresh_seed

from vsad.data import PRESETS, RealIADDataset, make_photo_category, write_realiad
from vsad.data.errors import MissingFileError
from vsad.data.photo.defects import (
    MIN_VISIBLE_CHANGE,
    PHOTO_DEFECT_TYPES,
    STRENGTHS,
    draw_spec,
    homography_jacobian,
    local_frame,
    render_defect,
)

PHOTOS = SHARED_DATA / "multiview"
needs_photos = pytest.mark.skipif(
    not (PHOTOS / "kermit").is_dir(),
    reason=f"the shared multi-view photographs are not at {PHOTOS} (../shared/data/multiview)",
)
NO_JPEG = PRESETS["realistic"].with_changes(jpeg_quality=(100, 100))


def small(preset="realistic", **kwargs):
    options = dict(n_train=4, n_test=20, image_size=128, seed=3)
    options.update(kwargs)
    return make_photo_category(PHOTOS / options.pop("obj", "kermit"), preset, **options)


@needs_photos
def test_deterministic_given_seed_and_different_across_seeds():
    a, b, c = small(seed=5), small(seed=5), small(seed=6)
    for i in (0, 1):
        sa, sb, sc = a.test[i], b.test[i], c.test[i]
        for va, vb, vc in zip(sa.images, sb.images, sc.images, strict=True):
            np.testing.assert_array_equal(va, vb)
            assert np.abs(va.astype(int) - vc.astype(int)).mean() > 1.0
    np.testing.assert_array_equal(a.test.labels, b.test.labels)


@needs_photos
def test_splits_labels_and_masks_are_consistent():
    category = small(n_train=3, n_test=20, defect_rate=0.5)
    assert len(category.train) == 3 and len(category.test) == 20
    assert category.train.labels.sum() == 0 and category.test.labels.sum() == 10
    for sample in category.train:
        assert sample.label == 0 and not any(m.any() for m in sample.masks)
    for i, sample in enumerate(category.test):
        assert sample.num_views == 5
        assert all(v.shape == (128, 128, 3) and v.dtype == np.uint8 for v in sample.images)
        assert sample.view_labels == [int(m.any()) for m in sample.masks]
        assert sample.label == int(any(sample.view_labels)) == category.test.labels[i]
        if sample.label:
            assert sample.defect_type in PHOTO_DEFECT_TYPES


@needs_photos
def test_every_family_and_both_strengths_appear_in_the_preset_proportion():
    category = small(n_test=40, defect_rate=0.5)
    plans = [p for p in category.test.plans if p.kind is not None]
    assert {p.kind for p in plans} == set(PHOTO_DEFECT_TYPES)
    subtle = sum(p.strength == "subtle" for p in plans)
    assert {p.strength for p in plans} == set(STRENGTHS)
    assert abs(subtle - PRESETS["realistic"].subtle_fraction * len(plans)) <= 2
    easy = small("easy", n_test=20)
    assert {p.strength for p in easy.test.plans if p.kind} == {"obvious"}


@needs_photos
def test_defects_change_only_the_pixels_near_their_mask():
    # No JPEG, so a change cannot spread over 8x8 blocks; blur and resampling spread it a few
    # pixels at most.
    category = make_photo_category(
        PHOTOS / "kermit", NO_JPEG, n_train=1, n_test=12, image_size=128, seed=11
    )
    checked = 0
    for i, plan in enumerate(category.test.plans):
        if plan.kind is None:
            continue
        with_defect = category.test.render(i)
        clean = category.test.render(i, with_defects=False)
        for k in range(5):
            diff = np.abs(with_defect.images[k].astype(int) - clean.images[k].astype(int))
            mask = with_defect.masks[k]
            near = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
            assert diff[~near].max(initial=0) <= 1, (plan, k)
            if mask.any():
                assert diff[mask].mean() > 0.5, (plan, k)
                checked += 1
    assert checked >= 6


@needs_photos
def test_a_defect_is_seen_by_several_neighbouring_views_in_some_samples():
    category = small(n_test=40, defect_rate=1.0)
    counts = [sum(s.view_labels) for s in category.test]
    assert min(counts) >= 1 and max(counts) >= 2
    for sample in category.test:
        seen = np.flatnonzero(sample.view_labels)
        if len(seen) > 1:  # neighbouring cameras, not scattered ones
            assert seen.max() - seen.min() <= 2


@needs_photos
def test_presets_order_the_unit_to_unit_variation():
    """Two normal units differ more under "placement" than under "easy" (same photographs)."""

    def spread(preset):
        c = small(preset, n_train=6, n_test=0)
        views = [np.stack(c.train[i].images).astype(float) for i in range(6)]
        return np.mean([np.abs(views[i] - views[i + 1]).mean() for i in range(5)])

    assert spread("placement") > 1.5 * spread("easy")


@needs_photos
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_views_never_sample_outside_the_photograph(preset):
    """A view that ran off the photo would show mirrored or constant borders, an artefact no
    real station has: the maps a sample is rendered with stay inside every photograph, also
    at the extremes of a preset's ranges (where `fitting_maps` moves the placement in)."""
    from vsad.data.photo.units import Placement, fitting_maps, inside_photo

    station = small(preset, n_train=0, n_test=0).station
    rng = np.random.default_rng(fresh_seed())
    p = PRESETS[preset]
    extreme = Placement(np.deg2rad(p.rotation_deg), 1 - p.scale, (p.shift, p.shift))
    for placement in [extreme, *(Placement.random(p, rng) for _ in range(40))]:
        seeds = np.random.SeedSequence(int(rng.integers(2**32))).spawn(station.num_views)
        used, maps, _ = fitting_maps(station, placement, p, seeds)
        assert all(inside_photo(station, k, m) for k, m in enumerate(maps))
        if used != placement:  # moved in: toward the identity, never past it
            assert 0 < used.rotation / placement.rotation < 1 or placement.rotation == 0
            assert abs(used.shift[0]) < abs(placement.shift[0]) or placement.shift[0] == 0


@needs_photos
def test_a_placement_that_fits_is_kept_and_one_that_does_not_is_moved_in():
    from vsad.data.photo.units import Placement, fitting_maps, inside_photo, sampling_maps

    station = small("placement", n_train=0, n_test=0).station
    preset = PRESETS["placement"]
    seeds = np.random.SeedSequence(fresh_seed()).spawn(station.num_views)
    fits = Placement(0.01, 1.01, (0.01, -0.01))
    used, maps, rngs = fitting_maps(station, fits, preset, seeds)
    assert used == fits
    for k, m in enumerate(maps):  # the same maps and generator state as without the check
        alone = np.random.default_rng(seeds[k])
        assert all(
            np.array_equal(a, b)
            for a, b in zip(m, sampling_maps(station, k, fits, preset, alone), strict=True)
        )
        assert rngs[k].random() == alone.random()
    too_far = Placement(np.deg2rad(20), 0.8, (0.2, 0.2))  # far outside the preset's ranges
    assert not all(
        inside_photo(
            station, k, sampling_maps(station, k, too_far, preset, np.random.default_rng(0))
        )
        for k in range(station.num_views)
    )
    used, maps, _ = fitting_maps(station, too_far, preset, seeds)
    assert used != too_far and all(inside_photo(station, k, m) for k, m in enumerate(maps))
    assert 1 > used.toward_identity(1.0).scale > too_far.scale


@needs_photos
def test_realiad_round_trip(tmp_path):
    category = small(n_train=2, n_test=6, defect_rate=0.5)
    json_path = write_realiad(category, tmp_path, image_format="png")
    meta = __import__("json").loads(json_path.read_text())["meta"]
    assert meta["vsad_photo"]["preset"] == "realistic"
    test = RealIADDataset(tmp_path, category.name, "test")
    assert len(test) == 6 and list(test.labels) == list(category.test.labels)
    for ours, read in zip(category.test, test, strict=True):
        assert read.view_labels == ours.view_labels
        for a, b in zip(ours.images, read.images, strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(ours.masks, read.masks, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", PHOTO_DEFECT_TYPES)
@pytest.mark.parametrize("strength", STRENGTHS)
def test_each_family_changes_its_mask_and_nothing_far_away(kind, strength):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    # A textured photo: smooth colour blobs plus fine detail, so that a dent has texture to
    # push around.
    base = cv2.GaussianBlur(rng.uniform(0, 255, (160, 160, 3)).astype(np.float32), (0, 0), 3)
    base = np.clip((base - base.mean()) * 4 + 128, 0, 255)
    for _ in range(20):
        spec = draw_spec(kind, strength, rng)
        result = render_defect(spec, base, np.array([80.0, 80.0]), local_frame(spec))
        if result is not None and result[2] >= MIN_VISIBLE_CHANGE[strength]:
            break
    else:
        pytest.fail(f"seed {seed}: no visible {strength} {kind} in 20 draws on a textured photo")
    drawn, coverage, change = result
    assert drawn.shape == base.shape and coverage.shape == base.shape[:2]
    assert change >= MIN_VISIBLE_CHANGE[strength]
    reach = spec.extent * 1.5 + 4
    ys, xs = np.mgrid[0:160, 0:160]
    far = (np.abs(xs - 80) > reach) | (np.abs(ys - 80) > reach)
    np.testing.assert_array_equal(drawn[far], base[far])
    if kind == "dent":  # shape only: every pixel is resampled from its neighbourhood
        size = 2 * int(np.ceil(spec.params["amplitude"])) + 3
        kernel = np.ones((size, size), np.uint8)
        lo, hi = cv2.erode(base, kernel), cv2.dilate(base, kernel)
        assert (drawn >= lo - 1e-3).all() and (drawn <= hi + 1e-3).all()


def test_homography_jacobian_matches_finite_differences():
    rng = np.random.default_rng(fresh_seed())
    H = np.eye(3) + rng.normal(0, [[0.05, 0.05, 3], [0.05, 0.05, 3], [1e-4, 1e-4, 0]])
    point = rng.uniform(50, 150, 2)

    def project(p):
        q = H @ np.array([*p, 1.0])
        return q[:2] / q[2]

    eps = 1e-4
    numeric = np.stack(
        [(project(point + eps * e) - project(point - eps * e)) / (2 * eps) for e in np.eye(2)],
        axis=1,
    )
    np.testing.assert_allclose(homography_jacobian(H, point), numeric, rtol=1e-6, atol=1e-8)


@needs_photos
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"preset": "hard"}, "preset"),
        ({"first_view": 9}, "first_view"),
        ({"defect_types": ["crack"]}, "defect_types"),
        ({"defect_rate": 1.5}, "defect_rate"),
        ({"n_train": -1}, "n_train"),
        ({"image_size": 8}, "image_size"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, name):
    options = {"preset": "easy", **kwargs}
    with pytest.raises(ValueError, match=name):
        make_photo_category(PHOTOS / "kermit", options.pop("preset"), **options)


def test_bad_photo_folders_and_knobs_are_named(tmp_path):
    with pytest.raises(MissingFileError, match="photos"):
        make_photo_category(tmp_path / "absent", "easy")
    with pytest.raises(MissingFileError, match="no image"):
        make_photo_category(tmp_path, "easy")
    with pytest.raises(ValueError, match="shift"):
        PRESETS["easy"].with_changes(shift=-0.1)
    with pytest.raises(ValueError, match="unknown knob"):
        PRESETS["easy"].with_changes(wobble=1.0)
    with pytest.raises(ValueError, match="defect_views"):
        PRESETS["easy"].with_changes(defect_views=(0.5, 0.2, 0.2))
