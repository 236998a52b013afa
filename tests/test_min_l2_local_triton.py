"""The Triton position-local search (kernels/min_l2_local.py) against a float64 windowed brute
force and the reference twin (docs/design.md §3.2).

Same pattern as tests/test_min_l2_triton.py: without a GPU the kernel runs on CPU tensors under
TRITON_INTERPRET=1, which must be set before the kernel module is imported, so this file runs
itself as a script in a subprocess (``python test_min_l2_local_triton.py --seed S --out FILE``)
that runs every case once with poisoned outputs and saves inputs and outputs; the tests then
check them one by one. Sizes are tiny (the interpreter is ~1000x slower than a GPU); explicit
block sizes make them cross query, sample and feature tile edges.

A second run (``--compile-for-gpu``, without the interpreter) compiles the kernel ahead of time
for sm_80 / sm_90 (needs ptxas, not a GPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed: the triton backend cannot run")

BANK_DTYPES = ("float32", "float16", "bfloat16")

# (B, S, H, W, D, radius): a single pixel, odd sizes, a radius beyond the map, radius 0.
SIZES = [
    (1, 1, 1, 1, 1, 0),
    (2, 3, 5, 6, 19, 1),
    (1, 5, 4, 7, 8, 2),
    (2, 4, 3, 3, 5, 4),
    (1, 6, 5, 4, 33, 0),
]
# Launch tiles (BLOCK_Q, BLOCK_S, BLOCK_D): None = the launcher's default; small ones cross
# query, sample (S > 4) and feature (D > 8) tile edges at these sizes; the GPU default; a single
# element per axis. The interpreter's cost is per operation and loop trip, so the slow variants
# run on fewer cases (the whole file stays around a minute on 2 cores).
BLOCKS = {"default": None, "small": (8, 4, 8), "gpu": (16, 16, 16), "unit": (1, 1, 1)}
_MATRIX = [
    # (kind, sizes, dtypes, block variants)
    ("random", SIZES, ("float32",), ("default", "small")),
    ("random", [(2, 5, 5, 6, 19, 1)], ("float16", "bfloat16"), ("default", "small")),
    ("random", [(2, 3, 5, 6, 19, 1)], ("float32", "bfloat16"), ("gpu",)),
    ("random", [(1, 2, 2, 3, 3, 1)], ("float32",), ("unit",)),
    ("copies", [(2, 5, 4, 5, 19, 1)], ("float32",), ("default", "small")),
    ("copies", [(2, 5, 4, 5, 19, 1)], ("bfloat16",), ("default",)),
    ("near", [(2, 5, 4, 5, 19, 1)], ("float32", "float16"), ("small",)),
]
CASES = {
    f"{kind}_B{B}_S{S}_H{H}_W{W}_D{D}_r{r}_{dtype}_{blocks}": {
        "kind": kind,
        "B": B,
        "S": S,
        "H": H,
        "W": W,
        "D": D,
        "radius": r,
        "dtype": dtype,
        "blocks": BLOCKS[blocks],
    }  # fmt: skip
    for kind, sizes, dtypes, block_names in _MATRIX
    for (B, S, H, W, D, r) in sizes
    for dtype in dtypes
    for blocks in block_names
}
TIE_CASES = {f"ties_{dtype}": {"dtype": dtype} for dtype in ("float32", "bfloat16")}


# ---------------------------------------------------------------------------------------------
# The tests (parent process): run the script once, then check its measurements.


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    seed = int.from_bytes(os.urandom(4), "little") >> 2
    print(f"seed = {seed}")
    out = tmp_path_factory.mktemp("min_l2_local_triton") / "results.pt"
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, __file__, "--seed", str(seed), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"script failed (seed {seed}):\n{proc.stdout}\n{proc.stderr}"
    assert out.exists(), f"no results saved (seed {seed}):\n{proc.stdout}\n{proc.stderr}"
    return torch.load(out)


def case_result(results: dict, name: str) -> dict:
    r = results[name]
    assert r.get("error") is None, f"{name} raised:\n{r['error']}"
    return r


def windowed_sq_distances(q: torch.Tensor, bank: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, H, W, S·H·W) float64 squared distances, +inf outside each query's window."""
    B, H, W, D = q.shape
    S = bank.shape[0]
    flat = bank.double().reshape(-1, D)
    d2 = torch.cdist(q.double().reshape(-1, D), flat).reshape(B, H, W, -1) ** 2
    ys = torch.arange(H).view(H, 1, 1, 1)
    xs = torch.arange(W).view(1, W, 1, 1)
    by = torch.arange(H).view(1, 1, H, 1)
    bx = torch.arange(W).view(1, 1, 1, W)
    inside = ((ys - by).abs() <= radius) & ((xs - bx).abs() <= radius)  # (H, W, H, W)
    inside = inside.reshape(H, W, 1, H * W).expand(H, W, S, H * W).reshape(1, H, W, S * H * W)
    return d2.masked_fill(~inside, float("inf"))


def tolerance_sq(q: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Per query, the float32 rounding bound of d² = ‖q‖² + ‖b‖² − 2⟨q, b⟩ (as in
    tests/test_min_l2_triton.py): |error| ≲ D·eps·(‖q‖² + ‖b‖²), with a √D-grown margin."""
    q64, b64 = q.double(), bank.double()
    scale = (q64 * q64).sum(-1) + (b64 * b64).sum(-1).max()
    return 4 * q.shape[-1] ** 0.5 * torch.finfo(torch.float32).eps * scale + 1e-12


def check_local_search(q, bank, radius, dist, index):
    B, H, W, _ = q.shape
    assert dist.shape == (B, H, W) and dist.dtype == torch.float32
    assert index.shape == (B, H, W) and index.dtype == torch.int64
    assert torch.isfinite(dist).all(), "dist has NaN/Inf: an unwritten (poisoned) element?"
    assert (dist >= 0).all()
    assert ((index >= 0) & (index < bank.shape[0] * H * W)).all(), f"index out of range: {index}"
    d2 = windowed_sq_distances(q, bank, radius)
    best2, want_index = d2.min(dim=-1)  # first minimum: the lowest flat row
    at_index = d2.gather(-1, index.unsqueeze(-1)).squeeze(-1)
    assert torch.isfinite(at_index).all(), "index outside the query's window"
    tol = tolerance_sq(q, bank)
    err = (dist.double() ** 2 - best2).abs()
    assert (err <= tol).all(), f"distance off by {float((err / tol).max()):.2f}x the tolerance"
    assert ((at_index - best2).abs() <= 2 * tol).all(), "index does not attain the minimum"
    if d2.shape[-1] > 1:
        second2 = d2.topk(2, dim=-1, largest=False).values[..., 1]
        resolvable = (second2 - best2 > 4 * tol) | torch.isinf(second2)
    else:
        resolvable = torch.ones_like(best2, dtype=torch.bool)
    assert resolvable.float().mean() > 0.5, "case too degenerate to check indices"
    assert torch.equal(index[resolvable], want_index[resolvable])


def test_outputs_were_poisoned(results):
    """Guards the finiteness checks: they only catch unwritten elements if outputs start NaN."""
    assert results["poison_active"]


@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_windowed_brute_force(name, results):
    r = case_result(results, name)
    check_local_search(r["q"], r["bank"].float(), r["radius"], r["dist"], r["index"])
    if r["kind"] == "copies":
        assert torch.equal(r["index"], r["copied_rows"])
        assert (r["dist"] ** 2 <= tolerance_sq(r["q"], r["bank"].float())).all()


@pytest.mark.parametrize("name", list(CASES))
def test_agrees_with_the_reference_backend(name, results):
    r = case_result(results, name)
    ref_dist, ref_index = r["reference"]
    tol = tolerance_sq(r["q"], r["bank"].float())
    assert ((r["dist"].double() - ref_dist.double()).abs() <= tol.sqrt()).all()
    # Indices may differ only on near ties, where the reference's row attains the minimum too.
    d2 = windowed_sq_distances(r["q"], r["bank"].float(), r["radius"])
    at_ref = d2.gather(-1, ref_index.unsqueeze(-1)).squeeze(-1)
    differ = r["index"] != ref_index
    assert ((at_ref - d2.min(dim=-1).values)[differ] <= 2 * tol[differ]).all()


@pytest.mark.parametrize("name", [n for n, spec in CASES.items() if spec["blocks"] is None])
def test_precomputed_norms_give_identical_results(name, results):
    r = case_result(results, name)
    dist, index = r["precomputed_norms"]
    assert torch.equal(dist, r["dist"]) and torch.equal(index, r["index"])


@pytest.mark.parametrize("name", list(TIE_CASES))
def test_exact_ties_go_to_the_lowest_flat_row(name, results):
    r = case_result(results, name)
    q, bank, radius = r["q"], r["bank"].float(), r["radius"]
    d2 = windowed_sq_distances(q, bank, radius)  # exact: integer-valued data
    best2, first = d2.min(dim=-1)
    assert torch.equal(r["index"], first)
    assert torch.equal(r["dist"], best2.sqrt().float())
    # The case really has ties: at zero and non-zero distance, across samples and positions.
    ties = (d2 == best2.unsqueeze(-1)).sum(-1)
    assert (ties >= 2).sum() >= 2
    assert (best2[ties >= 2] == 0).any() and (best2[ties >= 2] > 0).any()
    for (b, y, x), want in r["expected"].items():
        assert int(r["index"][b, y, x]) == want, ((b, y, x), int(r["index"][b, y, x]), want)


@pytest.mark.parametrize("dtype", BANK_DTYPES)
def test_full_window_equals_the_global_triton_search(dtype, results):
    """A window covering the whole map sees every bank row: on integer-valued data (every sum
    exact) distances and indices equal the global search's, ties included."""
    r = case_result(results, f"full_window_{dtype}")
    dist, index = r["local"]
    want_dist, want_index = r["global"]
    assert torch.equal(index.reshape(-1), want_index)
    assert torch.equal(dist.reshape(-1), want_dist)
    assert r["has_ties"]


def test_opcheck_of_the_triton_backend(results):
    r = results["opcheck"]
    assert r.get("error") is None, r.get("error")
    assert r["passed"]


def test_bad_arguments_are_named_in_the_error(results):
    r = results["bad_input"]
    assert r.get("error") is None, r.get("error")
    assert len(r["raised"]) >= 10
    for arg, (kind, message) in r["raised"].items():
        name = arg.split(" ")[0]
        assert kind in ("ValueError", "TypeError"), f"{arg}: raised {kind}: {message}"
        assert message.startswith(f"{name}:"), f"{arg}: message does not name it: {message}"


# ---------------------------------------------------------------------------------------------
# Compilation for real GPUs (no GPU needed).

_GPU_COMPILE_MARKER = "=== min_l2_local gpu compile ===\n"


@pytest.fixture(scope="module")
def gpu_compile(tmp_path_factory) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(
        TRITON_CACHE_DIR=str(tmp_path_factory.mktemp("triton_cache")),
        TRITON_DEFAULT_FP_FUSION="1",  # Triton 3.9's default, set to silence its warning
    )
    proc = subprocess.run(
        [sys.executable, __file__, "--compile-for-gpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"script failed:\n{proc.stdout}\n{proc.stderr}"
    payload = proc.stdout.split(_GPU_COMPILE_MARKER, 1)
    assert len(payload) == 2, f"no results printed:\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(payload[1])
    if result.get("skip"):
        pytest.skip(result["skip"])
    return result


def test_kernel_compiles_for_gpus_with_a_rounded_sqrt(gpu_compile):
    assert len(gpu_compile["compiled"]) == 4
    for name, r in gpu_compile["compiled"].items():
        assert r.get("error") is None, f"{name}:\n{r['error']}"
        assert r["stages"][-1] == "cubin", name
        assert r["sqrt"] == ["sqrt.rn.f32"], f"{name}: {r['sqrt']}"


# ---------------------------------------------------------------------------------------------
# The script (child process, TRITON_INTERPRET=1).


def _nonzero_ints(shape, rng, low=-4, high=4) -> torch.Tensor:
    x = torch.randint(low, high, shape, generator=rng)
    return torch.where(x >= 0, x + 1, x).float()


def _run_case(spec: dict, rng) -> dict:
    from vsad.kernels import min_l2_local as kernels

    from vsad.ops import bank_sq_norms, min_l2_local
    from vsad.ops._outputs import new_output

    B, S, H, W, D, radius = (spec[k] for k in ("B", "S", "H", "W", "D", "radius"))
    dtype = getattr(torch, spec["dtype"])
    bank = (torch.randn(S, H, W, D, generator=rng) * 1.5 + 0.25).to(dtype)
    case = {"bank": bank}
    if spec["kind"] == "random":
        case["q"] = torch.randn(B, H, W, D, generator=rng) * 1.5
    else:  # each query a copy of (or 1e-3 from) a bank row of its own window
        s = torch.randint(0, S, (B, H, W), generator=rng)
        dy = torch.randint(-radius, radius + 1, (B, H, W), generator=rng)
        dx = torch.randint(-radius, radius + 1, (B, H, W), generator=rng)
        y = (torch.arange(H).view(1, H, 1) + dy).clamp(0, H - 1)
        x = (torch.arange(W).view(1, 1, W) + dx).clamp(0, W - 1)
        rows = s * H * W + y * W + x
        q = bank.reshape(-1, D)[rows].float()
        if spec["kind"] == "near":
            q = q + torch.randn(B, H, W, D, generator=rng) * 1e-3
        case.update(q=q, copied_rows=rows)
    q = case["q"]
    norms = bank_sq_norms(bank.reshape(-1, D), backend="triton")
    extra = {}
    if spec["blocks"] is None:  # the public function, with and without precomputed norms
        dist, index = min_l2_local(q, bank, radius=radius, backend="triton")
        extra["precomputed_norms"] = min_l2_local(
            q, bank, radius=radius, bank_sq_norms=norms, backend="triton"
        )
    else:  # the launcher directly, with the case's tiles
        dist = new_output((B, H, W), torch.float32, q.device)
        index = new_output((B, H, W), torch.int64, q.device)
        kernels.min_l2_local(q, bank, norms, radius, dist, index, blocks=spec["blocks"])
    return {
        **spec,
        **case,
        **extra,
        "dist": dist,
        "index": index,
        "reference": min_l2_local(q, bank, radius=radius, backend="reference"),
    }


def _run_ties(spec: dict, rng) -> dict:
    """S=9, 5×5 maps, ρ=1, sample tiles of 4 (BLOCK_S): the same row at (sample 7, position
    12), (sample 3, position 14) and (sample 5, position 12) — samples 3 and 7 in different
    tiles, position 12 visited before 14 — and a query at position 13 equal to it (distance 0:
    flat row 3·25 + 14 wins although it is neither the first position visited nor the lowest
    sample there). A second query, at position 6, is one step from two rows stored at
    (sample 8, position 5) and (sample 4, position 7): distance 1, row 4·25 + 7 wins."""
    from vsad.kernels import min_l2_local as kernels

    from vsad.ops import bank_sq_norms
    from vsad.ops._outputs import new_output

    dtype = getattr(torch, spec["dtype"])
    S, H, W, D, radius = 9, 5, 5, 11, 1
    bank = _nonzero_ints((S, H, W, D), rng)
    q = _nonzero_ints((2, H, W, D), rng)
    row = _nonzero_ints((D,), rng)
    for s, p in ((7, 12), (3, 14), (5, 12)):
        bank[s, p // W, p % W] = row
    q[0, 13 // W, 13 % W] = row
    centre = _nonzero_ints((D,), rng)
    for s, p, k in ((8, 5, 2), (4, 7, 6)):
        bank[s, p // W, p % W] = centre
        bank[s, p // W, p % W, k] += 1  # one step along a different axis each: distance 1
    q[1, 6 // W, 6 % W] = centre
    b = bank.to(dtype)
    norms = bank_sq_norms(b.reshape(-1, D), backend="triton")
    dist = new_output((2, H, W), torch.float32, q.device)
    index = new_output((2, H, W), torch.int64, q.device)
    kernels.min_l2_local(q, b, norms, radius, dist, index, blocks=(8, 4, 8))
    expected = {(0, 13 // W, 13 % W): 3 * H * W + 14, (1, 6 // W, 6 % W): 4 * H * W + 7}
    return {"q": q, "bank": b, "radius": radius, "dist": dist, "index": index, "expected": expected}


def _run_full_window(dtype: str, rng) -> dict:
    from vsad.ops import min_l2, min_l2_local

    S, H, W, D = 4, 3, 5, 9
    bank = _nonzero_ints((S, H, W, D), rng).to(getattr(torch, dtype))
    q = _nonzero_ints((2, H, W, D), rng)
    bank[3, 2, 4] = bank[0, 1, 1]  # exact duplicates: the lower flat row must win in both
    q[1, 0, 0] = bank[0, 1, 1].float()
    local = min_l2_local(q, bank, radius=max(H, W), backend="triton")
    flat = min_l2(q.reshape(-1, D), bank.reshape(-1, D), backend="triton")
    d2 = torch.cdist(q.reshape(-1, D).double(), bank.reshape(-1, D).double()) ** 2
    ties = (d2 == d2.min(dim=1, keepdim=True).values).sum(1)
    return {"local": local, "global": flat, "has_ties": bool((ties >= 2).any())}


def _run_opcheck(rng) -> dict:
    from vsad.ops import bank_sq_norms

    q = torch.randn(2, 3, 4, 5, generator=rng)
    for dtype, radius in ((torch.float32, 2), (torch.float16, 0)):
        bank = torch.randn(3, 3, 4, 5, generator=rng).to(dtype)
        norms = bank_sq_norms(bank.reshape(-1, 5), backend="triton")
        args = (q, bank, norms, radius, "triton")
        torch.library.opcheck(torch.ops.vsad.min_l2_local.default, args)
    return {"passed": True}


def _run_bad_input() -> dict:
    from vsad.kernels import min_l2_local as kernels

    B, S, H, W, D = 2, 3, 4, 5, 6

    def good():
        return {
            "queries": torch.randn(B, H, W, D),
            "bank": torch.randn(S, H, W, D),
            "norms": torch.rand(S * H * W) + 0.5,
            "radius": 1,
            "dist": torch.empty(B, H, W),
            "index": torch.empty(B, H, W, dtype=torch.int64),
        }

    broken = {
        "queries dtype": ("queries", lambda a: a["queries"].double()),
        "queries shape": ("queries", lambda a: torch.randn(B, H, W + 1, D)),
        "queries 3-D": ("queries", lambda a: torch.randn(H, W, D)),
        "queries layout": ("queries", lambda a: torch.randn(B, W, H, D).transpose(1, 2)),
        "queries device": ("queries", lambda a: torch.empty(B, H, W, D, device="meta")),
        "bank dtype": ("bank", lambda a: a["bank"].double()),
        "bank layout": ("bank", lambda a: torch.randn(S, W, H, D).transpose(1, 2)),
        "bank empty": ("bank", lambda a: torch.randn(0, H, W, D)),
        "norms shape": ("norms", lambda a: a["norms"][:-1]),
        "norms dtype": ("norms", lambda a: a["norms"].double()),
        "radius negative": ("radius", lambda a: -1),
        "radius float": ("radius", lambda a: 1.0),
        "dist dtype": ("dist", lambda a: a["dist"].double()),
        "dist shape": ("dist", lambda a: torch.empty(B, H, W + 1)),
        "index dtype": ("index", lambda a: a["index"].int()),
        "index not a tensor": ("index", lambda a: [0] * B),
    }
    raised = {}

    def attempt(label, fn):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - any exception type is reported to the test
            raised[label] = (type(exc).__name__, str(exc))
        else:
            raised[label] = ("nothing", "no exception")

    for label, (arg, breaker) in broken.items():
        a = good()
        a[arg] = breaker(a)
        attempt(label, lambda a=a: kernels.min_l2_local(*a.values()))
    a = good()
    attempt("blocks (BLOCK_S 3)", lambda: kernels.min_l2_local(*a.values(), blocks=(4, 3, 8)))
    attempt("blocks (BLOCK_Q 0)", lambda: kernels.min_l2_local(*a.values(), blocks=(0, 2, 8)))
    return {"raised": raised}


def _compile_for_gpu() -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from vsad.kernels import min_l2_local as kernels

    assert not os.environ.get("TRITON_INTERPRET"), "run without TRITON_INTERPRET"
    cuda = torch.device("cuda")
    ptr = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}
    compiled = {}
    for arch, dtype, S, D in ((80, "float32", 40, 64), (80, "float16", 5, 19),
                              (90, "bfloat16", 40, 640), (90, "float32", 40, 32)):  # fmt: skip
        block_q, block_s, block_d = kernels._blocks(S, D, cuda)
        sig = {"q_ptr": "*fp32", "b_ptr": ptr[dtype], "norms_ptr": "*fp32", "dist_ptr": "*fp32",
               "index_ptr": "*i64", "num_queries": "i32", "S": "i32", "H": "i32", "W": "i32",
               "D": "i32", "radius": "i32"}  # fmt: skip
        consts = {"BLOCK_Q": block_q, "BLOCK_S": block_s, "BLOCK_D": block_d}
        consts["NO_ROW"] = kernels._NO_ROW
        sig = {**sig, **dict.fromkeys(consts, "constexpr")}
        name = f"min_l2_local_sm{arch}_{dtype}_S{S}_D{D}"
        try:
            c = triton.compile(
                ASTSource(fn=kernels._min_l2_local_kernel, signature=sig, constexprs=consts),
                target=GPUTarget("cuda", arch, 32),
            )
        except Exception as exc:  # noqa: BLE001 - reported to the test
            if "ptxas" in str(exc).lower():
                result = {"skip": f"cannot compile for GPUs here (ptxas): {exc}"}
                sys.stdout.write(_GPU_COMPILE_MARKER + json.dumps(result) + "\n")
                return
            compiled[name] = {"error": traceback.format_exc()}
            continue
        ptx = c.asm["ptx"]
        compiled[name] = {
            "stages": list(c.asm),
            "sqrt": sorted({w for w in ptx.split() if w.startswith("sqrt.")}),
        }
    sys.stdout.write(_GPU_COMPILE_MARKER + json.dumps({"compiled": compiled}) + "\n")


def _main(seed: int, out_path: str) -> None:
    import vsad.ops._outputs as outputs

    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    outputs.POISON_OUTPUTS = True  # every kernel output starts as NaN (int64: its minimum)
    results = {"poison_active": bool(outputs.new_output((2,), torch.float32, "cpu").isnan().all())}
    jobs = {name: (lambda rng, spec=spec: _run_case(spec, rng)) for name, spec in CASES.items()}
    jobs.update({name: (lambda rng, s=spec: _run_ties(s, rng)) for name, spec in TIE_CASES.items()})
    jobs.update(
        {f"full_window_{d}": (lambda rng, d=d: _run_full_window(d, rng)) for d in BANK_DTYPES}
    )
    jobs["opcheck"] = _run_opcheck
    jobs["bad_input"] = lambda rng: _run_bad_input()
    for index, (name, job) in enumerate(jobs.items()):
        try:
            results[name] = job(torch.Generator().manual_seed(seed + index))
        except Exception:  # noqa: BLE001 - reported to the test that reads this case
            results[name] = {"error": traceback.format_exc()}
    torch.save(results, out_path)


if __name__ == "__main__":
    if "--compile-for-gpu" in sys.argv:
        _compile_for_gpu()
        sys.exit(0)
    _main(int(sys.argv[sys.argv.index("--seed") + 1]), sys.argv[sys.argv.index("--out") + 1])
