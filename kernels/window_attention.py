"""Triton kernels of the MVAM window attention (docs/design.md §3.1), forward and backward.

Called by ``vsad/ops/window_attention.py`` for backend "triton"; the semantics are those of the
reference twin ``vsad/ops/window_attention_reference.py`` and the C++ kernel
``csrc/kernels/window_attention.cpp``.

Layout of the work: one program per block of BLOCK_P query pixels (flattened over B, M, H, W)
and one head; the head's d channels sit in a BLOCK_D tile (masked when d is not a power of two).
Each program loops over the neighbour slots and the R×R window with an online softmax, so
nothing of size candidates × C is ever stored. Bilinear samples gather the four corner rows of
K / V directly; neighbouring candidates share corners, which the cache absorbs.

Candidate coordinates are computed in float64 from the float64 homography, in the C++ kernel's
order of operations: base = π(H·p) − (R−1)/2, candidate (a, b) = base + (a, b), so that the
validity tests (in front of the camera, inside the image) agree bit for bit with the other
backends. Only the bilinear weights are rounded to the compute dtype.

Backward recomputes the logits from q, k and the saved log-sum-exp (no attention matrix is
stored). k and v gradients are scattered to the bilinear corners with atomics; pos_k / pos_v
gradients are first reduced over the program's pixels, then added with one atomic per candidate.

Why atomics, not a deterministic scatter: which query pixels touch a given K/V pixel depends on
the homographies, so gathering per K/V pixel would need an inverse map (or a sort of
(pixel, contribution) records), and per-program private copies of dk/dv would cost
programs × B·M·H·W·C floats. The consequence is that dk, dv, dpos_k, dpos_v may differ in their
last bits from run to run (float32 addition order); out, lse and dq are written once and are
bitwise reproducible. tests/test_cuda_tier.py bounds that spread at the issue's C=320, 32² shape
and checks out/dq bitwise (docs/design.md §3.1).

The scale and the projective-depth threshold travel in a small float64 tensor: Triton passes
Python floats as float32 scalars, which would cost float64 runs their precision.

Under TRITON_INTERPRET=1 (set before this module is imported) the same kernels run on CPU
tensors; that is how the tests exercise them on machines without a GPU.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from vsad.kernels._common import device_guard

from vsad.ops.window_attention_reference import MIN_PROJECTIVE_W

__all__ = ["forward", "backward"]

_COMPUTE_DTYPES = (torch.float32, torch.float64)


# ---------------------------------------------------------------------------------------------
# Device helpers


@triton.jit
def _pixel_coords(p, H, W, M):
    """Flat query index p over (B, M, H, W) -> (b, i, y, x)."""
    x = p % W
    y = (p // W) % H
    i = (p // (W * H)) % M
    b = p // (W * H * M)
    return b, i, y, x


@triton.jit
def _project_slot(hom_ptr, nbr_ptr, min_w, b, i, x, y, n, M, N, H, W, R, hom_stride_b, pix_mask):
    """Projects the query pixels into neighbour slot n.

    Returns the first pixel of the neighbour view (flat index over B·M·H·W), whether the slot
    can hold a valid candidate (slot used, w > min_w, window overlapping the image), the window's
    top-left candidate (bx, by) in float64 and its integer floor (x0, y0). Pixels whose slot is
    not usable get base 0 so that no index computed from it overflows.
    """
    j = tl.load(nbr_ptr + i * N + n, mask=pix_mask, other=-1)
    hp = hom_ptr + b * hom_stride_b + (i * N + n) * 9
    h00 = tl.load(hp + 0, mask=pix_mask, other=0.0)
    h01 = tl.load(hp + 1, mask=pix_mask, other=0.0)
    h02 = tl.load(hp + 2, mask=pix_mask, other=0.0)
    h10 = tl.load(hp + 3, mask=pix_mask, other=0.0)
    h11 = tl.load(hp + 4, mask=pix_mask, other=0.0)
    h12 = tl.load(hp + 5, mask=pix_mask, other=0.0)
    h20 = tl.load(hp + 6, mask=pix_mask, other=0.0)
    h21 = tl.load(hp + 7, mask=pix_mask, other=0.0)
    h22 = tl.load(hp + 8, mask=pix_mask, other=0.0)
    xf = x.to(tl.float64)
    yf = y.to(tl.float64)
    px = h00 * xf + h01 * yf + h02
    py = h10 * xf + h11 * yf + h12
    pw = h20 * xf + h21 * yf + h22
    in_front = pw > min_w
    pw_safe = tl.where(in_front, pw, 1.0)
    half = (R - 1) * 0.5  # exact: a half-integer
    bx = px / pw_safe - half
    by = py / pw_safe - half
    span = R - 1
    ok = pix_mask & (j >= 0) & in_front
    ok = ok & (bx <= W - 1) & (bx + span >= 0) & (by <= H - 1) & (by + span >= 0)
    bx = tl.where(ok, bx, 0.0)
    by = tl.where(ok, by, 0.0)
    x0 = tl.floor(bx)
    y0 = tl.floor(by)
    view_first = (b * M + tl.where(ok, j, 0)) * H * W
    return view_first, ok, bx, by, x0, y0


@triton.jit
def _corner(view_first, X, Y, H, W, C, valid):
    """Element offset of pixel (X, Y) of the neighbour view and whether it is read (the candidate
    is valid and the pixel inside the image: grid_sample's zero padding)."""
    inside = valid & (X >= 0) & (X < W) & (Y >= 0) & (Y < H)
    return (view_first + Y * W + X) * C, inside


@triton.jit
def _gather(ptr, off, inside, ch, ch_mask):
    mask = inside[:, None] & ch_mask[None, :]
    return tl.load(ptr + off[:, None] + ch[None, :], mask=mask, other=0.0)


@triton.jit
def _scatter_add(ptr, off, inside, ch, ch_mask, val):
    mask = inside[:, None] & ch_mask[None, :]
    tl.atomic_add(ptr + off[:, None] + ch[None, :], val, mask=mask, sem="relaxed")


@triton.jit
def _candidate(view_first, ok, bx, by, x0, y0, ca, cb, H, W, C):
    """Candidate (ca, cb) of the window: validity, its four bilinear corners (offset, read?) in
    (x0, y0), (x0+1, y0), (x0, y0+1), (x0+1, y0+1) order."""
    sx = bx + ca
    sy = by + cb
    valid = ok & (sx >= 0) & (sx <= W - 1) & (sy >= 0) & (sy <= H - 1)
    X = x0.to(tl.int64) + ca
    Y = y0.to(tl.int64) + cb
    o00, m00 = _corner(view_first, X, Y, H, W, C, valid)
    o01, m01 = _corner(view_first, X + 1, Y, H, W, C, valid)
    o10, m10 = _corner(view_first, X, Y + 1, H, W, C, valid)
    o11, m11 = _corner(view_first, X + 1, Y + 1, H, W, C, valid)
    return valid, o00, m00, o01, m01, o10, m10, o11, m11


@triton.jit
def _bilinear(ptr, ch, ch_mask, o00, m00, o01, m01, o10, m10, o11, m11, w00, w01, w10, w11):
    s = w00[:, None] * _gather(ptr, o00, m00, ch, ch_mask)
    s += w01[:, None] * _gather(ptr, o01, m01, ch, ch_mask)
    s += w10[:, None] * _gather(ptr, o10, m10, ch, ch_mask)
    s += w11[:, None] * _gather(ptr, o11, m11, ch, ch_mask)
    return s


# ---------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _forward_kernel(
    q_ptr, k_ptr, v_ptr, pos_k_ptr, pos_v_ptr, hom_ptr, nbr_ptr, out_ptr, lse_ptr, consts_ptr,
    num_pixels, M, H, W, C, N, R, d, heads, hom_stride_b,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    T = q_ptr.dtype.element_ty
    h = tl.program_id(1)
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    pix_mask = p < num_pixels
    b, i, y, x = _pixel_coords(p, H, W, M)
    offs_d = tl.arange(0, BLOCK_D)
    ch_mask = offs_d < d
    ch = h * d + offs_d
    row = p * C
    tile_mask = pix_mask[:, None] & ch_mask[None, :]
    q = tl.load(q_ptr + row[:, None] + ch[None, :], mask=tile_mask, other=0.0)
    scale = tl.load(consts_ptr).to(T)
    min_w = tl.load(consts_ptr + 1)

    m = tl.full([BLOCK_P], float("-inf"), T)  # running max of the valid logits
    total = tl.zeros([BLOCK_P], T)  # running Σ exp(logit − m)
    acc = tl.zeros([BLOCK_P, BLOCK_D], T)  # running Σ exp(logit − m) · value
    RR = R * R
    for n in range(0, N):
        view_first, ok, bx, by, x0, y0 = _project_slot(
            hom_ptr, nbr_ptr, min_w, b, i, x, y, n, M, N, H, W, R, hom_stride_b, pix_mask
        )
        fx = (bx - x0).to(T)
        fy = (by - y0).to(T)
        w00 = (1 - fx) * (1 - fy)
        w01 = fx * (1 - fy)
        w10 = (1 - fx) * fy
        w11 = fx * fy
        for cb in range(0, R):
            for ca in range(0, R):
                valid, o00, m00, o01, m01, o10, m10, o11, m11 = _candidate(
                    view_first, ok, bx, by, x0, y0, ca, cb, H, W, C
                )
                pos_off = (n * RR + cb * R + ca) * C + ch
                key = _bilinear(
                    k_ptr, ch, ch_mask, o00, m00, o01, m01, o10, m10, o11, m11, w00, w01, w10, w11
                )
                key += tl.load(pos_k_ptr + pos_off, mask=ch_mask, other=0.0)[None, :]
                logit = tl.sum(q * key, axis=1) * scale
                logit = tl.where(valid, logit, float("-inf"))
                m_new = tl.maximum(m, logit)
                # While no candidate has been valid, m_new is −inf: shift by 0 instead, so that
                # exp never sees −inf − (−inf).
                shift = tl.where(m_new == float("-inf"), 0.0, m_new)
                rescale = tl.exp(m - shift)
                weight = tl.exp(logit - shift)
                value = _bilinear(
                    v_ptr, ch, ch_mask, o00, m00, o01, m01, o10, m10, o11, m11, w00, w01, w10, w11
                )
                value += tl.load(pos_v_ptr + pos_off, mask=ch_mask, other=0.0)[None, :]
                total = total * rescale + weight
                acc = acc * rescale[:, None] + weight[:, None] * value
                m = m_new

    has_any = total > 0
    safe_total = tl.where(has_any, total, 1.0)
    out = tl.where(has_any[:, None], acc / safe_total[:, None], 0.0)
    tl.store(out_ptr + row[:, None] + ch[None, :], out, mask=tile_mask)
    lse = tl.where(has_any, m + tl.log(safe_total), float("-inf"))
    tl.store(lse_ptr + p * heads + h, lse, mask=pix_mask)


@triton.jit
def _backward_kernel(
    q_ptr, k_ptr, v_ptr, pos_k_ptr, pos_v_ptr, hom_ptr, nbr_ptr, out_ptr, lse_ptr, grad_out_ptr,
    grad_q_ptr, grad_k_ptr, grad_v_ptr, grad_pos_k_ptr, grad_pos_v_ptr, consts_ptr,
    num_pixels, M, H, W, C, N, R, d, heads, hom_stride_b,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    T = q_ptr.dtype.element_ty
    h = tl.program_id(1)
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    pix_mask = p < num_pixels
    b, i, y, x = _pixel_coords(p, H, W, M)
    offs_d = tl.arange(0, BLOCK_D)
    ch_mask = offs_d < d
    ch = h * d + offs_d
    row = p * C
    tile_mask = pix_mask[:, None] & ch_mask[None, :]
    tile = row[:, None] + ch[None, :]
    q = tl.load(q_ptr + tile, mask=tile_mask, other=0.0)
    go = tl.load(grad_out_ptr + tile, mask=tile_mask, other=0.0)
    out = tl.load(out_ptr + tile, mask=tile_mask, other=0.0)
    lse = tl.load(lse_ptr + p * heads + h, mask=pix_mask, other=float("-inf"))
    # lse is −inf exactly where no candidate is valid; those pixels get α = 0 below anyway.
    lse = tl.where(lse == float("-inf"), 0.0, lse)
    scale = tl.load(consts_ptr).to(T)
    min_w = tl.load(consts_ptr + 1)

    # Softmax backward: d loss / d logit_c = α_c (⟨dout, value_c⟩ − D), D = ⟨dout, out⟩.
    D = tl.sum(go * out, axis=1)
    grad_q = tl.zeros([BLOCK_P, BLOCK_D], T)
    RR = R * R
    for n in range(0, N):
        view_first, ok, bx, by, x0, y0 = _project_slot(
            hom_ptr, nbr_ptr, min_w, b, i, x, y, n, M, N, H, W, R, hom_stride_b, pix_mask
        )
        fx = (bx - x0).to(T)
        fy = (by - y0).to(T)
        w00 = (1 - fx) * (1 - fy)
        w01 = fx * (1 - fy)
        w10 = (1 - fx) * fy
        w11 = fx * fy
        for cb in range(0, R):
            for ca in range(0, R):
                valid, o00, m00, o01, m01, o10, m10, o11, m11 = _candidate(
                    view_first, ok, bx, by, x0, y0, ca, cb, H, W, C
                )
                pos_off = (n * RR + cb * R + ca) * C + ch
                key = _bilinear(
                    k_ptr, ch, ch_mask, o00, m00, o01, m01, o10, m10, o11, m11, w00, w01, w10, w11
                )
                key += tl.load(pos_k_ptr + pos_off, mask=ch_mask, other=0.0)[None, :]
                logit = tl.sum(q * key, axis=1) * scale
                alpha = tl.exp(tl.where(valid, logit, float("-inf")) - lse)
                value = _bilinear(
                    v_ptr, ch, ch_mask, o00, m00, o01, m01, o10, m10, o11, m11, w00, w01, w10, w11
                )
                value += tl.load(pos_v_ptr + pos_off, mask=ch_mask, other=0.0)[None, :]
                # d loss / d ⟨q, key⟩ for this candidate (0 where it is invalid: α = 0).
                g = scale * alpha * (tl.sum(go * value, axis=1) - D)
                grad_q += g[:, None] * key
                dkey = g[:, None] * q  # d loss / d key, spread over the corners below
                dvalue = alpha[:, None] * go  # d loss / d value
                _scatter_add(grad_k_ptr, o00, m00, ch, ch_mask, w00[:, None] * dkey)
                _scatter_add(grad_k_ptr, o01, m01, ch, ch_mask, w01[:, None] * dkey)
                _scatter_add(grad_k_ptr, o10, m10, ch, ch_mask, w10[:, None] * dkey)
                _scatter_add(grad_k_ptr, o11, m11, ch, ch_mask, w11[:, None] * dkey)
                _scatter_add(grad_v_ptr, o00, m00, ch, ch_mask, w00[:, None] * dvalue)
                _scatter_add(grad_v_ptr, o01, m01, ch, ch_mask, w01[:, None] * dvalue)
                _scatter_add(grad_v_ptr, o10, m10, ch, ch_mask, w10[:, None] * dvalue)
                _scatter_add(grad_v_ptr, o11, m11, ch, ch_mask, w11[:, None] * dvalue)
                # pos_k / pos_v rows are shared by all pixels: reduce over the block first, and
                # skip the atomic when no pixel of the block has this candidate valid.
                # (Broadcast to a vector by hand: the interpreter rejects a scalar in a mask.)
                any_valid = tl.max(valid.to(tl.int32), axis=0)
                pos_mask = ch_mask & (tl.zeros_like(offs_d) + any_valid > 0)
                tl.atomic_add(
                    grad_pos_k_ptr + pos_off, tl.sum(dkey, axis=0), mask=pos_mask, sem="relaxed"
                )
                tl.atomic_add(
                    grad_pos_v_ptr + pos_off, tl.sum(dvalue, axis=0), mask=pos_mask, sem="relaxed"
                )

    tl.store(grad_q_ptr + tile, grad_q, mask=tile_mask)


# ---------------------------------------------------------------------------------------------
# Host side


def forward(q, k, v, pos_k, pos_v, hom, nbr, out, lse, window, heads, scale):
    """Writes out (B, M, H, W, C) and lse (B, M, H, W, heads); see the module docstring."""
    dims = _check_args(q, k, v, pos_k, pos_v, hom, nbr, window, heads, out=out, lse=lse)
    if dims["num_pixels"] == 0:
        return
    consts = _constants(float(scale), q.device)
    block_p, block_d = _blocks(dims["d"], q.device)
    grid = (triton.cdiv(dims["num_pixels"], block_p), heads)
    with device_guard(q.device):
        _forward_kernel[grid](
            q, k, v, pos_k, pos_v, hom, nbr, out, lse, consts,
            *_dim_args(dims, window, heads),
            BLOCK_P=block_p, BLOCK_D=block_d,
        )  # fmt: skip


def backward(
    q, k, v, pos_k, pos_v, hom, nbr, out, lse, grad_out,
    grad_q, grad_k, grad_v, grad_pos_k, grad_pos_v, window, heads, scale,
):  # fmt: skip
    """Writes the gradients of q, k, v, pos_k, pos_v for the incoming grad_out."""
    dims = _check_args(
        q, k, v, pos_k, pos_v, hom, nbr, window, heads,
        out=out, lse=lse, grad_out=grad_out, grad_q=grad_q, grad_k=grad_k, grad_v=grad_v,
        grad_pos_k=grad_pos_k, grad_pos_v=grad_pos_v,
    )  # fmt: skip
    # Scatter targets start at zero; grad_q is written whole by the kernel.
    for g in (grad_k, grad_v, grad_pos_k, grad_pos_v):
        g.zero_()
    if dims["num_pixels"] == 0:
        return
    consts = _constants(float(scale), q.device)
    block_p, block_d = _blocks(dims["d"], q.device)
    grid = (triton.cdiv(dims["num_pixels"], block_p), heads)
    with device_guard(q.device):
        _backward_kernel[grid](
            q, k, v, pos_k, pos_v, hom, nbr, out, lse, grad_out,
            grad_q, grad_k, grad_v, grad_pos_k, grad_pos_v, consts,
            *_dim_args(dims, window, heads),
            BLOCK_P=block_p, BLOCK_D=block_d,
        )  # fmt: skip


@functools.lru_cache(maxsize=64)
def _constants(scale: float, device) -> torch.Tensor:
    # float64 on purpose: a Python float kernel argument would arrive as a float32 scalar.
    # Cached per (scale, device): a model calls with a handful of scales, and a fresh tensor
    # would cost a host-to-device copy per call, which waits for the stream's queued work (the
    # GPU run of 2026-12-04 measured a fixed ~0.7 ms per call; BENCHMARKS.md "On a GPU"). The
    # kernels only read it.
    return torch.tensor([float(scale), MIN_PROJECTIVE_W], dtype=torch.float64).to(device)


def _blocks(d: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_D): the head's channels in one tile. On a GPU, fewer pixels for wide heads
    so that the accumulators stay in registers. CPU tensors only run under the interpreter, whose
    cost is per program and per operation rather than per element: larger pixel blocks."""
    block_d = max(1, triton.next_power_of_2(d))
    if device.type == "cpu":
        return max(16, min(128, 8192 // block_d)), block_d
    return max(16, min(64, 2048 // block_d)), block_d


def _dim_args(dims: dict, window: int, heads: int) -> tuple[int, ...]:
    return (
        dims["num_pixels"], dims["M"], dims["H"], dims["W"], dims["C"], dims["N"], window,
        dims["d"], heads, dims["hom_stride_b"],
    )  # fmt: skip


def _check_args(q, k, v, pos_k, pos_v, hom, nbr, window, heads, **outputs) -> dict:
    """Metadata checks (no data reads) naming the offending argument; vsad.ops.window_attention
    validates values before it gets here, these guard direct callers."""
    if q.dim() != 5:
        raise ValueError(f"q: got shape {tuple(q.shape)}, expected 5-D (B, M, H, W, C)")
    if q.dtype not in _COMPUTE_DTYPES:
        raise TypeError(f"q: got dtype {q.dtype}, expected one of {_COMPUTE_DTYPES}")
    B, M, H, W, C = q.shape
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window: got {window!r}, expected an integer >= 1")
    if not isinstance(heads, int) or heads < 1 or C % heads != 0:
        raise ValueError(f"heads: got {heads!r}, expected a positive divisor of C={C}")
    if nbr.dtype != torch.int64 or nbr.dim() != 2 or nbr.shape[0] != M:
        raise ValueError(
            f"nbr: got {nbr.dtype} of shape {tuple(nbr.shape)}, expected int64 (M={M}, N)"
        )
    N = nbr.shape[1]
    if (
        hom.dtype != torch.float64
        or hom.dim() != 5
        or hom.shape[0] not in (1, B)
        or tuple(hom.shape[1:]) != (M, N, 3, 3)
    ):
        raise ValueError(
            f"hom: got {hom.dtype} of shape {tuple(hom.shape)}, expected float64 "
            f"(1 or B={B}, M={M}, N={N}, 3, 3)"
        )
    lse_shape = (B, M, H, W, heads)
    pos_shape = (N, window * window, C)
    expected = {"k": q.shape, "v": q.shape, "pos_k": pos_shape, "pos_v": pos_shape, "nbr": None}
    expected.update({name: q.shape for name in outputs})
    expected.update(lse=lse_shape, grad_pos_k=pos_shape, grad_pos_v=pos_shape)
    tensors = {"q": q, "k": k, "v": v, "pos_k": pos_k, "pos_v": pos_v, "hom": hom, "nbr": nbr}
    tensors.update(outputs)
    for name, t in tensors.items():
        if t.device != q.device:
            raise ValueError(f"{name}: on {t.device}, expected q's device {q.device}")
        if not t.is_contiguous():
            raise ValueError(f"{name}: expected a contiguous tensor")
        if name in ("q", "hom", "nbr"):
            continue
        if t.dtype != q.dtype:
            raise TypeError(f"{name}: got dtype {t.dtype}, expected q's dtype {q.dtype}")
        if tuple(t.shape) != tuple(expected[name]):
            raise ValueError(
                f"{name}: got shape {tuple(t.shape)}, expected {tuple(expected[name])}"
            )
    return {
        "num_pixels": B * M * H * W,
        "M": M,
        "H": H,
        "W": W,
        "C": C,
        "N": N,
        "d": C // heads,
        "hom_stride_b": 0 if hom.shape[0] == 1 else M * N * 9,
    }
