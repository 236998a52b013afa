"""Pose coverage (vsad/detector/coverage.py): the all-view summary of a unit, its novelty
against the training units, what a detector saves of it and how a damaged copy is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from safetensors.torch import load_file, save_file

from vsad.detector import PatchKNN, PatchKNNConfig, load_detector
from vsad.detector.coverage import GRID, PoseCoverage, unit_descriptors
from vsad.saved_files import SavedFileError

PHOTOS = SHARED_DATA / "multiview" / "kermit"


def test_summaries_average_every_view_over_a_coarse_grid(rng):
    features = torch.randn(3, 2, 5, 8, 6, generator=rng)  # (B, M, D, h, w)
    got = unit_descriptors([features, torch.randn(3, 2, 4, 4, 3, generator=rng)])
    assert got.shape == (3, 2 * 5 * GRID * GRID)
    # Quadrant (0, 0) of view 1, channel 2: the mean of rows 0-3, columns 0-2.
    view1 = got[:, 5 * GRID * GRID :].reshape(3, 5, GRID, GRID)
    torch.testing.assert_close(view1[:, 2, 0, 0], features[:, 1, 2, :4, :3].mean((-1, -2)))


def test_novelty_is_one_at_the_largest_leave_one_out_distance(rng):
    train = torch.randn(20, 7, generator=rng, dtype=torch.float64).float()
    coverage = PoseCoverage.fit(train)
    novelty = coverage.novelty(train)
    assert torch.all(novelty == 0)  # every training unit is its own nearest unit
    # The radius: the largest distance from a training unit to its nearest other one.
    others = torch.cdist(train.double(), train.double()).fill_diagonal_(float("inf"))
    assert coverage.radius == pytest.approx(float(others.min(1).values.max()), rel=1e-12)
    far = train.mean(0, keepdim=True) + 100
    assert float(coverage.novelty(far)) > 1
    assert PoseCoverage.fit(train[:1]) is None


def _saved(coverage):
    settings = coverage.settings()
    return settings, {k: v.clone() for k, v in coverage.tensors().items()}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s, t: t.pop("coverage.radius"), r"'coverage.radius' is missing"),
        (lambda s, t: t.update({"coverage.radius": t["coverage.radius"].float()}),
         r"'coverage.radius' is torch.float32, expected float64"),
        (lambda s, t: t.update({"coverage.radius": -t["coverage.radius"]}), "one finite value"),
        (lambda s, t: t.update({"coverage.descriptors": t["coverage.descriptors"][:-1]}),
         r"shape \(5, 7\), expected float32 \(6, 7\)"),
        (lambda s, t: t["coverage.descriptors"].__setitem__((0, 0), float("nan")), "non-finite"),
        (lambda s, t: s.update({"grid": 3}), "not what this version writes"),
        (lambda s, t: s.update({"units": "6"}), "integer units, dim and grid"),
    ],
)  # fmt: skip
def test_a_damaged_coverage_is_refused_naming_the_file(rng, damage, message):
    coverage = PoseCoverage.fit(torch.randn(6, 7, generator=rng))
    settings, tensors = _saved(coverage)
    again = PoseCoverage.from_tensors(settings, tensors, "w.safetensors", "d.json")
    torch.testing.assert_close(again.descriptors, coverage.descriptors)
    assert again.radius == coverage.radius
    damage(settings, tensors)
    with pytest.raises(SavedFileError, match=message):
        PoseCoverage.from_tensors(settings, tensors, "w.safetensors", "d.json")
    assert PoseCoverage.from_tensors(None, tensors, "w", "d") is None  # saved before coverage


def _views(first: int, jitter: np.random.Generator) -> list[np.ndarray]:
    import cv2

    from vsad.data.imageio import read_image

    out = []
    for path in sorted(PHOTOS.glob("*.jpg"))[first : first + 2]:
        image = read_image(path)
        h, w = image.shape[:2]
        side = int(min(h, w) * 0.8)
        dy, dx = jitter.integers(-4, 5, 2)
        top, left = (h - side) // 2 + dy, (w - side) // 2 + dx
        view = cv2.resize(image[top : top + side, left : left + side], (96, 96), cv2.INTER_AREA)
        noise = jitter.normal(0, 2, view.shape)
        out.append(np.clip(view + noise, 0, 255).astype(np.uint8))
    return out


@pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"the shared photographs are not at {PHOTOS}")
def test_a_unit_seen_from_other_sides_is_flagged_and_the_flag_survives_save(tmp_path):
    jitter = np.random.default_rng(5)
    train = [_views(0, jitter) for _ in range(8)]
    detector = PatchKNN(PatchKNNConfig(image_size=96, threshold_fpr=None)).fit(
        train, progress=False
    )
    like = detector.predict(_views(0, jitter))
    other = detector.predict(_views(4, jitter))  # photographs of other sides of the object
    assert like.pose_covered is True and like.pose_novelty <= 1
    assert other.pose_covered is False and other.pose_novelty > 1.5
    detector.save(tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "detector.json").read_text())
    assert meta["coverage"] == {"units": 8, "dim": 2 * 3 * 16 * GRID * GRID, "grid": GRID}
    with pytest.warns(UserWarning, match="no decision thresholds"):
        loaded = load_detector(tmp_path / "model")
    probe = _views(4, np.random.default_rng(9))
    assert loaded.predict(probe).pose_novelty == detector.predict(probe).pose_novelty
    # Tensors gone but detector.json still records coverage: refused, naming the file.
    weights = tmp_path / "model" / "weights.safetensors"
    kept = {k: v for k, v in load_file(weights).items() if k != "coverage.descriptors"}
    save_file(kept or {"unused": torch.zeros(1)}, weights)
    with pytest.raises(SavedFileError, match=r"weights.safetensors'.*'coverage.descriptors'"):
        load_detector(tmp_path / "model")
