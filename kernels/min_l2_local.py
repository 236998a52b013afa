"""Triton kernel of the position-local memory-bank search (docs/design.md §3.2, `min_l2_local`).

Called by ``vsad/ops/min_l2.py`` (``vsad::min_l2_local``, backend "triton"); the semantics are
those of the reference twin ``min_l2_local_reference`` and the C++ kernel: the query at
(b, y, x) of queries (B, H, W, D) is compared with every bank[s, y′, x′] of bank (S, H, W, D)
with |y′ − y| ≤ ρ and |x′ − x| ≤ ρ;

    score = ‖b‖² − 2⟨q, b⟩,   index = the lowest flat row s·H·W + y′·W + x′ among the minima,
    dist = sqrt(max(‖q‖² + min score, 0)).

Layout of the work: one program per block of BLOCK_Q queries (flattened over B, H, W, so a block
is a run of pixels along a row). It loops over the (2ρ+1)² window offsets and, per offset, over
the samples in tiles of BLOCK_S. Each query of the block reads its own bank rows (the rows at
its shifted position), so the products are not a matrix product: a BLOCK_Q × BLOCK_S × BLOCK_D
tile of elementwise products is summed over the features, BLOCK_D at a time, in float32.
Neighbouring queries read overlapping windows, which the caches absorb (each bank row is wanted
by up to (2ρ+1)²·B queries). Offsets outside the map and samples past S are masked (never
loaded, scored +inf). No scratch: a running (min, flat row) per query.

Ties: lexicographic on (score, flat row), as in the reference and the C++ kernel. Inside a tile
the lowest row attaining the tile's minimum is taken; across tiles (positions are not visited in
flat-row order) a tile replaces the running pair when its score is smaller, or equal with a
lower row. So the result does not depend on the visiting order or the block sizes.

float16 / bfloat16 bank rows are converted to float32 in registers; ‖q‖² comes from the same
helper as the bank norms (kernels/bank_sq_norms.py); the root is sqrt_rn (correctly rounded).
Indices are int32 inside the kernel (S·H·W and B·H·W < 2³¹).

Under TRITON_INTERPRET=1 (set before this module is imported) the kernel runs on CPU tensors;
that is how the tests exercise it on machines without a GPU.
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
)
from vsad.kernels.bank_sq_norms import BANK_DTYPES, _row_sq_norms

__all__ = ["min_l2_local"]

_NO_ROW = MAX_ROWS  # sentinel above every real flat row


@triton.jit
def _min_l2_local_kernel(
    q_ptr, b_ptr, norms_ptr, dist_ptr, index_ptr, num_queries, S, H, W, D, radius,
    BLOCK_Q: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    NO_ROW: tl.constexpr,
):  # fmt: skip
    p = tl.program_id(0).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_mask = p < num_queries
    x = (p % W).to(tl.int32)
    y = ((p // W) % H).to(tl.int32)
    HW = H * W
    best = tl.full([BLOCK_Q], float("inf"), tl.float32)  # running min of ‖b‖² − 2⟨q, b⟩
    best_idx = tl.full([BLOCK_Q], NO_ROW, tl.int32)
    for dy in range(-radius, radius + 1):
        yy = y + dy
        y_ok = q_mask & (yy >= 0) & (yy < H)
        for dx in range(-radius, radius + 1):
            xx = x + dx
            pos_ok = y_ok & (xx >= 0) & (xx < W)
            pos = tl.where(pos_ok, yy * W + xx, 0)
            for s0 in range(0, S, BLOCK_S):
                ss = s0 + tl.arange(0, BLOCK_S)
                valid = pos_ok[:, None] & (ss < S)[None, :]  # (BLOCK_Q, BLOCK_S)
                flat = ss[None, :] * HW + pos[:, None]  # int32: S·H·W < 2³¹
                dots = tl.zeros([BLOCK_Q, BLOCK_S], tl.float32)
                for d0 in range(0, D, BLOCK_D):
                    dd = d0 + tl.arange(0, BLOCK_D)
                    d_mask = dd < D
                    q = tl.load(
                        q_ptr + p[:, None] * D + dd[None, :],
                        mask=q_mask[:, None] & d_mask[None, :],
                        other=0.0,
                    )
                    b = tl.load(
                        b_ptr + flat.to(tl.int64)[:, :, None] * D + dd[None, None, :],
                        mask=valid[:, :, None] & d_mask[None, None, :],
                        other=0.0,
                    ).to(tl.float32)
                    dots += tl.sum(q[:, None, :] * b, axis=2)
                norms = tl.load(norms_ptr + flat, mask=valid, other=0.0)
                scores = tl.where(valid, norms - 2.0 * dots, float("inf"))
                tile_min = tl.min(scores, axis=1)
                hit = valid & (scores == tile_min[:, None])
                tile_idx = tl.min(tl.where(hit, flat, NO_ROW), axis=1)
                better = (tile_min < best) | ((tile_min == best) & (tile_idx < best_idx))
                best = tl.where(better, tile_min, best)
                best_idx = tl.where(better, tile_idx, best_idx)
    q_norms = _row_sq_norms(q_ptr, p, q_mask, D, BLOCK_Q, BLOCK_D)
    dist = tl.sqrt_rn(tl.maximum(q_norms + best, 0.0))
    tl.store(dist_ptr + p, dist, mask=q_mask)
    tl.store(index_ptr + p, best_idx.to(tl.int64), mask=q_mask)


def min_l2_local(
    queries: torch.Tensor,
    bank: torch.Tensor,
    norms: torch.Tensor,
    radius: int,
    dist: torch.Tensor,
    index: torch.Tensor,
    *,
    blocks: tuple[int, int, int] | None = None,
) -> None:
    """Writes dist (B, H, W) float32 and index (B, H, W) int64 (flat rows of bank.reshape(-1, D)).

    Args:
        queries: (B, H, W, D) float32, contiguous.
        bank: (S, H, W, D) float32, float16 or bfloat16, contiguous.
        norms: (S·H·W,) float32 ‖b‖² of bank.reshape(-1, D).
        radius: ρ >= 0.
        blocks: optional (BLOCK_Q, BLOCK_S, BLOCK_D), powers of two (tests use small ones to
            cross tile edges); default by device.

    Values are not checked here (no data reads): vsad.ops.min_l2_local validates them first.
    """
    check_tensor_meta("bank", bank, 4, BANK_DTYPES, None, "4-D (S, H, W, D), non-empty")
    S, H, W, D = bank.shape
    check_tensor_meta(
        "queries", queries, 4, (torch.float32,), bank.device, "4-D (B, H, W, D), non-empty"
    )
    if tuple(queries.shape[1:]) != (H, W, D):
        raise ValueError(
            f"queries: got shape {tuple(queries.shape)}, expected (B, {H}, {W}, {D}) like the bank"
        )
    B = queries.shape[0]
    if S * H * W > MAX_ROWS - 1:
        raise ValueError(f"bank: got {S * H * W} rows, expected fewer than {MAX_ROWS}")
    if not isinstance(radius, int) or isinstance(radius, bool) or radius < 0:
        raise ValueError(f"radius: got {radius!r}, expected an integer >= 0")
    check_output("norms", norms, (S * H * W,), torch.float32, bank.device)
    check_output("dist", dist, (B, H, W), torch.float32, bank.device)
    check_output("index", index, (B, H, W), torch.int64, bank.device)
    block_q, block_s, block_d = blocks if blocks is not None else _blocks(S, D, bank.device)
    check_blocks(1, block_q=block_q, block_s=block_s, block_d=block_d)
    # A window never reaches further than the map: larger radii give the same result.
    radius = min(radius, max(H, W) - 1)
    num_queries = B * H * W
    with device_guard(bank.device):
        _min_l2_local_kernel[(triton.cdiv(num_queries, block_q),)](
            queries, bank, norms, dist, index, num_queries, S, H, W, D, radius,
            BLOCK_Q=block_q, BLOCK_S=block_s, BLOCK_D=block_d, NO_ROW=_NO_ROW,
        )  # fmt: skip


def _blocks(S: int, D: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_Q, BLOCK_S, BLOCK_D). On a GPU a 16 × 16 × 16 product tile (4096 float32, 32
    registers a thread at 4 warps) — 16 queries per program keeps a per-view 32×32 search at 64+
    programs per sample image; the sample tile shrinks for small banks. Under the interpreter
    (tests only), whose cost is per operation, larger tiles with fewer loop trips."""
    block_s = min(16, triton.next_power_of_2(S))
    if device.type == "cpu":
        return 16, min(32, triton.next_power_of_2(S)), min(32, triton.next_power_of_2(D))
    return 16, block_s, 16
