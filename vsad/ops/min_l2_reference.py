"""Plain-PyTorch twin of the memory-bank search (docs/design.md §3.2): chunked, so memory stays
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


def min_l2_local_reference(
    queries: torch.Tensor,
    bank: torch.Tensor,
    *,
    radius: int = 2,
    bank_sq_norms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Position-local search: the query at (b, y, x) of queries (B, H, W, D) against every
    bank[s, y', x'] of bank (S, H, W, D) with |y' − y| ≤ radius and |x' − x| ≤ radius.

    Returns dist (B, H, W) and the flat bank index s·H·W + y'·W + x' (lowest on ties), with the
    same score arithmetic as :func:`min_l2_reference`. One batched product per window offset.
    """
    dtype = torch.float64 if queries.dtype == torch.float64 else torch.float32
    q, b = queries.to(dtype), bank.to(dtype)
    B, H, W, _ = q.shape
    S = b.shape[0]
    norms = (b * b).sum(-1) if bank_sq_norms is None else bank_sq_norms.to(dtype).reshape(S, H, W)
    best = torch.full((B, H, W), float("inf"), dtype=dtype, device=q.device)
    best_idx = torch.full((B, H, W), -1, dtype=torch.int64, device=q.device)
    rows = torch.arange(H, device=q.device).view(H, 1)
    cols = torch.arange(W, device=q.device).view(1, W)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            qy = slice(max(0, -dy), H - max(0, dy))  # query rows whose row + dy is inside
            qx = slice(max(0, -dx), W - max(0, dx))
            by = slice(max(0, dy), H - max(0, -dy))
            bx = slice(max(0, dx), W - max(0, -dx))
            if qy.start >= qy.stop or qx.start >= qx.stop:
                continue
            dots = torch.einsum("bhwd,shwd->bhws", q[:, qy, qx], b[:, by, bx])
            scores = norms[:, by, bx].permute(1, 2, 0) - 2 * dots
            value, s = scores.min(dim=-1)  # first minimum: lowest sample index
            flat = s * (H * W) + (rows[qy] + dy) * W + (cols[:, qx] + dx)
            cur, cur_idx = best[:, qy, qx], best_idx[:, qy, qx]
            better = (value < cur) | ((value == cur) & (flat < cur_idx))
            best[:, qy, qx] = torch.where(better, value, cur)
            best_idx[:, qy, qx] = torch.where(better, flat, cur_idx)
    dist = ((q * q).sum(-1) + best).clamp(min=0).sqrt()
    return dist, best_idx
