"""Memory-bank search: the nearest normal prototype of every query feature (paper eq. 12).

Contract: docs/design.md §3.2. Backends: ``cpp`` (fused, tiled C++ kernels; the Q×N distance
matrix never exists; extra memory ≤ 512 KiB + 4 bytes per query), ``triton`` (CUDA, or CPU
tensors under ``TRITON_INTERPRET=1``; ``kernels/min_l2.py``, ``kernels/min_l2_local.py``,
``kernels/bank_sq_norms.py``) and ``reference`` (chunked PyTorch, ``min_l2_reference.py``).
CUDA tensors default to triton for all three functions when triton is installed.

The fused backends run through the torch.library custom ops ``vsad::bank_sq_norms``,
``vsad::min_l2`` and ``vsad::min_l2_local`` (fake kernels included), so the searches work under
fake tensors and inside ``torch.compile(fullgraph=True)``; the reference is plain PyTorch. The
fused searches are not differentiable: a search returns an argmin, nothing in vsad
differentiates through it, and their inputs are detached, so their outputs never require grad
(as before they were custom ops; callers turn distances into numpy arrays). The reference
backend is plain differentiable PyTorch.
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensor

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
_LOCAL_SUPPORTED = _SUPPORTED


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
    if check_values and _values_readable(t) and not _all_finite(t):
        raise ValueError(f"{name}: contains NaN or Inf, expected finite values")


def _check_bank_norms(norms: torch.Tensor) -> None:
    """A NaN or Inf anywhere in a bank row makes that row's ‖b‖² non-finite, so the bank is
    checked through its (reused) norms in O(N) instead of re-reading N·D values per search."""
    if _values_readable(norms) and not bool(torch.isfinite(norms).all()):
        row = int((~torch.isfinite(norms)).nonzero()[0])
        raise ValueError(
            f"bank: row {row} contains NaN or Inf (or values whose square overflows float32), "
            f"expected finite values"
        )


def _values_readable(t: torch.Tensor) -> bool:
    """Whether value checks can read `t`: not while torch.compile traces (data-dependent
    control flow), nor on fake or meta tensors (shape propagation; the kernels never run)."""
    return not (
        torch.compiler.is_compiling() or isinstance(t, FakeTensor) or t.device.type == "meta"
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
    return torch.ops.vsad.bank_sq_norms(_bank_for_cpp(bank.detach()), chosen)


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
    _check_given_norms(bank_sq_norms, bank.shape[0], bank.device)
    chosen = choose_backend("min_l2", queries.device, backend, _SUPPORTED)
    if chosen == "reference":
        _check_matrix("bank", bank)
        return min_l2_reference(queries, bank, bank_sq_norms=bank_sq_norms)
    b = _bank_for_cpp(bank.detach())
    norms = _norms_for(b, bank_sq_norms, chosen)
    q = queries.detach().to(torch.float32)
    return torch.ops.vsad.min_l2(q, b, norms, precision, chosen)


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
        backend: "cpp", "triton" or "reference"; default by device (CPU → cpp, CUDA → triton
            when installed; overridable by VSAD_BACKEND).

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
    if queries.device != bank.device:
        raise ValueError(f"bank: on {bank.device}, expected the queries' device {queries.device}")
    if not isinstance(radius, int) or isinstance(radius, bool) or radius < 0:
        raise ValueError(f"radius: got {radius!r}, expected an integer >= 0")
    B, H, W, D = queries.shape
    S = bank.shape[0]
    _check_given_norms(bank_sq_norms, S * H * W, bank.device)
    chosen = choose_backend("min_l2_local", queries.device, backend, _LOCAL_SUPPORTED)
    if chosen == "reference":
        _check_matrix("bank", bank.reshape(-1, D))
        return min_l2_local_reference(queries, bank, radius=radius, bank_sq_norms=bank_sq_norms)
    b = _bank_for_cpp(bank.detach())
    norms = _norms_for(b.reshape(-1, D), bank_sq_norms, chosen)
    q = queries.detach().to(torch.float32)
    return torch.ops.vsad.min_l2_local(q, b, norms, radius, chosen)


def _check_given_norms(norms, rows: int, device: torch.device) -> None:
    if norms is None:
        return
    if not isinstance(norms, torch.Tensor):
        raise TypeError(f"bank_sq_norms: got {type(norms).__name__}, expected a torch.Tensor")
    if tuple(norms.shape) != (rows,):
        raise ValueError(f"bank_sq_norms: got shape {tuple(norms.shape)}, expected ({rows},)")
    if not norms.is_floating_point():
        raise TypeError(f"bank_sq_norms: got dtype {norms.dtype}, expected a floating dtype")
    if norms.device != device:
        raise ValueError(f"bank_sq_norms: on {norms.device}, expected the bank's device {device}")


def _norms_for(bank: torch.Tensor, given: torch.Tensor | None, backend: str) -> torch.Tensor:
    """The (N,) float32 norms a fused search uses (computed when not given), checked finite:
    that is how the bank's own values are checked (O(N), see _check_bank_norms)."""
    if given is None:
        norms = torch.ops.vsad.bank_sq_norms(bank, backend)
    else:
        norms = given.detach().float()
    _check_bank_norms(norms)
    return norms


def _bank_for_cpp(bank: torch.Tensor) -> torch.Tensor:
    """The bank as the fused kernels take it: a supported storage dtype, contiguous."""
    if bank.dtype not in BANK_DTYPES:
        raise TypeError(f"bank: got dtype {bank.dtype}, expected one of {list(BANK_DTYPES)}")
    return bank.contiguous()


def _triton_module(name: str):
    """vsad.kernels.<name>, imported on first use: importing triton is slow, and
    TRITON_INTERPRET must be set before the kernel modules are imported."""
    import importlib

    return importlib.import_module(f"vsad.kernels.{name}")


def _unknown_backend(backend: str) -> ValueError:
    return ValueError(f"backend: got {backend!r}, expected 'cpp' or 'triton'")


# ---------------------------------------------------------------------------------------------
# Custom ops (the fused backends; backend chosen by the caller). Each takes its inputs as they
# come (converting to the kernel's layout inside), returns fresh outputs and mutates nothing.


@torch.library.custom_op("vsad::bank_sq_norms", mutates_args=())
def _bank_sq_norms_op(bank: torch.Tensor, backend: str) -> torch.Tensor:
    """(N,) float32 ‖b‖² of bank (N, D) (float32, float16 or bfloat16)."""
    b = _bank_for_cpp(bank)
    out = new_output((b.shape[0],), torch.float32, b.device)
    if backend == "cpp":
        require_cpp().min_l2_bank_sq_norms(
            b.data_ptr(), BANK_DTYPES[b.dtype], *b.shape, out.data_ptr(), torch.get_num_threads()
        )
    elif backend == "triton":
        _triton_module("bank_sq_norms").bank_sq_norms(b, out)
    else:
        raise _unknown_backend(backend)
    return out


@_bank_sq_norms_op.register_fake
def _bank_sq_norms_fake(bank, backend):
    return bank.new_empty((bank.shape[0],), dtype=torch.float32)


@torch.library.custom_op("vsad::min_l2", mutates_args=())
def _min_l2_op(
    queries: torch.Tensor, bank: torch.Tensor, norms: torch.Tensor, precision: str, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dist (Q,) float32, index (Q,) int64) for queries (Q, D), bank (N, D), norms (N,)."""
    q = queries.to(torch.float32).contiguous()
    b = _bank_for_cpp(bank)
    n = norms.to(torch.float32).contiguous()
    (Q, D), N = q.shape, b.shape[0]
    dist = new_output((Q,), torch.float32, q.device)
    index = new_output((Q,), torch.int64, q.device)
    if backend == "cpp":
        require_cpp().min_l2(
            q.data_ptr(), b.data_ptr(), BANK_DTYPES[b.dtype], n.data_ptr(), Q, N, D,
            dist.data_ptr(), index.data_ptr(), torch.get_num_threads(), precision,
        )  # fmt: skip
    elif backend == "triton":
        # precision="mixed" runs the fp32 search: identical results (kernels/min_l2.py).
        _triton_module("min_l2").min_l2(q, b, n, dist, index)
    else:
        raise _unknown_backend(backend)
    return dist, index


@_min_l2_op.register_fake
def _min_l2_fake(queries, bank, norms, precision, backend):
    Q = queries.shape[0]
    return (
        queries.new_empty((Q,), dtype=torch.float32),
        queries.new_empty((Q,), dtype=torch.int64),
    )


@torch.library.custom_op("vsad::min_l2_local", mutates_args=())
def _min_l2_local_op(
    queries: torch.Tensor, bank: torch.Tensor, norms: torch.Tensor, radius: int, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dist (B, H, W) float32, index (B, H, W) int64) for queries (B, H, W, D), bank
    (S, H, W, D), norms (S·H·W,). Appears as vsad::min_l2_local in torch.profiler traces."""
    q = queries.to(torch.float32).contiguous()
    b = _bank_for_cpp(bank)
    n = norms.to(torch.float32).contiguous()
    B, H, W, D = q.shape
    dist = new_output((B, H, W), torch.float32, q.device)
    index = new_output((B, H, W), torch.int64, q.device)
    if backend == "cpp":
        require_cpp().min_l2_local(
            q.data_ptr(), b.data_ptr(), BANK_DTYPES[b.dtype], n.data_ptr(), B, b.shape[0], H, W,
            D, radius, dist.data_ptr(), index.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
    elif backend == "triton":
        _triton_module("min_l2_local").min_l2_local(q, b, n, radius, dist, index)
    else:
        raise _unknown_backend(backend)
    return dist, index


@_min_l2_local_op.register_fake
def _min_l2_local_fake(queries, bank, norms, radius, backend):
    B, H, W, _ = queries.shape
    return (
        queries.new_empty((B, H, W), dtype=torch.float32),
        queries.new_empty((B, H, W), dtype=torch.int64),
    )
