"""Memory-bank search: the nearest normal prototype of every query feature (paper eq. 12).

Contract: docs/design.md §3.2. Backends: ``cpp`` (fused, tiled C++ kernel; the Q×N distance matrix
never exists; extra memory ≤ 512 KiB + 4 bytes per query), ``triton`` (CUDA, or CPU tensors
under ``TRITON_INTERPRET=1``; tiled the same way, ``kernels/min_l2.py``) and ``reference``
(chunked PyTorch, ``min_l2_reference.py``).

``min_l2_local`` has no triton backend: on CUDA tensors its device default is the reference
(which runs on any device), and an explicit backend="triton" is refused with an error.
"""

from __future__ import annotations

import torch

from vsad._extension import require_cpp
from vsad.ops._backend import choose_backend
from vsad.ops._outputs import new_output
from vsad.ops.min_l2_reference import min_l2_local_reference, min_l2_reference

__all__ = [
    "bank_sq_norms",
    "min_l2",
    "min_l2_local",
    "min_l2_local_reference",
    "min_l2_reference",
]

BANK_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
PRECISIONS = ("fp32", "mixed")
_SUPPORTED = ("reference", "cpp", "triton")
_LOCAL_SUPPORTED = ("reference", "cpp")  # min_l2_local: no triton kernel (see the docstring)


def _check_matrix(name: str, t: torch.Tensor, *, check_values: bool = True) -> None:
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
    if check_values and not torch.compiler.is_compiling() and not _all_finite(t):
        raise ValueError(f"{name}: contains NaN or Inf, expected finite values")


def _check_bank_norms(norms: torch.Tensor) -> None:
    """A NaN or Inf anywhere in a bank row makes that row's ‖b‖² non-finite, so the bank is
    checked through its (reused) norms in O(N) instead of re-reading N·D values per search."""
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(norms).all()):
        row = int((~torch.isfinite(norms)).nonzero()[0])
        raise ValueError(
            f"bank: row {row} contains NaN or Inf (or values whose square overflows float32), "
            f"expected finite values"
        )


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
    if chosen == "triton":
        return _bank_norms_triton(_bank_for_cpp(bank))
    return _bank_norms_cpp(_bank_for_cpp(bank))


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
        precision: "fp32" (exact) or "mixed": screen with bf16 products (AVX512-BF16), then
            re-rank the survivors in fp32 — results identical to "fp32" by a proven error bound
            (csrc/kernels/min_l2.cpp); without AVX512-BF16 it runs the fp32 search. The
            reference and triton backends always compute in fp32 (kernels/min_l2.py).
        backend: "cpp", "triton" or "reference"; default by device (overridable by
            VSAD_BACKEND).

    Returns:
        dist (Q,) = min_n ‖q − bank[n]‖₂ (float32), index (Q,) int64 (lowest index on ties).
    """
    _check_matrix("queries", queries)
    _check_matrix("bank", bank, check_values=False)  # values: through the norms below
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
        _check_matrix("bank", bank)
        return min_l2_reference(queries, bank, bank_sq_norms=bank_sq_norms)

    q = queries.to(torch.float32).contiguous()
    b = _bank_for_cpp(bank)
    if chosen == "triton":
        return _min_l2_triton(q, b, bank_sq_norms)
    norms = _bank_norms_cpp(b) if bank_sq_norms is None else bank_sq_norms.float().contiguous()
    _check_bank_norms(norms)
    Q = q.shape[0]
    dist = new_output((Q,), torch.float32, q.device)
    index = new_output((Q,), torch.int64, q.device)
    require_cpp().min_l2(
        q.data_ptr(), b.data_ptr(), BANK_DTYPES[b.dtype], norms.data_ptr(), Q, N, q.shape[1],
        dist.data_ptr(), index.data_ptr(), torch.get_num_threads(), precision,
    )  # fmt: skip
    return dist, index


def _bank_for_cpp(bank: torch.Tensor) -> torch.Tensor:
    """The bank as the C++ kernels take it: a supported storage dtype, contiguous."""
    if bank.dtype not in BANK_DTYPES:
        raise TypeError(f"bank: got dtype {bank.dtype}, expected one of {list(BANK_DTYPES)}")
    return bank.contiguous()


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


def _triton_kernels():
    """vsad.kernels.min_l2, imported on first use: importing triton is slow, and
    TRITON_INTERPRET must be set before the kernel module is imported."""
    from vsad.kernels import min_l2 as kernels

    return kernels


def _bank_norms_triton(bank: torch.Tensor) -> torch.Tensor:
    out = new_output((bank.shape[0],), torch.float32, bank.device)
    _triton_kernels().bank_sq_norms(bank, out)
    return out


def _min_l2_triton(
    q: torch.Tensor, b: torch.Tensor, bank_sq_norms: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The triton search; precision="mixed" runs it too (identical results, see the kernel)."""
    if bank_sq_norms is None:
        norms = _bank_norms_triton(b)
    elif bank_sq_norms.device != b.device:
        raise ValueError(
            f"bank_sq_norms: on {bank_sq_norms.device}, expected the bank's device {b.device}"
        )
    else:
        norms = bank_sq_norms.float().contiguous()
    _check_bank_norms(norms)
    dist = new_output((q.shape[0],), torch.float32, q.device)
    index = new_output((q.shape[0],), torch.int64, q.device)
    _triton_kernels().min_l2(q, b, norms, dist, index)
    return dist, index


def min_l2_local(
    queries: torch.Tensor,
    bank: torch.Tensor,
    *,
    radius: int = 2,
    bank_sq_norms: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Position-conditioned search for aligned views (docs/design.md §3.2).

    Args:
        queries: (B, H, W, D) feature maps of one view.
        bank: (S, H, W, D) the same view's feature maps of S normal samples (float32, float16 or
            bfloat16 storage).
        radius: ρ — a query at (y, x) sees bank positions within ±ρ rows and columns.
        bank_sq_norms: optional (S·H·W,) from :func:`bank_sq_norms` on bank.reshape(-1, D).
        backend: "cpp" or "reference"; default by device (overridable by VSAD_BACKEND). There
            is no triton backend: CUDA tensors default to the reference, and "triton" is
            refused with a ValueError.

    Returns:
        dist (B, H, W) and index (B, H, W) into bank.reshape(-1, D) (lowest on ties).
    """
    for name, t in (("queries", queries), ("bank", bank)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: got {shape}, expected a 4-D tensor (N, H, W, D)")
        _check_matrix(name, t.reshape(-1, t.shape[-1]), check_values=name == "queries")
    if queries.shape[1:] != bank.shape[1:]:
        raise ValueError(
            f"bank: got shape {tuple(bank.shape)}, expected (S, H, W, D) matching the queries' "
            f"{tuple(queries.shape[1:])}"
        )
    if not isinstance(radius, int) or radius < 0:
        raise ValueError(f"radius: got {radius!r}, expected an integer >= 0")
    B, H, W, D = queries.shape
    S = bank.shape[0]
    if bank_sq_norms is not None and tuple(bank_sq_norms.shape) != (S * H * W,):
        raise ValueError(
            f"bank_sq_norms: got shape {tuple(bank_sq_norms.shape)}, expected ({S * H * W},)"
        )
    chosen = choose_backend("min_l2_local", queries.device, backend, _LOCAL_SUPPORTED)
    if chosen == "reference":
        _check_matrix("bank", bank.reshape(-1, D))
        return min_l2_local_reference(queries, bank, radius=radius, bank_sq_norms=bank_sq_norms)
    q = queries.to(torch.float32).contiguous()
    b = _bank_for_cpp(bank)
    norms = (
        _bank_norms_cpp(b.reshape(-1, D))
        if bank_sq_norms is None
        else bank_sq_norms.float().contiguous()
    )
    _check_bank_norms(norms)
    dist = new_output((B, H, W), torch.float32, q.device)
    index = new_output((B, H, W), torch.int64, q.device)
    # Named in torch.profiler traces like the custom ops (bench/test_model.py sums its time).
    with torch.profiler.record_function("vsad::min_l2_local"):
        require_cpp().min_l2_local(
            q.data_ptr(), b.data_ptr(), BANK_DTYPES[b.dtype], norms.data_ptr(), B, S, H, W, D,
            radius, dist.data_ptr(), index.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
    return dist, index
