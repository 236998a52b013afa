"""Triton kernels of the memory-bank search (docs/design.md §3.2): min_l2 and the bank's ‖b‖².

Called by ``vsad/ops/min_l2.py`` for backend "triton"; the semantics are those of the reference
twin ``vsad/ops/min_l2_reference.py`` and the C++ kernel ``csrc/kernels/min_l2.cpp``:

    score(q, n) = ‖b_n‖² − 2⟨q, b_n⟩,   index = the lowest n with the minimal score,
    dist = sqrt(max(‖q‖² + min_n score, 0)).

‖q‖² is added after the minimum, as the reference does: it is the same for every bank row of a
query, so it cannot move the argmin in exact arithmetic, and leaving it out of the scores keeps
the rounding of the compared values (hence the tie decisions) the same as the other backends'.

Layout of the work: one program per block of BLOCK_Q queries. It streams over the bank in tiles
of BLOCK_N rows; a tile's dot products are a BLOCK_Q × BLOCK_N float32 accumulator filled by
tl.dot over BLOCK_D-wide chunks of the feature dimension (masked and zero-filled where D is not a
multiple of BLOCK_D; zeros add nothing to a dot product). A running (min, argmin) per query is
carried from tile to tile, so the Q × N distance matrix never exists: the extra memory is that
one tile per program.

Ties, lowest index first: inside a tile the lowest column attaining the tile's minimum is taken
(a min over the column indices of the minima, which does not depend on any argmin tie rule);
across tiles, visited in increasing order, a later tile replaces the running minimum only when
strictly smaller.

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

import contextlib

import torch
import triton
import triton.language as tl

__all__ = ["bank_sq_norms", "min_l2"]

BANK_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: Whether @triton.jit made interpreted functions (decided once, when this module was imported).
_INTERPRETED = bool(triton.knobs.runtime.interpret)

_MAX_ROWS = 2**31 - 1  # indices are carried as int32 inside the kernel


# ---------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _row_sq_norms(ptr, rows, row_mask, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Σ_d x[row, d]² in float32 for a block of BLOCK_R rows of a row-major (·, D) matrix."""
    acc = tl.zeros([BLOCK_R], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        mask = row_mask[:, None] & (dd < D)[None, :]
        x = tl.load(ptr + rows[:, None] * D + dd[None, :], mask=mask, other=0.0).to(tl.float32)
        acc += tl.sum(x * x, axis=1)
    return acc


@triton.jit
def _sq_norms_kernel(b_ptr, out_ptr, N, D, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    norms = _row_sq_norms(b_ptr, rows, row_mask, D, BLOCK_N, BLOCK_D)
    tl.store(out_ptr + rows, norms, mask=row_mask)


@triton.jit
def _min_l2_kernel(
    q_ptr, b_ptr, norms_ptr, dist_ptr, index_ptr, Q, N, D,
    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_mask = rows < Q
    best = tl.full([BLOCK_Q], float("inf"), tl.float32)  # running min of ‖b‖² − 2⟨q, b⟩
    best_idx = tl.zeros([BLOCK_Q], tl.int32)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_mask = cols < N
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
    q_norms = _row_sq_norms(q_ptr, rows, row_mask, D, BLOCK_Q, BLOCK_D)
    dist = tl.sqrt_rn(tl.maximum(q_norms + best, 0.0))
    tl.store(dist_ptr + rows, dist, mask=row_mask)
    tl.store(index_ptr + rows, best_idx.to(tl.int64), mask=row_mask)


# ---------------------------------------------------------------------------------------------
# Host side


def bank_sq_norms(bank: torch.Tensor, out: torch.Tensor, *, blocks=None) -> None:
    """Writes out (N,) float32 = ‖b‖² of every bank row, with min_l2's arithmetic.

    blocks: optional (BLOCK_N, BLOCK_D) powers of two >= 16 (tests use it to cross tile edges).
    """
    N, D = _check_bank(bank)
    _check_output("out", out, (N,), torch.float32, bank.device)
    block_n, block_d = blocks if blocks is not None else _blocks(D, bank.device)[1:]
    _check_blocks(block_n=block_n, block_d=block_d)
    with _device_guard(bank.device):
        _sq_norms_kernel[(triton.cdiv(N, block_n),)](
            bank, out, N, D, BLOCK_N=block_n, BLOCK_D=block_d
        )


def min_l2(
    queries: torch.Tensor,
    bank: torch.Tensor,
    norms: torch.Tensor,
    dist: torch.Tensor,
    index: torch.Tensor,
    *,
    blocks: tuple[int, int, int] | None = None,
) -> None:
    """Writes dist (Q,) float32 and index (Q,) int64 of the nearest bank row of every query.

    Args:
        queries: (Q, D) float32, contiguous.
        bank: (N, D) float32, float16 or bfloat16, contiguous.
        norms: (N,) float32 ‖b‖² (from :func:`bank_sq_norms`, or the caller's).
        blocks: optional (BLOCK_Q, BLOCK_N, BLOCK_D), powers of two >= 16 (tl.dot's minimum);
            default by device.

    Values are not checked here (no data reads): vsad.ops.min_l2 validates them first.
    """
    N, D = _check_bank(bank)
    _check_matrix_meta("queries", queries, (torch.float32,), bank.device)
    Q = queries.shape[0]
    if queries.shape[1] != D:
        raise ValueError(
            f"queries: got shape {tuple(queries.shape)}, expected D={D} columns like the bank"
        )
    _check_output("norms", norms, (N,), torch.float32, bank.device)
    _check_output("dist", dist, (Q,), torch.float32, bank.device)
    _check_output("index", index, (Q,), torch.int64, bank.device)
    block_q, block_n, block_d = blocks if blocks is not None else _blocks(D, bank.device)
    _check_blocks(block_q=block_q, block_n=block_n, block_d=block_d)
    with _device_guard(bank.device):
        _min_l2_kernel[(triton.cdiv(Q, block_q),)](
            queries, bank, norms, dist, index, Q, N, D,
            BLOCK_Q=block_q, BLOCK_N=block_n, BLOCK_D=block_d,
        )  # fmt: skip


def _blocks(D: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_Q, BLOCK_N, BLOCK_D). On a GPU, 64 × 64 tiles (a 16 KiB float32 accumulator per
    program, 32 registers a thread at 4 warps) with 32-wide feature chunks. CPU tensors only run
    under the interpreter, i.e. in tests: the smallest legal tiles, so that tiny inputs still
    cross query, bank and feature tile boundaries."""
    if device.type == "cpu":
        return 16, 16, 16
    return 64, 64, 32 if D >= 32 else 16


@contextlib.contextmanager
def _device_guard(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' one."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            yield
    else:
        yield


# ---------------------------------------------------------------------------------------------
# Metadata checks (no data reads) naming the offending argument; they guard direct callers.


def _check_device(name: str, t: torch.Tensor) -> None:
    if t.device.type == "cpu" and not _INTERPRETED:
        raise ValueError(
            f"{name}: on cpu, but the triton backend runs on CUDA tensors (CPU tensors only "
            f"under TRITON_INTERPRET=1, set before vsad.kernels.min_l2 is first imported)"
        )
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: on {t.device}, expected a CUDA tensor")


def _check_matrix_meta(name: str, t, dtypes: tuple, device: torch.device | None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: got {type(t).__name__}, expected a torch.Tensor")
    if t.dim() != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"{name}: got shape {tuple(t.shape)}, expected 2-D with rows and columns")
    if t.dtype not in dtypes:
        raise TypeError(f"{name}: got dtype {t.dtype}, expected one of {list(dtypes)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: on {t.device}, expected the bank's device {device}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: got a non-contiguous tensor, expected a contiguous one")
    if t.shape[0] > _MAX_ROWS:
        raise ValueError(f"{name}: got {t.shape[0]} rows, expected at most {_MAX_ROWS}")
    _check_device(name, t)


def _check_bank(bank) -> tuple[int, int]:
    _check_matrix_meta("bank", bank, BANK_DTYPES, None)
    return bank.shape[0], bank.shape[1]


def _check_output(name: str, t, shape: tuple, dtype: torch.dtype, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: got {type(t).__name__}, expected a torch.Tensor")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: got shape {tuple(t.shape)}, expected {shape}")
    if t.dtype != dtype:
        raise TypeError(f"{name}: got dtype {t.dtype}, expected {dtype}")
    if t.device != device:
        raise ValueError(f"{name}: on {t.device}, expected the bank's device {device}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: got a non-contiguous tensor, expected a contiguous one")


def _check_blocks(**blocks: int) -> None:
    for name, size in blocks.items():
        if not isinstance(size, int) or size < 16 or size & (size - 1):
            raise ValueError(f"blocks: {name} got {size!r}, expected a power of two >= 16")
