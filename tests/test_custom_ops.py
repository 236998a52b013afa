"""The fused ops as torch.library custom ops (docs/design.md §3.4): opcheck, fake tensors,
torch.compile(fullgraph=True) of the searches and of MVAM, profiler names, device guards.

The Triton backends of the same custom ops are opchecked under TRITON_INTERPRET=1 in
tests/test_min_l2_triton.py and tests/test_min_l2_local_triton.py.
"""

from __future__ import annotations

import ast
import contextlib
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from window_attention_cases import TENSOR_ARGS, make_case

from vsad.model.mvam import MVAM
from vsad.ops import bank_sq_norms, min_l2, min_l2_local

KERNELS = Path(__file__).resolve().parents[1] / "kernels"
BANK_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _search_inputs(rng, Q=13, N=37, D=11, dtype=torch.float32):
    q = torch.randn(Q, D, generator=rng)
    bank = torch.randn(N, D, generator=rng).to(dtype)
    return q, bank


def _local_inputs(rng, B=2, S=3, H=4, W=5, D=7, dtype=torch.float32):
    q = torch.randn(B, H, W, D, generator=rng)
    bank = torch.randn(S, H, W, D, generator=rng).to(dtype)
    return q, bank


# ---------------------------------------------------------------------------------------------
# opcheck: schema (nothing mutated, no aliasing), fake kernel vs real outputs, autograd
# registration, and an aot_eager trace with dynamic shapes.


@pytest.mark.parametrize("dtype", BANK_DTYPES)
def test_opcheck_bank_sq_norms(dtype, rng):
    _, bank = _search_inputs(rng, dtype=dtype)
    torch.library.opcheck(torch.ops.vsad.bank_sq_norms.default, (bank, "cpp"))


@pytest.mark.parametrize("precision", ["fp32", "mixed"])
@pytest.mark.parametrize("dtype", BANK_DTYPES)
def test_opcheck_min_l2(precision, dtype, rng):
    q, bank = _search_inputs(rng, dtype=dtype)
    norms = bank_sq_norms(bank, backend="cpp")
    torch.library.opcheck(torch.ops.vsad.min_l2.default, (q, bank, norms, precision, "cpp"))


@pytest.mark.parametrize("radius", [0, 1, 4])
@pytest.mark.parametrize("dtype", BANK_DTYPES)
def test_opcheck_min_l2_local(radius, dtype, rng):
    q, bank = _local_inputs(rng, dtype=dtype)
    norms = bank_sq_norms(bank.reshape(-1, bank.shape[-1]), backend="cpp")
    args = (q, bank, norms, radius, "cpp")
    torch.library.opcheck(torch.ops.vsad.min_l2_local.default, args)


def test_opcheck_window_attention_backward(rng):
    """The forward op (with its registered autograd) is opchecked in test_window_attention.py;
    the backward op is a custom op of its own and is checked here directly."""
    case = make_case(rng, B=1, M=2, H=3, W=4, C=4, window=2)
    tensors = [case[n] for n in TENSOR_ARGS]
    hom, nbr = case["homography"].contiguous(), case["neighbors"]  # (B=1, M, N, 3, 3)
    out, lse = torch.ops.vsad.window_attention_forward(*tensors, hom, nbr, 2, 2, 0.5, "cpp")
    grad_out = torch.randn(out.shape, generator=rng, dtype=out.dtype)
    args = (grad_out, *tensors, hom, nbr, out, lse, 2, 2, 0.5, "cpp")
    torch.library.opcheck(torch.ops.vsad.window_attention_backward.default, args)


def test_fused_searches_detach_their_inputs(rng):
    """No autograd formula (an argmin): the fused searches' outputs never require grad, as
    before they were custom ops (callers turn distances into numpy arrays)."""
    q, bank = _search_inputs(rng)
    q.requires_grad_(True)
    dist, _ = min_l2(q, bank, backend="cpp")
    assert not dist.requires_grad
    ql, bl = _local_inputs(rng)
    dist, _ = min_l2_local(ql.requires_grad_(True), bl, backend="cpp")
    assert not dist.requires_grad
    assert not bank_sq_norms(bank.requires_grad_(True), backend="cpp").requires_grad


# ---------------------------------------------------------------------------------------------
# Fake tensors: shapes, dtypes and devices without running a kernel (CUDA tensors too, which is
# how device-cleanliness is checked on machines without a GPU).


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_public_searches_run_on_fake_tensors(device):
    with FakeTensorMode():
        q = torch.randn(13, 11, device=device)
        bank = torch.randn(37, 11, device=device, dtype=torch.float16)
        norms = bank_sq_norms(bank)
        assert (norms.shape, norms.dtype, norms.device) == ((37,), torch.float32, q.device)
        for given in (None, norms):
            dist, index = min_l2(q, bank, bank_sq_norms=given)
            assert (dist.shape, dist.dtype, dist.device) == ((13,), torch.float32, q.device)
            assert (index.shape, index.dtype, index.device) == ((13,), torch.int64, q.device)
        ql = torch.randn(2, 4, 5, 7, device=device)
        bl = torch.randn(3, 4, 5, 7, device=device)
        dist, index = min_l2_local(ql, bl, radius=1)
        assert (dist.shape, dist.dtype, dist.device) == ((2, 4, 5), torch.float32, ql.device)
        assert (index.shape, index.dtype, index.device) == ((2, 4, 5), torch.int64, ql.device)


# ---------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True). Compiling on 2 CPU cores is slow: min_l2 is compiled once with
# inductor (the custom op stays an opaque call, the surrounding arithmetic is generated code);
# min_l2_local and MVAM with aot_eager, which traces the same graph (dynamo + AOT autograd, the
# fake kernels, the backward graph) without inductor's C++ code generation, several seconds per
# graph on this machine.


def test_compile_min_l2_fullgraph_inductor(rng):
    q, bank = _search_inputs(rng, Q=20, N=50, D=16)
    norms = bank_sq_norms(bank)

    def fn(q, bank, norms):
        dist, index = min_l2(q * 1.5 - 0.25, bank, bank_sq_norms=norms)
        return dist * 2, index + 1

    got = torch.compile(fn, fullgraph=True, backend="inductor")(q, bank, norms)
    want = fn(q, bank, norms)
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0], atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compile_searches_fullgraph_aot_eager(dtype, rng):
    q, bank = _search_inputs(rng, Q=20, N=50, D=16, dtype=dtype)
    ql, bl = _local_inputs(rng, B=2, S=4, H=5, W=6, D=9, dtype=dtype)

    def fn(q, bank, ql, bl):
        norms = bank_sq_norms(bank)
        g = min_l2(q, bank, bank_sq_norms=norms)
        loc = min_l2_local(ql, bl, radius=1)
        return g[0].sum(), g[1], loc[0] ** 2, loc[1]

    got = torch.compile(fn, fullgraph=True, backend="aot_eager")(q, bank, ql, bl)
    want = fn(q, bank, ql, bl)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


def test_compile_mvam_fullgraph_forward_and_backward(rng):
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=rng)))
    mvam = MVAM(channels=8, heads=2, window=3)
    with torch.no_grad():  # an untrained MVAM is the identity: give it an output projection
        mvam.proj_out.weight.normal_(0, 0.3)
        mvam.proj_out.bias.normal_(0, 0.1)
    case = make_case(rng, B=1, M=3, H=4, W=5, C=8, dtype=torch.float32)
    hom, nbr = case["homography"], case["neighbors"]
    x = torch.randn(1, 3, 8, 4, 5, generator=rng)
    weight = torch.randn(1, 3, 8, 4, 5, generator=rng)

    def loss(module, x):
        return (module(x, hom, nbr) * weight).sum()

    compiled = torch.compile(mvam, fullgraph=True, backend="aot_eager")
    x1 = x.clone().requires_grad_(True)
    got = loss(compiled, x1)
    got_grads = torch.autograd.grad(got, [x1, *mvam.parameters()])
    x2 = x.clone().requires_grad_(True)
    want = loss(mvam, x2)
    want_grads = torch.autograd.grad(want, [x2, *mvam.parameters()])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert abs(float(want.detach() - (x * weight).sum())) > 1e-3, "MVAM acted as the identity"
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Profiler: the custom op is the one event per call (bench/test_model.py sums these by name).


def test_profiler_sees_each_search_once_by_its_op_name(rng):
    from torch.profiler import ProfilerActivity, profile

    q, bank = _local_inputs(rng)
    qg, bg = _search_inputs(rng)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            min_l2_local(q, bank, radius=1, backend="cpp")
        min_l2(qg, bg, backend="cpp")
    counts = {e.key: e.count for e in prof.key_averages()}
    assert counts.get("vsad::min_l2_local") == 3, counts
    assert counts.get("vsad::min_l2") == 1, counts
    assert counts.get("vsad::bank_sq_norms") == 4, counts


# ---------------------------------------------------------------------------------------------
# Device guards: every Triton launch runs with the tensors' CUDA device current.


def _launches_outside_a_device_guard(source: str) -> list[int]:
    """Line numbers of `kernel[grid](...)` calls not lexically inside `with device_guard(...)`."""
    tree = ast.parse(source)
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and any(
            isinstance(item.context_expr, ast.Call)
            and getattr(item.context_expr.func, "id", None) == "device_guard"
            for item in node.items
        ):
            guarded.update(id(n) for n in ast.walk(node))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Subscript)
        and id(node) not in guarded
    ]


def test_every_triton_launch_is_inside_a_device_guard():
    files = sorted(KERNELS.glob("*.py"))
    assert {"min_l2.py", "min_l2_local.py", "bank_sq_norms.py", "window_attention.py"} <= {
        f.name for f in files
    }
    launches = 0
    for path in files:
        source = path.read_text()
        assert not _launches_outside_a_device_guard(source), (
            f"{path.name}: launches outside device_guard at lines "
            f"{_launches_outside_a_device_guard(source)}"
        )
        launches += source.count("](")
    assert launches >= 5  # norms, min_l2 partial + merge, min_l2_local, attention fwd + bwd
    # The checker itself catches an unguarded launch.
    assert _launches_outside_a_device_guard("def f():\n    k[(1,)](x)\n") == [2]


def test_device_guard_makes_the_tensors_device_current(monkeypatch):
    pytest.importorskip("triton", reason="triton is not installed")
    from vsad.kernels import _common

    entered = []

    @contextlib.contextmanager
    def fake_device(device):
        entered.append(device)
        yield

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    with _common.device_guard(torch.device("cuda", 1)):
        assert entered == [torch.device("cuda", 1)]
    with _common.device_guard(torch.device("cpu")):
        pass
    assert entered == [torch.device("cuda", 1)]
