"""Backend choice shared by all ops: by device, overridable with VSAD_BACKEND, logged at DEBUG."""

from __future__ import annotations

import logging
import os

import torch

from vsad._extension import cpp_available, triton_available

logger = logging.getLogger("vsad.ops")

BACKENDS = ("reference", "cpp", "triton")


def choose_backend(
    op: str,
    device: torch.device,
    requested: str | None = None,
    supported: tuple[str, ...] = BACKENDS,
) -> str:
    """The backend that runs `op` on tensors of `device`.

    Priority: the `requested` argument, then the VSAD_BACKEND environment variable, then the
    device's default (cpu -> cpp, cuda -> triton; reference when those are unavailable or the
    op has no such backend, as listed in `supported`).
    """
    source = "argument"
    if requested is None:
        requested = os.environ.get("VSAD_BACKEND") or None
        source = "VSAD_BACKEND" if requested else "device default"
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f"backend ({source}): got {requested!r}, expected one of {BACKENDS}")
        if requested not in supported:
            raise ValueError(
                f"backend ({source}): {op} has no {requested!r} backend, expected one of "
                f"{supported}"
            )
        if requested == "cpp" and device.type != "cpu":
            raise ValueError(
                f"backend ({source}): 'cpp' runs on CPU tensors, got tensors on {device}"
            )
        if requested == "cpp" and not cpp_available():
            raise RuntimeError(f"backend ({source}): 'cpp' requested but vsad._C is not built")
        if requested == "triton" and not triton_available():
            raise RuntimeError(
                f"backend ({source}): 'triton' requested but triton is not installed"
            )
        backend = requested
    elif device.type == "cpu":
        backend = "cpp" if cpp_available() and "cpp" in supported else "reference"
    elif device.type == "cuda" and triton_available() and "triton" in supported:
        backend = "triton"
    else:
        backend = "reference"
    if not torch.compiler.is_compiling():  # dynamo cannot trace logging calls
        logger.debug("vsad.ops.%s: backend %s for %s tensors (%s)", op, backend, device, source)
    return backend
