"""Rendering one multi-view sample: object and background planes warped into each camera,
defects composited with their masks, then lighting, exposure and sensor noise."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vsad.data.synthetic.cameras import FIELD_OF_VIEW, plane_coordinates
from vsad.data.synthetic.defects import Defect

BACKGROUND_EXTENT = 1.5  # the background canvas covers [-1.5, 1.5]^2 plane units


def _square_crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random square crop of 70-100% of the shorter side."""
    h, w = image.shape[:2]
    side = int(min(h, w) * rng.uniform(0.7, 1.0))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    return image[y : y + side, x : x + side]


def _frame(pixels: int, extent: float) -> np.ndarray:
    """Maps pixel (col, row) of a pixels x pixels canvas to plane units over [-extent, extent]."""
    scale = 2 * extent / pixels
    offset = -extent + scale / 2
    return np.array([[scale, 0, offset], [0, scale, offset], [0, 0, 1]])


@dataclass
class Scene:
    """Everything fixed for a category: textures on their planes and the cameras."""

    object_rgba: np.ndarray  # (S, S, 4) float32, alpha = 1 (premultiplied: colour * alpha)
    background: np.ndarray  # (P, P, 3) float32
    object_frame: np.ndarray  # object texture pixel -> object units, object = [-0.5, 0.5]^2
    background_frame: np.ndarray  # background pixel -> plane units
    plane_to_view: np.ndarray  # (M, 3, 3)
    plane_uv: list[np.ndarray]  # per view (H, W, 2): plane coordinates of each pixel
    camera_gain: np.ndarray  # (M,) fixed exposure differences between cameras
    image_size: tuple[int, int]

    @property
    def object_pixels(self) -> int:
        return self.object_rgba.shape[0]


def build_scene(
    textures: list[np.ndarray],
    plane_to_view: np.ndarray,
    image_size: tuple[int, int],
    rng: np.random.Generator,
    photometric_jitter: float,
) -> Scene:
    height, width = image_size
    # About 1.25 texture pixels per view pixel keeps the warps free of visible aliasing.
    view_px_per_unit = width / FIELD_OF_VIEW
    size = int(np.ceil(1.25 * view_px_per_unit))
    crop = _square_crop(textures[0], rng)
    interpolation = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_CUBIC
    obj = cv2.resize(crop, (size, size), interpolation=interpolation).astype(np.float32)
    object_rgba = np.concatenate([obj, np.ones((size, size, 1), np.float32)], axis=2)

    # The surface the object lies on: a second texture if given, else the first one turned and
    # flipped; blurred, desaturated and darker so that the object stands out.
    source = textures[1] if len(textures) > 1 else np.rot90(textures[0]).copy()[:, ::-1]
    bg_pixels = int(np.ceil(2 * BACKGROUND_EXTENT * view_px_per_unit * 0.6))
    bg = cv2.resize(_square_crop(source, rng), (bg_pixels, bg_pixels), interpolation=cv2.INTER_AREA)
    bg = cv2.GaussianBlur(bg.astype(np.float32), (0, 0), 2.0)
    grey = bg.mean(axis=2, keepdims=True)
    background = (0.5 * bg + 0.5 * grey) * 0.6

    plane_uv = [plane_coordinates(G, image_size) for G in plane_to_view]
    camera_gain = 1 + 0.05 * photometric_jitter * rng.uniform(-1, 1, len(plane_to_view))
    return Scene(
        object_rgba=object_rgba,
        background=background.astype(np.float32),
        object_frame=_frame(size, 0.5),
        background_frame=_frame(bg_pixels, BACKGROUND_EXTENT),
        plane_to_view=plane_to_view,
        plane_uv=plane_uv,
        camera_gain=camera_gain.astype(np.float32),
        image_size=image_size,
    )


def random_pose(rng: np.random.Generator, jitter: float) -> np.ndarray:
    """Per-sample placement of the object on the plane: up to ±5° and ±0.03 units (× jitter)."""
    angle = np.radians(5.0) * jitter * rng.uniform(-1, 1)
    tx, ty = 0.03 * jitter * rng.uniform(-1, 1, 2)
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty], [0, 0, 1]])


@dataclass
class Photometric:
    """Per-sample lighting and exposure: y = (x * shading * gains - 128) * contrast + 128 + b."""

    brightness: float
    contrast: float
    channel_gain: np.ndarray  # (3,)
    shading_amplitude: float  # linear light falloff across the plane
    shading_direction: float

    @staticmethod
    def random(rng: np.random.Generator, jitter: float) -> Photometric:
        return Photometric(
            brightness=10.0 * jitter * rng.uniform(-1, 1),
            contrast=1 + 0.08 * jitter * rng.uniform(-1, 1),
            channel_gain=(1 + 0.03 * jitter * rng.uniform(-1, 1, 3)).astype(np.float32),
            shading_amplitude=0.08 * jitter * rng.uniform(0, 1),
            shading_direction=rng.uniform(0, 2 * np.pi),
        )


def _warp(image: np.ndarray, H: np.ndarray, size: tuple[int, int], border: int) -> np.ndarray:
    return cv2.warpPerspective(
        image, H, (size[1], size[0]), flags=cv2.INTER_LINEAR, borderMode=border, borderValue=0
    )


def defect_coverages(scene: Scene, pose: np.ndarray, defect: Defect) -> list[np.ndarray]:
    """The defect's coverage (H, W) float32 in each view."""
    return [
        _warp(defect.coverage, G @ pose @ scene.object_frame, scene.image_size, cv2.BORDER_CONSTANT)
        for G in scene.plane_to_view
    ]


def render_views(
    scene: Scene,
    pose: np.ndarray,
    photometric: Photometric,
    defects: list[tuple[Defect, list[np.ndarray]]],
    noise_rng: np.random.Generator,
    noise_sigma: float,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images (M of (H, W, 3) uint8) and masks (M of (H, W) bool).

    `defects` pairs each defect with its per-view coverage; a view's coverage list entry is
    None where the defect is not drawn (too little of it is visible there).
    """
    size = scene.image_size
    images, masks = [], []
    for i, G in enumerate(scene.plane_to_view):
        background = _warp(
            scene.background, G @ scene.background_frame, size, cv2.BORDER_REFLECT_101
        )
        rgba = _warp(scene.object_rgba, G @ pose @ scene.object_frame, size, cv2.BORDER_CONSTANT)
        alpha = rgba[..., 3:4]
        view = rgba[..., :3] + (1 - alpha) * background
        mask = np.zeros(size, dtype=bool)
        for defect, coverages in defects:
            coverage = coverages[i]
            if coverage is None:
                continue
            inside = coverage >= 0.5
            defect.apply(view, coverage * inside, background)
            mask |= inside
        uv = scene.plane_uv[i]
        direction = np.array(
            [np.cos(photometric.shading_direction), np.sin(photometric.shading_direction)],
            np.float32,
        )
        shading = 1 + photometric.shading_amplitude * (uv @ direction)
        gain = scene.camera_gain[i] * photometric.channel_gain
        view *= shading[..., None]
        view *= gain
        view -= 128.0
        view *= photometric.contrast
        view += 128.0 + photometric.brightness
        if noise_sigma > 0:
            view += noise_rng.standard_normal(view.shape, dtype=np.float32) * noise_sigma
        np.clip(view, 0, 255, out=view)
        images.append(np.rint(view).astype(np.uint8))
        masks.append(mask)
    return images, masks


__all__ = ["Photometric", "Scene", "build_scene", "defect_coverages", "random_pose", "render_views"]
