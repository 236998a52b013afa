"""View registration (`align="similarity"`, vsad/detector/alignment.py): transforms recovered
from real photographs, warps equal to OpenCV's, maps returned to the view frame, failures that
warn, and detectors that save and load their reference views."""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import pytest
import torch
from conftest import SHARED_DATA

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
    a = placed()
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
    assert math.dist((peak[1], peak[0]), centre) <= 6  # the map is in the view's frame
    detector.save(tmp_path / "model")
    with pytest.warns(UserWarning, match="no decision thresholds"):  # threshold_fpr=None
        loaded = load_detector(tmp_path / "model")
    assert loaded.aligner is not None
    again = loaded.predict_many([normal, defective], progress=False)
    for p, q in zip(first, again, strict=True):
        assert p.maps.shape == (3, 160, 160)
        np.testing.assert_array_equal(p.maps, q.maps)
