"""Eq. 12 scoring and the per-level, per-view feature banks, against direct computations."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from vsad.memory.feature_banks import FeatureBanks
from vsad.model.scoring import combine_levels, gaussian_smooth, view_and_sample_scores


def test_combine_levels_is_the_weighted_sum_of_upsampled_maps(rng):
    coarse = torch.rand(2, 3, 4, 5, generator=rng) + 0.5
    fine = torch.rand(2, 3, 8, 10, generator=rng) + 0.5
    out = combine_levels([coarse, fine], [0.25, 0.75], (16, 20))
    for b in range(2):
        for m in range(3):
            expect = 0.25 * cv2.resize(
                coarse[b, m].numpy(), (20, 16), interpolation=cv2.INTER_LINEAR
            )
            expect += 0.75 * cv2.resize(
                fine[b, m].numpy(), (20, 16), interpolation=cv2.INTER_LINEAR
            )
            np.testing.assert_allclose(out[b, m].numpy(), expect, rtol=1e-5, atol=1e-6)
    equal = combine_levels([coarse, fine], None, (16, 20))
    halves = combine_levels([coarse, fine], [0.5, 0.5], (16, 20))
    assert torch.equal(equal, halves)
    with pytest.raises(ValueError, match="weights: got 1 weights for 2"):
        combine_levels([coarse, fine], [1.0], (16, 20))


@pytest.mark.parametrize("sigma", [0.8, 2.0, 4.0])
def test_gaussian_smoothing_matches_opencv(sigma, rng):
    maps = torch.rand(2, 3, 40, 33, generator=rng)
    radius = max(int(4 * sigma + 0.5), 1)
    out = gaussian_smooth(maps, sigma)
    for b in range(2):
        for m in range(3):
            expect = cv2.GaussianBlur(
                maps[b, m].numpy(), (2 * radius + 1, 2 * radius + 1), sigma,
                borderType=cv2.BORDER_REFLECT_101,
            )  # fmt: skip
            np.testing.assert_allclose(out[b, m].numpy(), expect, rtol=1e-5, atol=1e-6)
    assert torch.equal(gaussian_smooth(maps, 0.0), maps)
    tiny = torch.rand(1, 3, 3, generator=rng)  # smaller than the kernel: still defined
    assert gaussian_smooth(tiny, 4.0).shape == tiny.shape
    with pytest.raises(ValueError, match="sigma: got -1"):
        gaussian_smooth(maps, -1.0)


def test_view_and_sample_scores_are_maxima(rng):
    maps = torch.rand(3, 4, 6, 7, generator=rng)
    view, sample = view_and_sample_scores(maps)
    assert torch.equal(view, maps.amax(dim=(-2, -1)))
    assert torch.equal(sample, view.amax(-1))


def _brute_force(train: torch.Tensor, query: torch.Tensor, radius: int | None) -> torch.Tensor:
    """train (S, D, h, w), query (D, h, w) -> (h, w) distance to the nearest allowed cell."""
    S, D, h, w = train.shape
    out = torch.empty(h, w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            if radius is None:
                cand = train.permute(0, 2, 3, 1).reshape(-1, D)
            else:
                ys = slice(max(y - radius, 0), y + radius + 1)
                xs = slice(max(x - radius, 0), x + radius + 1)
                cand = train[:, :, ys, xs].permute(0, 2, 3, 1).reshape(-1, D)
            out[y, x] = (cand.double() - query[:, y, x].double()).norm(dim=1).min()
    return out


@pytest.mark.parametrize("mode", ["local", "global"])
@pytest.mark.parametrize("per_view", [True, False])
def test_feature_banks_search_per_level_and_view(mode, per_view, rng, tmp_path):
    levels = [(5, 4, 6), (3, 7, 5)]  # (D, h, w): odd sizes
    train = [torch.randn(4, 3, *shape, generator=rng) for shape in levels]
    banks = FeatureBanks(mode, radius=1, per_view=per_view)
    banks.add([t[:3] for t in train])
    banks.add([t[3:] for t in train])  # incremental
    banks.finalize()
    queries = [torch.randn(2, 3, *shape, generator=rng) for shape in levels]
    found = banks.search(queries)
    radius = 1 if mode == "local" else None
    for level, (t, q, d) in enumerate(zip(train, queries, found, strict=True)):
        assert d.shape == (2, 3, *levels[level][1:])
        for b in range(2):
            for m in range(3):
                pool = t[:, m] if per_view else t.flatten(0, 1)
                expect = _brute_force(pool, q[b, m], radius)
                np.testing.assert_allclose(d[b, m].numpy(), expect.numpy(), rtol=1e-4, atol=1e-4)
    again = FeatureBanks.from_tensors(banks.settings(), banks.tensors()).search(queries)
    for a, b in zip(found, again, strict=True):
        assert torch.equal(a, b)


def test_feature_bank_errors(rng):
    banks = FeatureBanks("local")
    with pytest.raises(ValueError, match="empty"):
        banks.finalize()
    banks.add([torch.randn(2, 3, 4, 5, 5, generator=rng)])
    with pytest.raises(ValueError, match="expected \\[\\(4, 5, 5\\)\\] with 3 views"):
        banks.add([torch.randn(2, 2, 4, 5, 5, generator=rng)])
    banks.finalize()
    with pytest.raises(ValueError, match="features: got levels"):
        banks.search([torch.randn(1, 3, 4, 6, 5, generator=rng)])
    with pytest.raises(ValueError, match="coreset_ratio"):
        FeatureBanks("local", coreset_ratio=0.5)
    with pytest.raises(ValueError, match="mode: got 'near'"):
        FeatureBanks("near")


def _leave_one_out_reference(train: torch.Tensor, per_view: bool, radius: int | None):
    """train (S, M, D, h, w) -> μ, σ (M, h, w) of each sample's distances to the others."""
    S, M = train.shape[:2]
    loo = torch.empty(S, M, *train.shape[-2:], dtype=torch.float64)
    for s in range(S):
        others = torch.cat([train[:s], train[s + 1 :]])
        for m in range(M):
            pool = others[:, m] if per_view else others.flatten(0, 1)
            loo[s, m] = _brute_force(pool, train[s, m], radius)
    return loo.mean(0), loo.std(0)


@pytest.mark.parametrize("mode", ["local", "global"])
@pytest.mark.parametrize("per_view", [True, False])
def test_position_normalization_matches_leave_one_out(mode, per_view, rng):
    levels = [(6, 5, 4), (3, 3, 7)]
    train = [torch.randn(5, 3, *shape, generator=rng) for shape in levels]
    banks = FeatureBanks(mode, radius=1, per_view=per_view, normalization="position")
    banks.add([t[:2] for t in train])
    banks.add([t[2:] for t in train])
    banks.finalize()
    queries = [torch.randn(2, 3, *shape, generator=rng) for shape in levels]
    raw = banks.search(queries)
    scores = banks.standardize(raw)
    radius = 1 if mode == "local" else None
    for t, d, z in zip(train, raw, scores, strict=True):
        mean, std = _leave_one_out_reference(t, per_view, radius)
        floor = 0.1 * std.mean() + 1e-6 * mean.abs().mean() + 1e-12
        want = (d.double() - mean) / std.clamp_min(floor)
        torch.testing.assert_close(z.double(), want, rtol=1e-4, atol=1e-4)
    # The statistics travel with the bank file.
    again = FeatureBanks.from_tensors(banks.settings(), banks.tensors())
    for a, b in zip(scores, again.standardize(again.search(queries)), strict=True):
        assert torch.equal(a, b)


def test_position_normalization_discounts_cells_that_vary_in_normal_samples(rng):
    """The same deviation scores higher in a quiet cell than in a cell whose normal samples
    already vary that much: the reason the default normalises per position."""
    train = 0.05 * torch.randn(12, 1, 4, 6, 6, generator=rng) + 1.0
    train[:, :, :, 1, 1] += torch.randn(12, 1, 4, generator=rng)  # a busy cell
    banks = FeatureBanks("local", radius=0, normalization="position")
    banks.add([train])
    banks.finalize()
    query = 0.05 * torch.randn(1, 1, 4, 6, 6, generator=rng) + 1.0
    query[..., 1, 1] += 1.5
    query[..., 4, 4] += 1.5  # the same deviation in a quiet cell
    z = banks.standardize(banks.search([query]))[0][0, 0]
    assert z[4, 4] > 3 * z[1, 1]
    assert z[4, 4] == z.max()


def test_position_normalization_errors(rng):
    with pytest.raises(ValueError, match="normalization: got 'pixel'"):
        FeatureBanks("local", normalization="pixel")
    banks = FeatureBanks("local", normalization="position")
    banks.add([torch.randn(1, 2, 3, 4, 4, generator=rng)])
    with pytest.raises(
        ValueError, match="at least 2 training samples to estimate the normal variation, got 1"
    ):
        banks.finalize()
    plain = FeatureBanks("local")
    plain.add([torch.randn(1, 2, 3, 4, 4, generator=rng)])
    plain.finalize()  # raw distances need no statistics
    maps = plain.search([torch.randn(1, 2, 3, 4, 4, generator=rng)])
    assert plain.standardize(maps) is maps
