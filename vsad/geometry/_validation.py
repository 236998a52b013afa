"""Checks shared by the geometry modules: one 3x3 homography.

Every public entry point validates its inputs here, at the boundary, so that a bad matrix is
reported where it came from (a file and key, a pair of views) instead of surfacing later as NaNs
inside a kernel.
"""

from __future__ import annotations

import numpy as np

# A homography whose smallest singular value is below this fraction of its largest maps the
# plane onto (almost) a line: no pixel of one view can be located in the other.
SINGULAR_RATIO = 1e-12


def check_homography(matrix, where: str) -> np.ndarray:
    """`matrix` as a (3, 3) float64 array normalised so that H[2, 2] = 1.

    Raises ValueError naming `where` when the matrix is not 3x3, not finite, singular, or has
    H[2, 2] = 0 (then the pixel (0, 0) maps to infinity and the normalisation of docs/design.md §3.1
    is impossible).
    """
    try:
        H = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: expected a 3x3 matrix of numbers ({error})") from None
    if H.shape != (3, 3):
        raise ValueError(f"{where}: expected a 3x3 matrix, got shape {H.shape}")
    if not np.isfinite(H).all():
        raise ValueError(f"{where}: the matrix has non-finite entries: {H.tolist()}")
    singular_values = np.linalg.svd(H, compute_uv=False)
    if singular_values[0] == 0 or singular_values[-1] < SINGULAR_RATIO * singular_values[0]:
        raise ValueError(
            f"{where}: the matrix is singular (singular values {singular_values.tolist()}), "
            "expected an invertible homography"
        )
    if abs(H[2, 2]) < SINGULAR_RATIO * singular_values[0]:
        raise ValueError(
            f"{where}: H[2, 2] = {H[2, 2]!r}, so it cannot be normalised to H[2, 2] = 1 "
            "(pixel (0, 0) would map to infinity)"
        )
    return H / H[2, 2]
