"""View registration (`align="similarity"`, vsad/detector/alignment.py): transforms recovered
from real photographs, warps equal to OpenCV's, maps returned to the view frame, failures that
warn, and detectors that save and load their reference views."""

from __future__ import annotations

import json
import math
import re
import warnings

import cv2
import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from safetensors.torch import load_file, save_file

from vsad.data.imageio import read_image
from vsad.detector import PatchKNN, PatchKNNConfig, load_detector
from vsad.detector.alignment import ViewAligner

PHOTOS = SHARED_DATA / "multiview"
needs_photos = pytest.mark.skipif(
    not (PHOTOS / "kermit").is_dir(),
    reason=f"the shared multi-view photographs are not at {PHOTOS} (../shared/data/multiview)",
)


def similarity(angle_deg: float, scale: float, shift: tuple[float, float], size: int):
    """2×3 rotation about the view centre, scale, then shift (pixels)."""
    c = (size - 1) / 2
    matrix = cv2.getRotationMatrix2D((c, c), angle_deg, scale)
    matrix[:, 2] += shift
    return matrix


def photo_view(index: int = 0, size: int = 256) -> np.ndarray:
    image = read_image(sorted((PHOTOS / "kermit").glob("*.jpg"))[index])
    h, w = image.shape[:2]
    side = int(min(h, w) * 0.8)
    top, left = (h - side) // 2, (w - side) // 2
    return cv2.resize(image[top : top + side, left : left + side], (size, size), cv2.INTER_AREA)


def moved(view: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    h, w = view.shape[:2]
    return cv2.warpAffine(view, matrix, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)  # fmt: skip


@needs_photos
@pytest.mark.parametrize(("angle", "scale", "shift"), [(5.0, 1.04, (6.0, -4.0)),
                                                       (-3.0, 0.96, (-9.0, 3.0))])  # fmt: skip
def test_estimate_recovers_the_placement_of_a_real_photograph(angle, scale, shift):
    reference = photo_view()
    placement = similarity(angle, scale, shift, 256)
    aligner = ViewAligner.from_views([reference])
    (estimate,) = aligner.estimate([moved(reference, placement)])
    # The estimate maps the moved view back onto the reference: the inverse placement.
    want = cv2.invertAffineTransform(placement)
    assert np.abs(estimate[:, :2] - want[:, :2]).max() < 0.01
    corners = np.array([[0, 0, 1], [255, 0, 1], [0, 255, 1], [255, 255, 1]], float).T
    assert np.abs(estimate @ corners - want @ corners).max() < 1.0  # pixels


def test_to_reference_equals_opencv_warp_affine(rng):
    size = 48
    image = torch.rand(3, size, size, generator=rng)
    matrix = similarity(7.0, 1.05, (2.5, -1.5), size)
    aligner = ViewAligner([np.zeros((size, size), np.uint8)])
    got = aligner.to_reference(image[None], matrix[None])[0]
    want = moved(image.permute(1, 2, 0).numpy(), matrix)
    inner = slice(8, size - 8)  # the borders: grid_sample and OpenCV replicate differently
    diff = got.permute(1, 2, 0).numpy()[inner, inner] - want[inner, inner]
    assert np.abs(diff).max() < 1e-4


def test_maps_return_to_the_view_frame(rng):
    size = 64
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    phase = float(torch.rand(1, generator=rng)) * 6
    smooth = torch.sin(x / 9.0 + phase) * torch.cos(y / 7.0)  # smooth: bilinear twice ~ exact
    matrix = similarity(4.0, 0.97, (3.0, 2.0), size)
    aligner = ViewAligner([np.zeros((size, size), np.uint8)])
    there = aligner.to_reference(smooth[None, None], matrix[None])
    back = aligner.to_view(there, matrix[None, None])[0, 0]  # (N=1, M=1, H, W)
    inner = slice(10, size - 10)
    assert (back[inner, inner] - smooth[inner, inner]).abs().max() < 0.02


def test_an_unregistrable_view_stays_put_with_a_warning():
    flat = np.full((64, 64, 3), 128, np.uint8)  # no keypoints at all
    aligner = ViewAligner.from_views([flat, flat])
    with pytest.warns(UserWarning, match=r"test\[3\]: views \[0, 1\] could not be registered"):
        matrices = aligner.estimate([flat, flat], where="test[3]")
    assert np.array_equal(matrices, np.stack([np.eye(2, 3)] * 2))


def test_bad_align_value_is_named():
    with pytest.raises(ValueError, match="align"):
        PatchKNNConfig(align="affine")
    with pytest.raises(ValueError, match="align_frame.*'centre'"):
        PatchKNNConfig(align_frame="centre")


def test_centre_frame_moves_the_frame_to_the_median_placement():
    """Five registered units whose every parameter (angle, scale, shift) has its median at unit
    2: in the centred frame unit 2 sits exactly where the frame is (the identity), a view that
    did not register is ignored and stays put, and a camera with no registered view keeps its
    frame."""
    size = 65
    angles, scales = [-4.0, 3.0, 1.0, 6.0, -1.0], [1.04, 0.96, 1.01, 0.98, 1.05]
    shifts = [(5.0, -2.0), (-3.0, 4.0), (2.0, 1.0), (-6.0, 7.0), (8.0, -5.0)]
    registrations = [
        (np.stack([similarity(a, s, d, size), similarity(-a, s, d, size)]), np.array([True, False]))
        for a, s, d in zip(angles, scales, shifts, strict=True)
    ]
    wild = similarity(40.0, 1.4, (30.0, 30.0), size)  # a failed registration's matrix: ignored
    registrations.append((np.stack([wild, wild]), np.array([False, False])))
    aligner = ViewAligner([np.zeros((size, size), np.uint8)] * 2)
    aligner.centre_frame(registrations)
    median_unit = aligner.in_frame(*registrations[2])
    np.testing.assert_allclose(median_unit[0], np.eye(2, 3), atol=1e-9)
    np.testing.assert_array_equal(median_unit[1], np.eye(2, 3))  # camera 1 did not register
    np.testing.assert_array_equal(aligner.frame[1], np.eye(2, 3))  # ... so its frame is unmoved
    np.testing.assert_array_equal(
        aligner.in_frame(*registrations[-1]), np.stack([np.eye(2, 3)] * 2)
    )
    # Every unit lands at its placement relative to unit 2: frame ∘ matrix = median⁻¹ ∘ matrix.
    inverse_median = cv2.invertAffineTransform(registrations[2][0][0])
    for matrices, registered in registrations[:5]:
        want = np.vstack([inverse_median, [0, 0, 1]]) @ np.vstack([matrices[0], [0, 0, 1]])
        np.testing.assert_allclose(aligner.in_frame(matrices, registered)[0], want[:2], atol=1e-9)


def test_frame_round_trips_through_tensors_and_defaults_to_the_reference_view():
    references = [np.full((32, 32), v, np.uint8) for v in (10, 200)]
    frame = np.stack(
        [similarity(3.0, 1.02, (1.5, -2.0), 32), similarity(-2.0, 0.99, (0.0, 4.0), 32)]
    )
    tensors = ViewAligner(references, frame).tensors()
    np.testing.assert_array_equal(ViewAligner.from_tensors(tensors).frame, frame)
    old = {"align.references": tensors["align.references"]}  # saved before align_frame existed
    np.testing.assert_array_equal(ViewAligner.from_tensors(old).frame, np.stack([np.eye(2, 3)] * 2))
    with pytest.raises(ValueError, match=r"'align.frame' is torch.float32 \(2, 2, 3\)"):
        ViewAligner.from_tensors({**tensors, "align.frame": tensors["align.frame"].float()})
    with pytest.raises(ValueError, match=r"frame: got an array of shape \(1, 2, 3\)"):
        ViewAligner(references, frame[:1])


@needs_photos
def test_detector_registers_views_and_round_trips_through_save(tmp_path):
    """Units placed anywhere within ±6°, ±5 %, ±8 px: with registration a small dark defect
    stands out further above the normal unit than without, its map peaks on the defect in the
    view's own frame, and a saved model predicts the same."""
    views = [photo_view(i, 160) for i in range(3)]
    draw = np.random.default_rng(3)  # fixed placements: the test is deterministic

    def placed():
        angle, scale = draw.uniform(-6, 6), 1 + draw.uniform(-0.05, 0.05)
        return similarity(angle, scale, tuple(draw.uniform(-8, 8, 2)), 160)

    train = []
    for _ in range(8):
        a = placed()
        train.append([moved(v, a) for v in views])
    # The unit under test sits far from the training units' median placement, so that its
    # defect is > 10 px from where an unwarped (reference-frame) map would put it.
    a = similarity(-6.0, 0.95, (-8.0, 8.0), 160)
    normal = [moved(v, a) for v in views]
    defective = [v.copy() for v in normal]
    centre = (70, 92)  # (x, y) in the placed view 1
    cv2.circle(defective[1], centre, 5, (20, 20, 20), -1)
    config = dict(image_size=160, smoothing_sigma=2.0, threshold_fpr=None)
    margin, detector, first = {}, None, None
    for align in ("none", "similarity"):
        detector = PatchKNN(PatchKNNConfig(**config, align=align)).fit(train, progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # every view registers
            first = detector.predict_many([normal, defective], progress=False)
        margin[align] = first[1].view_scores[1] / first[0].view_scores[1]
    assert margin["similarity"] > margin["none"]
    peak = np.unravel_index(np.argmax(first[1].maps[1]), first[1].maps[1].shape)
    assert math.dist((peak[1], peak[0]), centre) <= 6  # the map is in the view's frame ...
    in_frame = detector.aligner.estimate(defective)[1] @ np.array([*centre, 1.0])
    assert math.dist(in_frame, centre) > 10  # ... not in the reference frame
    detector.save(tmp_path / "model")
    with pytest.warns(UserWarning, match="no decision thresholds"):  # threshold_fpr=None
        loaded = load_detector(tmp_path / "model")
    assert loaded.aligner is not None
    again = loaded.predict_many([normal, defective], progress=False)
    for p, q in zip(first, again, strict=True):
        assert p.maps.shape == (3, 160, 160)
        np.testing.assert_array_equal(p.maps, q.maps)
    np.testing.assert_array_equal(loaded.aligner.frame, detector.aligner.frame)
    assert not np.allclose(detector.aligner.frame, np.eye(2, 3))  # centred: the frame moved

    # Weights without the frame but a config that says "median": refused, not silently shifted.
    weights = tmp_path / "model" / "weights.safetensors"
    save_file({k: v for k, v in load_file(weights).items() if k != "align.frame"}, weights)
    with pytest.raises(ValueError, match="'align.frame' is missing.*align_frame='median'"):
        load_detector(tmp_path / "model")
    # A model saved before align_frame existed (no key in its config either) is in the first
    # unit's frame: it loads with that frame.
    meta_path = tmp_path / "model" / "detector.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["align_frame"]
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="no decision thresholds"):
        legacy = load_detector(tmp_path / "model")
    assert legacy.config.align_frame == "first"
    np.testing.assert_array_equal(legacy.aligner.frame, np.stack([np.eye(2, 3)] * 3))


@needs_photos
def test_registration_is_turned_off_when_too_few_training_views_register(tmp_path):
    """Units whose views come from different photographs (another side of the object, as when
    a unit turns) mostly fail to register to the first unit's views: fit measures the
    registered fraction, turns registration off below align_min_registered with a warning,
    saves that decision and its report, and a later fit on units that do register turns it
    back on."""
    sides = [[photo_view(i, 128) for i in range(k, k + 2)] for k in (0, 4, 8)]  # 3 "poses"
    turning = [sides[i % 3] for i in range(6)]
    config = dict(image_size=128, threshold_fpr=None, align="similarity")
    detector = PatchKNN(PatchKNNConfig(**config))
    with pytest.warns(UserWarning, match=r"align: only \d+ % of the training views registered"):
        detector.fit(turning, progress=False)
    report = detector.align_report
    assert report["turned_off"] and report["registered_fraction"] < 0.9
    assert len(report["registered_per_camera"]) == 2
    assert detector.config.align == "none" and detector.aligner is None
    assert detector.config.bank_radius == 3  # unregistered_radius: a wider local search
    assert detector.banks.radius == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no registration is attempted any more
        before = detector.predict(turning[1])
    detector.save(tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "detector.json").read_text())
    assert meta["config"]["align"] == "none" and meta["align_report"] == report
    with pytest.warns(UserWarning, match="no decision thresholds"):
        loaded = load_detector(tmp_path / "model")
    assert loaded.aligner is None and loaded.align_report == report
    np.testing.assert_array_equal(loaded.predict(turning[1]).maps, before.maps)

    # The same detector fitted again on units that register: registration is back on.
    still = [sides[0]] * 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        detector.fit(still, progress=False)
    assert detector.config.align == "similarity" and detector.aligner is not None
    assert detector.config.bank_radius == 2 and detector.banks.radius == 2
    assert detector.align_report == {"registered_fraction": 1.0,
                                     "registered_per_camera": [1.0, 1.0],
                                     "min_registered": 0.9, "turned_off": False}  # fmt: skip
    # With the bound at 0 registration is never turned off.
    kept = PatchKNN(PatchKNNConfig(**config, align_min_registered=0.0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept.fit(turning, progress=False)
    # One warning sums the training units' failures up, naming each failed sample's views.
    (summary,) = [str(w.message) for w in caught if "registered" in str(w.message)]
    assert re.match(r"train: \d+ of 12 views could not be registered", summary), summary
    assert "train[1] views" in summary and "train[0]" not in summary
    assert kept.aligner is not None and not kept.align_report["turned_off"]
    narrow = PatchKNN(PatchKNNConfig(**config, unregistered_radius=None))
    with pytest.warns(UserWarning, match=r"align='none', bank_radius=2\)"):
        narrow.fit(turning, progress=False)
    assert narrow.config.align == "none" and narrow.banks.radius == 2
