"""Where a detector computes: the `device` config field ("cpu", "cuda", "cuda:N").

The model, the banks, the homographies and every tensor the pipeline makes live on that device;
results come back to the CPU only when a `Prediction` is built. The device is a property of the
machine, not of the model: it is not saved with a detector (a model fitted on a GPU loads on a
CPU-only machine with device "cpu", the default of `load_detector`).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from vsad.validation import Pattern

DEVICE_PATTERN = Pattern(r"cpu|cuda(:[0-9]+)?", "'cpu', 'cuda' or 'cuda:N' (N = a GPU index)")


def resolve_device(name: str, *, key: str = "device") -> torch.device:
    """The torch.device for a config value, with an indexed CUDA device ("cuda" becomes the
    current one), or a ValueError naming `key`, the value and what was expected: also when
    CUDA (or that GPU) is not available on this machine."""
    if not isinstance(name, str) or not DEVICE_PATTERN.holds(name):
        raise ValueError(f"{key}: got {name!r}, expected {DEVICE_PATTERN.expected}")
    if name == "cpu":
        return torch.device("cpu")
    index = None if name == "cuda" else int(name.split(":", 1)[1])
    return cuda_device(index, name=name, key=key)


def cuda_device(index: int | None, *, name: str, key: str = "device") -> torch.device:
    """torch.device("cuda", index) after checking that it exists (index None: the current
    device). The tests replace this function to run the pipeline on a stand-in device."""
    if not torch.cuda.is_available():
        why = (
            f"this PyTorch build ({torch.__version__}) has no CUDA support"
            if torch.version.cuda is None
            else "no CUDA GPU is visible (driver, CUDA_VISIBLE_DEVICES)"
        )
        raise ValueError(
            f"{key}: got {name!r}, but CUDA is not available: {why}; expected 'cpu' on this "
            "machine (a model fitted on a GPU loads on the CPU with device='cpu')"
        )
    count = torch.cuda.device_count()
    if index is None:
        index = torch.cuda.current_device()
    if index >= count:
        raise ValueError(
            f"{key}: got {name!r}, but this machine has {count} CUDA device(s); expected "
            f"'cuda' or 'cuda:0' … 'cuda:{count - 1}'"
        )
    return torch.device("cuda", index)


@contextmanager
def ieee_float32():
    """Float32 convolutions and matmuls on CUDA in IEEE float32 while a detector fits or
    predicts (a context manager and a decorator).

    cuDNN runs float32 convolutions in TF32 by default on Ampere and newer GPUs (10-bit
    mantissa): a model fitted on the GPU then scores differently on the CPU, and the same data
    fitted on either differs by more than rounding. `autocast="none"` promises float32; the
    lower precisions are asked for with `autocast="bf16"` / `"fp16"` (the UNet under
    torch.autocast), not given silently. The previous settings come back afterwards; on the
    CPU the settings have no effect."""
    settings = [getattr(torch.backends.cudnn, "conv", None), torch.backends.cuda.matmul]
    if not all(hasattr(s, "fp32_precision") for s in settings):  # PyTorch < 2.9: legacy flags
        before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
        return
    before = [s.fp32_precision for s in settings]
    for s in settings:
        s.fp32_precision = "ieee"
    try:
        yield
    finally:
        for s, value in zip(settings, before, strict=True):
            s.fp32_precision = value


__all__ = ["DEVICE_PATTERN", "cuda_device", "ieee_float32", "resolve_device"]
