"""What a request may bring, checked before anything reaches the model: uploaded images (size
and pixel limits, decoded like `vsad predict` reads files) or paths under the allowed root.

Every problem is a `RequestError(status, message)`; the message names the view, field or path
at fault and what was expected. Nothing here raises anything else for bad input.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np

#: Formats accepted (those `vsad predict` reads: vsad.data.imageio.IMAGE_EXTENSIONS).
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")


class RequestError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _to_rgb(raw: np.ndarray, what: str) -> np.ndarray:
    """As vsad.data.imageio.read_image: grey replicated, alpha dropped, 16 bits scaled."""
    from vsad.data.imageio import _to_uint8

    if raw.ndim == 2:
        return np.ascontiguousarray(cv2.cvtColor(_to_uint8(raw), cv2.COLOR_GRAY2RGB))
    if raw.ndim == 3 and raw.shape[2] == 4:
        return np.ascontiguousarray(cv2.cvtColor(_to_uint8(raw), cv2.COLOR_BGRA2RGB))
    if raw.ndim == 3 and raw.shape[2] == 3:
        return np.ascontiguousarray(cv2.cvtColor(_to_uint8(raw), cv2.COLOR_BGR2RGB))
    raise RequestError(422, f"{what}: decoded to shape {raw.shape}, expected 1, 3 or 4 channels")


def check_header(data: bytes, what: str, max_pixels: int) -> None:
    """The format and pixel count from the file's header, before anything is decoded (a
    40 kB PNG can claim 40000 x 40000 pixels)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, (w, h) = image.format, image.size
    except Image.DecompressionBombError:  # more than 2 x Image.MAX_IMAGE_PIXELS
        raise RequestError(
            413,
            f"{what}: claims more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP, above the "
            f"limit of {max_pixels / 1e6:.1f} MP (vsad serve --max-pixels)",
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise RequestError(
            415, f"{what}: not an image in a supported format {FORMATS} ({err})"
        ) from None
    if fmt not in FORMATS:
        raise RequestError(415, f"{what}: a {fmt} image, expected one of {FORMATS}")
    if w * h > max_pixels:
        raise RequestError(
            413,
            f"{what}: {w}x{h} = {w * h / 1e6:.1f} MP, above the limit of {max_pixels / 1e6:.1f} MP "
            "(vsad serve --max-pixels)",
        )


def decode_upload(data: bytes, what: str, *, max_bytes: int, max_pixels: int) -> np.ndarray:
    """An uploaded image file -> (H, W, 3) uint8 RGB, the pixels `vsad predict` would read."""
    if not data:
        raise RequestError(400, f"{what}: empty file, expected an image")
    if len(data) > max_bytes:
        raise RequestError(
            413,
            f"{what}: {len(data)} bytes, above the limit of {max_bytes} (--max-image-mb)",
        )
    check_header(data, what, max_pixels)
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise RequestError(400, f"{what}: corrupt image ({len(data)} bytes could not be decoded)")
    return _to_rgb(raw, what)


def resolve_under(root: Path, given, what: str) -> Path:
    """`given` (relative to root, or absolute) as a real path inside root — symbolic links
    resolved first, so a link out of the root is refused too."""
    if not isinstance(given, str) or not given or "\x00" in given:
        raise RequestError(422, f"{what}: got {given!r}, expected a non-empty path string")
    path = Path(os.path.realpath(root / given))
    if not path.is_relative_to(root):
        raise RequestError(403, f"{what}: '{given}' is outside the allowed root '{root}'")
    return path


def read_path(path: Path, what: str, *, max_bytes: int, max_pixels: int) -> np.ndarray:
    """An image file under the allowed root, read by vsad's own reader after the limits."""
    from vsad.data.errors import DatasetError
    from vsad.data.imageio import read_image

    if not path.is_file():
        raise RequestError(404, f"{what}: '{path}' is not a file")
    size = path.stat().st_size
    if size > max_bytes:
        raise RequestError(
            413,
            f"{what}: '{path}' is {size} bytes, above the limit of {max_bytes} (--max-image-mb)",
        )
    try:
        with open(path, "rb") as f:
            check_header(f.read(), f"{what} '{path}'", max_pixels)
        return read_image(path)
    except DatasetError as err:
        raise RequestError(400, f"{what}: {err}") from None
    except OSError as err:
        raise RequestError(400, f"{what}: '{path}' cannot be read ({err})") from None


def folder_files(folder: Path, num_views: int, what: str) -> list[Path]:
    """A sample folder's views, chosen as `vsad predict` chooses them."""
    from vsad.cli import _group

    if not folder.is_dir():
        raise RequestError(404, f"{what}: '{folder}' is not a folder")
    files = _group([folder], num_views)[0][1]
    if len(files) != num_views:
        raise RequestError(
            422,
            f"{what}: '{folder}' holds {len(files)} images, expected {num_views} (one per camera)",
        )
    return files


def fit_views(views: list[np.ndarray], num_views: int, view_size) -> list[np.ndarray]:
    """The views as the detector takes them: as `vsad predict` does, views whose size is not
    the training one are resized to it (the first view decides); a count or size mismatch is a
    422 naming the view."""
    from vsad.data.imageio import resize_image
    from vsad.detector.inputs import check_views

    if len(views) != num_views:
        raise RequestError(
            422,
            f"views: got {len(views)}, expected {num_views} (one image per camera, in camera "
            "order, each a form field named 'view')",
        )
    if views[0].shape[:2] != tuple(view_size):
        views = [resize_image(v, tuple(view_size)) for v in views]
    try:
        check_views(views, num_views, tuple(view_size), where="views")
    except ValueError as err:
        raise RequestError(422, str(err)) from None
    return views
