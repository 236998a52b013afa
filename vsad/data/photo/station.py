"""The fixed part of a photo benchmark category: M real photographs of one object, one per
camera, the crop each camera sees, where defects may go, and how points move between views.

Frames: "photo" coordinates are pixels of the source photograph (x = column, y = row, pixel
centres at integers); "view" coordinates are pixels of the rendered square view. A camera sees
the central square of its photo (`crop` of the shorter side) scaled to the view size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from vsad.data.errors import MissingFileError
from vsad.data.imageio import IMAGE_EXTENSIONS, read_image
from vsad.data.sample import natural_key

#: A folder of photo sequences (one sub-folder per object) that names like "kermit" resolve in.
MULTIVIEW_ENV = "VSAD_MULTIVIEW_DATA"
MIN_PHOTO_SIDE = 64


def multiview_root() -> Path | None:
    """The folder named by $VSAD_MULTIVIEW_DATA, or None when it is not set."""
    value = os.environ.get(MULTIVIEW_ENV)
    return Path(value) if value else None


def photo_files(photos: str | os.PathLike) -> list[Path]:
    """The image files of a photo sequence: a folder, or the name of a sequence in
    multiview_root() (e.g. "kermit", "et"), in natural name order."""
    path = Path(photos)
    if not path.is_dir():
        root = multiview_root()
        named = root / str(photos) if root is not None else None
        if named is None or not named.is_dir():
            where = f"'{root}'" if root is not None else f"(${MULTIVIEW_ENV} is not set)"
            raise MissingFileError(
                f"photos: {str(photos)!r} is neither a folder nor a photo sequence in the "
                f"multi-view data folder {where}; pass a folder of photographs, one per camera"
            )
        path = named
    files = sorted(
        (p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: natural_key(p.name),
    )
    if not files:
        raise MissingFileError(f"photos: folder '{path}' holds no image file")
    return files


def load_photos(
    photos: str | os.PathLike | Sequence[str | os.PathLike | np.ndarray],
    views: int,
    first_view: int,
) -> tuple[list[np.ndarray], list[str]]:
    """`views` consecutive photographs starting at `first_view`, as (H, W, 3) uint8 RGB, with
    their names."""
    if isinstance(photos, (str, os.PathLike)):
        items: list = photo_files(photos)
    else:
        items = list(photos)
    if first_view < 0 or first_view + views > len(items):
        raise ValueError(
            f"first_view: got {first_view} with views={views}, but the sequence has "
            f"{len(items)} photographs (expected first_view + views <= {len(items)})"
        )
    chosen = items[first_view : first_view + views]
    images, names = [], []
    for k, item in enumerate(chosen):
        image = item if isinstance(item, np.ndarray) else read_image(item)
        name = f"array {first_view + k}" if isinstance(item, np.ndarray) else Path(item).name
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"photos: {name} must be (H, W, 3) uint8 RGB, got {image.shape}")
        if min(image.shape[:2]) < MIN_PHOTO_SIDE:
            raise ValueError(
                f"photos: {name} is {image.shape[0]}x{image.shape[1]}, expected at least "
                f"{MIN_PHOTO_SIDE} px per side"
            )
        images.append(image)
        names.append(name)
    return images, names


class Station:
    """M photographs as M fixed cameras.

    photos:     per view, the photograph as float32 RGB in [0, 255].
    view_size:  side of the rendered square views.
    crop:       fraction of the photo's shorter side that a view shows.
    """

    #: Defects are placed at least this far (fraction of the crop side) inside the crop.
    MARGIN = 0.12

    def __init__(
        self,
        photos: list[np.ndarray],
        view_size: int,
        crop: float = 0.8,
        product_masks: list[np.ndarray] | None = None,
    ) -> None:
        if not 0.2 <= crop <= 1.0:
            raise ValueError(f"crop: got {crop}, expected a fraction in [0.2, 1]")
        self.photos = [p.astype(np.float32) for p in photos]
        self.view_size = int(view_size)
        self.crop = crop
        self.centres = [np.array([(p.shape[1] - 1) / 2, (p.shape[0] - 1) / 2]) for p in photos]
        self.sides = [crop * min(p.shape[:2]) for p in photos]
        # Where the product is, per photo (None: anything neither black nor blown out).
        self.product_masks = product_masks
        self._candidates = [self._defect_sites(k) for k in range(len(photos))]
        self._homographies: dict[tuple[int, int], np.ndarray | None] = {}

    @property
    def num_views(self) -> int:
        return len(self.photos)

    def photo_per_view_px(self, k: int) -> float:
        """Photo pixels per view pixel in view k."""
        return self.sides[k] / self.view_size

    def view_to_photo(self, k: int) -> np.ndarray:
        """3x3 map from view k pixels to photo k pixels (the camera's crop and scale)."""
        s = self.photo_per_view_px(k)
        c = self.centres[k] - s * (self.view_size - 1) / 2
        return np.array([[s, 0, c[0]], [0, s, c[1]], [0, 0, 1]])

    # -- where defects go -----------------------------------------------------------------
    def _defect_sites(self, k: int) -> np.ndarray:
        """(K, 2) photo coordinates where a defect centre may lie in view k: inside the crop
        (with a margin), on something that is neither nearly black (the dark room behind the
        product) nor blown out, and on the product where `product_masks` says where it is."""
        photo = self.photos[k]
        grey = cv2.GaussianBlur(photo.mean(axis=2), (0, 0), 6.0)
        h, w = grey.shape
        ys, xs = np.mgrid[0:h, 0:w]
        half = self.sides[k] * (0.5 - self.MARGIN)
        cx, cy = self.centres[k]
        inside = (np.abs(xs - cx) <= half) & (np.abs(ys - cy) <= half)
        ok = inside & (grey > 45) & (grey < 230)
        if self.product_masks is not None:
            ok &= self.product_masks[k]
        sites = np.stack([xs[ok], ys[ok]], axis=1).astype(np.float64)
        if len(sites) < 100:
            sites = np.stack([xs[inside], ys[inside]], axis=1).astype(np.float64)
        return sites[::3]  # a third of the pixels is plenty and keeps this small

    def random_site(self, k: int, rng: np.random.Generator) -> np.ndarray:
        sites = self._candidates[k]
        return sites[rng.integers(len(sites))]

    def inside_crop(self, k: int, point: np.ndarray) -> bool:
        half = self.sides[k] * (0.5 - self.MARGIN / 2)
        return bool(np.all(np.abs(point - self.centres[k]) <= half))

    # -- how points move between views ------------------------------------------------------
    def homography(self, i: int, j: int) -> np.ndarray | None:
        """Photo i -> photo j homography (SIFT + RANSAC on the two photographs), composed
        along the chain of views when the direct pair does not match; None if neither works.
        Only used to carry a defect seen by one camera into its neighbours (approximately, for
        a non-planar object: the defect lands near the same physical spot)."""
        if i == j:
            return np.eye(3)
        if (i, j) not in self._homographies:
            self._homographies[(i, j)] = self._estimate(i, j)
        return self._homographies[(i, j)]

    def _estimate(self, i: int, j: int) -> np.ndarray | None:
        from vsad.geometry import match_homography

        estimate = match_homography(
            self.photos[i].astype(np.uint8), self.photos[j].astype(np.uint8), color="rgb"
        )
        if estimate.ok:
            return estimate.H
        if abs(i - j) > 1:  # compose through the next view towards j
            step = 1 if j > i else -1
            first, rest = self.homography(i, i + step), self.homography(i + step, j)
            if first is not None and rest is not None:
                return rest @ first
        return None


__all__ = ["MULTIVIEW_ENV", "Station", "load_photos", "multiview_root", "photo_files"]
