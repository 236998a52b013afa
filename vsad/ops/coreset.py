"""PatchCore's greedy k-center coreset (Roth et al. 2022), streaming: memory O(N + tile·D),
never N×N."""

from __future__ import annotations

import numbers

import torch


def kcenter_greedy(
    features: torch.Tensor,
    n: int,
    *,
    seed: int = 0,
    projection_dim: int | None = None,
    tile: int = 65536,
) -> torch.Tensor:
    """Indices (n,) of a greedy k-center selection: start from a seeded random row, then
    repeatedly take the row farthest from everything selected so far (ties: lowest index).

    projection_dim: if set, distances are measured after a seeded Gaussian random projection to
    that many dimensions (Johnson–Lindenstrauss), as PatchCore does to speed up selection.
    """
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features: got {type(features).__name__}, expected a torch.Tensor")
    if features.dim() != 2 or features.shape[0] < 1 or features.shape[1] < 1:
        raise ValueError(f"features: got shape {tuple(features.shape)}, expected (N>=1, D>=1)")
    N = features.shape[0]
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n: got {n!r}, expected an integer")
    n = int(n)
    if not 1 <= n <= N:
        raise ValueError(f"n: got {n}, expected 1 <= n <= N={N}")
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile: got {tile!r}, expected an integer >= 1")
    for i in range(0, N, tile):  # a NaN would win every argmax below; checked tile by tile
        bad = ~torch.isfinite(features[i : i + tile])
        if bool(bad.any()):
            row = i + int(bad.any(1).nonzero()[0])
            raise ValueError(f"features: row {row} contains NaN or Inf, expected finite values")
    gen = torch.Generator().manual_seed(seed)
    x = project_rows(features, gen, projection_dim, tile)
    sq = (x * x).sum(1)
    selected = torch.empty(n, dtype=torch.int64)
    selected[0] = int(torch.randint(0, N, (1,), generator=gen))
    min_sq = torch.full((N,), float("inf"), device=x.device)
    for s in range(1, n + 1):
        update_min_sq(min_sq, x, sq, x[selected[s - 1]], tile)
        # A chosen row is never chosen again, even when duplicates leave only zero distances.
        min_sq[selected[s - 1]] = -1.0
        if s < n:
            selected[s] = int(torch.argmax(min_sq))  # first maximum on ties
    return selected


# The two steps below are shared with the sharded coreset (vsad.distributed.bank), which picks
# the same rows as one process: a matrix product's per-row result can depend on how many rows
# the call holds, so both compute tile by tile, and callers that want identical selections
# across partitions pass tile boundaries that every partition shares (the bank's rows per
# training sample).
def project_rows(
    features: torch.Tensor, gen: torch.Generator, projection_dim: int | None, tile: int
) -> torch.Tensor:
    """float32 rows, after a seeded Gaussian projection to projection_dim dimensions (drawn
    from `gen`) when projection_dim is set."""
    x = features.float()
    if projection_dim is None:
        return x
    if projection_dim < 1:
        raise ValueError(f"projection_dim: got {projection_dim}, expected >= 1")
    proj = torch.randn(x.shape[1], projection_dim, generator=gen) / projection_dim**0.5
    proj = proj.to(x.device)
    return torch.cat([x[i : i + tile] @ proj for i in range(0, x.shape[0], tile)])


def update_min_sq(
    min_sq: torch.Tensor, x: torch.Tensor, sq: torch.Tensor, c: torch.Tensor, tile: int
) -> None:
    """min_sq = min(min_sq, ‖x − c‖²) row-wise, in place, tile by tile (never N × N)."""
    cc = c.dot(c)
    for i in range(0, x.shape[0], tile):
        d = (sq[i : i + tile] - 2 * (x[i : i + tile] @ c) + cc).clamp(min=0)
        torch.minimum(min_sq[i : i + tile], d, out=min_sq[i : i + tile])
