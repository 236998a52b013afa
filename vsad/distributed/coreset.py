"""Greedy k-center coreset of a bank whose rows are spread over the ranks.

The same selection as `vsad.ops.coreset.kcenter_greedy` on the whole bank, with each rank
holding only its rows, their minimum distances and its share of the kept rows:

- the seeded projection and the start row are drawn from the same generator on every rank;
- each step, every rank updates the minimum distances of its rows to the newest centre and
  offers its farthest row with one int64 key, (float32 bits of the distance) << 32 |
  (2³² − 1 − global index); one all-gather of the offers (key, projected row, original row)
  lets every rank pick the largest key — ties to the lowest index, as `torch.argmax` does in
  one process — and have the next centre, and whichever rank keeps that position of the
  coreset stores the original row.

Identical selections need identical arithmetic: both compute the products tile by tile, and
the tiles are whole training samples (`tile` = the bank rows of one sample), which every
world size shares because ranks hold whole samples.

Communication: one all-gather per selected row, world × (2 + projection + D) floats; memory per
rank: its rows, their projection, and ⌈n / world⌉ kept rows.
"""

from __future__ import annotations

import bisect

import torch
import torch.distributed as dist

from vsad.distributed.launch import rank_and_world, shard_range
from vsad.ops.coreset import project_rows, update_min_sq

_LOW32 = 0xFFFFFFFF


def kcenter_greedy_sharded(
    rows: torch.Tensor,
    n: int,
    *,
    offset: int,
    total: int,
    seed: int = 0,
    projection_dim: int | None = None,
    tile: int,
    group=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Collective. rows: this rank's rows [offset, offset + len(rows)) of a (total, D) bank, in
    rank order. Returns (selected (n,) global indices in selection order, the same on every
    rank; this rank's kept rows, positions shard_range(n, rank, world) of the selection)."""
    rank, world = rank_and_world(group)
    if rows.dim() != 2 or rows.shape[1] < 1:
        raise ValueError(f"rows: got shape {tuple(rows.shape)}, expected (n_r, D>=1)")
    if not 1 <= n <= total:
        raise ValueError(f"n: got {n}, expected 1 <= n <= total={total}")
    if offset % tile:
        raise ValueError(
            f"offset: got {offset}, expected a multiple of tile={tile} (ranks hold whole "
            "training samples)"
        )
    starts = _rank_starts(rows.shape[0], group)
    if starts[rank] != offset or starts[-1] != total:
        raise ValueError(
            f"rows: ranks hold rows starting at {starts[:-1]} of {starts[-1]}, expected this "
            f"rank's block to start at {offset} and the blocks to cover {total} rows"
        )
    _check_finite(rows, offset, total, group)
    D = rows.shape[1]
    gen = torch.Generator().manual_seed(seed)
    x = project_rows(rows, gen, projection_dim, tile)
    P = x.shape[1]
    sq = (x * x).sum(1)
    selected = torch.empty(n, dtype=torch.int64)
    selected[0] = int(torch.randint(0, total, (1,), generator=gen))
    keep_lo, keep_hi = shard_range(n, rank, world)
    kept = rows.new_empty((keep_hi - keep_lo, D))
    min_sq = torch.full((rows.shape[0],), float("inf"), device=x.device)
    # The start row: its owner broadcasts it (projected, then original). Later centres come
    # with the step's all-gather of every rank's farthest row: one collective per step.
    owner = bisect.bisect_right(starts, int(selected[0])) - 1
    centre = torch.empty(P + D, dtype=torch.float32, device=x.device)
    if rank == owner:
        centre[:P], centre[P:] = x[selected[0] - offset], rows[selected[0] - offset].float()
    if world > 1:
        dist.broadcast(centre, src=owner, group=group)
    for s in range(1, n + 1):
        if keep_lo <= s - 1 < keep_hi:
            kept[s - 1 - keep_lo] = centre[P:].to(rows.dtype)
        update_min_sq(min_sq, x, sq, centre[:P], tile)
        if rank == owner:
            min_sq[selected[s - 1] - offset] = -1.0  # never chosen twice
        if s == n:
            break
        selected[s], owner, centre = _farthest(min_sq, x, rows, offset, group)
    return selected, kept


def _rank_starts(count: int, group) -> list[int]:
    """Global first row of every rank's block, then the total."""
    _, world = rank_and_world(group)
    mine = torch.tensor([count], dtype=torch.int64)
    counts = [torch.empty_like(mine) for _ in range(world)]
    if world > 1:
        dist.all_gather(counts, mine, group=group)
    else:
        counts = [mine]
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + int(c))
    return starts


def _check_finite(rows: torch.Tensor, offset: int, total: int, group) -> None:
    """Every rank raises the same error for the first non-finite row (a NaN would win every
    maximum); agreed by a MIN all-reduce so no rank is left waiting in a collective."""
    bad = ~torch.isfinite(rows).all(1)
    first = offset + int(bad.nonzero()[0]) if bool(bad.any()) else total
    flag = torch.tensor([first], dtype=torch.int64)
    if rank_and_world(group)[1] > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
    if int(flag) < total:
        raise ValueError(f"features: row {int(flag)} contains NaN or Inf, expected finite values")


def _farthest(min_sq, x, rows, offset: int, group):
    """(global index, owning rank, projected + original row) of the largest min_sq over all
    ranks, lowest index on ties: every rank all-gathers every rank's candidate (its key, bit-cast
    into two float32 slots, and the row), so no second collective fetches the winner's row."""
    P, D = x.shape[1], rows.shape[1]
    buf = torch.empty(2 + P + D, dtype=torch.float32, device=x.device)
    if min_sq.numel():
        local = int(torch.argmax(min_sq))  # first maximum
        bits = int(min_sq[local].view(torch.int32))
        key = (bits << 32) | (_LOW32 - (offset + local))
        buf[2 : 2 + P], buf[2 + P :] = x[local], rows[local].float()
    else:
        key = -(1 << 63)
        buf[2:] = 0
    buf[:2] = torch.tensor([key], dtype=torch.int64).view(torch.float32)
    _, world = rank_and_world(group)
    if world > 1:
        offers = [torch.empty_like(buf) for _ in range(world)]
        dist.all_gather(offers, buf, group=group)
    else:
        offers = [buf]
    keys = [int(o[:2].view(torch.int64)) for o in offers]
    winner = max(range(world), key=keys.__getitem__)
    return _LOW32 - (keys[winner] & _LOW32), winner, offers[winner][2:].clone()
