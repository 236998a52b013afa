"""Fused ops with reference twins. Each op lives in its own module (see DESIGN.md §2)."""

from vsad.ops.window_attention import window_attention, window_attention_reference

__all__ = ["window_attention", "window_attention_reference"]
