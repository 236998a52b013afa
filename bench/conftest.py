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


__all__ = ["peak_extra_rss_mib"]
