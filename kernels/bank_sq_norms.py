"""Triton kernel of the bank's row norms ‖b‖² (docs/design.md §3.2), shared by the searches.

Called by ``vsad/ops/min_l2.py`` (``vsad::bank_sq_norms``, backend "triton"); the semantics are
those of the reference twin (``(b.float() ** 2).sum(1)``) and the C++ kernel: float32
accumulation of the stored (float32, float16 or bfloat16) values. One program per block of
BLOCK_N rows, BLOCK_D-wide chunks of the features (masked, zero-filled past D). The same
``_row_sq_norms`` gives the searches their ‖q‖², so a query and a bank row that are equal get
the same norm.

Under TRITON_INTERPRET=1 (set before this module is imported) the kernel runs on CPU tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from vsad.kernels._common import check_blocks, check_output, check_tensor_meta, device_guard

__all__ = ["bank_sq_norms"]

BANK_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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


def bank_sq_norms(bank: torch.Tensor, out: torch.Tensor, *, blocks=None) -> None:
    """Writes out (N,) float32 = ‖b‖² of every row of bank (N, D).

    blocks: optional (BLOCK_N, BLOCK_D) powers of two >= 16 (tests use it to cross tile edges).
    """
    check_tensor_meta("bank", bank, 2, BANK_DTYPES, None, "2-D (N, D) with rows and columns")
    N, D = bank.shape
    check_output("out", out, (N,), torch.float32, bank.device)
    block_n, block_d = blocks if blocks is not None else default_blocks(D, bank.device)
    check_blocks(block_n=block_n, block_d=block_d)
    with device_guard(bank.device):
        _sq_norms_kernel[(triton.cdiv(N, block_n),)](
            bank, out, N, D, BLOCK_N=block_n, BLOCK_D=block_d
        )


def default_blocks(D: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_D): 64 rows × 32 features on a GPU; the smallest legal tiles under the
    interpreter (tests), so that tiny inputs still cross tile edges."""
    if device.type == "cpu":
        return 16, 16
    return 64, 32 if D >= 32 else 16
