"""MVAM equals a direct, per-pixel transcription of paper eqs. 1–5 (plus residual + W_o)."""

from __future__ import annotations

import math

import pytest
import torch
from window_attention_cases import random_homographies, ring_neighbors

from vsad.model import MVAM, sinusoidal_offset_embedding, window_offsets


def bilinear(feature: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """feature (C, H, W) at (x, y), pixel centres at integers; corners outside count as zero."""
    _, H, W = feature.shape
    x0, y0 = math.floor(x), math.floor(y)
    fx, fy = x - x0, y - y0
    total = torch.zeros(feature.shape[0], dtype=feature.dtype)
    for xx, yy, w in ((x0, y0, (1 - fx) * (1 - fy)), (x0 + 1, y0, fx * (1 - fy)),
                      (x0, y0 + 1, (1 - fx) * fy), (x0 + 1, y0 + 1, fx * fy)):  # fmt: skip
        if 0 <= xx < W and 0 <= yy < H:
            total = total + w * feature[:, yy, xx]
    return total


def transcription(module: MVAM, x, homography, neighbors):
    """Eqs. 1–5 written out literally, one query pixel at a time."""
    B, M, C, H, W = x.shape
    R, heads = module.window, module.heads
    d = C // heads
    W_q, W_k, W_v = module.qkv.weight.split(C, 0)
    b_q, b_k, b_v = module.qkv.bias.split(C, 0)
    gamma = sinusoidal_offset_embedding(window_offsets(R), C).to(x.dtype)
    offsets = window_offsets(R)
    out = torch.empty_like(x)
    for b in range(B):
        for i in range(M):
            for y in range(H):
                for xx in range(W):
                    X_i = x[b, i, :, y, xx]
                    q = W_q @ X_i + b_q  # eq. 1
                    keys, values = [], []
                    for n in range(neighbors.shape[1]):
                        j = int(neighbors[i, n])
                        if j < 0:
                            continue
                        hom = homography[b, i, n] if homography.dim() == 5 else homography[i, n]
                        p = hom @ torch.tensor([xx, y, 1.0], dtype=torch.float64)
                        if p[2] <= 1e-8:
                            continue
                        for r in range(R * R):
                            px = float(p[0] / p[2] + offsets[r, 0])
                            py = float(p[1] / p[2] + offsets[r, 1])
                            if not (0 <= px <= W - 1 and 0 <= py <= H - 1):
                                continue
                            X_j = bilinear(x[b, j], px, py)
                            keys.append(W_k @ (X_j + gamma[r]) + b_k)  # eq. 2
                            values.append(W_v @ (X_j + gamma[r]) + b_v)  # eq. 3
                    aligned = torch.zeros(C, dtype=x.dtype)
                    if keys:
                        K, V = torch.stack(keys), torch.stack(values)
                        for h in range(heads):
                            sl = slice(h * d, (h + 1) * d)
                            alpha = torch.softmax(K[:, sl] @ q[sl] / math.sqrt(d), 0)  # eq. 4
                            aligned[sl] = alpha @ V[:, sl]  # eq. 5
                    out[b, i, :, y, xx] = (
                        X_i + module.proj_out.weight @ aligned + module.proj_out.bias
                    )
    return out


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("heads, window", [(1, 3), (2, 2)])
def test_mvam_equals_paper_equations(backend, heads, window, rng):
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=rng)))
    B, M, C, H, W = 2, 3, 8, 4, 5
    module = MVAM(C, heads=heads, window=window, backend=backend).double()
    with torch.no_grad():  # a trained-looking output projection, so eq. 5 is visible in the output
        module.proj_out.weight.normal_()
        module.proj_out.bias.normal_()
    x = torch.randn(B, M, C, H, W, generator=rng, dtype=torch.float64)
    neighbors = ring_neighbors(M, 2)
    neighbors[2, 1] = -1
    hom = random_homographies((B, M, 2), rng, shift=1.5, perspective=0.03)
    got = module(x, hom, neighbors)
    want = transcription(module, x, hom, neighbors)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_zero_initialised_output_projection_makes_mvam_the_identity(rng):
    module = MVAM(16, heads=2, window=3)
    x = torch.randn(1, 3, 16, 5, 6, generator=rng)
    hom = random_homographies((3, 2), rng).float()
    assert torch.equal(module(x, hom, ring_neighbors(3, 2)), x)


def test_mvam_gradients_reach_all_projections(rng):
    module = MVAM(8, heads=2, window=3).double()
    with torch.no_grad():
        module.proj_out.weight.normal_()
    x = torch.randn(1, 3, 8, 4, 4, generator=rng, dtype=torch.float64, requires_grad=True)
    hom = random_homographies((3, 2), rng)
    module(x, hom, ring_neighbors(3, 2)).square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_offset_embedding_distinguishes_every_offset():
    for window in (1, 2, 3, 4, 5):
        gamma = sinusoidal_offset_embedding(window_offsets(window), 32)
        dist = torch.cdist(gamma, gamma) + torch.eye(window * window) * 10
        assert dist.min() > 1e-3, window


def test_mvam_rejects_bad_input():
    with pytest.raises(ValueError, match="heads: got 3, expected a divisor of channels=8"):
        MVAM(8, heads=3)
    module = MVAM(8)
    with pytest.raises(ValueError, match=r"x: got shape \(1, 3, 4, 4, 4\), expected \(B, M, C=8"):
        module(torch.randn(1, 3, 4, 4, 4), torch.eye(3).repeat(3, 2, 1, 1), ring_neighbors(3, 2))
