"""ViewSense-AD: unsupervised multi-view visual anomaly detection."""

from __future__ import annotations

from vsad._extension import cpp_available, triton_available

__version__ = "0.1.0"


def backends() -> dict:
    """What this installation can run: the cpp extension and its instruction set, triton."""
    info = {"reference": True, "cpp": cpp_available(), "triton": triton_available()}
    if info["cpp"]:
        from vsad._extension import _C

        info["cpu_isa"] = _C.active_isa()
        info["cpu_isas_supported"] = list(_C.supported_isas())
        # Which compiled copy each op runs: only min_l2 has an avx512_bf16 one.
        info["cpu_kernels"] = dict(_C.kernel_isas())
    return info


__all__ = ["__version__", "backends"]
