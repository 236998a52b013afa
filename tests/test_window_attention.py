"""The fused cpp window attention against its PyTorch reference (docs/design.md §3.1)."""

from __future__ import annotations

import pytest
import torch
from window_attention_cases import TENSOR_ARGS, make_case, run_with_grads

import vsad
from vsad.ops import window_attention, window_attention_reference


def test_extension_is_built_and_reports_its_instruction_set():
    info = vsad.backends()
    assert info["cpp"], "vsad._C failed to import: the cpp backend is missing"
    assert info["cpu_isa"] in info["cpu_isas_supported"]


def cpp(*args, **kwargs):
    return window_attention(*args, backend="cpp", **kwargs)


def assert_matches_reference(case, heads, rng, *, atol=1e-10, rtol=1e-9, ref_dtype=None):
    grad_out = torch.randn(case["q"].shape, generator=rng, dtype=torch.float64).to(case["q"].dtype)
    got = run_with_grads(cpp, case, grad_out, heads=heads)
    ref_case = case
    if ref_dtype is not None:
        ref_case = {n: (t.to(ref_dtype) if n in TENSOR_ARGS else t) for n, t in case.items()}
        grad_out = grad_out.to(ref_dtype)
    want = run_with_grads(window_attention_reference, ref_case, grad_out, heads=heads)
    for name, g, w in zip(("out", *TENSOR_ARGS), got, want, strict=True):
        assert g.dtype == case["q"].dtype, name
        assert torch.isfinite(g).all(), f"{name} has non-finite values"
        torch.testing.assert_close(g.to(w.dtype), w, atol=atol, rtol=rtol, msg=f"{name} differs")
    return got


@pytest.mark.parametrize("window", [1, 2, 3, 4])
@pytest.mark.parametrize("heads", [1, 2, 4])
def test_matches_reference_float64(window, heads, rng):
    case = make_case(rng, B=2, M=3, H=5, W=7, C=8, window=window)
    assert_matches_reference(case, heads, rng)


def test_shared_homography_and_wide_channels(rng):
    # C=40 with 2 heads: d=20 is not a multiple of any SIMD width, so remainder loops run.
    case = make_case(rng, B=3, M=4, H=6, W=5, C=40, N=3, shared=True)
    assert_matches_reference(case, 2, rng)


def test_strong_perspective_and_points_behind_camera(rng):
    case = make_case(rng, B=2, M=3, H=7, W=9, C=8, perspective=0.0)
    # w = 1 - 0.3·x changes sign inside the image: pixels right of x≈3.3 project behind the camera.
    case["homography"][..., 2, :] = torch.tensor([-0.3, 0.05, 1.0], dtype=torch.float64)
    out = assert_matches_reference(case, 2, rng)[0]
    assert torch.isfinite(out).all()


def test_pixels_without_any_valid_candidate_give_zero(rng):
    case = make_case(rng, B=2, M=3, H=5, W=6, C=8, empty_slot=False)
    # Every slot of view 1 projects far outside the image; view 2's slot 0 half outside.
    case["homography"][:, 1, :, 0, 2] += 50.0
    case["homography"][:, 2, 0, 0, 2] += 3.0
    got = assert_matches_reference(case, 2, rng)
    out, dq = got[0], got[1]
    assert torch.equal(out[:, 1], torch.zeros_like(out[:, 1]))
    assert torch.equal(dq[:, 1], torch.zeros_like(dq[:, 1]))


def test_all_slots_empty(rng):
    case = make_case(rng, B=1, M=2, H=3, W=4, C=4)
    case["neighbors"][:] = -1
    got = assert_matches_reference(case, 1, rng)
    for g in got:
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_every_instruction_set_matches(isa, rng):
    from vsad._extension import _C

    if isa not in _C.supported_isas():
        pytest.skip(f"this CPU does not support {isa}")
    try:
        _C.set_isa(isa)
        case = make_case(rng, B=2, M=3, H=6, W=7, C=36, window=3)
        assert_matches_reference(case, 2, rng)
        case32 = make_case(rng, B=1, M=3, H=6, W=7, C=48, dtype=torch.float32)
        assert_matches_reference(case32, 3, rng, atol=2e-5, rtol=1e-4, ref_dtype=torch.float64)
    finally:
        _C.set_isa(_C.detected_isa())


def test_thread_counts_agree(rng):
    """Backward scatters dk/dv into per-thread buffers; any thread count must give one answer."""
    case = make_case(rng, B=2, M=3, H=8, W=9, C=16)
    grad_out = torch.randn(case["q"].shape, generator=rng, dtype=torch.float64)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(run_with_grads(cpp, case, grad_out, heads=2))
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_float32_against_float64_reference(rng):
    case = make_case(rng, B=2, M=3, H=9, W=11, C=32, dtype=torch.float32)
    assert_matches_reference(case, 4, rng, atol=2e-5, rtol=1e-4, ref_dtype=torch.float64)


# float32 has its own AVX-512 code (fixed 8-row dot blocks, 16/32/64-lane accumulation blocks, a
# vector exp): head dims 32, 64, 160 = 64+64+32, 116 = 64+32+16+4 and 16 reach every block and
# the masked tail; H x W = 9 x 11 with shifted views mixes interior windows (fast path) and
# windows cut by the border; R = 1..4 gives odd and even row counts.
@pytest.mark.parametrize("window", [1, 2, 3, 4])
@pytest.mark.parametrize("C,heads", [(64, 2), (64, 1), (160, 1), (116, 1), (48, 3)])
def test_float32_head_dims_against_float64_reference(C, heads, window, rng):
    case = make_case(rng, B=1, M=3, H=9, W=11, C=C, window=window, dtype=torch.float32)
    assert_matches_reference(case, heads, rng, atol=5e-5, rtol=1e-4, ref_dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_in_a_key_propagates_like_the_reference(dtype, rng):
    # One NaN key pixel makes NaN logits for only some candidates of the queries that read it; a
    # softmax that clamped them to a finite weight would return finite outputs there.
    case = make_case(rng, B=1, M=3, H=6, W=7, C=32, dtype=dtype)
    case["k"][0, 1, 2, 3, 5] = float("nan")
    got = cpp(**case, heads=1)
    want = window_attention_reference(**case, heads=1)
    torch.testing.assert_close(got, want, equal_nan=True, atol=1e-5, rtol=1e-4)
    nan_queries = torch.isnan(got).any(dim=-1)
    assert 0 < int(nan_queries.sum()) < nan_queries.numel()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_accepted_and_accumulate_in_float32(dtype, rng):
    case = make_case(rng, B=1, M=3, H=5, W=6, C=16, dtype=dtype)
    grad_out = torch.randn(case["q"].shape, generator=rng).to(dtype)
    got = run_with_grads(cpp, case, grad_out, heads=2)
    case32 = {n: (t.float() if n in TENSOR_ARGS else t) for n, t in case.items()}
    want = run_with_grads(window_attention_reference, case32, grad_out.float(), heads=2)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        # Only the final rounding to the half type differs from a float32 computation.
        tol = 1e-2 if dtype == torch.float16 else 5e-2
        torch.testing.assert_close(g.float(), w, atol=tol, rtol=tol)


def test_gradcheck_float64(rng):
    case = make_case(rng, B=1, M=2, H=3, W=4, C=4, window=2)
    inputs = tuple(case[n].clone().requires_grad_(True) for n in TENSOR_ARGS)

    def fn(*tensors):
        return cpp(*tensors, case["homography"], case["neighbors"], window=2, heads=2)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_opcheck(rng):
    case = make_case(rng, B=1, M=2, H=3, W=4, C=4, window=2)
    tensors = [case[n].clone().requires_grad_(True) for n in TENSOR_ARGS]
    hom = case["homography"].contiguous()
    args = (*tensors, hom, case["neighbors"], 2, 2, 0.5, "cpp")
    torch.library.opcheck(torch.ops.vsad.window_attention_forward.default, args)


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile(compile_backend, rng):
    case = make_case(rng, B=1, M=3, H=4, W=5, C=8)

    def fn(q, k, v, pos_k, pos_v):
        out = cpp(q, k, v, pos_k, pos_v, case["homography"], case["neighbors"], heads=2)
        return (out * 2).sum()

    compiled = torch.compile(fn, fullgraph=True, backend=compile_backend)
    tensors = [case[n].clone().requires_grad_(True) for n in TENSOR_ARGS]
    got = compiled(*tensors)
    got_grads = torch.autograd.grad(got, tensors)
    tensors_ref = [case[n].clone().requires_grad_(True) for n in TENSOR_ARGS]
    want = fn(*tensors_ref)
    want_grads = torch.autograd.grad(want, tensors_ref)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w)


def test_non_contiguous_inputs_are_handled(rng):
    case = make_case(rng, B=2, M=3, H=5, W=6, C=8)
    want = cpp(*(case[n] for n in TENSOR_ARGS), case["homography"], case["neighbors"])
    # Same values, different memory layout: stored (B, M, C, H, W), viewed channels-last.
    q, k, v = (case[n].permute(0, 1, 4, 2, 3).contiguous().permute(0, 1, 3, 4, 2) for n in "qkv")
    assert not q.is_contiguous()
    got = cpp(q, k, v, case["pos_k"], case["pos_v"], case["homography"], case["neighbors"])
    torch.testing.assert_close(got, want, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# Bad input


def call(case, **overrides):
    args = {**case, **overrides}
    kwargs = {k: args.pop(k) for k in ("window", "heads", "scale", "backend") if k in args}
    kwargs.setdefault("backend", "cpp")
    return window_attention(
        *(args[n] for n in TENSOR_ARGS), args["homography"], args["neighbors"], **kwargs
    )


def _to_int(c):
    return {"q": c["q"].int(), "k": c["k"].int(), "v": c["v"].int()}


BAD_INPUTS = {
    "rank": (lambda c: {"q": c["q"][0]}, ValueError, r"q: got shape \(3, 5, 7, 8\), expected 5-D"),
    "k shape": (lambda c: {"k": c["k"][:, :, :4]}, ValueError, "k: got shape"),
    "heads": (lambda c: {"heads": 3}, ValueError, "heads: got 3, expected a divisor of .* C=8"),
    "window": (lambda c: {"window": 0}, ValueError, "window: got 0"),
    "neighbour index": (
        lambda c: {"neighbors": c["neighbors"].clone().fill_(3)},
        ValueError,
        r"neighbors\[0, 0\]: got 3, expected -1 or a view index in \[0, 3\)",
    ),
    "slots vs pos": (
        lambda c: {"neighbors": c["neighbors"][:, :1]},
        ValueError,
        r"pos_k: got shape .*expected \(N, R\*R, C\)",
    ),
    "nan homography": (
        lambda c: {"homography": c["homography"].clone().fill_(float("nan"))},
        ValueError,
        "homography: contains NaN or Inf",
    ),
    "homography shape": (
        lambda c: {"homography": c["homography"][..., :2, :]},
        ValueError,
        "homography: got shape",
    ),
    "dtype mismatch": (
        lambda c: {"v": c["v"].float()},
        TypeError,
        "v: got dtype torch.float32, expected q's dtype",
    ),
    "device mismatch": (
        lambda c: {"pos_v": c["pos_v"].to("meta")},
        ValueError,
        "pos_v: on meta, expected q's device cpu",
    ),
    "integer features": (_to_int, TypeError, "q: got dtype torch.int32"),
    "scale": (lambda c: {"scale": float("inf")}, ValueError, "scale: got inf"),
    "backend": (lambda c: {"backend": "cuda"}, ValueError, r"backend \(argument\): got 'cuda'"),
}


@pytest.mark.parametrize("override, error, pattern", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_names_the_argument(override, error, pattern, rng):
    case = make_case(rng, B=2, M=3, H=5, W=7, C=8)
    with pytest.raises(error, match=pattern):
        call(case, **override(case))


def test_cpp_boundary_validates_arguments(rng):
    """The C++ entry points check their own arguments too (they are callable directly)."""
    from vsad._extension import _C

    case = make_case(rng, B=1, M=2, H=3, W=4, C=4, window=2, shared=True)
    t = {n: case[n].contiguous() for n in TENSOR_ARGS}
    hom = case["homography"].unsqueeze(0).contiguous()
    out = torch.empty_like(t["q"])
    lse = torch.empty(1, 2, 3, 4, 2, dtype=torch.float64)
    ptrs = [t[n].data_ptr() for n in TENSOR_ARGS]

    def forward(neighbors, heads=2, hom_batch=1, scale=0.5, dtype="float64", q_ptr=None):
        p = [q_ptr if q_ptr is not None else ptrs[0], *ptrs[1:]]
        _C.window_attention_forward(
            *p, hom.data_ptr(), neighbors.data_ptr(), out.data_ptr(), lse.data_ptr(), dtype,
            1, 2, 3, 4, 4, 2, 2, heads, hom_batch, scale, 1,
        )  # fmt: skip

    good = case["neighbors"].contiguous()
    forward(good)  # sanity: the valid call works
    with pytest.raises(ValueError, match="heads: got 3, expected a divisor of C=4"):
        forward(good, heads=3)
    bad_nbr = good.clone()
    bad_nbr[1, 0] = 7
    with pytest.raises(ValueError, match=r"neighbors\[1, 0\]: got 7"):
        forward(bad_nbr)
    with pytest.raises(ValueError, match="homography: batch dimension 3"):
        forward(good, hom_batch=3)
    with pytest.raises(ValueError, match="dtype: got 'float16'"):
        forward(good, dtype="float16")
    with pytest.raises(ValueError, match="q: got a null data pointer"):
        forward(good, q_ptr=0)
    with pytest.raises(ValueError, match="scale: got nan"):
        forward(good, scale=float("nan"))
    nonfinite = hom.clone()
    nonfinite[0, 0, 0, 1, 1] = float("inf")
    with pytest.raises(ValueError, match="homography: element 4 is inf"):
        _C.window_attention_forward(
            *ptrs, nonfinite.data_ptr(), good.data_ptr(), out.data_ptr(), lse.data_ptr(),
            "float64", 1, 2, 3, 4, 4, 2, 2, 2, 1, 0.5, 1,
        )  # fmt: skip
