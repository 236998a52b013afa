"""Random problem instances for the window-attention tests (shared by cpp and triton tests)."""

from __future__ import annotations

import torch


def ring_neighbors(M: int, N: int) -> torch.Tensor:
    """View i's slots: i+1, i-1, i+2, ... (mod M); -1 where the ring runs out of distinct views."""
    table = torch.full((M, N), -1, dtype=torch.int64)
    for i in range(M):
        others = [(i + s) % M for k in range(1, M) for s in (k, -k)]
        seen: list[int] = []
        for j in others:
            if j != i and j not in seen:
                seen.append(j)
        for n, j in enumerate(seen[:N]):
            table[i, n] = j
    return table


def random_homographies(
    shape: tuple[int, ...], rng: torch.Generator, *, shift: float = 2.0, perspective: float = 0.02
) -> torch.Tensor:
    """Near-identity homographies with random translation, linear part and perspective row."""
    hom = torch.eye(3, dtype=torch.float64).repeat(*shape, 1, 1)
    hom[..., :2, 2] += torch.randn(*shape, 2, generator=rng, dtype=torch.float64) * shift
    hom[..., :2, :2] += torch.randn(*shape, 2, 2, generator=rng, dtype=torch.float64) * 0.15
    hom[..., 2, :2] += torch.randn(*shape, 2, generator=rng, dtype=torch.float64) * perspective
    return hom


def make_case(
    rng: torch.Generator,
    *,
    B: int = 2,
    M: int = 3,
    H: int = 5,
    W: int = 7,
    C: int = 8,
    N: int = 2,
    window: int = 3,
    dtype: torch.dtype = torch.float64,
    shared: bool = False,
    empty_slot: bool = True,
    shift: float = 2.0,
    perspective: float = 0.02,
) -> dict:
    """Inputs for window_attention with fresh random values (never zeros)."""

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=rng, dtype=torch.float64) * scale).to(dtype)

    neighbors = ring_neighbors(M, N)
    if empty_slot:
        neighbors[0, N - 1] = -1
    hom_shape = (M, N) if shared else (B, M, N)
    return {
        "q": randn(B, M, H, W, C),
        "k": randn(B, M, H, W, C),
        "v": randn(B, M, H, W, C),
        "pos_k": randn(N, window * window, C, scale=0.5),
        "pos_v": randn(N, window * window, C, scale=0.5),
        "homography": random_homographies(hom_shape, rng, shift=shift, perspective=perspective),
        "neighbors": neighbors,
        "window": window,
    }


TENSOR_ARGS = ("q", "k", "v", "pos_k", "pos_v")


def run_with_grads(fn, case: dict, grad_out: torch.Tensor, **kwargs):
    """Forward and the five gradients of <out, grad_out>: (out, dq, dk, dv, dpos_k, dpos_v)."""
    leaves = {n: case[n].detach().clone().requires_grad_(True) for n in TENSOR_ARGS}
    out = fn(
        *(leaves[n] for n in TENSOR_ARGS),
        case["homography"],
        case["neighbors"],
        window=case["window"],
        **kwargs,
    )
    grads = torch.autograd.grad(out, [leaves[n] for n in TENSOR_ARGS], grad_out)
    return (out.detach(), *grads)
