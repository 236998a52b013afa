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
