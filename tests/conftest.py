from __future__ import annotations

import os
from pathlib import Path

# OpenMP threads that spin while waiting make every parallel region crawl when another process
# holds one of the two cores (measured: a training step took 1–13 s instead of 0.24 s). Sleep
# instead. Must be set before torch (and its libgomp) is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

import vsad.ops._outputs as outputs

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def poison_kernel_outputs(monkeypatch):
    """Every fused-op output starts as NaN, so an element a kernel does not write fails a test."""
    monkeypatch.setattr(outputs, "POISON_OUTPUTS", True)
    yield


@pytest.fixture
def rng() -> torch.Generator:
    """A generator with a fresh seed per test; the seed is printed (shown on failure)."""
    seed = fresh_seed()
    print(f"rng seed = {seed}")
    return torch.Generator().manual_seed(seed)


def fresh_seed() -> int:
    """A fresh random seed, or VSAD_TEST_SEED to replay the seed a failing test printed."""
    replay = os.environ.get("VSAD_TEST_SEED")
    return int(replay) if replay else int.from_bytes(os.urandom(4), "little") >> 1


def pytest_configure(config):
    """The `cuda` marker (tests that need a CUDA GPU; `pytest -m cuda`), unless pyproject.toml
    registers it already."""
    if not any(line.split(":")[0].strip() == "cuda" for line in config.getini("markers")):
        config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")
