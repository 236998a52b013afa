"""Plain-PyTorch twin of the memory-bank search (DESIGN.md §3.2): chunked, so memory stays
bounded, and readable. The oracle for the fused kernel."""

from __future__ import annotations

import torch


def min_l2_reference(
    queries: torch.Tensor,
    bank: torch.Tensor,
    *,
    bank_sq_norms: torch.Tensor | None = None,
    query_chunk: int = 1024,
    bank_chunk: int = 16384,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dist (Q,), index (Q,) int64): dist = min_n ‖q − bank[n]‖₂, lowest index on ties.

    Computed as sqrt(max(‖q‖² + min_n(‖b_n‖² − 2⟨q, b_n⟩), 0)) in float32 (float64 inputs stay
    float64), chunk by chunk: at most query_chunk × bank_chunk scores exist at once.
    """
    dtype = torch.float64 if queries.dtype == torch.float64 else torch.float32
    q_all = queries.to(dtype)
    b_all = bank.to(dtype)
    norms = (b_all * b_all).sum(1) if bank_sq_norms is None else bank_sq_norms.to(dtype)
    Q = q_all.shape[0]
    dist = torch.empty(Q, dtype=dtype, device=queries.device)
    index = torch.empty(Q, dtype=torch.int64, device=queries.device)
    for q0 in range(0, Q, query_chunk):
        q = q_all[q0 : q0 + query_chunk]
        best = torch.full((q.shape[0],), float("inf"), dtype=dtype, device=q.device)
        best_idx = torch.zeros(q.shape[0], dtype=torch.int64, device=q.device)
        for n0 in range(0, b_all.shape[0], bank_chunk):
            scores = norms[n0 : n0 + bank_chunk] - 2 * (q @ b_all[n0 : n0 + bank_chunk].T)
            value, idx = scores.min(dim=1)  # first minimum on ties
            better = value < best  # strict: an earlier chunk keeps a tie
            best = torch.where(better, value, best)
            best_idx = torch.where(better, idx + n0, best_idx)
        dist[q0 : q0 + query_chunk] = ((q * q).sum(1) + best).clamp(min=0).sqrt()
        index[q0 : q0 + query_chunk] = best_idx
    return dist, index
