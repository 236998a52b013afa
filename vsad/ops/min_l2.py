"""Memory-bank search: the nearest normal prototype of every query feature (paper eq. 12).

Contract: DESIGN.md §3.2. Backends: ``cpp`` (fused, tiled C++ kernel; the Q×N distance matrix
never exists; extra memory ≤ 512 KiB + 4 bytes per query) and ``reference`` (chunked PyTorch,
``min_l2_reference.py``).
"""

from __future__ import annotations

import torch

from vsad._extension import require_cpp
from vsad.ops._backend import choose_backend
from vsad.ops._outputs import new_output
from vsad.ops.min_l2_reference import min_l2_reference

__all__ = ["bank_sq_norms", "min_l2", "min_l2_reference"]

BANK_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
PRECISIONS = ("fp32",)
_SUPPORTED = ("reference", "cpp")


def _check_matrix(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: got {type(t).__name__}, expected a torch.Tensor")
    if t.dim() != 2:
        raise ValueError(f"{name}: got shape {tuple(t.shape)}, expected 2-D ({name[0].upper()}, D)")
    if t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(
            f"{name}: got shape {tuple(t.shape)}, expected at least one row and column"
        )
    if not t.is_floating_point():
        raise TypeError(f"{name}: got dtype {t.dtype}, expected a floating dtype")
    if not torch.compiler.is_compiling() and not _all_finite(t):
        raise ValueError(f"{name}: contains NaN or Inf, expected finite values")


def _all_finite(t: torch.Tensor, rows: int = 4096) -> bool:
    """torch.isfinite(t).all() in row chunks: the check must not cost a bank-sized temporary."""
    return all(bool(torch.isfinite(t[i : i + rows]).all()) for i in range(0, t.shape[0], rows))


def bank_sq_norms(bank: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """‖b‖² of every bank row (float32), with the arithmetic min_l2 uses: compute once, pass as
    `bank_sq_norms=` to every search of the same bank."""
    _check_matrix("bank", bank)
    chosen = choose_backend("min_l2", bank.device, backend, _SUPPORTED)
    if chosen == "reference":
        b = bank.float()
        return (b * b).sum(1)
    if bank.dtype not in BANK_DTYPES:
        raise TypeError(f"bank: got dtype {bank.dtype}, expected one of {list(BANK_DTYPES)}")
    bank = bank.contiguous()
    out = new_output((bank.shape[0],), torch.float32, bank.device)
    require_cpp().min_l2_bank_sq_norms(
        bank.data_ptr(),
        BANK_DTYPES[bank.dtype],
        *bank.shape,
        out.data_ptr(),
        torch.get_num_threads(),
    )
    return out


def min_l2(
    queries: torch.Tensor,
    bank: torch.Tensor,
    *,
    bank_sq_norms: torch.Tensor | None = None,
    precision: str = "fp32",
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every query row, the L2 distance to the nearest bank row and that row's index.

    Args:
        queries: (Q, D) features (computed in float32; float64 only on the reference backend).
        bank: (N, D) prototypes stored as float32, float16 or bfloat16 (accumulation is float32).
        bank_sq_norms: optional (N,) float32 ‖b‖², from :func:`bank_sq_norms`, to reuse across
            searches of the same bank.
        precision: "fp32" (exact).
        backend: "cpp" or "reference"; default by device (overridable by VSAD_BACKEND).

    Returns:
        dist (Q,) = min_n ‖q − bank[n]‖₂ (float32), index (Q,) int64 (lowest index on ties).
    """
    _check_matrix("queries", queries)
    _check_matrix("bank", bank)
    if queries.shape[1] != bank.shape[1]:
        raise ValueError(
            f"queries: dimension D={queries.shape[1]} does not match the bank's D={bank.shape[1]}"
        )
    if queries.device != bank.device:
        raise ValueError(f"bank: on {bank.device}, expected the queries' device {queries.device}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: got {precision!r}, expected one of {PRECISIONS}")
    N = bank.shape[0]
    if bank_sq_norms is not None and tuple(bank_sq_norms.shape) != (N,):
        raise ValueError(f"bank_sq_norms: got shape {tuple(bank_sq_norms.shape)}, expected ({N},)")
    chosen = choose_backend("min_l2", queries.device, backend, _SUPPORTED)
    if chosen == "reference":
        return min_l2_reference(queries, bank, bank_sq_norms=bank_sq_norms)

    if bank.dtype not in BANK_DTYPES:
        raise TypeError(f"bank: got dtype {bank.dtype}, expected one of {list(BANK_DTYPES)}")
    q = queries.to(torch.float32).contiguous()
    b = bank.contiguous()
    norms = _bank_norms_cpp(b) if bank_sq_norms is None else bank_sq_norms.float().contiguous()
    Q = q.shape[0]
    dist = new_output((Q,), torch.float32, q.device)
    index = new_output((Q,), torch.int64, q.device)
    require_cpp().min_l2(
        q.data_ptr(), b.data_ptr(), BANK_DTYPES[b.dtype], norms.data_ptr(), Q, N, q.shape[1],
        dist.data_ptr(), index.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return dist, index


def _bank_norms_cpp(bank: torch.Tensor) -> torch.Tensor:
    out = new_output((bank.shape[0],), torch.float32, bank.device)
    require_cpp().min_l2_bank_sq_norms(
        bank.data_ptr(),
        BANK_DTYPES[bank.dtype],
        *bank.shape,
        out.data_ptr(),
        torch.get_num_threads(),
    )
    return out
