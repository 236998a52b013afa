"""Throughput of the position-local bank search at the shapes the model uses: cpp vs reference on
the CPU, triton vs reference on CUDA (skipped without a GPU; bench/gpu_check.sh).

One view per call: queries (B, 32, 32, D), bank (S=40, 32, 32, D) float32, ρ=2. GFLOP/s counts
2·D per (query, bank row) pair the window allows (border windows are smaller), not padding.

Run: pytest bench/test_min_l2_local_small.py --benchmark-json=local.json
then python bench/report.py local.json for the BENCHMARKS.md table.
"""

from __future__ import annotations

import pytest
import torch
from conftest import provider_device, skip_unless_available, synchronized

from vsad.ops import bank_sq_norms, min_l2_local, min_l2_local_reference

S, H, W, RADIUS = 40, 32, 32, 2
SHAPES = {
    "B1-D32": (1, 32),
    "B1-D48": (1, 48),
    "B1-D64": (1, 64),
    "B4-D64": (4, 64),
}
PROVIDERS = ("reference", "cpp", "reference-cuda", "triton")


def make_inputs(B, D):
    g = torch.Generator().manual_seed(2)
    return torch.randn(B, H, W, D, generator=g), torch.randn(S, H, W, D, generator=g)


def window_pairs(B) -> int:
    """(query, bank row) pairs compared: S rows per bank position inside each query's window."""

    def positions_per_axis(n):  # sum over coordinates of the clipped window length
        return sum(min(n - 1, c + RADIUS) - max(0, c - RADIUS) + 1 for c in range(n))

    return B * S * positions_per_axis(H) * positions_per_axis(W)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_min_l2_local_small(benchmark, machine, fp32_gemm_gflops, shape, provider):
    skip_unless_available(provider)
    B, D = SHAPES[shape]
    device = provider_device(provider)
    cuda = device == "cuda"
    queries, bank = (t.to(device) for t in make_inputs(B, D))
    norms = bank_sq_norms(bank.reshape(-1, D))
    backend = provider.removesuffix("-cuda")

    def run():
        return min_l2_local(queries, bank, radius=RADIUS, bank_sq_norms=norms, backend=backend)

    if cuda:
        run = synchronized(run)

    # Correctness first: squared distances (their float32 error is absolute) and indices.
    dist, index = run()
    want_dist, want_index = min_l2_local_reference(queries, bank, radius=RADIUS)
    torch.testing.assert_close(dist**2, want_dist**2, atol=1e-3, rtol=1e-5)
    assert (index == want_index).float().mean() > 0.99

    benchmark.group = f"min_l2_local S{S}-{H}x{W}-ρ{RADIUS} {shape}" + (" cuda" if cuda else "")
    rounds = 20 if provider == "reference" else 200
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=3, iterations=1)
    benchmark.extra_info.update(
        machine,
        provider=provider,
        baseline="reference-cuda" if cuda else "reference",
        gflops_per_s=2.0 * D * window_pairs(B) / benchmark.stats.stats.median / 1e9,
        fp32_gemm_gflops_per_s=fp32_gemm_gflops,
    )
