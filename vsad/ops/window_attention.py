"""MVAM window attention: homography-projected R×R window gather + attention (paper eqs. 1–5).

Contract: docs/design.md §3.1. Backends: ``cpp`` (fused C++ kernels, CPU), ``triton`` (CUDA, or CPU
tensors under ``TRITON_INTERPRET=1``) and ``reference`` (plain PyTorch, in
``window_attention_reference.py``). The fused backends run through the torch.library custom ops
``vsad::window_attention_forward`` / ``vsad::window_attention_backward``, so they work with
autograd, fake tensors and ``torch.compile``.
"""

from __future__ import annotations

import math

import torch

from vsad._extension import require_cpp
from vsad.ops._backend import choose_backend
from vsad.ops._outputs import new_output
from vsad.ops.window_attention_reference import window_attention_reference

__all__ = ["window_attention", "window_attention_reference"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos_k: torch.Tensor,
    pos_v: torch.Tensor,
    homography: torch.Tensor,
    neighbors: torch.Tensor,
    *,
    window: int = 3,
    heads: int = 1,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Attend from every pixel of every view to R×R bilinear samples around its projection into
    each neighbour view.

    Args:
        q, k, v: (B, M, H, W, C) channels-last features; float32, float64, float16 or bfloat16
            (half types are computed in float32). C = heads·d.
        pos_k, pos_v: (N, R·R, C) terms added to the sampled keys / values for each neighbour slot
            and window offset (row-major offsets: r = b·R + a with δ = (a, b) − (R−1)/2).
        homography: (B, M, N, 3, 3) per sample or (M, N, 3, 3) shared; maps view i pixel
            coordinates [x, y, 1] (x = column, pixel centres at integers) to neighbour coordinates.
        neighbors: (M, N) integer view index of each neighbour slot, −1 for an empty slot.
        window: R, the side of the search window.
        heads: attention heads; head h owns channels [h·d, (h+1)·d).
        scale: logit scale, default d^-1/2.
        backend: "cpp", "triton" or "reference"; default by device (overridable by VSAD_BACKEND).

    Returns:
        (B, M, H, W, C): Σ softmax(scale·⟨q, k(s)+pos_k⟩) · (v(s)+pos_v) over valid candidates
        s (neighbour slot used, projective w > 1e-8, inside the image); 0 where none is valid.

    Non-contiguous inputs are accepted and copied to contiguous memory first.
    """
    args = _validate(q, k, v, pos_k, pos_v, homography, neighbors, window, heads, scale)
    q, k, v, pos_k, pos_v, homography, neighbors, scale = args
    chosen = choose_backend("window_attention", q.device, backend)
    if chosen == "reference":
        return window_attention_reference(
            q, k, v, pos_k, pos_v, homography, neighbors, window=window, heads=heads, scale=scale
        )
    out, _ = torch.ops.vsad.window_attention_forward(
        q, k, v, pos_k, pos_v, homography, neighbors, window, heads, scale, chosen
    )
    return out


# ---------------------------------------------------------------------------------------------
# Validation at the boundary


def _validate(q, k, v, pos_k, pos_v, homography, neighbors, window, heads, scale):
    for name, t in (("q", q), ("k", k), ("v", v), ("pos_k", pos_k), ("pos_v", pos_v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: got {type(t).__name__}, expected a torch.Tensor")
    if not isinstance(homography, torch.Tensor) or not isinstance(neighbors, torch.Tensor):
        raise TypeError("homography and neighbors must be torch.Tensor")
    if q.dim() != 5:
        raise ValueError(f"q: got shape {tuple(q.shape)}, expected 5-D (B, M, H, W, C)")
    B, M, H, W, C = q.shape
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{name}: got shape {tuple(t.shape)}, expected q's {tuple(q.shape)}")
    if q.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"q: got dtype {q.dtype}, expected one of {_FLOAT_DTYPES}")
    for name, t in (("k", k), ("v", v), ("pos_k", pos_k), ("pos_v", pos_v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name}: got dtype {t.dtype}, expected q's dtype {q.dtype}")
    for name, t in (("k", k), ("v", v), ("pos_k", pos_k), ("pos_v", pos_v),
                    ("homography", homography), ("neighbors", neighbors)):  # fmt: skip
        if t.device != q.device:
            raise ValueError(f"{name}: on {t.device}, expected q's device {q.device}")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window: got {window!r}, expected an integer >= 1")
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        raise ValueError(f"heads: got {heads!r}, expected an integer >= 1")
    if C % heads != 0:
        raise ValueError(f"heads: got {heads}, expected a divisor of the channel count C={C}")
    if neighbors.dim() != 2 or neighbors.shape[0] != M:
        raise ValueError(f"neighbors: got shape {tuple(neighbors.shape)}, expected (M={M}, N)")
    if neighbors.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"neighbors: got dtype {neighbors.dtype}, expected an integer dtype")
    N = neighbors.shape[1]
    if N < 1:
        raise ValueError("neighbors: got 0 slots per view, expected N >= 1")
    # Value checks read tensor data, which torch.compile cannot trace; while compiling they are
    # left to the kernels' C++ boundary, which repeats them.
    check_values = not torch.compiler.is_compiling()
    if check_values:
        bad = (neighbors < -1) | (neighbors >= M)
        if bool(bad.any()):
            i, n = (int(x) for x in bad.nonzero()[0])
            raise ValueError(
                f"neighbors[{i}, {n}]: got {int(neighbors[i, n])}, expected -1 or a view index "
                f"in [0, {M})"
            )
    RR = window * window
    for name, t in (("pos_k", pos_k), ("pos_v", pos_v)):
        if tuple(t.shape) != (N, RR, C):
            raise ValueError(
                f"{name}: got shape {tuple(t.shape)}, expected (N, R*R, C) = ({N}, {RR}, {C})"
            )
    if homography.shape[-2:] != (3, 3) or homography.dim() not in (4, 5):
        raise ValueError(
            f"homography: got shape {tuple(homography.shape)}, expected (B, M, N, 3, 3) or "
            f"(M, N, 3, 3)"
        )
    expected = (M, N) if homography.dim() == 4 else (B, M, N)
    if tuple(homography.shape[:-2]) != expected:
        raise ValueError(
            f"homography: got shape {tuple(homography.shape)}, expected {(*expected, 3, 3)}"
        )
    if not homography.is_floating_point():
        raise TypeError(f"homography: got dtype {homography.dtype}, expected a floating dtype")
    if check_values and not bool(torch.isfinite(homography).all()):
        raise ValueError("homography: contains NaN or Inf, expected finite values")
    if scale is None:
        scale = (C // heads) ** -0.5
    elif not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale: got {scale!r}, expected a finite number or None")
    hom = homography.to(torch.float64)
    hom = (hom.unsqueeze(0) if hom.dim() == 4 else hom).contiguous()
    return (
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        pos_k.contiguous(),
        pos_v.contiguous(),
        hom,
        neighbors.to(torch.int64).contiguous(),
        float(scale),
    )


# ---------------------------------------------------------------------------------------------
# Custom ops: one forward, one backward; backend chosen by the caller (string argument).


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("vsad::window_attention_forward", mutates_args=())
def _forward_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos_k: torch.Tensor,
    pos_v: torch.Tensor,
    homography: torch.Tensor,
    neighbors: torch.Tensor,
    window: int,
    heads: int,
    scale: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out in q's dtype, lse (B, M, H, W, heads) in the compute dtype)."""
    ct = _compute_dtype(q.dtype)
    args = [t.to(ct).contiguous() for t in (q, k, v, pos_k, pos_v)]
    hom, nbr = homography.contiguous(), neighbors.contiguous()
    B, M, H, W, C = q.shape
    out = new_output((B, M, H, W, C), ct, q.device)
    lse = new_output((B, M, H, W, heads), ct, q.device)
    if backend == "cpp":
        _C = require_cpp()
        _C.window_attention_forward(
            *(t.data_ptr() for t in args),
            hom.data_ptr(),
            nbr.data_ptr(),
            out.data_ptr(),
            lse.data_ptr(),
            "float64" if ct == torch.float64 else "float32",
            *_dims(q, nbr, window, heads, hom),
            scale,
            torch.get_num_threads(),
        )
    elif backend == "triton":
        from vsad.kernels import window_attention as triton_kernels

        triton_kernels.forward(*args, hom, nbr, out, lse, window, heads, scale)
    else:
        raise ValueError(f"backend: got {backend!r}, expected 'cpp' or 'triton'")
    return out.to(q.dtype), lse


@_forward_op.register_fake
def _forward_fake(q, k, v, pos_k, pos_v, homography, neighbors, window, heads, scale, backend):
    B, M, H, W, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((B, M, H, W, heads), dtype=_compute_dtype(q.dtype))


@torch.library.custom_op("vsad::window_attention_backward", mutates_args=())
def _backward_op(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos_k: torch.Tensor,
    pos_v: torch.Tensor,
    homography: torch.Tensor,
    neighbors: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    window: int,
    heads: int,
    scale: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for (q, k, v, pos_k, pos_v), each in its input's dtype."""
    ct = _compute_dtype(q.dtype)
    args = [t.to(ct).contiguous() for t in (q, k, v, pos_k, pos_v)]
    hom, nbr = homography.contiguous(), neighbors.contiguous()
    out_c, lse_c, go = (
        out.to(ct).contiguous(),
        lse.to(ct).contiguous(),
        grad_out.to(ct).contiguous(),
    )
    grads = [new_output(t.shape, t.dtype, t.device) for t in args]
    if backend == "cpp":
        _C = require_cpp()
        _C.window_attention_backward(
            *(t.data_ptr() for t in args),
            hom.data_ptr(),
            nbr.data_ptr(),
            out_c.data_ptr(),
            lse_c.data_ptr(),
            go.data_ptr(),
            *(g.data_ptr() for g in grads),
            "float64" if ct == torch.float64 else "float32",
            *_dims(q, nbr, window, heads, hom),
            scale,
            torch.get_num_threads(),
        )
    elif backend == "triton":
        from vsad.kernels import window_attention as triton_kernels

        triton_kernels.backward(*args, hom, nbr, out_c, lse_c, go, *grads, window, heads, scale)
    else:
        raise ValueError(f"backend: got {backend!r}, expected 'cpp' or 'triton'")
    originals = (q, k, v, pos_k, pos_v)
    return tuple(g.to(t.dtype) for g, t in zip(grads, originals, strict=True))


@_backward_op.register_fake
def _backward_fake(grad_out, q, k, v, pos_k, pos_v, *rest):
    return tuple(torch.empty_like(t) for t in (q, k, v, pos_k, pos_v))


def _setup_context(ctx, inputs, output):
    q, k, v, pos_k, pos_v, homography, neighbors, window, heads, scale, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, pos_k, pos_v, homography, neighbors, out, lse)
    ctx.config = (window, heads, scale, backend)


def _autograd_backward(ctx, grad_out, grad_lse):
    q, k, v, pos_k, pos_v, homography, neighbors, out, lse = ctx.saved_tensors
    window, heads, scale, backend = ctx.config
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    grads = torch.ops.vsad.window_attention_backward(
        grad_out, q, k, v, pos_k, pos_v, homography, neighbors, out, lse, window, heads, scale,
        backend,
    )  # fmt: skip
    return (*grads, None, None, None, None, None, None)


_forward_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def _dims(q, neighbors, window, heads, homography):
    B, M, H, W, C = q.shape
    return (B, M, H, W, C, neighbors.shape[1], window, heads, homography.shape[0])
