"""Output allocation for the fused ops.

Kernels write every output element, so outputs are allocated uninitialised. Tests switch on
poisoning (NaN fill, or the integer minimum) so that an element a kernel forgets to write fails
the comparison with the reference instead of silently holding stale memory.
"""

from __future__ import annotations

import torch

#: Set to True by the test suite (tests/conftest.py).
POISON_OUTPUTS = False


def new_output(shape, dtype: torch.dtype, device) -> torch.Tensor:
    if not POISON_OUTPUTS:
        return torch.empty(shape, dtype=dtype, device=device)
    if dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.full(shape, torch.iinfo(dtype).min, dtype=dtype, device=device)
