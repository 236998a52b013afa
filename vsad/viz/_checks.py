"""Input checks shared by the picture functions.

They run before anything is drawn or written, so a bad call fails with a message naming the
argument, the offending value and what was expected, instead of an OpenCV assertion deep inside
a resize or a half-written output folder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from vsad.eval.pixel import to_numpy


def check_image(image, what: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB; a grey (H, W) or (H, W, 1) uint8 image is replicated to RGB."""
    array = to_numpy(image, what)
    if array.dtype != np.uint8:
        raise ValueError(
            f"{what}: got dtype {array.dtype} with shape {array.shape}, expected a uint8 RGB "
            "image (H, W, 3)"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 1:
        raise ValueError(f"{what}: got shape {array.shape}, expected an RGB image (H, W, 3)")
    return np.ascontiguousarray(array)


def check_map(anomaly_map, what: str, size: tuple[int, int], image_what: str) -> np.ndarray:
    """A finite (H, W) float32 map of exactly the image's size (no silent resizing: a map of
    another size usually means it was paired with the wrong image)."""
    array = to_numpy(anomaly_map, what)
    if array.dtype == bool or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise ValueError(f"{what}: got dtype {array.dtype}, expected a real-valued anomaly map")
    if array.ndim != 2:
        raise ValueError(f"{what}: got shape {array.shape}, expected an (H, W) anomaly map")
    if array.shape != tuple(size):
        raise ValueError(
            f"{what}: shape {array.shape} does not match {image_what} of size {tuple(size)} "
            "(H, W); resize the map to its image first"
        )
    array = array.astype(np.float32, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise ValueError(f"{what}: {bad} of {array.size} values are NaN or Inf, expected finite")
    return array


def check_mask(mask, what: str, size: tuple[int, int], image_what: str) -> np.ndarray:
    """An (H, W) bool mask of the image's size; any non-zero value counts as defective."""
    array = to_numpy(mask, what)
    if array.ndim != 2 or array.shape != tuple(size):
        raise ValueError(
            f"{what}: shape {array.shape} does not match {image_what} of size {tuple(size)} (H, W)"
        )
    if array.dtype != bool:
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise ValueError(f"{what}: got dtype {array.dtype}, expected a bool or 0/1 mask")
        array = array != 0
    return np.ascontiguousarray(array)


def check_number(value, what: str, *, low: float | None = None, high: float | None = None):
    """A finite real number in [low, high] as a Python float."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: got {value!r}, expected a real number") from None
    if not math.isfinite(number):
        raise ValueError(f"{what}: got {value!r}, expected a finite number")
    if (low is not None and number < low) or (high is not None and number > high):
        raise ValueError(f"{what}: got {value!r}, expected a number in [{low}, {high}]")
    return number


def check_range(vmin, vmax, maps: Sequence[np.ndarray]) -> tuple[float, float]:
    """The colour range: the given bounds, or the min / max over `maps` for a missing one."""
    low = check_number(vmin, "vmin") if vmin is not None else min(float(m.min()) for m in maps)
    high = check_number(vmax, "vmax") if vmax is not None else max(float(m.max()) for m in maps)
    if low > high:
        raise ValueError(f"vmin, vmax: got vmin={low!r} > vmax={high!r}, expected vmin <= vmax")
    return low, high


def check_color(color, what: str) -> tuple[int, int, int]:
    """Three integers in [0, 255] (RGB)."""
    try:
        values = tuple(int(c) for c in color)
        ok = len(values) == 3 and all(0 <= c <= 255 for c in values)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{what}: got {color!r}, expected an RGB triple of ints in [0, 255]")
    return values  # type: ignore[return-value]


def as_views(value, what: str, view_ndim: int) -> list:
    """A sequence of per-view arrays, or one stacked array with a leading view axis -> list."""
    if isinstance(value, (list, tuple)):
        return list(value)
    array = to_numpy(value, what)
    if array.ndim != view_ndim + 1:
        raise ValueError(
            f"{what}: got an array of shape {array.shape}, expected a list of views or one "
            f"array with a leading view axis ({view_ndim + 1} dimensions)"
        )
    return list(array)


def check_views(images, maps, masks) -> tuple[list, list, list]:
    """Images, maps and (optional, per view optional) masks of one sample, checked view by
    view; maps and masks must have their own view's size."""
    images = as_views(images, "images", 3)
    maps = as_views(maps, "maps", 2)
    if not images:
        raise ValueError("images: got 0 views, expected at least one")
    if len(maps) != len(images):
        raise ValueError(f"maps: got {len(maps)} maps for {len(images)} images, expected one each")
    masks = [None] * len(images) if masks is None else as_views(masks, "masks", 2)
    if len(masks) != len(images):
        raise ValueError(
            f"masks: got {len(masks)} masks for {len(images)} images, expected one each (or None)"
        )
    checked_images, checked_maps, checked_masks = [], [], []
    for k, (image, anomaly_map, mask) in enumerate(zip(images, maps, masks, strict=True)):
        image = check_image(image, f"images[{k}]")
        size = image.shape[:2]
        checked_images.append(image)
        checked_maps.append(check_map(anomaly_map, f"maps[{k}]", size, f"images[{k}]"))
        checked_masks.append(
            None if mask is None else check_mask(mask, f"masks[{k}]", size, f"images[{k}]")
        )
    return checked_images, checked_maps, checked_masks


def check_scores(scores, what: str, count: int) -> list[float]:
    """`count` finite view scores."""
    values = np.asarray(to_numpy(scores, what), dtype=np.float64).ravel()
    if values.size != count:
        raise ValueError(f"{what}: got {values.size} scores for {count} views, expected one each")
    if not np.isfinite(values).all():
        raise ValueError(f"{what}: got {values.tolist()}, expected finite scores")
    return values.tolist()
