"""Triton kernels of the global memory-bank search (docs/design.md §3.2): min_l2 (split over the
bank, then merged); bank_sq_norms is kernels/bank_sq_norms.py, re-exported here.

Called by ``vsad/ops/min_l2.py`` for backend "triton"; the semantics are those of the reference
twin ``vsad/ops/min_l2_reference.py`` and the C++ kernel ``csrc/kernels/min_l2.cpp``:

    score(q, n) = ‖b_n‖² − 2⟨q, b_n⟩,   index = the lowest n with the minimal score,
    dist = sqrt(max(‖q‖² + min_n score, 0)).

‖q‖² is added after the minimum, as the reference does: it is the same for every bank row of a
query, so it cannot move the argmin in exact arithmetic, and leaving it out of the scores keeps
the rounding of the compared values (hence the tie decisions) the same as the other backends'.

Layout of the work: a 2-D grid of (query block, bank split) programs. The bank's BLOCK_N-row
tiles are cut into `splits` contiguous runs; the program (i, s) streams run s for BLOCK_Q
queries. A tile's dot products are a BLOCK_Q × BLOCK_N float32 accumulator filled by tl.dot
over BLOCK_D-wide chunks of the feature dimension (masked and zero-filled where D is not a
multiple of BLOCK_D; zeros add nothing to a dot product). A running (min, argmin) per query is
carried from tile to tile and written to a (splits, Q) scratch of float32 scores and int32
rows; a second kernel merges the splits in increasing order and writes dist and index. So the
Q × N distance matrix never exists: the extra memory is one tile per program plus 8·splits
bytes per query.

Why the split: a per-view search has Q ≈ 1–4k queries, i.e. 16–64 query blocks, fewer than one
wave of programs on a GPU with ~100+ multiprocessors. `splits` is chosen so that the grid holds
about four programs per multiprocessor (each split keeping at least 4 tiles); the scratch and the
merge cost 8·splits bytes and a few loads per query.

Ties, lowest index first: inside a tile the lowest column attaining the tile's minimum is taken
(a min over the column indices of the minima, which does not depend on any argmin tie rule);
across tiles, visited in increasing order, a later tile replaces the running minimum only when
strictly smaller; the merge visits the splits (increasing row ranges) in order with the same
strict rule. So the result is the lowest index attaining the minimum whatever the split count.

Precision:
- tl.dot on float32 operands defaults to TF32 on Ampere and later GPUs (a 10-bit mantissa). That
  would break the exact contract, so every dot asks for input_precision="ieee".
- float16 / bfloat16 bank tiles are converted to float32 in registers before the dot: the search
  is exact with respect to the stored bank values, as the C++ kernel's is, at fp32 dot speed.
- precision="mixed" (a bf16 screen, then an fp32 re-rank, on the C++ backend) runs this same fp32
  search on Triton: its results are identical to "fp32" by construction, without the speed-up.
- The square root is sqrt_rn (correctly rounded, IEEE), not the approximate tl.sqrt: a distance
  is the float32 rounding of the exact root of the computed squared distance.

Under TRITON_INTERPRET=1 (set before this module is imported) the same kernels run on CPU
tensors; that is how the tests exercise them on machines without a GPU. The interpreter's dot is a
plain numpy matmul whatever the requested precision, so it cannot catch a TF32 regression: the
tests check the precision the kernel requests instead.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from vsad.kernels._common import (
    MAX_ROWS,
    check_blocks,
    check_output,
    check_tensor_meta,
    device_guard,
    multiprocessor_count,
)
from vsad.kernels.bank_sq_norms import BANK_DTYPES, _row_sq_norms, bank_sq_norms

__all__ = ["bank_sq_norms", "min_l2"]

#: Tiles a split keeps at least (fewer would make the merge a noticeable share of the work).
MIN_TILES_PER_SPLIT = 4
#: Programs per multiprocessor the default split aims at.
PROGRAMS_PER_SM = 4


# ---------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _min_l2_partial_kernel(
    q_ptr, b_ptr, norms_ptr, part_val_ptr, part_idx_ptr, Q, N, D, tiles_per_split,
    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_mask = rows < Q
    split = tl.program_id(1)
    n_begin = split * tiles_per_split * BLOCK_N
    n_end = tl.minimum(N, n_begin + tiles_per_split * BLOCK_N)
    best = tl.full([BLOCK_Q], float("inf"), tl.float32)  # running min of ‖b‖² − 2⟨q, b⟩
    best_idx = tl.zeros([BLOCK_Q], tl.int32) + n_begin
    for n0 in range(n_begin, n_end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_mask = cols < n_end
        dots = tl.zeros([BLOCK_Q, BLOCK_N], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            d_mask = dd < D
            q = tl.load(
                q_ptr + rows[:, None] * D + dd[None, :],
                mask=row_mask[:, None] & d_mask[None, :],
                other=0.0,
            )
            b = tl.load(
                b_ptr + cols.to(tl.int64)[:, None] * D + dd[None, :],
                mask=col_mask[:, None] & d_mask[None, :],
                other=0.0,
            ).to(tl.float32)
            dots = tl.dot(q, tl.trans(b), dots, input_precision="ieee")
        norms = tl.load(norms_ptr + cols, mask=col_mask, other=0.0)
        scores = norms[None, :] - 2.0 * dots
        scores = tl.where(col_mask[None, :], scores, float("inf"))
        tile_min = tl.min(scores, axis=1)
        # Lowest column attaining the minimum (N: a sentinel above every real column).
        tile_idx = tl.min(tl.where(scores == tile_min[:, None], cols[None, :], N), axis=1)
        better = tile_min < best  # strict: an earlier tile keeps a tie
        best = tl.where(better, tile_min, best)
        best_idx = tl.where(better, tile_idx, best_idx)
    part = split.to(tl.int64) * Q + rows
    tl.store(part_val_ptr + part, best, mask=row_mask)
    tl.store(part_idx_ptr + part, best_idx, mask=row_mask)


@triton.jit
def _min_l2_merge_kernel(
    q_ptr, part_val_ptr, part_idx_ptr, dist_ptr, index_ptr, Q, D, splits,
    BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_mask = rows < Q
    best = tl.load(part_val_ptr + rows, mask=row_mask, other=0.0)
    best_idx = tl.load(part_idx_ptr + rows, mask=row_mask, other=0)
    for s in range(1, splits):
        part = s * Q + rows
        value = tl.load(part_val_ptr + part, mask=row_mask, other=0.0)
        idx = tl.load(part_idx_ptr + part, mask=row_mask, other=0)
        better = value < best  # strict: an earlier split (lower rows) keeps a tie
        best = tl.where(better, value, best)
        best_idx = tl.where(better, idx, best_idx)
    q_norms = _row_sq_norms(q_ptr, rows, row_mask, D, BLOCK_Q, BLOCK_D)
    dist = tl.sqrt_rn(tl.maximum(q_norms + best, 0.0))
    tl.store(dist_ptr + rows, dist, mask=row_mask)
    tl.store(index_ptr + rows, best_idx.to(tl.int64), mask=row_mask)


# ---------------------------------------------------------------------------------------------
# Host side


def min_l2(
    queries: torch.Tensor,
    bank: torch.Tensor,
    norms: torch.Tensor,
    dist: torch.Tensor,
    index: torch.Tensor,
    *,
    blocks: tuple[int, int, int] | None = None,
    splits: int | None = None,
) -> None:
    """Writes dist (Q,) float32 and index (Q,) int64 of the nearest bank row of every query.

    Args:
        queries: (Q, D) float32, contiguous.
        bank: (N, D) float32, float16 or bfloat16, contiguous.
        norms: (N,) float32 ‖b‖² (from :func:`bank_sq_norms`, or the caller's).
        blocks: optional (BLOCK_Q, BLOCK_N, BLOCK_D), powers of two >= 16 (tl.dot's minimum);
            default by device.
        splits: optional number of contiguous bank ranges searched by separate programs (at
            most the number of bank tiles); default by device (:func:`default_splits`).

    Values are not checked here (no data reads): vsad.ops.min_l2 validates them first.
    """
    check_tensor_meta("bank", bank, 2, BANK_DTYPES, None, "2-D (N, D) with rows and columns")
    N, D = bank.shape
    check_tensor_meta(
        "queries", queries, 2, (torch.float32,), bank.device, "2-D (Q, D) with rows and columns"
    )
    Q = queries.shape[0]
    if queries.shape[1] != D:
        raise ValueError(
            f"queries: got shape {tuple(queries.shape)}, expected D={D} columns like the bank"
        )
    check_output("norms", norms, (N,), torch.float32, bank.device)
    check_output("dist", dist, (Q,), torch.float32, bank.device)
    check_output("index", index, (Q,), torch.int64, bank.device)
    block_q, block_n, block_d = blocks if blocks is not None else _blocks(D, bank.device)
    check_blocks(block_q=block_q, block_n=block_n, block_d=block_d)
    n_tiles = triton.cdiv(N, block_n)
    q_blocks = triton.cdiv(Q, block_q)
    if splits is None:
        splits = default_splits(q_blocks, n_tiles, bank.device)
    elif not isinstance(splits, int) or isinstance(splits, bool) or splits < 1:
        raise ValueError(f"splits: got {splits!r}, expected an integer >= 1")
    tiles_per_split = triton.cdiv(n_tiles, min(splits, n_tiles))
    splits = triton.cdiv(n_tiles, tiles_per_split)  # no empty split
    if splits * Q > MAX_ROWS:  # the merge indexes the scratch with int32 split offsets
        tiles_per_split = triton.cdiv(n_tiles, max(1, MAX_ROWS // Q))
        splits = triton.cdiv(n_tiles, tiles_per_split)
    part_val = torch.empty((splits, Q), dtype=torch.float32, device=bank.device)
    part_idx = torch.empty((splits, Q), dtype=torch.int32, device=bank.device)
    with device_guard(bank.device):
        _min_l2_partial_kernel[(q_blocks, splits)](
            queries, bank, norms, part_val, part_idx, Q, N, D, tiles_per_split,
            BLOCK_Q=block_q, BLOCK_N=block_n, BLOCK_D=block_d,
        )  # fmt: skip
        _min_l2_merge_kernel[(q_blocks,)](
            queries, part_val, part_idx, dist, index, Q, D, splits,
            BLOCK_Q=block_q, BLOCK_D=block_d,
        )  # fmt: skip


def default_splits(q_blocks: int, n_tiles: int, device: torch.device) -> int:
    """Bank splits for a grid of about PROGRAMS_PER_SM programs per multiprocessor, each split
    keeping at least MIN_TILES_PER_SPLIT tiles. Under the interpreter (tests): 2, so that the
    default path crosses a split boundary too."""
    if device.type == "cpu":
        return min(2, n_tiles)
    target = PROGRAMS_PER_SM * multiprocessor_count(device)
    wanted = triton.cdiv(target, q_blocks)
    return max(1, min(wanted, n_tiles // MIN_TILES_PER_SPLIT))


def _blocks(D: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_Q, BLOCK_N, BLOCK_D). On a GPU, 64 × 64 tiles (a 16 KiB float32 accumulator per
    program, 32 registers a thread at 4 warps) with 32-wide feature chunks. CPU tensors only run
    under the interpreter, i.e. in tests: the smallest legal tiles, so that tiny inputs still
    cross query, bank and feature tile boundaries."""
    if device.type == "cpu":
        return 16, 16, 16
    return 64, 64, 32 if D >= 32 else 16
