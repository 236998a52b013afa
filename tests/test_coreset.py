"""PatchCore's greedy k-center coreset (vsad.ops.kcenter_greedy, docs/design.md §3.2) against a
textbook float64 selection, plus its arguments and its memory bound (never N×N)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vsad.ops.coreset import kcenter_greedy

# ---------------------------------------------------------------------------------------------
# The textbook selection and well-separated data


def reference_greedy(x: torch.Tensor, n: int, first: int) -> tuple[list[int], float]:
    """Greedy k-center by full recomputation in float64: at every step, the distance of every
    point to every centre chosen so far, its minimum over the centres, and the first point with
    the largest minimum. Also returns the smallest relative margin between the winner's and the
    runner-up's squared distance over all steps: the float32 kernel can only be expected to make
    the same choices where that margin exceeds its rounding."""
    x64 = x.double()
    chosen = [first]
    margin = float("inf")
    for _ in range(n - 1):
        d2 = ((x64[:, None, :] - x64[chosen][None, :, :]) ** 2).sum(-1).min(dim=1).values
        top = d2.topk(2).values
        margin = min(margin, float((top[0] - top[1]) / top[0]))
        chosen.append(int(d2.argmax()))  # first maximum on ties
    return chosen, margin


def separated_clusters(
    rng: torch.Generator, clusters: int, per_cluster: int, D: int, spread: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """(points, cluster label of each point), shuffled. Centre k is 30·e_k plus a shared random
    offset and a unit Gaussian jitter, so centres are ≈ 42 apart (30·√2) whatever the draw, far
    beyond the clusters' own size (points are `spread`-Gaussian around their centre)."""
    assert clusters <= D
    centres = torch.eye(D)[:clusters] * 30 + torch.randn(D, generator=rng) * 5
    centres += torch.randn(clusters, D, generator=rng)
    labels = torch.arange(clusters).repeat_interleave(per_cluster)
    points = centres[labels] + torch.randn(len(labels), D, generator=rng) * spread
    perm = torch.randperm(len(labels), generator=rng)
    return points[perm], labels[perm]


# Relative margin (winner vs runner-up, squared distances) below which float32 rounding of the
# kernel's expansion ‖x‖² − 2⟨x, c⟩ + ‖c‖² could flip a choice: ~1e-7 · (‖x‖² + ‖c‖²) / d².
SAFE_MARGIN = 1e-4


def well_separated_case(rng, n=12, dtype=torch.float32, clusters=12, per_cluster=30, D=16):
    """Data (in `dtype`) and the reference selection on its float32 values (what the kernel
    computes with), redrawn until every choice has a safe margin, so that the exact comparison
    cannot be flaky (a redraw is needed in a minority of draws)."""
    for _ in range(30):
        x, labels = separated_clusters(rng, clusters, per_cluster, D)
        x = x.to(dtype)
        first = int(kcenter_greedy(x, 1, seed=3)[0])  # n = 1: just the seeded start
        want, margin = reference_greedy(x.float(), n, first)
        if margin > SAFE_MARGIN:
            return x, labels, want
    raise AssertionError("could not draw data with safe margins")


# ---------------------------------------------------------------------------------------------
# Selection


@pytest.mark.parametrize("tile", [65536, 50, 7, 1])
@pytest.mark.parametrize("n", [12, 5])
def test_matches_the_reference_greedy_on_separated_clusters(n, tile, rng):
    x, labels, want = well_separated_case(rng, n=n)
    got = kcenter_greedy(x, n, seed=3, tile=tile)
    assert got.dtype == torch.int64 and got.shape == (n,)
    assert got.tolist() == want
    assert len(set(labels[got].tolist())) == n  # one point per cluster


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_other_feature_dtypes_select_as_their_float32_values(dtype, rng):
    """(Not bfloat16 here: at magnitude 30 its spacing, 0.25, exceeds the clusters' spread, so
    points collapse onto exact duplicates and the margin guard could never be met.)"""
    x, _, want = well_separated_case(rng, dtype=dtype)
    assert kcenter_greedy(x, 12, seed=3, tile=50).tolist() == want


@pytest.mark.parametrize("projection_dim", [8, 16])
def test_random_projection_still_picks_one_point_per_cluster(projection_dim, rng):
    """D = 64 projected to 8 or 16: a projected centre distance shrinks below 10% of the true
    one with probability ~1e-7 per pair (χ² tail), and stays far above the clusters' size."""
    clusters = 10
    x, labels = separated_clusters(rng, clusters, 25, 64)
    got = kcenter_greedy(x, clusters, seed=11, projection_dim=projection_dim, tile=40)
    assert sorted(labels[got].tolist()) == list(range(clusters))
    # The projection is seeded: the same call selects the same points.
    again = kcenter_greedy(x, clusters, seed=11, projection_dim=projection_dim, tile=40)
    assert torch.equal(got, again)


@pytest.mark.parametrize("tile", [65536, 3])
def test_n_equal_to_N_returns_every_index(tile, rng):
    x = torch.randn(23, 5, generator=rng)
    got = kcenter_greedy(x, 23, seed=1, tile=tile)
    assert sorted(got.tolist()) == list(range(23))


def test_n_1_returns_the_seeded_start(rng):
    x = torch.randn(50, 4, generator=rng)
    starts = [kcenter_greedy(x, 1, seed=s) for s in range(8)]
    for s, start in enumerate(starts):
        assert start.shape == (1,) and start.dtype == torch.int64
        assert 0 <= int(start) < 50
        assert torch.equal(kcenter_greedy(x, 1, seed=s), start)  # deterministic per seed
        assert int(kcenter_greedy(x, 9, seed=s)[0]) == int(start)  # and the start of any n
    assert len({int(s) for s in starts}) > 1, "the seed does not choose the start"


def test_single_row(rng):
    assert kcenter_greedy(torch.randn(1, 3, generator=rng), 1).tolist() == [0]


def test_n_equal_to_N_with_duplicate_rows_returns_every_index(rng):
    x = torch.randn(6, 4, generator=rng)
    x[4] = x[1]
    assert sorted(kcenter_greedy(x, 6, seed=0).tolist()) == list(range(6))


# ---------------------------------------------------------------------------------------------
# Arguments


def _with_value(x: torch.Tensor, row: int, value: float) -> torch.Tensor:
    x = x.clone()
    x[row, 1] = value
    return x


@pytest.mark.parametrize(
    "make, error, pattern",
    [
        (lambda x: ((x, 0), {}), ValueError, r"^n: got 0, expected 1 <= n <= N=20"),
        (lambda x: ((x, -3), {}), ValueError, r"^n: got -3, expected 1 <= n <= N=20"),
        (lambda x: ((x, 21), {}), ValueError, r"^n: got 21, expected 1 <= n <= N=20"),
        (lambda x: ((x, 2.5), {}), TypeError, r"^n: got 2.5, expected an integer"),
        (lambda x: ((x, True), {}), TypeError, r"^n: got True, expected an integer"),
        (lambda x: ((x[0], 2), {}), ValueError, r"^features: got shape \(6,\), expected \(N>=1"),
        (lambda x: ((x[None], 2), {}), ValueError, r"^features: got shape \(1, 20, 6\)"),
        (lambda x: ((x[:0], 1), {}), ValueError, r"^features: got shape \(0, 6\)"),
        (lambda x: ((x[:, :0], 1), {}), ValueError, r"^features: got shape \(20, 0\)"),
        (lambda x: ((x.tolist(), 2), {}), TypeError, r"^features: got list, expected a torch"),
        (lambda x: ((_with_value(x, 13, float("nan")), 2), {}), ValueError,
         r"^features: row 13 contains NaN or Inf, expected finite values"),
        (lambda x: ((_with_value(x, 19, float("-inf")), 2), {"tile": 4}), ValueError,
         r"^features: row 19 contains NaN or Inf"),
        (lambda x: ((x, 2), {"tile": 0}), ValueError, r"^tile: got 0, expected an integer >= 1"),
        (lambda x: ((x, 2), {"projection_dim": 0}), ValueError, r"^projection_dim: got 0"),
    ],
)  # fmt: skip
def test_bad_arguments_are_named_in_the_error(make, error, pattern, rng):
    args, kwargs = make(torch.randn(20, 6, generator=rng))
    with pytest.raises(error, match=pattern):
        kcenter_greedy(*args, **kwargs)


def test_numpy_integers_are_accepted_as_n(rng):
    np = pytest.importorskip("numpy")
    x = torch.randn(20, 6, generator=rng)
    assert torch.equal(kcenter_greedy(x, np.int64(4), seed=2), kcenter_greedy(x, 4, seed=2))


# ---------------------------------------------------------------------------------------------
# Memory: never N×N


class LargestOutput(TorchDispatchMode):
    """Records the largest tensor any aten op returns while active (every intermediate of a
    PyTorch computation is some op's output, whatever Python spelling produced it: @, cdist,
    mm, broadcasting...)."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_the_watcher_sees_a_pairwise_matrix(rng):
    """Guards the test below: an N×N product made by a matmul is recorded."""
    x = torch.randn(300, 8, generator=rng)
    with LargestOutput() as watch:
        _ = torch.cdist(x, x)
        _ = x @ x.T
    assert watch.largest >= 300 * 300


@pytest.mark.parametrize("projection_dim", [None, 4])
def test_never_allocates_an_N_by_N_matrix(projection_dim, rng):
    """N = 40000: an N×N float32 matrix would be 6.4 GB. No intermediate may exceed the size of
    the features themselves (N·D), and the selection is a few whole-tile passes per centre: the
    number of tensor ops grows with n·⌈N/tile⌉, never with N (no per-row Python loop). Counted,
    not timed, so a loaded machine cannot fail it."""
    N, D, n = 40000, 8, 5
    x = torch.randn(N, D, generator=rng)
    for tile in (65536, 10000):
        with LargestOutput() as watch:
            got = kcenter_greedy(x, n, seed=0, projection_dim=projection_dim, tile=tile)
        assert got.shape == (n,) and len(set(got.tolist())) == n
        assert watch.ops > 0, "the watcher recorded nothing"
        largest = watch.largest
        assert largest <= N * D, f"an intermediate of {largest} elements (N·D = {N * D})"
        tiles = -(-N // tile)
        assert watch.ops <= 30 * n * tiles + 100, f"{watch.ops} ops for {n} centres, {tiles} tiles"
