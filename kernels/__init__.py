"""Triton kernels, installed as vsad.kernels (one module per op). Imported lazily: importing
triton is slow, and TRITON_INTERPRET must be set before these modules are imported."""
