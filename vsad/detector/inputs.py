"""Turning what users pass (MultiViewSamples, lists of arrays, (M, H, W, 3) arrays) into the
model's input tensors, with errors that say which view of which sample is wrong and how."""

from __future__ import annotations

import numpy as np
import torch

from vsad.data.imageio import resize_image


def views_of(sample, *, where: str = "views") -> list[np.ndarray]:
    """The M views of a sample as (H, W, 3) uint8 RGB arrays.

    Accepts a vsad.data.MultiViewSample, a sequence of (H, W, 3) arrays, or one (M, H, W, 3)
    array. Float views must lie in [0, 1] (they are scaled to uint8); NaN/Inf are rejected.
    """
    raw = getattr(sample, "images", sample)
    if isinstance(raw, torch.Tensor):
        raw = raw.detach().cpu().numpy()
    if isinstance(raw, np.ndarray):
        if raw.ndim != 4:
            raise ValueError(
                f"{where}: got an array of shape {raw.shape}, expected (M, H, W, 3) or a "
                "sequence of M (H, W, 3) images"
            )
        raw = list(raw)
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ValueError(
            f"{where}: got {type(raw).__name__}, expected a MultiViewSample, a non-empty "
            "sequence of (H, W, 3) images or an (M, H, W, 3) array"
        )
    views = []
    for k, view in enumerate(raw):
        arr = view.detach().cpu().numpy() if isinstance(view, torch.Tensor) else np.asarray(view)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"{where}[{k}]: got shape {arr.shape}, expected (H, W, 3) RGB")
        if arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(
                f"{where}[{k}]: got an empty image of shape {arr.shape}, expected (H, W, 3) "
                "with H, W >= 1"
            )
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.floating):
                raise ValueError(
                    f"{where}[{k}]: got dtype {arr.dtype}, expected uint8 or float in [0, 1]"
                )
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{where}[{k}]: contains NaN or Inf, expected finite pixels")
            lo, hi = float(arr.min()), float(arr.max())
            if lo < 0 or hi > 1:
                raise ValueError(
                    f"{where}[{k}]: float pixels range over [{lo:.3g}, {hi:.3g}], expected "
                    "[0, 1] (or pass uint8)"
                )
            arr = np.round(arr * 255).astype(np.uint8)
        views.append(arr)
    return views


def check_views(
    views: list[np.ndarray],
    num_views: int | None,
    view_size: tuple[int, int] | None,
    *,
    where: str = "views",
) -> None:
    """Same number of views and the same size as the detector was trained on."""
    if num_views is not None and len(views) != num_views:
        raise ValueError(
            f"{where}: got {len(views)} views, expected {num_views} (the number of cameras the "
            "detector was fitted on)"
        )
    first = views[0].shape[:2]
    for k, view in enumerate(views):
        if view.shape[:2] != first:
            raise ValueError(
                f"{where}[{k}]: is {view.shape[0]}x{view.shape[1]} but view 0 is "
                f"{first[0]}x{first[1]}; all views of a sample must share one size"
            )
    if view_size is not None and tuple(first) != tuple(view_size):
        raise ValueError(
            f"{where}: views are {first[0]}x{first[1]}, expected {view_size[0]}x{view_size[1]} "
            "as in training (the homographies are in that frame)"
        )


def to_model_tensor(views: list[np.ndarray], image_size: int) -> torch.Tensor:
    """(M, 3, s, s) float32 in [0, 1], each view resized to image_size² (area averaging)."""
    resized = [resize_image(v, (image_size, image_size)) for v in views]
    stacked = np.stack(resized).astype(np.float32) / 255.0
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()
