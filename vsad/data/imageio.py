"""Image and mask files: reading (OpenCV, RGB out), resizing, and atomic writing."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from vsad._atomic import atomic_write_bytes
from vsad.data.errors import DatasetError, MissingFileError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _read_raw(path: str | os.PathLike, what: str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} file not found: '{path}'")
    try:
        # np.fromfile + imdecode instead of cv2.imread: imread returns None for both a missing
        # and a corrupt file and cannot open non-ASCII paths on every platform.
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(f"{what} file cannot be read: '{path}' ({exc})") from exc
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if decoded is None:
        raise DatasetError(
            f"{what} file is corrupt or not an image: '{path}' ({data.size} bytes could not be "
            "decoded by OpenCV)"
        )
    return decoded


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        return np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.clip(array, 0, 255).astype(np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as an (H, W, 3) uint8 RGB array.

    Grey images are replicated to three channels, alpha is dropped and 16-bit images are scaled
    to 8 bits. Raises MissingFileError for a missing file and DatasetError for an undecodable one;
    both messages name the path.
    """
    raw = _read_raw(path, "image")
    if raw.ndim == 2:
        rgb = cv2.cvtColor(_to_uint8(raw), cv2.COLOR_GRAY2RGB)
    elif raw.shape[2] == 4:
        rgb = cv2.cvtColor(_to_uint8(raw), cv2.COLOR_BGRA2RGB)
    elif raw.shape[2] == 3:
        rgb = cv2.cvtColor(_to_uint8(raw), cv2.COLOR_BGR2RGB)
    else:
        raise DatasetError(
            f"image file has {raw.shape[2]} channels, expected 1, 3 or 4: '{Path(path)}'"
        )
    return np.ascontiguousarray(rgb)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Reads a ground-truth mask as an (H, W) bool array: a pixel is defective iff any channel
    is non-zero. Masks must be binary — 0 and one "on" value per file (255, or 1 for palette
    masks; RGB masks may colour the defect) — so that a blurred or JPEG-compressed mask, whose
    grey edge pixels would silently become defective, is rejected with its path."""
    raw = _read_raw(path, "mask")
    if raw.ndim == 2:
        values = np.unique(raw)
        if np.count_nonzero(values) > 1:
            shown = ", ".join(str(int(v)) for v in values[:8]) + (" ..." if len(values) > 8 else "")
            raise DatasetError(
                f"mask file is not binary: '{Path(path)}' holds the values {shown}; expected 0 "
                "and one other value (0/255 or 0/1)"
            )
        return raw > 0
    colours = np.unique(raw.reshape(-1, raw.shape[2]), axis=0)
    on = colours[colours.any(axis=1)]
    if len(on) > 1 and _has_grey_levels(on):
        raise DatasetError(
            f"mask file is not binary: '{Path(path)}' holds {len(colours)} colours with "
            "intermediate levels; expected black and flat colours (0/255 or 0/1 per channel)"
        )
    return np.ascontiguousarray(raw.any(axis=2))


def _has_grey_levels(colours: np.ndarray) -> bool:
    """Whether RGB(A) mask colours use levels other than 0 and one maximum per channel (several
    flat colours, e.g. one per defect, are allowed; anti-aliased edges are not)."""
    top = colours.max(axis=0)
    return bool(np.any((colours != 0) & (colours != top)))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes an RGB image to size = (height, width): area averaging when shrinking (no
    aliasing), bilinear when enlarging."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    shrinking = height * width < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes a bool mask to size = (height, width) by nearest neighbour (the usual convention
    of anomaly-detection benchmarks: labels are never blended)."""
    height, width = size
    if mask.shape == (height, width):
        return mask
    resized = cv2.resize(mask.view(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    return resized > 0


def _encode(path: Path, array: np.ndarray, params: list[int]) -> bytes:
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise ValueError(f"path: extension {ext!r} of '{path}' is not one of {IMAGE_EXTENSIONS}")
    ok, buffer = cv2.imencode(ext, array, params)
    if not ok:
        raise ValueError(f"path: OpenCV could not encode an image as {ext!r} for '{path}'")
    return buffer.tobytes()


def write_image(path: str | os.PathLike, image: np.ndarray, *, jpeg_quality: int = 95) -> None:
    """Writes an (H, W, 3) uint8 RGB image atomically; the format follows the extension."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image: expected an (H, W, 3) uint8 RGB array, got {image.dtype} {image.shape}"
        )
    path = Path(path)
    is_jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if is_jpeg else []
    atomic_write_bytes(path, _encode(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params))


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Writes an (H, W) bool mask atomically as a 0/255 greyscale image (use .png)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected an (H, W) array, got shape {mask.shape}")
    path = Path(path)
    atomic_write_bytes(path, _encode(path, (mask > 0).astype(np.uint8) * 255, []))


__all__ = [
    "IMAGE_EXTENSIONS",
    "read_image",
    "read_mask",
    "resize_image",
    "resize_mask",
    "write_image",
    "write_mask",
]
