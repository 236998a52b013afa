"""The C++ kernels under pressure: allocation failure is a Python MemoryError (never a crash),
the window-attention backward's scratch is bounded whatever the thread count and image size,
and the instruction-set levels (AVX-512 without BF16 gets the AVX-512 window attention)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from window_attention_cases import TENSOR_ARGS, make_case

import vsad
from vsad.ops import min_l2, min_l2_local, window_attention

_C = pytest.importorskip("vsad._C", reason="the cpp extension is not built")


@pytest.fixture
def scratch_limit():
    """Sets the extension's scratch limit for one test and always lifts it again."""
    yield _C.set_scratch_limit
    _C.set_scratch_limit(0)


def cpp_attention(case, heads=2):
    return window_attention(*(case[n] for n in TENSOR_ARGS), case["homography"],
                            case["neighbors"], heads=heads, backend="cpp")  # fmt: skip


# -------------------------------------------------------------------------- MemoryError


def test_window_attention_allocation_failure_is_a_memory_error(rng, scratch_limit):
    case = make_case(rng, B=1, M=3, H=6, W=7, C=16, dtype=torch.float32)
    tensors = {n: (case[n].clone().requires_grad_(True) if n in TENSOR_ARGS else case[n])
               for n in case}  # fmt: skip
    out = cpp_attention(tensors)  # the forward succeeds without a limit
    scratch_limit(64)
    with pytest.raises(MemoryError, match=r"window_attention forward: could not allocate \d+"):
        cpp_attention(case)
    with pytest.raises(MemoryError, match=r"window_attention backward.*scratch limit of 64"):
        torch.autograd.grad(out, [tensors[n] for n in TENSOR_ARGS], torch.ones_like(out))
    scratch_limit(0)
    # The process and the extension are fine afterwards: the same calls succeed.
    again = cpp_attention(tensors)
    torch.autograd.grad(again, [tensors[n] for n in TENSOR_ARGS], torch.ones_like(again))
    torch.testing.assert_close(again, out, atol=0, rtol=0)


@pytest.mark.parametrize("precision", ["fp32", "mixed"])
def test_min_l2_allocation_failure_is_a_memory_error(precision, rng, scratch_limit):
    q, bank = torch.randn(40, 24, generator=rng), torch.randn(500, 24, generator=rng)
    want = min_l2(q, bank, backend="cpp", precision=precision)
    scratch_limit(64)
    with pytest.raises(MemoryError, match=r"min_l2.*could not allocate \d+ bytes"):
        min_l2(q, bank, backend="cpp", precision=precision)
    maps, normal = torch.randn(1, 5, 6, 24, generator=rng), torch.randn(4, 5, 6, 24, generator=rng)
    with pytest.raises(MemoryError, match=r"min_l2_local: could not allocate"):
        min_l2_local(maps, normal, radius=1, backend="cpp")
    scratch_limit(0)
    got = min_l2(q, bank, backend="cpp", precision=precision)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# ------------------------------------------------------------------ bounded backward scratch


def _backward(shape, threads, seed=0):
    """(largest scratch request of the backward, gradients) for a float32 case."""
    B, M, H, W, C = shape
    case = make_case(torch.Generator().manual_seed(seed), B=B, M=M, H=H, W=W, C=C,
                     dtype=torch.float32)  # fmt: skip
    grad_out = torch.randn(case["q"].shape, generator=torch.Generator().manual_seed(seed + 1))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tensors = [case[n].clone().requires_grad_(True) for n in TENSOR_ARGS]
        out = window_attention(*tensors, case["homography"], case["neighbors"], heads=2,
                               backend="cpp")  # fmt: skip
        _C.reset_scratch_peak()
        grads = torch.autograd.grad(out, tensors, grad_out)
        return _C.scratch_peak_request(), grads
    finally:
        torch.set_num_threads(previous)


PRIVATE_BUDGET = 8 << 20  # csrc/kernels/window_attention.cpp: kPrivateBudget
RECORD_BUDGET = 1 << 20  # kRecordBudget
PER_THREAD = 64 << 10  # query scratch + dpos accumulators, a few KiB


def test_backward_scratch_is_bounded_whatever_the_threads_or_image_size():
    """Before: (threads - 1) · 2 · B·M·H·W·C elements of per-thread dk/dv copies, pooled for
    the life of the process. Now: such copies only while they fit 8 MiB, else one chunk of
    per-query records (1 MiB), plus a few KiB per thread; the pool keeps at most 64 MiB."""
    small, big, bigger = (1, 3, 24, 24, 64), (1, 3, 96, 96, 64), (1, 3, 192, 192, 64)
    peaks = {(s, t): _backward(s, t)[0] for s in (small, big, bigger) for t in (1, 2, 4)}
    for (shape, threads), peak in peaks.items():
        assert 0 < peak <= PRIVATE_BUDGET + threads * PER_THREAD, (shape, threads, peak)
    assert peaks[(small, 1)] <= PER_THREAD  # one thread scatters in place
    # Beyond the budget of private copies a larger image or more threads add only the small
    # per-thread buffers (the old scheme: 6 · 28 MiB at 192², 4 threads).
    for threads in (2, 4):
        assert (
            peaks[(big, threads)]
            == peaks[(bigger, threads)]
            <= RECORD_BUDGET + threads * PER_THREAD
        )
    assert peaks[(bigger, 4)] - peaks[(bigger, 2)] <= 2 * PER_THREAD
    assert _C.pooled_scratch_bytes() <= 64 << 20
    _C.release_scratch()
    assert _C.pooled_scratch_bytes() == 0


@pytest.mark.parametrize("shape", [(2, 3, 8, 9, 40), (1, 3, 64, 96, 64)], ids=["copies", "records"])
def test_backward_is_bitwise_reproducible(shape):
    """The same thread count gives the same bits (a resumed training run depends on it); with
    the records scheme (large calls) dk and dv do not even depend on the thread count."""
    results = {t: _backward(shape, t)[1] for t in (1, 2, 3)}
    for threads in (2, 3):
        again = _backward(shape, threads)[1]
        assert all(torch.equal(a, b) for a, b in zip(results[threads], again, strict=True))
    for threads in (2, 3):
        for name, a, b in zip(TENSOR_ARGS, results[1], results[threads], strict=True):
            if shape[-1] == 64 and name in ("q", "k", "v"):
                assert torch.equal(a, b), f"d{name} differs between 1 and {threads} threads"
            else:
                torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------- instruction sets

BASE = ["avx2", "fma", "f16c"]
AVX512 = [*BASE, "avx512f", "avx512bw", "avx512vl", "avx512dq"]


@pytest.mark.parametrize(
    "features,level",
    [
        ([], "generic"),
        (["avx2", "f16c"], "generic"),  # no FMA
        (BASE, "avx2"),
        ([*BASE, "avx512f", "avx512bw", "avx512dq"], "avx2"),  # no AVX512VL (Xeon Phi)
        (AVX512, "avx512"),  # Skylake-SP, Cascade Lake, Ice Lake: no BF16
        ([*AVX512, "avx512bf16"], "avx512_bf16"),  # Cooper Lake, Sapphire Rapids, Zen 4
    ],
)
def test_level_for_cpu_features(features, level):
    assert _C.isa_for_features(features) == level


def test_unknown_cpu_feature_is_named():
    with pytest.raises(ValueError, match="features: got 'sse9'"):
        _C.isa_for_features(["sse9"])


def test_avx512_without_bf16_runs_the_avx512_window_attention(rng):
    if "avx512" not in _C.supported_isas():
        pytest.skip("this CPU has no AVX-512")
    previous = _C.active_isa()
    try:
        _C.set_isa("avx512")  # what a Skylake-class Xeon gets
        assert vsad.backends()["cpu_kernels"] == {"window_attention": "avx512", "min_l2": "avx512"}
        if "avx512_bf16" in _C.supported_isas():
            _C.set_isa("avx512_bf16")
            kernels = vsad.backends()["cpu_kernels"]
            assert kernels == {"window_attention": "avx512", "min_l2": "avx512_bf16"}
    finally:
        _C.set_isa(previous)


@pytest.mark.parametrize("value", ["generic", "avx2", "avx512", "avx512_bf16", "nonsense"])
def test_vsad_cpu_isa_override(value, tmp_path):
    """VSAD_CPU_ISA lowers the level at start-up (never raises it: that would SIGILL)."""
    code = "import vsad; b = vsad.backends(); print(b['cpu_isa'], b['cpu_kernels']['window_attention'])"  # noqa: E501
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "VSAD_CPU_ISA": value},
        # Not the checkout: `-c` puts the working directory first on sys.path, and the source
        # tree has no compiled vsad._C (a non-editable install puts it in site-packages).
        cwd=tmp_path,
    )
    supported = _C.supported_isas()
    if value == "nonsense":
        assert done.returncode != 0
        assert "VSAD_CPU_ISA: got 'nonsense', expected one of" in done.stderr
        return
    assert done.returncode == 0, done.stderr
    isa, attention = done.stdout.split()
    assert isa == (value if value in supported else supported[-1])
    assert attention == ("avx512" if isa == "avx512_bf16" else isa)
