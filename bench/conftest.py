"""Shared benchmark fixtures: machine facts recorded with every result."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

import pytest
import torch

import vsad


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@pytest.fixture(scope="session")
def machine() -> dict:
    info = vsad.backends()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "vsad": vsad.__version__,
        "cpu_isa": info.get("cpu_isa", "n/a"),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
    }


@pytest.fixture(scope="session")
def fp32_gemm_gflops() -> float:
    """The machine's fp32 GEMM rate (torch.mm, 2048²), the yardstick for kernel efficiency."""
    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 2048)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048**3 / best / 1e9


def peak_extra_rss_mib(script: str) -> float:
    """Runs `script` in a fresh interpreter and returns how far the resident set rose above its
    level just before `measured()` (a name the script defines) while that call ran, in MiB.

    One warm-up call runs first (lazy imports and thread pools are not the op's memory), then
    the kernel's high-water mark (VmHWM) is reset through /proc/self/clear_refs so that the
    peak of imports and setup does not mask the call's own.
    """
    wrapper = (
        script
        + "\ndef _status(key):\n"
        + "    for line in open('/proc/self/status'):\n"
        + "        if line.startswith(key):\n"
        + "            return int(line.split()[1])\n"
        + "measured()\n"
        + "import gc; gc.collect()\n"
        + "open('/proc/self/clear_refs', 'w').write('5')\n"
        + "before = _status('VmRSS:')\n"
        + "measured()\n"
        + "print('PEAK_EXTRA_KIB', _status('VmHWM:') - before)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    out = subprocess.run(
        [sys.executable, "-c", wrapper], capture_output=True, text=True, env=env, check=True
    ).stdout
    kib = next(int(line.split()[1]) for line in out.splitlines() if line.startswith("PEAK_EXTRA"))
    return kib / 1024


# ---------------------------------------------------------------------------------------------
# CUDA providers: "triton" and every "<name>-cuda" run on the GPU; they are skipped, with the
# reason, where there is none (bench/gpu_check.sh runs them: pytest bench -k "triton or cuda").


def provider_device(provider: str) -> str:
    return "cuda" if provider == "triton" or provider.endswith(("-cuda", "-triton")) else "cpu"


def unavailable_reason(provider: str) -> str | None:
    """Why a provider cannot run here (None when it can)."""
    if provider_device(provider) != "cuda":
        return None
    if not torch.cuda.is_available():
        return f"provider {provider!r} runs on CUDA: no CUDA device on this machine"
    if "triton" in provider:
        try:
            import triton  # noqa: F401
        except ImportError:
            return f"provider {provider!r} needs the triton package"
    return None


def skip_unless_available(provider: str) -> None:
    reason = unavailable_reason(provider)
    if reason:
        pytest.skip(reason)


def pytest_collection_modifyitems(config, items):
    """Skips unavailable providers at collection, before any fixture (GEMM yardstick, inputs)
    runs for them."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        provider = callspec.params.get("provider") if callspec is not None else None
        reason = unavailable_reason(provider) if isinstance(provider, str) else None
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


def synchronized(fn):
    """fn followed by a CUDA synchronize, so that a benchmark times the kernels, not launches."""

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def cuda_peak_extra_mib(fn) -> float:
    """How far allocated CUDA memory rose above its level before the call, while fn ran (MiB)."""
    fn()  # warm-up: compiled kernels and the caching allocator's first blocks
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    del out
    return (torch.cuda.max_memory_allocated() - before) / 2**20


__all__ = [
    "cuda_peak_extra_mib",
    "peak_extra_rss_mib",
    "provider_device",
    "skip_unless_available",
    "unavailable_reason",
    "synchronized",
]
