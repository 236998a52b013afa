"""Fused ops with reference twins. Each op lives in its own module (see docs/design.md §2)."""

from vsad.ops.min_l2 import (
    bank_sq_norms,
    min_l2,
    min_l2_local,
    min_l2_local_reference,
    min_l2_reference,
)
from vsad.ops.window_attention import window_attention, window_attention_reference

__all__ = [
    "bank_sq_norms",
    "min_l2",
    "min_l2_local",
    "min_l2_local_reference",
    "min_l2_reference",
    "window_attention",
    "window_attention_reference",
]
