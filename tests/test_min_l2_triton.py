"""The Triton memory-bank search (docs/design.md §3.2) against a float64 brute force.

Without a GPU the Triton kernels run on CPU tensors under TRITON_INTERPRET=1, which must be set
before the kernel module is imported. So this file runs itself as a script in a subprocess with
that variable set (``python test_min_l2_triton.py --seed S --out FILE``): the script runs every
case below once, with poisoned outputs, and saves inputs and outputs with torch.save; the tests
then check them one by one. The interpreter is ~1000x slower than a GPU, hence the tiny sizes;
the interpreter-only block size of 16 (kernels/min_l2.py) makes them cross tile boundaries, and
the interpreter's default of 2 bank splits makes the default path cross a split boundary.

A second run of the script (``--compile-for-gpu``, without the interpreter) compiles the kernels
ahead of time for sm_80 / sm_90, which needs ptxas but no GPU, and checks the generated code.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import traceback

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed: the triton backend cannot run")

BANK_DTYPES = ("float32", "float16", "bfloat16")

# (Q, N, D): one query, one bank row, exact multiples of the block size 16, and sizes that are
# not (odd D, a partial last query block, bank tile and feature chunk).
SIZES = [(1, 1, 1), (1, 53, 19), (37, 1, 19), (37, 53, 19), (16, 32, 16), (17, 33, 17), (5, 47, 3)]

# Comparison cases: "random" (independent Gaussian queries and bank), "near" (each query 1e-3
# from a bank row: small distances, where the expansion ‖q‖² − 2⟨q, b⟩ + ‖b‖² cancels most),
# "copies" (queries that are exact copies of bank rows: the squared distance can round below 0
# and must be clamped, not turned into NaN). "blocks" overrides the launch tiles, e.g. with the
# GPU's defaults.
CASES = {
    f"{kind}_Q{Q}_N{N}_D{D}_{dtype}": {"kind": kind, "Q": Q, "N": N, "D": D, "dtype": dtype}
    for kind, sizes in (("random", SIZES), ("near", [(37, 53, 19)]), ("copies", [(20, 53, 19)]))
    for (Q, N, D) in sizes
    for dtype in BANK_DTYPES
}
for _dtype in ("float32", "bfloat16"):
    CASES[f"random_Q37_N53_D19_{_dtype}_gpu_blocks"] = {
        "kind": "random", "Q": 37, "N": 53, "D": 19, "dtype": _dtype, "blocks": (64, 64, 32),
    }  # fmt: skip
    CASES[f"random_Q37_N53_D19_{_dtype}_wide_feature_chunk"] = {
        "kind": "random", "Q": 37, "N": 53, "D": 19, "dtype": _dtype, "blocks": (16, 16, 32),
    }  # fmt: skip
    # Bank splits (4 tiles of 16 rows): none, 3 (tiles 2 + 2: the count is lowered so that no
    # split is empty), one per tile, more than tiles; GPU tiles over 4 tiles of 64 rows.
    for _splits in (1, 3, 4, 100):
        CASES[f"random_Q37_N53_D19_{_dtype}_splits{_splits}"] = {
            "kind": "random", "Q": 37, "N": 53, "D": 19, "dtype": _dtype,
            "blocks": (16, 16, 16), "splits": _splits,
        }  # fmt: skip
    CASES[f"near_Q20_N230_D19_{_dtype}_gpu_blocks_splits3"] = {
        "kind": "near", "Q": 20, "N": 230, "D": 19, "dtype": _dtype,
        "blocks": (64, 64, 32), "splits": 3,
    }  # fmt: skip

# Exact ties on integer-valued data (every product and sum is exact in float32, whatever the
# summation order, so a tie in exact arithmetic is a tie in the kernel too).
TIE_CASES = {f"ties_{dtype}": {"dtype": dtype} for dtype in BANK_DTYPES}
# The same ties with every bank tile in a split of its own, and with no split: the merge keeps
# the lowest index across splits.
TIE_CASES.update(
    {
        f"ties_{dtype}_splits{n}": {"dtype": dtype, "splits": n}
        for dtype in BANK_DTYPES
        for n in (1, 4)
    }
)


# ---------------------------------------------------------------------------------------------
# The tests (parent process): run the script once, then check its measurements.


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    seed = int.from_bytes(os.urandom(4), "little") >> 2
    print(f"seed = {seed}")
    out = tmp_path_factory.mktemp("min_l2_triton") / "results.pt"
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, __file__, "--seed", str(seed), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"script failed (seed {seed}):\n{proc.stdout}\n{proc.stderr}"
    assert out.exists(), f"no results saved (seed {seed}):\n{proc.stdout}\n{proc.stderr}"
    return torch.load(out)


def case_result(results: dict, name: str) -> dict:
    r = results[name]
    assert r.get("error") is None, f"{name} raised:\n{r['error']}"
    return r


def tolerance_sq(q: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Per query, the float32 rounding bound of d² = ‖q‖² + ‖b‖² − 2⟨q, b⟩ (as in
    tests/test_min_l2.py): |error| ≲ D·eps·(‖q‖² + ‖b‖²), with a √D-grown margin."""
    q64, b64 = q.double(), bank.double()
    scale = (q64 * q64).sum(1) + (b64 * b64).sum(1).max()
    return 4 * q.shape[1] ** 0.5 * torch.finfo(torch.float32).eps * scale + 1e-12


def check_search(q, bank, dist, index):
    """dist is the float64 minimum up to float32 rounding, index attains it, and where the
    second-best row is farther than that rounding, index is exactly the brute-force argmin."""
    q64, b64 = q.double(), bank.double()
    assert dist.shape == (q.shape[0],) and dist.dtype == torch.float32
    assert index.shape == (q.shape[0],) and index.dtype == torch.int64
    assert torch.isfinite(dist).all(), "dist has NaN/Inf: an unwritten (poisoned) element?"
    assert (dist >= 0).all()
    assert ((index >= 0) & (index < bank.shape[0])).all(), f"index out of range: {index}"
    d2 = torch.cdist(q64, b64) ** 2
    best2, want_index = d2.min(dim=1)
    tol = tolerance_sq(q, bank)
    err = (dist.double() ** 2 - best2).abs()
    assert (err <= tol).all(), f"distance off by {float((err / tol).max()):.2f}x the tolerance"
    at_index = d2.gather(1, index[:, None])[:, 0]
    assert ((at_index - best2).abs() <= 2 * tol).all(), "index does not attain the minimum"
    if bank.shape[0] > 1:
        second2 = d2.topk(2, dim=1, largest=False).values[:, 1]
        resolvable = second2 - best2 > 4 * tol
    else:
        resolvable = torch.ones(q.shape[0], dtype=torch.bool)
    assert resolvable.float().mean() > 0.5, "case too degenerate to check indices"
    assert torch.equal(index[resolvable], want_index[resolvable])


def test_outputs_were_poisoned(results):
    """Guards the finiteness checks: they only catch unwritten elements if outputs start NaN."""
    assert results["poison_active"]


@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_brute_force(name, results):
    r = case_result(results, name)
    # Exact with respect to the stored (possibly rounded) bank values.
    check_search(r["q"], r["bank"].float(), r["dist"], r["index"])
    if r["kind"] == "copies":
        assert torch.equal(r["index"], r["copied_rows"])
        assert (r["dist"] ** 2 <= tolerance_sq(r["q"], r["bank"].float())).all()


@pytest.mark.parametrize("name", list(CASES))
def test_agrees_with_the_reference_backend(name, results):
    r = case_result(results, name)
    ref_dist, ref_index = r["reference"]
    q, bank = r["q"].double(), r["bank"].double()
    tol = tolerance_sq(r["q"], r["bank"].float())
    assert ((r["dist"].double() - ref_dist.double()).abs() <= tol.sqrt()).all()
    # Indices may differ only on near ties: there the reference's row attains the minimum too
    # (the triton row does, by test_matches_float64_brute_force).
    differ = r["index"] != ref_index
    d2 = torch.cdist(q[differ], bank) ** 2
    at_ref = d2.gather(1, ref_index[differ, None])[:, 0]
    assert ((at_ref - d2.min(dim=1).values) <= 2 * tol[differ]).all()


@pytest.mark.parametrize("name", list(CASES))
def test_bank_sq_norms_match_float64(name, results):
    r = case_result(results, name)
    b64 = r["bank"].double()
    want = (b64 * b64).sum(1)
    norms = r["norms"]
    assert norms.dtype == torch.float32 and norms.shape == want.shape
    tol = r["D"] * torch.finfo(torch.float32).eps * want + 1e-30
    assert ((norms.double() - want).abs() <= tol).all()


@pytest.mark.parametrize("name", list(CASES))
def test_precomputed_norms_and_mixed_precision_give_identical_results(name, results):
    """bank_sq_norms= skips recomputation only; precision="mixed" runs the fp32 path on Triton
    (kernels/min_l2.py), so both must reproduce the plain call (default tiles) bit for bit."""
    r = case_result(results, name)
    plain_dist, plain_index = r["plain"]
    for variant in ("precomputed_norms", "mixed"):
        dist, index = r[variant]
        assert torch.equal(dist, plain_dist), variant
        assert torch.equal(index, plain_index), variant


@pytest.mark.parametrize("name", list(TIE_CASES))
def test_exact_ties_resolve_to_the_lowest_index(name, results):
    r = case_result(results, name)
    q, bank = r["q"], r["bank"].float()
    # Exact integer arithmetic: the expected minimum and its first (lowest) index.
    d2 = ((q.double()[:, None, :] - bank.double()[None, :, :]) ** 2).sum(-1)
    best2, first = d2.min(dim=1)
    expected_first = torch.tensor(
        [int((row == m).nonzero()[0]) for row, m in zip(d2, best2, strict=True)]
    )
    assert torch.equal(first, expected_first)  # the oracle itself: first minimum
    assert torch.equal(r["index"], expected_first)
    # Correctly rounded root of the exact integer d² (sqrt_rn). Not best2.float().sqrt(): this
    # machine's torch float32 sqrt was seen 1 ulp off (sqrt(359) -> 18.947294, not 18.947296).
    assert torch.equal(r["dist"], best2.sqrt().float())
    # The case really has ties, inside one tile and across tiles, at zero and non-zero distance.
    ties = (d2 == best2[:, None]).sum(1)
    assert (ties >= 2).sum() >= 4
    assert (best2[ties >= 2] == 0).any() and (best2[ties >= 2] > 0).any()
    assert r["tie_rows"] == [[3, 5, 21, 50], [8, 40], [9, 10]]
    assert torch.equal(r["index"][: len(r["expected"])], torch.tensor(r["expected"]))


def test_dot_products_request_ieee_precision(results):
    """tl.dot on float32 defaults to TF32 on recent GPUs; the interpreter computes in full
    precision anyway, so the requested precision is what can be checked here."""
    precisions = results["dot_precisions"]
    assert precisions, "no tl.dot was recorded"
    assert all("ieee" in p.lower() for p in precisions), precisions


def test_split_count_does_not_change_a_bit(results):
    r = results["splits_identical"]
    assert r.get("error") is None, r.get("error")
    first_dist, first_index = r["outs"][1]
    assert torch.isfinite(first_dist).all() and int(first_index[3]) == 2
    for splits, (dist, index) in r["outs"].items():
        assert torch.equal(dist, first_dist) and torch.equal(index, first_index), splits


def test_opcheck_of_the_triton_backend(results):
    r = results["opcheck"]
    assert r.get("error") is None, r.get("error")
    assert r["passed"]


def test_bad_arguments_are_named_in_the_error(results):
    r = results["bad_input"]
    assert r.get("error") is None, r.get("error")
    for arg, (kind, message) in r["raised"].items():
        name = arg.split(" ")[0]
        assert kind in ("ValueError", "TypeError"), f"{arg}: raised {kind}: {message}"
        assert message.startswith(f"{name}:"), f"{arg}: message does not name it: {message}"


# ---------------------------------------------------------------------------------------------
# Compilation for real GPUs (no GPU needed): the interpreter runs the kernels as numpy, so it
# does not check what only the compiler checks (loop-carried types, layouts, tl.dot shapes).

_GPU_COMPILE_MARKER = "=== min_l2 gpu compile ===\n"


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


def test_kernels_compile_for_gpus_with_ieee_dots_and_rounded_sqrt(gpu_compile):
    """The split search (partial kernel: the dots; merge kernel: the root) and the norms."""
    assert gpu_compile["compiled"], "nothing was compiled"
    for name, r in gpu_compile["compiled"].items():
        assert r.get("error") is None, f"{name}:\n{r['error']}"
        assert r["stages"][-1] == "cubin", name
        if name.startswith("min_l2"):
            # input_precision="ieee": fp32 FMAs, no tensor-core (TF32) mma instructions.
            assert r["has_dot"] and not r["has_mma"], name
        if name.startswith("merge"):
            assert r["sqrt"] == ["sqrt.rn.f32"], f"{name}: {r['sqrt']}"
    assert {n.split("_sm")[0] for n in gpu_compile["compiled"]} == {"min_l2", "merge", "sq_norms"}


# ---------------------------------------------------------------------------------------------
# Dispatch (parent process, no interpreter).


def test_cpu_tensors_without_the_interpreter_are_refused_clearly():
    if os.environ.get("TRITON_INTERPRET"):
        pytest.skip("TRITON_INTERPRET is set for this whole session")
    from vsad.ops import min_l2

    q, b = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="bank: on cpu, but the triton backend runs on CUDA"):
        min_l2(q, b, backend="triton")


def test_default_backend_for_cuda_tensors(monkeypatch):
    """min_l2, bank_sq_norms and min_l2_local default to triton on CUDA tensors (checked on the
    dispatcher: no GPU here)."""
    from vsad.ops._backend import choose_backend

    module = importlib.import_module("vsad.ops.min_l2")  # vsad.ops.min_l2 is also the function

    monkeypatch.delenv("VSAD_BACKEND", raising=False)
    cuda = torch.device("cuda")
    assert choose_backend("min_l2", cuda, None, module._SUPPORTED) == "triton"
    assert choose_backend("min_l2_local", cuda, None, module._LOCAL_SUPPORTED) == "triton"


def test_min_l2_local_triton_on_cpu_without_the_interpreter_is_refused_clearly():
    if os.environ.get("TRITON_INTERPRET"):
        pytest.skip("TRITON_INTERPRET is set for this whole session")
    from vsad.ops import min_l2_local

    q, b = torch.randn(1, 3, 4, 5), torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match="bank: on cpu, but the triton backend runs on CUDA"):
        min_l2_local(q, b, backend="triton")


# ---------------------------------------------------------------------------------------------
# The script (child process, TRITON_INTERPRET=1).


def _nonzero_ints(shape, rng, low=-8, high=8) -> torch.Tensor:
    """Integer-valued float32 in [low, high] without 0 (fresh, never-zero values)."""
    x = torch.randint(low, high, shape, generator=rng)
    return torch.where(x >= 0, x + 1, x).float()


def _make_case(spec: dict, rng) -> dict:
    Q, N, D = spec["Q"], spec["N"], spec["D"]
    dtype = getattr(torch, spec["dtype"])
    bank = (torch.randn(N, D, generator=rng) * 1.5 + 0.25).to(dtype)
    out = {"bank": bank}
    if spec["kind"] == "random":
        out["q"] = torch.randn(Q, D, generator=rng) * 1.5
    else:
        rows = torch.randint(0, N, (Q,), generator=rng)
        q = bank[rows].float()
        if spec["kind"] == "near":
            q = q + torch.randn(Q, D, generator=rng) * 1e-3
        out.update(q=q, copied_rows=rows)
    return out


def _run_case(spec: dict, rng) -> dict:
    from vsad.ops import bank_sq_norms, min_l2

    case = _make_case(spec, rng)
    q, bank = case["q"], case["bank"]
    plain = min_l2(q, bank, backend="triton")
    blocks = spec.get("blocks")
    if blocks is None:
        dist, index = plain
        norms = bank_sq_norms(bank, backend="triton")
    else:  # the launcher directly, with the case's tiles
        from vsad.kernels import min_l2 as kernels

        from vsad.ops._outputs import new_output

        norms = new_output((bank.shape[0],), torch.float32, q.device)
        kernels.bank_sq_norms(bank, norms, blocks=blocks[1:])
        dist = new_output((q.shape[0],), torch.float32, q.device)
        index = new_output((q.shape[0],), torch.int64, q.device)
        kernels.min_l2(q, bank, norms, dist, index, blocks=blocks, splits=spec.get("splits"))
    return {
        **spec,
        **case,
        "dist": dist,
        "index": index,
        "norms": norms,
        "plain": plain,
        "precomputed_norms": min_l2(
            q, bank, bank_sq_norms=bank_sq_norms(bank, backend="triton"), backend="triton"
        ),
        "mixed": min_l2(q, bank, precision="mixed", backend="triton"),
        "reference": min_l2(q, bank, backend="reference"),
    }


def _run_ties(spec: dict, rng) -> dict:
    """N=53 bank (tiles of 16: rows 0–15, 16–31, 32–47, 48–52) with exact duplicates inside one
    tile (3, 5) and across tiles (21, 50), and rows equidistant from a query (8 and 40; 9 and
    10) on integer-valued data."""
    from vsad.ops import min_l2

    dtype = getattr(torch, spec["dtype"])
    N, D = 53, 19
    bank = _nonzero_ints((N, D), rng)
    for dup in (5, 21, 50):
        bank[dup] = bank[3]
    # ±1 along one coordinate around a centre c (c itself is not in the bank).
    c = _nonzero_ints((D,), rng)
    bank[8], bank[40] = c, c
    bank[8, 4] += 1
    bank[40, 4] -= 1
    c2 = _nonzero_ints((D,), rng)
    bank[9], bank[10] = c2, c2
    bank[10, 7] += 2
    bank[9, 2] += 2
    # Queries: the duplicated row itself (distance 0), one step from it (distance 1 to all four
    # copies), the two centres, then random integer queries.
    near_dup = bank[3].clone()
    near_dup[0] += 1
    q = torch.cat([torch.stack([bank[3], near_dup, c, c2]), _nonzero_ints((13, D), rng)])
    if spec.get("splits") is None:
        dist, index = min_l2(q, bank.to(dtype), backend="triton")
    else:
        from vsad.kernels import min_l2 as kernels

        from vsad.ops import bank_sq_norms
        from vsad.ops._outputs import new_output

        b = bank.to(dtype)
        dist = new_output((q.shape[0],), torch.float32, q.device)
        index = new_output((q.shape[0],), torch.int64, q.device)
        norms = bank_sq_norms(b, backend="triton")
        kernels.min_l2(q, b, norms, dist, index, blocks=(16, 16, 16), splits=spec["splits"])
    return {
        "q": q,
        "bank": bank.to(dtype),
        "dist": dist,
        "index": index,
        "tie_rows": [[3, 5, 21, 50], [8, 40], [9, 10]],
        "expected": [3, 3, 8, 9],
    }


def _run_bad_input() -> dict:
    from vsad.kernels import min_l2 as kernels

    Q, N, D = 3, 7, 5

    def good():
        return {
            "queries": torch.randn(Q, D),
            "bank": torch.randn(N, D),
            "norms": torch.rand(N) + 0.5,
            "dist": torch.empty(Q),
            "index": torch.empty(Q, dtype=torch.int64),
        }

    broken = {
        "queries dtype": ("queries", lambda a: a["queries"].double()),
        "queries shape": ("queries", lambda a: torch.randn(Q, D + 1)),
        "queries 1-D": ("queries", lambda a: torch.randn(D)),
        "queries layout": ("queries", lambda a: torch.randn(D, Q).T),
        "queries device": ("queries", lambda a: torch.empty(Q, D, device="meta")),
        "bank dtype": ("bank", lambda a: a["bank"].double()),
        "bank layout": ("bank", lambda a: torch.randn(D, N).T),
        "bank empty": ("bank", lambda a: torch.randn(0, D)),
        "norms shape": ("norms", lambda a: a["norms"][:-1]),
        "norms dtype": ("norms", lambda a: a["norms"].double()),
        "dist dtype": ("dist", lambda a: a["dist"].double()),
        "dist shape": ("dist", lambda a: torch.empty(Q + 1)),
        "index dtype": ("index", lambda a: a["index"].int()),
        "index not a tensor": ("index", lambda a: [0] * Q),
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
        attempt(label, lambda a=a: kernels.min_l2(*a.values()))
    a = good()
    attempt("blocks (BLOCK_D 8)", lambda: kernels.min_l2(*a.values(), blocks=(16, 16, 8)))
    attempt("blocks (BLOCK_N 48)", lambda: kernels.min_l2(*a.values(), blocks=(16, 48, 16)))
    attempt("splits 0", lambda: kernels.min_l2(*a.values(), splits=0))
    attempt("splits 1.5", lambda: kernels.min_l2(*a.values(), splits=1.5))
    attempt("out dtype", lambda: kernels.bank_sq_norms(a["bank"], torch.empty(N).double()))
    attempt("bank dtype", lambda: kernels.bank_sq_norms(a["bank"].int(), torch.empty(N)))
    return {"raised": raised}


def _run_split_counts(rng) -> dict:
    """One input, every split count of its 5 bank tiles: each tile is scored the same way
    whichever split holds it, so the results must be identical (duplicates in tiles 0 and 4)."""
    from vsad.kernels import min_l2 as kernels

    from vsad.ops import bank_sq_norms
    from vsad.ops._outputs import new_output

    q = torch.randn(29, 19, generator=rng)
    bank = torch.randn(70, 19, generator=rng)
    bank[66] = bank[2]
    q[3] = bank[2]
    norms = bank_sq_norms(bank, backend="triton")
    outs = {}
    for splits in (1, 2, 3, 4, 5):
        dist = new_output((29,), torch.float32, q.device)
        index = new_output((29,), torch.int64, q.device)
        kernels.min_l2(q, bank, norms, dist, index, blocks=(16, 16, 16), splits=splits)
        outs[splits] = (dist, index)
    return {"outs": outs}


def _run_opcheck(rng) -> dict:
    """torch.library.opcheck of the custom ops on their triton backend (schema, fake kernel vs
    real outputs, autograd registration, an aot_eager trace with dynamic shapes)."""
    from vsad.ops import bank_sq_norms

    q = torch.randn(21, 19, generator=rng)
    for dtype in (torch.float32, torch.bfloat16):
        bank = torch.randn(37, 19, generator=rng).to(dtype)
        torch.library.opcheck(torch.ops.vsad.bank_sq_norms.default, (bank, "triton"))
        norms = bank_sq_norms(bank, backend="triton")
        args = (q, bank, norms, "fp32", "triton")
        torch.library.opcheck(torch.ops.vsad.min_l2.default, args)
    return {"passed": True}


def _record_dot_precisions() -> list[str]:
    """Wraps the interpreter's dot so that the precision every tl.dot requests is recorded."""
    from triton.runtime import interpreter

    seen: list[str] = []
    original = interpreter.InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, input_precision, *args, **kwargs):
        seen.append(str(input_precision))
        return original(self, a, b, d, input_precision, *args, **kwargs)

    interpreter.InterpreterBuilder.create_dot = create_dot
    return seen


def _compile_for_gpu() -> None:
    """Compiles the kernels ahead of time for sm_80 / sm_90 at the launcher's GPU tiles and
    prints what the tests check (or why this machine cannot: no ptxas)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from vsad.kernels import min_l2 as kernels

    assert not os.environ.get("TRITON_INTERPRET"), "run without TRITON_INTERPRET"
    from vsad.kernels import bank_sq_norms as norm_kernels

    cuda = torch.device("cuda")
    ptr = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}
    jobs = {}
    for arch, dtype, D in ((80, "float32", 64), (80, "float16", 19), (80, "bfloat16", 64),
                           (90, "bfloat16", 64)):  # fmt: skip
        block_q, block_n, block_d = kernels._blocks(D, cuda)
        sig = {"q_ptr": "*fp32", "b_ptr": ptr[dtype], "norms_ptr": "*fp32",
               "part_val_ptr": "*fp32", "part_idx_ptr": "*i32", "Q": "i32", "N": "i32",
               "D": "i32", "tiles_per_split": "i32"}  # fmt: skip
        consts = {"BLOCK_Q": block_q, "BLOCK_N": block_n, "BLOCK_D": block_d}
        jobs[f"min_l2_sm{arch}_{dtype}_D{D}"] = (kernels._min_l2_partial_kernel, sig, consts, arch)
    for arch in (80, 90):
        sig = {"q_ptr": "*fp32", "part_val_ptr": "*fp32", "part_idx_ptr": "*i32",
               "dist_ptr": "*fp32", "index_ptr": "*i64", "Q": "i32", "D": "i32",
               "splits": "i32"}  # fmt: skip
        consts = {"BLOCK_Q": 64, "BLOCK_D": 32}
        jobs[f"merge_sm{arch}"] = (kernels._min_l2_merge_kernel, sig, consts, arch)
    for dtype in ("float32", "bfloat16"):
        sig = {"b_ptr": ptr[dtype], "out_ptr": "*fp32", "N": "i32", "D": "i32"}
        consts = dict(
            zip(("BLOCK_N", "BLOCK_D"), norm_kernels.default_blocks(64, cuda), strict=True)
        )
        jobs[f"sq_norms_sm80_{dtype}"] = (norm_kernels._sq_norms_kernel, sig, consts, 80)
    compiled = {}
    for name, (fn, sig, consts, arch) in jobs.items():
        sig = {**sig, **dict.fromkeys(consts, "constexpr")}
        try:
            c = triton.compile(
                ASTSource(fn=fn, signature=sig, constexprs=consts),
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
            "has_dot": "tt.dot" in c.asm["ttgir"],
            "has_mma": "mma" in ptx,
            "sqrt": sorted({w for w in ptx.split() if w.startswith("sqrt.")}),
        }
    sys.stdout.write(_GPU_COMPILE_MARKER + json.dumps({"compiled": compiled}) + "\n")


def _main(seed: int, out_path: str) -> None:
    import vsad.ops._outputs as outputs

    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    outputs.POISON_OUTPUTS = True  # every kernel output starts as NaN (int64: its minimum)
    precisions = _record_dot_precisions()
    results = {"poison_active": bool(outputs.new_output((2,), torch.float32, "cpu").isnan().all())}
    jobs = {name: (lambda rng, spec=spec: _run_case(spec, rng)) for name, spec in CASES.items()}
    jobs.update({name: (lambda rng, s=spec: _run_ties(s, rng)) for name, spec in TIE_CASES.items()})
    jobs["bad_input"] = lambda rng: _run_bad_input()
    jobs["opcheck"] = _run_opcheck
    jobs["splits_identical"] = _run_split_counts
    for index, (name, job) in enumerate(jobs.items()):
        try:
            results[name] = job(torch.Generator().manual_seed(seed + index))
        except Exception:  # noqa: BLE001 - reported to the test that reads this case
            results[name] = {"error": traceback.format_exc()}
    results["dot_precisions"] = sorted(set(precisions))
    torch.save(results, out_path)


if __name__ == "__main__":
    if "--compile-for-gpu" in sys.argv:
        _compile_for_gpu()
        sys.exit(0)
    _main(int(sys.argv[sys.argv.index("--seed") + 1]), sys.argv[sys.argv.index("--out") + 1])
