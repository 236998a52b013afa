"""Exact memory-bank search (docs/design.md §3.2) against float64 brute force and the reference."""

from __future__ import annotations

import os

import pytest
import torch

from vsad.ops import bank_sq_norms, min_l2, min_l2_reference

BANK_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def brute_force(queries: torch.Tensor, bank: torch.Tensor):
    d = torch.cdist(queries.double(), bank.double())
    return d.min(dim=1)


def assert_exact(q, bank, dist, index):
    """dist is the true minimum and index attains it, up to the rounding of the expansion
    ‖q‖² + ‖b‖² − 2⟨q, b⟩ in float32: |error of d²| ≲ D·eps·(‖q‖² + ‖b‖²)."""
    q64, b64 = q.double(), bank.double()
    want, _ = brute_force(q, bank)
    scale = (q64 * q64).sum(1) + (b64 * b64).sum(1).max()
    tol_sq = 4 * q.shape[1] ** 0.5 * torch.finfo(torch.float32).eps * scale + 1e-12
    assert ((dist.double() ** 2 - want**2).abs() <= tol_sq).all(), "distance is not the minimum"
    at_index = (q64 - b64[index]).norm(dim=1)
    assert ((at_index**2 - want**2).abs() <= 2 * tol_sq).all(), "index does not attain the minimum"


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize(
    "Q, N, D", [(1, 1, 1), (1, 97, 3), (13, 1, 7), (29, 1000, 33), (50, 2049, 640), (7, 300, 1281)]
)
def test_matches_brute_force(backend, Q, N, D, rng):
    q = torch.randn(Q, D, generator=rng)
    bank = torch.randn(N, D, generator=rng)
    dist, index = min_l2(q, bank, backend=backend)
    assert dist.dtype == torch.float32 and index.dtype == torch.int64
    assert_exact(q, bank, dist, index)


@pytest.mark.parametrize("dtype", BANK_DTYPES)
def test_half_banks_accumulate_in_float32(dtype, rng):
    q = torch.randn(40, 96, generator=rng)
    bank = torch.randn(700, 96, generator=rng).to(dtype)
    dist, index = min_l2(q, bank, backend="cpp")
    # Exact with respect to the stored (rounded) bank values.
    assert_exact(q, bank.float(), dist, index)
    ref_dist, ref_index = min_l2_reference(q, bank)
    torch.testing.assert_close(dist, ref_dist, atol=1e-3, rtol=1e-5)


def test_exact_duplicates_resolve_to_the_lowest_index(rng):
    bank = torch.randn(300, 24, generator=rng)
    bank[250] = bank[17]  # a later exact copy
    bank[299] = bank[17]
    q = bank[[17, 17, 250]] + 0.0
    dist, index = min_l2(q, bank, backend="cpp")
    assert index.tolist() == [17, 17, 17]
    assert torch.equal(dist, torch.zeros(3))


def test_equidistant_rows_resolve_to_the_lowest_index(rng):
    # Rows at exactly the same distance in every arithmetic: ±e_k around a query at the origin.
    D = 16
    bank = torch.randn(500, D, generator=rng) * 10 + 50
    bank[123] = 0
    bank[123, 3] = 1.0
    bank[400] = 0
    bank[400, 3] = -1.0
    q = torch.zeros(1, D)
    for backend in ("cpp", "reference"):
        dist, index = min_l2(q, bank, backend=backend)
        assert index.item() == 123, backend
        assert dist.item() == 1.0


def test_near_ties_agree_with_float64_where_the_gap_is_resolvable(rng):
    """Second-best rows within 1e-4 relative distance: the winner must still be a true minimiser
    up to float32 rounding (returned row's exact distance equals the exact minimum)."""
    bank = torch.randn(2000, 64, generator=rng)
    q = bank[:200] + 1e-3 * torch.randn(200, 64, generator=rng)
    bank[1000:1200] = bank[:200] + 1e-3 * torch.randn(200, 64, generator=rng)  # near-duplicates
    dist, index = min_l2(q, bank, backend="cpp")
    assert_exact(q, bank, dist, index)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512", "avx512_bf16"])
def test_every_instruction_set(isa, rng):
    from vsad._extension import _C

    if isa not in _C.supported_isas():
        pytest.skip(f"this CPU does not support {isa}")
    q = torch.randn(23, 70, generator=rng)
    bank = torch.randn(333, 70, generator=rng)
    try:
        _C.set_isa(isa)
        dist, index = min_l2(q, bank, backend="cpp")
    finally:
        _C.set_isa(_C.detected_isa())
    assert_exact(q, bank, dist, index)


def test_thread_count_does_not_change_results(rng):
    q = torch.randn(61, 40, generator=rng)
    bank = torch.randn(1500, 40, generator=rng)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = min_l2(q, bank, backend="cpp")
        torch.set_num_threads(3)
        three = min_l2(q, bank, backend="cpp")
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one[0], three[0]) and torch.equal(one[1], three[1])


def test_precomputed_norms_give_identical_results(rng):
    q = torch.randn(30, 50, generator=rng)
    bank = torch.randn(400, 50, generator=rng)
    norms = bank_sq_norms(bank)
    torch.testing.assert_close(norms, (bank.double() ** 2).sum(1).float(), atol=1e-4, rtol=1e-5)
    a = min_l2(q, bank, backend="cpp")
    b = min_l2(q, bank, bank_sq_norms=norms, backend="cpp")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_non_contiguous_inputs(rng):
    q = torch.randn(40, 30, generator=rng).T  # (30, 40) view, not contiguous
    bank = torch.randn(40, 90, generator=rng).T
    dist, index = min_l2(q, bank, backend="cpp")
    assert_exact(q, bank, dist, index)


@pytest.mark.parametrize(
    "make, error, pattern",
    [
        (lambda q, b: (q[0], b), ValueError, r"queries: got shape \(8,\), expected 2-D"),
        (lambda q, b: (q, b[:, :5]), ValueError, "queries: dimension D=8 does not match"),
        (lambda q, b: (q, b[:0]), ValueError, "bank: got shape \\(0, 8\\)"),
        (lambda q, b: (q, b.int()), TypeError, "bank: got dtype torch.int32"),
        (lambda q, b: (q.index_fill(0, torch.tensor([1]), float("nan")), b), ValueError,
         "queries: contains NaN or Inf"),
        (lambda q, b: (q, b.index_fill(0, torch.tensor([2]), float("inf"))), ValueError,
         "bank: row 2 contains NaN or Inf"),
        (lambda q, b: (q, b.double()), TypeError, "bank: got dtype torch.float64, expected one of"),
    ],
)  # fmt: skip
def test_bad_input(make, error, pattern, rng):
    q, b = make(torch.randn(4, 8, generator=rng), torch.randn(10, 8, generator=rng))
    with pytest.raises(error, match=pattern):
        min_l2(q, b, backend="cpp")


def test_bad_options(rng):
    q, b = torch.randn(4, 8, generator=rng), torch.randn(10, 8, generator=rng)
    with pytest.raises(ValueError, match="precision: got 'fp8'"):
        min_l2(q, b, precision="fp8")
    with pytest.raises(ValueError, match=r"bank_sq_norms: got shape \(9,\), expected \(10,\)"):
        min_l2(q, b, bank_sq_norms=torch.ones(9))
    if not os.environ.get("TRITON_INTERPRET"):
        with pytest.raises((ValueError, RuntimeError), match="triton"):
            min_l2(q, b, backend="triton")  # CPU tensors: triton runs on CUDA only


def test_cpp_boundary_validates(rng):
    from vsad._extension import _C

    q = torch.randn(4, 8, generator=rng)
    b = torch.randn(10, 8, generator=rng)
    out = torch.empty(4)
    idx = torch.empty(4, dtype=torch.int64)
    norms = bank_sq_norms(b)
    args = [
        q.data_ptr(),
        b.data_ptr(),
        "float32",
        norms.data_ptr(),
        4,
        10,
        8,
        out.data_ptr(),
        idx.data_ptr(),
        1,
    ]
    with pytest.raises(ValueError, match="bank dtype: got 'int8'"):
        _C.min_l2(*args[:2], "int8", *args[3:])
    with pytest.raises(ValueError, match="D \\(feature dimension\\): got 0"):
        _C.min_l2(*args[:6], 0, *args[7:])
    with pytest.raises(ValueError, match="queries: got a null data pointer"):
        _C.min_l2(0, *args[1:])
