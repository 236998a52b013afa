"""Cross-view feature fusion equals a per-cell transcription of its formula, and the detector
uses it (and reloads old saves without it)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from test_mvam import bilinear
from window_attention_cases import random_homographies, ring_neighbors

from vsad.data import make_category
from vsad.detector import UNET_PIPELINE, VSAD, VSADConfig, load_detector
from vsad.detector.inputs import to_model_tensor, views_of
from vsad.geometry import scale_homography
from vsad.model.view_fusion import fuse_views


def transcription(features, homography, neighbors, latent_height, weight):
    """fused_i(p) = (F_i(p) + w Σ F_j(H p)) / (1 + w #valid), one cell at a time."""
    B, M, C, h, w = features.shape
    grid_hom = scale_homography(homography.to(torch.float64), latent_height / h)
    out = torch.empty_like(features)
    for b in range(B):
        for i in range(M):
            for y in range(h):
                for x in range(w):
                    total, count = features[b, i, :, y, x].clone(), 1.0
                    for n, j in enumerate(neighbors[i].tolist()):
                        if j < 0:
                            continue
                        px, py, pz = (grid_hom[i, n] @ torch.tensor([x, y, 1.0]).double()).tolist()
                        sx, sy = px / pz, py / pz
                        if pz > 1e-8 and 0 <= sx <= w - 1 and 0 <= sy <= h - 1:
                            total += weight * bilinear(features[b, j], sx, sy)
                            count += weight
                    out[b, i, :, y, x] = total / count
    return out


@pytest.mark.parametrize("latent_height", [6, 12])  # features at the latent grid and 2× coarser
@pytest.mark.parametrize("weight", [0.5, 2.0])
def test_matches_transcription(rng, latent_height, weight):
    B, M, C, h = 2, 4, 3, 6
    features = torch.randn(B, M, C, h, h + 1, generator=rng, dtype=torch.float64)
    homography = random_homographies((M, 2), rng)
    neighbors = ring_neighbors(M, 2)
    neighbors[1, 1] = -1  # an empty slot
    got = fuse_views(features, homography, neighbors, latent_height=latent_height, weight=weight)
    want = transcription(features, homography, neighbors, latent_height, weight)
    torch.testing.assert_close(got, want)
    assert not torch.equal(got, features), "no neighbour landed inside its view"


def test_weight_zero_is_the_identity_and_bad_input_is_named(rng):
    features = torch.randn(1, 3, 2, 4, 4, generator=rng)
    homography = random_homographies((3, 2), rng).float()
    neighbors = ring_neighbors(3, 2)
    same = fuse_views(features, homography, neighbors, latent_height=4, weight=0.0)
    assert torch.equal(same, features)
    with pytest.raises(ValueError, match="weight: got -1"):
        fuse_views(features, homography, neighbors, latent_height=4, weight=-1.0)
    with pytest.raises(ValueError, match="weight: got inf"):
        fuse_views(features, homography, neighbors, latent_height=4, weight=float("inf"))
    with pytest.raises(ValueError, match=r"features: got shape \(3, 2, 4, 4\)"):
        fuse_views(features[0], homography, neighbors, latent_height=4, weight=0.5)
    with pytest.raises(ValueError, match=r"neighbors: got shape \(2, 2\)"):
        fuse_views(features, homography, neighbors[:2], latent_height=4, weight=0.5)
    for bad in (-0.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match=f"view_fusion: got {bad!r}"):
            VSADConfig(view_fusion=bad)


def test_detector_fuses_and_old_saves_load_without_fusion(tmp_path):
    category = make_category(n_train=3, n_test=1, n_views=3, image_size=64, seed=2)
    tiny = {**UNET_PIPELINE, "image_size": 64, "train": {"steps": 2, "batch_size": 1},
            "view_fusion": 0.5}  # fmt: skip
    detector = VSAD(VSADConfig.from_dict(tiny))
    detector.fit(category.train, homographies=category.homographies, progress=False)
    fused = detector.predict(category.test[0])
    images = to_model_tensor(views_of(category.test[0], where="test[0]"), 64)[None]
    fused_features = detector._extract(images)
    detector.config.view_fusion = 0.0
    unfused = detector.predict(category.test[0])  # bank built with fusion, queries without
    assert not np.array_equal(fused.maps, unfused.maps)

    # The scored features are exactly fuse_views of the unfused ones, at every level.
    raw_features = detector._extract(images)
    latent_height = 64 // detector.config.unshuffle_factor
    hom, neighbors = detector._latent_homography((latent_height, latent_height))
    assert len(fused_features) == len(raw_features) == 2
    for got, raw in zip(fused_features, raw_features, strict=True):
        want = fuse_views(raw, hom, neighbors, latent_height=latent_height, weight=0.5)
        torch.testing.assert_close(got, want)

    # A model saved before view_fusion existed has no such key: it loads with fusion off.
    detector.save(tmp_path / "model")
    meta_path = tmp_path / "model" / "detector.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["view_fusion"]
    meta_path.write_text(json.dumps(meta))
    assert load_detector(tmp_path / "model").config.view_fusion == 0.0


def test_fusion_leaves_out_pairs_that_fell_back_to_the_identity():
    category = make_category(n_train=3, n_test=1, n_views=3, image_size=64, seed=3)
    tiny = {**UNET_PIPELINE, "image_size": 64, "train": {"steps": 2, "batch_size": 1},
            "view_fusion": 0.5}  # fmt: skip
    detector = VSAD(VSADConfig.from_dict(tiny))
    detector.fit(category.train, homographies=category.homographies, progress=False)
    images = to_model_tensor(views_of(category.test[0], where="test[0]"), 64)[None]
    all_pairs = detector._extract(images)

    report = detector.homographies.report
    failed = report[0]  # the first slot of view 0, as if its estimation had failed
    report[0] = dataclasses.replace(failed, status="fallback", reason="too few inliers")
    without_pair = detector._extract(images)

    detector.config.view_fusion = 0.0
    raw_features = detector._extract(images)
    latent_height = 64 // detector.config.unshuffle_factor
    hom, neighbors = detector._latent_homography((latent_height, latent_height))
    assert (failed.i, failed.j) == (0, neighbors[0, 0].item())
    pruned = neighbors.clone()
    pruned[failed.i, 0] = -1
    for got, before, raw in zip(without_pair, all_pairs, raw_features, strict=True):
        want = fuse_views(raw, hom, pruned, latent_height=latent_height, weight=0.5)
        torch.testing.assert_close(got, want)
        assert not torch.equal(got[:, failed.i], before[:, failed.i])  # view 0 changed
        torch.testing.assert_close(got[:, 1:], before[:, 1:])  # the other views did not
