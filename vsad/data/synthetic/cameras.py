"""A ring of pinhole cameras looking at a plane, and the homographies that follow from it.

The scene plane is z = 0 with coordinates (u, v) in object units (the object is the unit square
around the origin). Camera 0 looks almost straight at the centre; cameras 1..M-1 sit on a ring,
tilted 18-28 degrees, each aimed at the part of the object on its side, so neighbouring views
overlap by roughly half and a defect is seen by one or several cameras depending on where it is.

Pixel convention (docs/design.md §3.1): x = column, y = row, pixel centres at integers.
"""

from __future__ import annotations

import numpy as np

FIELD_OF_VIEW = 0.6  # plane units across the image width at the aimed point
DISTANCE = 1.6  # camera to aimed point, plane units: moderate perspective
RING_OFFSET = 0.25  # how far off-centre ring cameras aim


def _look_at(center: np.ndarray, target: np.ndarray, roll: float) -> np.ndarray:
    """Rotation (rows = camera x, y, z axes in world coordinates) of a camera at `center`
    looking at `target`, its image x axis as close to the plane's u axis as the view allows."""
    z = target - center
    z /= np.linalg.norm(z)
    u = np.array([1.0, 0.0, 0.0])
    x = u - (u @ z) * z
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    x, y = np.cos(roll) * x + np.sin(roll) * y, -np.sin(roll) * x + np.cos(roll) * y
    return np.stack([x, y, z])


def camera_rig(n_views: int, image_size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Plane-to-image homographies G (M, 3, 3) float64: [x, y, 1] ~ G @ [u, v, 1]."""
    height, width = image_size
    focal = width * DISTANCE / FIELD_OF_VIEW
    K = np.array([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1]])
    rigs = []
    for i in range(n_views):
        if i == 0:
            tilt, azimuth, offset = np.radians(rng.uniform(3, 8)), rng.uniform(0, 2 * np.pi), 0.0
        else:
            azimuth = 2 * np.pi * (i - 1) / (n_views - 1) + np.pi / 4 + rng.uniform(-0.15, 0.15)
            tilt, offset = np.radians(rng.uniform(18, 28)), RING_OFFSET
        roll = np.radians(rng.uniform(-8, 8))
        direction = np.array([np.cos(azimuth), np.sin(azimuth)])
        target = np.array([*(offset * direction), 0.0])
        # The camera is on the side it aims at and looks at the plane from z < 0, which keeps
        # the image unmirrored with x along u and y along v.
        center = target + DISTANCE * np.array(
            [np.sin(tilt) * direction[0], np.sin(tilt) * direction[1], -np.cos(tilt)]
        )
        R = _look_at(center, target, roll)
        G = K @ np.column_stack([R[:, 0], R[:, 1], -R @ center])
        rigs.append(G / G[2, 2])
    return np.stack(rigs)


def view_homographies(plane_to_view: np.ndarray) -> np.ndarray:
    """H (M, M, 3, 3) with H[i, j] mapping view i pixel coordinates to view j's (exact for
    every point of the plane), normalised so that H[i, j][2, 2] = 1."""
    inverse = np.linalg.inv(plane_to_view)
    H = np.einsum("jab,ibc->ijac", plane_to_view, inverse)
    return H / H[..., 2:3, 2:3]


def plane_coordinates(G: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """(H, W, 2) float32 plane (u, v) of every pixel centre of the view with homography G."""
    height, width = image_size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    pixels = np.stack([xs, ys, np.ones_like(xs)], axis=-1)
    plane = pixels @ np.linalg.inv(G).T
    return (plane[..., :2] / plane[..., 2:3]).astype(np.float32)


__all__ = ["camera_rig", "plane_coordinates", "view_homographies"]
