"""Loads the compiled extension vsad._C, if it was built, and reports what is available."""

from __future__ import annotations

import importlib.util
import logging

logger = logging.getLogger("vsad")

try:
    from vsad import _C  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    _C = None
    _IMPORT_ERROR: ImportError | None = exc
    logger.warning("vsad._C could not be imported (%s); only the reference backend works", exc)
else:
    _IMPORT_ERROR = None


def cpp_available() -> bool:
    return _C is not None


def require_cpp():
    """The extension module, or a RuntimeError that says why it is missing."""
    if _C is None:
        raise RuntimeError(
            f"the cpp backend needs the compiled extension vsad._C, which failed to import: "
            f"{_IMPORT_ERROR}. Reinstall with `pip install .` (a C++17 compiler is required)."
        )
    return _C


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None
