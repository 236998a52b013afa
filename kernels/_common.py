"""Launch helpers shared by the Triton kernels: the device guard and metadata checks.

Every launch in ``vsad.kernels`` runs inside :func:`device_guard` (tests/test_custom_ops.py
checks the source for it): Triton launches on the *current* CUDA device, so without the guard a
tensor on cuda:1 would be handed to a kernel compiled and launched for cuda:0 on a multi-GPU host.

The checks read metadata only (shapes, dtypes, devices, strides), never data: the ops in
``vsad/ops`` validate values before they get here; these guard direct callers and name the
offending argument.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton

#: Whether @triton.jit makes interpreted functions (decided once, when this module is imported;
#: TRITON_INTERPRET must be set before any vsad.kernels module is imported).
INTERPRETED = bool(triton.knobs.runtime.interpret)

MAX_ROWS = 2**31 - 1  # indices are carried as int32 inside the kernels


@contextlib.contextmanager
def device_guard(device: torch.device):
    """Makes the tensors' CUDA device the current one for the launches inside."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            yield
    else:
        yield


def check_device(name: str, t: torch.Tensor) -> None:
    if t.device.type == "cpu" and not INTERPRETED:
        raise ValueError(
            f"{name}: on cpu, but the triton backend runs on CUDA tensors (CPU tensors only "
            f"under TRITON_INTERPRET=1, set before vsad.kernels is first imported)"
        )
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: on {t.device}, expected a CUDA tensor")


def check_tensor_meta(
    name: str, t, ndim: int, dtypes: tuple, device: torch.device | None, what: str
) -> None:
    """A non-empty, contiguous `ndim`-D tensor of one of `dtypes` on `device` (if given)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: got {type(t).__name__}, expected a torch.Tensor")
    if t.dim() != ndim or t.numel() < 1:
        raise ValueError(f"{name}: got shape {tuple(t.shape)}, expected {what}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name}: got dtype {t.dtype}, expected one of {list(dtypes)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: on {t.device}, expected the bank's device {device}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: got a non-contiguous tensor, expected a contiguous one")
    rows = t.numel() // t.shape[-1]
    if rows > MAX_ROWS:
        raise ValueError(f"{name}: got {rows} rows, expected at most {MAX_ROWS}")
    check_device(name, t)


def check_output(name: str, t, shape: tuple, dtype: torch.dtype, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: got {type(t).__name__}, expected a torch.Tensor")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: got shape {tuple(t.shape)}, expected {tuple(shape)}")
    if t.dtype != dtype:
        raise TypeError(f"{name}: got dtype {t.dtype}, expected {dtype}")
    if t.device != device:
        raise ValueError(f"{name}: on {t.device}, expected the bank's device {device}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: got a non-contiguous tensor, expected a contiguous one")


def check_blocks(minimum: int = 16, **blocks: int) -> None:
    """Block sizes are powers of two >= minimum (16 where tl.dot needs it)."""
    for name, size in blocks.items():
        if not isinstance(size, int) or size < minimum or size & (size - 1):
            raise ValueError(f"blocks: {name} got {size!r}, expected a power of two >= {minimum}")


@functools.cache
def multiprocessor_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (sizes the grids that split the work)."""
    return torch.cuda.get_device_properties(device).multi_processor_count
