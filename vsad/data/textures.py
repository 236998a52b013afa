"""Texture images for the synthetic generator: the packaged default and user images."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vsad.data.errors import MissingFileError
from vsad.data.imageio import IMAGE_EXTENSIONS, read_image
from vsad.data.sample import natural_key

ASSET_DIR = Path(__file__).resolve().parent / "assets"
DEFAULT_TEXTURE = ASSET_DIR / "wall_crop256.png"
MIN_TEXTURE_SIDE = 32


def default_texture() -> np.ndarray:
    """The packaged texture: a 256 x 256 crop of a brick-wall photograph (assets/PROVENANCE.md),
    as (256, 256, 3) uint8 RGB."""
    return read_image(DEFAULT_TEXTURE)


def _check_texture(image: np.ndarray, where: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"textures: {where} must be an (H, W, 3) uint8 RGB array, got {image.dtype} "
            f"{image.shape}"
        )
    if min(image.shape[:2]) < MIN_TEXTURE_SIDE:
        raise ValueError(
            f"textures: {where} is {image.shape[0]}x{image.shape[1]}, expected at least "
            f"{MIN_TEXTURE_SIDE} px on each side"
        )
    return image


def load_textures(
    textures: str | os.PathLike | np.ndarray | Sequence[str | os.PathLike | np.ndarray] | None,
) -> list[np.ndarray]:
    """Texture images as a list of (H, W, 3) uint8 RGB arrays.

    Accepts None (the packaged default), a folder (every image file in it, in name order), an
    image file, an array, or a sequence of files and arrays.
    """
    if textures is None:
        return [default_texture()]
    if isinstance(textures, np.ndarray):
        return [_check_texture(textures, "the array")]
    if isinstance(textures, (str, os.PathLike)):
        path = Path(textures)
        if path.is_dir():
            files = sorted(
                (p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
                key=lambda p: natural_key(p.name),
            )
            if not files:
                raise MissingFileError(f"textures: folder '{path}' holds no image file")
            return [_check_texture(read_image(p), f"'{p}'") for p in files]
        return [_check_texture(read_image(path), f"'{path}'")]
    items = list(textures)
    if not items:
        raise ValueError("textures: got an empty sequence, expected at least one image")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            out.append(_check_texture(item, f"item {i}"))
        else:
            out.append(_check_texture(read_image(item), f"'{item}'"))
    return out


__all__ = ["DEFAULT_TEXTURE", "default_texture", "load_textures"]
