"""Position-local memory-bank search against a float64 brute force over the allowed window."""

from __future__ import annotations

import pytest
import torch

from vsad.ops import min_l2_local, min_l2_local_reference


def brute_force_local(queries, bank, radius):
    """Loops over every query pixel: exact float64 minimum over its (2ρ+1)² window."""
    B, H, W, D = queries.shape
    S = bank.shape[0]
    dist = torch.empty(B, H, W, dtype=torch.float64)
    allowed = torch.zeros(B, H, W, S * H * W, dtype=torch.bool)
    flat_bank = bank.double().reshape(-1, D)
    for y in range(H):
        for x in range(W):
            mask = torch.zeros(S, H, W, dtype=torch.bool)
            mask[:, max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1] = True
            rows = mask.reshape(-1).nonzero().squeeze(1)
            d = torch.cdist(queries[:, y, x].double(), flat_bank[rows])
            dist[:, y, x] = d.min(dim=1).values
            allowed[:, y, x] = mask.reshape(-1)
    return dist, allowed


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize(
    "B, S, H, W, D, radius",
    [
        (1, 1, 1, 1, 1, 0),
        (2, 3, 5, 7, 9, 1),
        (1, 17, 6, 5, 33, 2),
        (3, 5, 4, 4, 70, 3),
        (1, 4, 3, 9, 16, 0),
    ],
)
def test_matches_windowed_brute_force(backend, B, S, H, W, D, radius, rng):
    q = torch.randn(B, H, W, D, generator=rng)
    bank = torch.randn(S, H, W, D, generator=rng)
    dist, index = min_l2_local(q, bank, radius=radius, backend=backend)
    want, allowed = brute_force_local(q, bank, radius)
    torch.testing.assert_close(dist.double(), want, atol=2e-3, rtol=1e-4)
    # The returned bank row lies inside the query's window and attains the minimum.
    assert allowed.gather(-1, index.unsqueeze(-1)).all(), "index outside the allowed window"
    at_index = (q.double() - bank.double().reshape(-1, D)[index]).norm(dim=-1)
    torch.testing.assert_close(at_index, want, atol=2e-3, rtol=1e-4)


def test_cpp_equals_reference_indices_and_duplicate_ties(rng):
    q = torch.randn(2, 6, 6, 24, generator=rng)
    bank = torch.randn(8, 6, 6, 24, generator=rng)
    bank[6] = bank[2]  # later sample, identical maps: ties must go to sample 2
    q[0, 3, 3] = bank[2, 3, 4]
    dist, index = min_l2_local(q, bank, radius=1, backend="cpp")
    ref_dist, ref_index = min_l2_local_reference(q, bank, radius=1)
    assert index[0, 3, 3].item() == 2 * 36 + 3 * 6 + 4
    # An exact match: zero up to the float32 cancellation of ‖q‖² + ‖b‖² − 2⟨q, b⟩.
    assert dist[0, 3, 3].item() <= 4e-3
    # Squared distances: their float32 cancellation error is absolute (≈ D·eps·‖q‖²), which sqrt
    # would amplify at the exact match.
    torch.testing.assert_close(dist**2, ref_dist**2, atol=5e-4, rtol=1e-5)
    assert (index == ref_index).float().mean() > 0.99


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_banks(dtype, rng):
    q = torch.randn(1, 5, 5, 40, generator=rng)
    bank = torch.randn(6, 5, 5, 40, generator=rng).to(dtype)
    dist, _ = min_l2_local(q, bank, radius=1, backend="cpp")
    want, _ = brute_force_local(q, bank.float(), 1)
    torch.testing.assert_close(dist.double(), want, atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_lower_instruction_sets(isa, rng):
    from vsad._extension import _C

    if isa not in _C.supported_isas():
        pytest.skip(f"this CPU does not support {isa}")
    q = torch.randn(2, 4, 5, 19, generator=rng)
    bank = torch.randn(5, 4, 5, 19, generator=rng)
    try:
        _C.set_isa(isa)
        dist, _ = min_l2_local(q, bank, radius=1, backend="cpp")
    finally:
        _C.set_isa(_C.detected_isa())
    want, _ = brute_force_local(q, bank, 1)
    torch.testing.assert_close(dist.double(), want, atol=2e-3, rtol=1e-4)


def test_bad_input(rng):
    q = torch.randn(1, 4, 4, 8, generator=rng)
    bank = torch.randn(3, 4, 4, 8, generator=rng)
    with pytest.raises(
        ValueError, match=r"bank: got shape \(3, 4, 5, 8\), expected \(S, H, W, D\)"
    ):
        min_l2_local(q, torch.randn(3, 4, 5, 8), backend="cpp")
    with pytest.raises(ValueError, match="radius: got -1"):
        min_l2_local(q, bank, radius=-1)
    with pytest.raises(ValueError, match="queries: got \\(4, 4, 8\\), expected a 4-D tensor"):
        min_l2_local(q[0], bank)
    bad = bank.clone()
    bad[1, 2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="bank: row 27 contains NaN or Inf"):
        min_l2_local(q, bad, backend="cpp")


# The cpp kernel works on blocks of 8 bank samples and 8 features (a pipelined loop when D is a
# multiple of 8, a per-block one otherwise, a portable loop below D = 8) and groups of up to 13
# window queries: these shapes cover every path, partial blocks and several query groups.
@pytest.mark.parametrize(
    "B, S, H, W, D, radius",
    [
        (1, 40, 7, 6, 48, 2),  # pipelined, 5 full sample blocks, 1-2 query groups
        (4, 9, 5, 5, 32, 2),  # a 1-sample block, up to 8 query groups
        (2, 17, 6, 4, 33, 1),  # D % 8 == 1: masked last feature block
        (1, 12, 4, 5, 7, 2),  # D < 8: portable loop on every ISA
        (3, 8, 3, 3, 16, 5),  # radius larger than the map
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_block_shapes_and_bank_dtypes(B, S, H, W, D, radius, dtype, rng):
    q = torch.randn(B, H, W, D, generator=rng)
    bank = torch.randn(S, H, W, D, generator=rng).to(dtype)
    dist, index = min_l2_local(q, bank, radius=radius, backend="cpp")
    want, allowed = brute_force_local(q, bank.float(), radius)
    torch.testing.assert_close(dist.double(), want, atol=2e-3, rtol=1e-4)
    assert allowed.gather(-1, index.unsqueeze(-1)).all(), "index outside the allowed window"


def _supported_isas():
    from vsad._extension import _C

    return _C.supported_isas()


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512", "avx512_bf16"])
@pytest.mark.parametrize("D", [24, 21])
def test_full_window_is_bitwise_the_global_search(isa, D, rng):
    """A window covering the whole map sees every bank row: each <q, b> is the same sequential
    FMA chain as in min_l2, so distances and indices are identical, not just close."""
    from vsad._extension import _C
    from vsad.ops import min_l2

    if isa not in _supported_isas():
        pytest.skip(f"this CPU does not support {isa}")
    B, S, H, W = 2, 11, 4, 5
    q = torch.randn(B, H, W, D, generator=rng)
    bank = torch.randn(S, H, W, D, generator=rng)
    bank[7] = bank[2]  # exact duplicates: ties go to the lower row in both searches
    q[1, 2, 3] = bank[2, 0, 1]  # an exact match
    previous = _C.active_isa()
    try:
        _C.set_isa(isa)
        dist, index = min_l2_local(q, bank, radius=max(H, W), backend="cpp")
        want_dist, want_index = min_l2(q.reshape(-1, D), bank.reshape(-1, D), backend="cpp")
    finally:
        _C.set_isa(previous)
    assert torch.equal(index.reshape(-1), want_index)
    assert torch.equal(dist.reshape(-1), want_dist)
    assert dist[1, 2, 3].item() == 0.0  # ||q||^2 + ||b||^2 - 2<q, b> cancels exactly
    assert index[1, 2, 3].item() == 2 * H * W + 0 * W + 1


def test_ties_across_blocks_and_positions_go_to_the_lowest_flat_row(rng):
    S, H, W, D = 20, 5, 5, 16
    q = torch.randn(1, H, W, D, generator=rng)
    bank = torch.randn(S, H, W, D, generator=rng)
    # The same row stored at (sample 17, position 12) and (sample 3, position 14), in different
    # sample blocks, and again at (sample 9, position 12): the query at position 13 sees all
    # three within radius 1 and must take the lowest flat index, 3·25 + 14 = 89, although
    # position 12 is visited first.
    row = torch.randn(D, generator=rng)
    for s, p in ((17, 12), (3, 14), (9, 12)):
        bank[s, p // W, p % W] = row
    q[0, 13 // W, 13 % W] = row
    dist, index = min_l2_local(q, bank, radius=1, backend="cpp")
    assert index[0, 13 // W, 13 % W].item() == 3 * H * W + 14
    assert dist[0, 13 // W, 13 % W].item() == 0.0
    _, ref_index = min_l2_local_reference(q, bank, radius=1)
    assert ref_index[0, 13 // W, 13 % W].item() == 3 * H * W + 14
