"""precision="mixed" (bf16 screen + fp32 re-rank) returns exactly the fp32 search's results."""

from __future__ import annotations

import pytest
import torch

from vsad.ops import min_l2


def assert_identical(q, bank):
    exact = min_l2(q, bank, backend="cpp", precision="fp32")
    mixed = min_l2(q, bank, backend="cpp", precision="mixed")
    assert torch.equal(exact[1], mixed[1]), "indices differ from the fp32 search"
    assert torch.equal(exact[0], mixed[0]), "distances differ from the fp32 search"


@pytest.mark.parametrize("Q, N, D", [(1, 1, 1), (5, 40, 3), (33, 1000, 65), (70, 3000, 640)])
def test_identical_on_random_data(Q, N, D, rng):
    assert_identical(torch.randn(Q, D, generator=rng), torch.randn(N, D, generator=rng))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_identical_on_near_ties(dtype, rng):
    """Adversarial: 50 near-copies (1e-3 apart) of each of 100 centres, queries inside the
    clusters — bf16 rounding (2^-8) is far coarser than the gaps the search must resolve."""
    centres = torch.randn(100, 96, generator=rng)
    bank = centres.repeat(50, 1) + 1e-3 * torch.randn(5000, 96, generator=rng)
    q = bank[:300] + 1e-3 * torch.randn(300, 96, generator=rng)
    assert_identical(q, bank.to(dtype))


def test_identical_on_exact_duplicates_and_list_overflow(rng):
    """200 identical rows tie for every query: more survivors than the screen keeps, which
    exercises the exact fallback; the lowest index must win as in the fp32 search."""
    row = torch.randn(1, 48, generator=rng)
    bank = torch.cat([torch.randn(30, 48, generator=rng) + 5, row.repeat(200, 1)])
    q = row + 1e-4 * torch.randn(20, 48, generator=rng)
    assert_identical(q, bank)
    _, index = min_l2(q, bank, backend="cpp", precision="mixed")
    assert (index == 30).all()


# "avx512": AVX-512 without BF16 (Skylake to Ice Lake) has no bf16 screen either.
@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_lower_instruction_sets_fall_back_to_fp32(isa, rng):
    from vsad._extension import _C

    if isa not in _C.supported_isas():
        pytest.skip(f"this CPU does not support {isa}")
    q, bank = torch.randn(9, 30, generator=rng), torch.randn(300, 30, generator=rng)
    try:
        _C.set_isa(isa)
        assert_identical(q, bank)
    finally:
        _C.set_isa(_C.detected_isa())
