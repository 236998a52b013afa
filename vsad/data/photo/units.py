"""One physical unit on the station: where it sits, how its shape deviates, and what each camera
makes of it (light, colour, focus, noise, compression).

Geometry, per view pixel q, back to the photograph it samples:
    photo point  p = crop(q + camera jitter)        the camera and its slightly loose mount
    object point o = placement⁻¹(p)                 the unit placed by hand (rotation, shift,
                                                    scale about the view centre)
    photo point  o + deformation(o)                 the unit's own small shape deviation
The photograph (with this unit's defects drawn on it) is resampled there, so defects, placement
and deformation move together; the defect coverage goes through the same maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vsad.data.photo.presets import PhotoPreset
from vsad.data.photo.station import Station

SHAPE_BUMPS = 6  # Gaussian bumps summed into one unit's deformation field


@dataclass(frozen=True)
class Placement:
    """rotation (radians), scale factor and shift (fraction of the view side, x and y)."""

    rotation: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def random(cls, preset: PhotoPreset, rng: np.random.Generator) -> Placement:
        return cls(
            rotation=float(np.deg2rad(rng.uniform(-1, 1) * preset.rotation_deg)),
            scale=float(1 + rng.uniform(-1, 1) * preset.scale),
            shift=tuple(float(v) for v in rng.uniform(-1, 1, 2) * preset.shift),
        )

    def toward_identity(self, factor: float) -> Placement:
        """The same placement with rotation, scale change and shift multiplied by `factor`."""
        return Placement(
            rotation=self.rotation * factor,
            scale=1 + (self.scale - 1) * factor,
            shift=(self.shift[0] * factor, self.shift[1] * factor),
        )

    def matrix(self, centre: np.ndarray, side: float) -> np.ndarray:
        """3x3 map object point -> where the placed unit shows it (photo pixels)."""
        c, s = np.cos(self.rotation), np.sin(self.rotation)
        A = self.scale * np.array([[c, -s], [s, c]])
        t = centre + np.asarray(self.shift) * side - A @ centre
        return np.array([[A[0, 0], A[0, 1], t[0]], [A[1, 0], A[1, 1], t[1]], [0, 0, 1]])


def _apply(M: np.ndarray, xy: np.ndarray) -> np.ndarray:
    out = xy @ M[:2, :2].T + M[:2, 2]
    return out


def view_points(station: Station, k: int, jitter: np.ndarray) -> np.ndarray:
    """(S, S, 2) photo coordinates seen by the pixels of view k, for a camera offset by
    `jitter` view pixels."""
    S = station.view_size
    ys, xs = np.mgrid[0:S, 0:S].astype(np.float64)
    q = np.stack([xs + jitter[0], ys + jitter[1]], axis=-1)
    return _apply(station.view_to_photo(k), q)


def deformation(
    points: np.ndarray, amplitude: float, width: float, rng: np.random.Generator
) -> np.ndarray:
    """A smooth random displacement (same shape as the (H, W, 2) `points`) whose largest
    magnitude is `amplitude`: a sum of Gaussian bumps of width `width` centred among the
    points. Evaluated on every 8th row and column (and the last ones) and interpolated
    bicubically: the field varies over `width`, tens of pixels, so this is exact to a small
    fraction of a pixel and ~50× cheaper than evaluating every point."""
    flat = points.reshape(-1, 2)
    lo, hi = flat.min(axis=0), flat.max(axis=0)
    centres = lo + rng.random((SHAPE_BUMPS, 2)) * (hi - lo)
    vectors = rng.standard_normal((SHAPE_BUMPS, 2))
    H, W = points.shape[:2]
    rows, cols = _knots(H), _knots(W)
    coarse = points[np.ix_(rows, cols)]
    field = np.zeros_like(coarse)
    for c, v in zip(centres, vectors, strict=True):
        weight = np.exp(-((coarse - c) ** 2).sum(-1) / (2 * width**2))
        field += weight[..., None] * v
    # Each full-resolution row/column in the coarse grid's own index frame.
    map_y = np.interp(np.arange(H), rows, np.arange(len(rows))).astype(np.float32)
    map_x = np.interp(np.arange(W), cols, np.arange(len(cols))).astype(np.float32)
    dense = cv2.remap(
        field.astype(np.float32),
        np.broadcast_to(map_x[None, :], (H, W)).copy(),
        np.broadcast_to(map_y[:, None], (H, W)).copy(),
        cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_REPLICATE,
    ).astype(points.dtype)
    peak = np.linalg.norm(dense, axis=-1).max()
    return dense * (amplitude / max(peak, 1e-9))


def _knots(n: int, step: int = 8) -> np.ndarray:
    knots = np.arange(0, n, step)
    return knots if knots[-1] == n - 1 else np.append(knots, n - 1)


def sampling_maps(
    station: Station,
    k: int,
    placement: Placement,
    preset: PhotoPreset,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(map_x, map_y) float32 for cv2.remap of photo k into view k, and the 3x3 map from object
    points to view pixels (ignoring the small deformation), used to check where a defect lands."""
    S, side = station.view_size, station.sides[k]
    jitter = rng.uniform(-1, 1, 2) * preset.camera_jitter * S
    seen = view_points(station, k, jitter)
    place = placement.matrix(station.centres[k], side)
    objects = _apply(np.linalg.inv(place), seen)
    if preset.shape_px > 0:
        px = station.photo_per_view_px(k)
        amplitude = preset.shape_px * px * rng.uniform(0.5, 1.0)
        objects = objects + deformation(objects, amplitude, preset.shape_width * side, rng)
    to_view = np.linalg.inv(station.view_to_photo(k))
    to_view[:2, 2] -= jitter
    object_to_view = to_view @ place
    return objects[..., 0].astype(np.float32), objects[..., 1].astype(np.float32), object_to_view


#: How far one retry of `fitting_maps` moves a placement toward the identity.
SHRINK_PER_TRY = 0.9
MAX_SHRINK_TRIES = 40


def inside_photo(station: Station, k: int, maps: tuple[np.ndarray, ...]) -> bool:
    """Whether every pixel of view k samples photo k inside its borders."""
    h, w = station.photos[k].shape[:2]
    mx, my = maps[0], maps[1]
    return bool(mx.min() >= 0 and my.min() >= 0 and mx.max() <= w - 1 and my.max() <= h - 1)


def fitting_maps(
    station: Station,
    placement: Placement,
    preset: PhotoPreset,
    view_seeds: list[np.random.SeedSequence],
) -> tuple[Placement, list[tuple[np.ndarray, np.ndarray, np.ndarray]], list[np.random.Generator]]:
    """The sampling maps of every view for `placement`, or for the placement moved toward the
    identity (by SHRINK_PER_TRY per try) until no view samples outside its photograph: at the
    extremes of a preset's ranges (the largest rotation, shrink and shift at once, plus the
    camera jitter) a corner of the view can reach past the photo, where it would show mirrored
    content that no real station has. Returns the placement used, the maps and, per view, the
    generator (seeded by `view_seeds`) in the state after drawing the maps, for the camera
    response. A placement that fits comes back unchanged, with the same maps and generators
    as without the check."""
    for _ in range(MAX_SHRINK_TRIES):
        rngs = [np.random.default_rng(s) for s in view_seeds]
        maps = [sampling_maps(station, k, placement, preset, rngs[k])
                for k in range(station.num_views)]  # fmt: skip
        if all(inside_photo(station, k, m) for k, m in enumerate(maps)):
            return placement, maps, rngs
        placement = placement.toward_identity(SHRINK_PER_TRY)
    raise ValueError(
        f"preset: its camera jitter and shape deviation reach outside the photographs even "
        f"for a unit placed exactly (crop {station.crop}); lower them or the crop"
    )


def resample(image: np.ndarray, maps: tuple[np.ndarray, np.ndarray], photo_px: float):
    """The photograph (float32) seen through the maps, low-passed first so that a view smaller
    than the photo does not alias (σ from the minification)."""
    sigma = 0.5 * np.sqrt(max(photo_px**2 - 1.0, 0.0))
    if sigma > 0.05:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    return cv2.remap(image, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def resample_coverage(coverage: np.ndarray, maps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return cv2.remap(coverage, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def camera_response(view: np.ndarray, preset: PhotoPreset, rng: np.random.Generator) -> np.ndarray:
    """Light, colour, focus, noise and JPEG applied to a float32 view in [0, 255] -> uint8."""
    S = view.shape[0]
    ys, xs = np.mgrid[0:S, 0:S].astype(np.float32)
    u, v = (xs - (S - 1) / 2) / (S / 2), (ys - (S - 1) / 2) / (S / 2)
    angle = rng.uniform(0, 2 * np.pi)
    gain = np.exp(rng.uniform(-1, 1) * preset.exposure)
    gain = gain * (
        1 + rng.uniform(-1, 1) * preset.light_gradient * (u * np.cos(angle) + v * np.sin(angle))
    )
    if preset.light_spot > 0:
        cx, cy = rng.uniform(-0.8, 0.8, 2)
        spot = np.exp(-((u - cx) ** 2 + (v - cy) ** 2) / (2 * 0.33**2))
        gain = gain * (1 + rng.uniform(-1, 1) * preset.light_spot * spot)
    balance = 1 + rng.uniform(-1, 1, 3) * preset.color_balance
    out = view * gain[..., None] * balance.astype(np.float32)
    if preset.gamma > 0:
        gamma = 1 + rng.uniform(-1, 1) * preset.gamma
        out = 255.0 * (np.clip(out, 0, 255) / 255.0) ** gamma
    sigma = rng.uniform(*preset.blur_px)
    if sigma > 0.05:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    noise = rng.uniform(*preset.noise)
    if noise > 0:
        # Shot noise: the variance grows with the signal (σ = `noise` at mid-grey).
        scale = noise * np.sqrt(np.clip(out, 0, 255) / 128.0 * 0.75 + 0.25)
        out = out + scale * rng.standard_normal(out.shape).astype(np.float32)
    image = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    quality = int(rng.integers(preset.jpeg_quality[0], preset.jpeg_quality[1] + 1))
    if quality < 100:
        ok, buffer = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        image = np.ascontiguousarray(cv2.imdecode(buffer, cv2.IMREAD_COLOR)[..., ::-1])
    return image


__all__ = [
    "Placement",
    "camera_response",
    "deformation",
    "fitting_maps",
    "inside_photo",
    "resample",
    "resample_coverage",
    "sampling_maps",
]
