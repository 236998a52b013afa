"""Re-expressing a homography on a coarser (or resized) pixel grid.

Homographies are estimated on the images, but MVAM works on feature grids `s` times coarser,
and images are often resized before use. A cell x_f of a grid `s` times coarser covers image
pixels centred at

    x_img = s * x_f + (s - 1) / 2        ("centre": cell centres, as area averaging, strided
                                          convolutions without padding offsets, cv2.resize and
                                          torch interpolate(align_corners=False) place them)
    x_img = s * x_f                      ("corner": grids that sample every s-th pixel)

so with S = [[s_x, 0, o_x], [0, s_y, o_y], [0, 0, 1]] a grid homography is H_f = S⁻¹ H S.
Resizing an image from (H0, W0) to (H1, W1) is the same change of grid with
(s_y, s_x) = (H0 / H1, W0 / W1), so `scale_homography(H, (H0 / H1, W0 / W1))` re-expresses an
image homography on the resized images; a factor below 1 goes to a finer grid.
"""

from __future__ import annotations

import sys

import numpy as np

OFFSETS = ("centre", "center", "corner")


def _factors(stride, name: str) -> tuple[float, float]:
    """stride as (s_y, s_x) floats > 0: a number (both axes) or a (s_y, s_x) pair."""
    if hasattr(stride, "tolist") and not isinstance(stride, (int, float)):
        stride = stride.tolist()
    if isinstance(stride, (list, tuple)):
        values = list(stride)
        if len(values) != 2:
            raise ValueError(f"{name}: got {stride!r}, expected a number or a (s_y, s_x) pair")
    else:
        values = [stride, stride]
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name}: got {stride!r}, expected a number or a (s_y, s_x) pair")
        if not 0 < float(value) < float("inf"):
            raise ValueError(f"{name}: got {stride!r}, expected factors > 0")
        out.append(float(value))
    return out[0], out[1]


def grid_matrix(stride, *, offset: str = "centre") -> np.ndarray:
    """S (3, 3) float64 mapping grid coordinates to image coordinates: x_img = S @ x_grid."""
    if offset not in OFFSETS:
        raise ValueError(f"offset: got {offset!r}, expected one of {OFFSETS}")
    sy, sx = _factors(stride, "stride")
    oy, ox = ((sy - 1) / 2, (sx - 1) / 2) if offset != "corner" else (0.0, 0.0)
    return np.array([[sx, 0.0, ox], [0.0, sy, oy], [0.0, 0.0, 1.0]])


def scale_homography(H, stride, *, offset: str = "centre", dst_stride=None):
    """H re-expressed on grids `stride` times coarser: H_f = S_dst⁻¹ H S with S = grid_matrix.

    H:          (..., 3, 3) numpy array or torch tensor (any leading batch dimensions) mapping
                source image pixels to destination image pixels.
    stride:     a number or (s_y, s_x): how many image pixels one grid cell spans per axis.
    offset:     "centre" (default, x_img = s x_f + (s - 1)/2) or "corner" (x_img = s x_f).
    dst_stride: the destination view's factors when its grid differs (default: `stride`).

    Returns float64 (numpy or torch, on H's device), normalised to H[..., 2, 2] = 1 wherever
    that entry is not 0, so the result follows the package convention; the map is unchanged.
    """
    S = grid_matrix(stride, offset=offset)
    S_dst = S if dst_stride is None else grid_matrix(dst_stride, offset=offset)
    S_dst_inv = np.linalg.inv(S_dst)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(H, torch.Tensor):
        if H.ndim < 2 or tuple(H.shape[-2:]) != (3, 3):
            raise ValueError(f"H: expected shape (..., 3, 3), got {tuple(H.shape)}")
        kwargs = {"dtype": torch.float64, "device": H.device}
        out = (
            torch.as_tensor(S_dst_inv, **kwargs)
            @ H.to(torch.float64)
            @ torch.as_tensor(S, **kwargs)
        )
        corner = out[..., 2:3, 2:3]
        return out / torch.where(corner == 0, torch.ones_like(corner), corner)
    array = np.asarray(H, dtype=np.float64)
    if array.ndim < 2 or array.shape[-2:] != (3, 3):
        raise ValueError(f"H: expected shape (..., 3, 3), got {array.shape}")
    out = S_dst_inv @ array @ S
    corner = out[..., 2:3, 2:3]
    return out / np.where(corner == 0, 1.0, corner)


__all__ = ["OFFSETS", "grid_matrix", "scale_homography"]
