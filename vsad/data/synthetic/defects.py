"""Defects drawn on the object plane.

A defect is a coverage map in the object's texture frame (S x S, float32 in [0, 1], anti-aliased)
plus how it changes the pixels it covers. It is warped into each view with the same homography
as the object; in a view, its mask is `coverage >= 0.5` and its effect is applied with strength
`coverage * mask`, so every pixel a defect changes lies inside its mask (the masks are exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

DEFECT_TYPES = ("scratch", "stain", "missing", "particle")
_SHIFT = 4  # fractional bits of the point coordinates given to OpenCV's drawing functions


@dataclass
class Defect:
    """kind: one of DEFECT_TYPES; coverage: (S, S) float32 in the object frame; color: RGB
    target (scratch, particle) or per-channel multiplier (stain); opacity: blend strength."""

    kind: str
    coverage: np.ndarray
    color: np.ndarray
    opacity: float

    def apply(self, view: np.ndarray, strength: np.ndarray, background: np.ndarray) -> None:
        """Changes `view` (H, W, 3) float32 in place where `strength` (H, W) > 0."""
        s = (strength * self.opacity)[..., None]
        if self.kind == "stain":
            view *= 1.0 - s * (1.0 - self.color)
        elif self.kind == "missing":
            # The chunk is gone: the surface behind shows through, in the chunk's shadow.
            view += s * (background * self.color - view)
        else:
            view += s * (self.color - view)


def _points(xy: np.ndarray) -> np.ndarray:
    return np.round(xy * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def _blob(size: int, center: np.ndarray, radius: float, roughness: float, rng) -> np.ndarray:
    """An irregular filled disc: radius modulated by a few random low-frequency harmonics."""
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    wobble = np.zeros_like(angles)
    for k in (2, 3, 5):
        wobble += rng.uniform(-1, 1) * np.cos(k * angles + rng.uniform(0, 2 * np.pi)) / k
    r = radius * (1 + roughness * wobble)
    xy = center + np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)
    canvas = np.zeros((size, size), np.uint8)
    cv2.fillPoly(canvas, [_points(xy)], 255, cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) / 255.0


def _scratch(size: int, rng) -> np.ndarray:
    length = rng.uniform(0.1, 0.3) * size
    start = rng.uniform(0.1, 0.9, size=2) * size
    angle = rng.uniform(0, 2 * np.pi)
    end = start + length * np.array([np.cos(angle), np.sin(angle)])
    bend = rng.uniform(-0.3, 0.3) * length * np.array([-np.sin(angle), np.cos(angle)])
    control = (start + end) / 2 + bend
    t = np.linspace(0, 1, 40)[:, None]
    curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end
    thickness = max(1, int(round(rng.uniform(0.006, 0.012) * size)))
    canvas = np.zeros((size, size), np.uint8)
    cv2.polylines(canvas, [_points(curve)], False, 255, thickness, cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) / 255.0


def draw_defect(kind: str, size: int, rng: np.random.Generator) -> Defect:
    """A random defect of `kind` on an object frame of size x size pixels."""
    if kind == "scratch":
        color = np.full(3, rng.uniform(205, 245), np.float32) + rng.uniform(-8, 8, 3)
        return Defect(kind, _scratch(size, rng), color.astype(np.float32), 0.9)
    if kind == "stain":
        center = rng.uniform(0.1, 0.9, size=2) * size
        coverage = _blob(size, center, rng.uniform(0.03, 0.07) * size, 0.5, rng)
        coverage = cv2.GaussianBlur(coverage, (0, 0), 0.004 * size)
        tint = np.clip(rng.uniform(0.45, 0.7) + rng.uniform(-0.1, 0.1, 3), 0.3, 0.85)
        return Defect(kind, coverage, tint.astype(np.float32), 0.85)
    if kind == "particle":
        center = rng.uniform(0.1, 0.9, size=2) * size
        coverage = _blob(size, center, rng.uniform(0.012, 0.025) * size, 0.3, rng)
        dark = rng.random() < 0.5
        color = rng.uniform(15, 60, 3) if dark else rng.permutation([rng.uniform(200, 255), 40, 30])
        return Defect(kind, coverage, np.asarray(color, np.float32), 1.0)
    if kind == "missing":
        # A bite out of one edge of the object: half the blob falls outside the frame.
        side, t = rng.integers(4), rng.uniform(0.15, 0.85)
        edge = {0: (t, 0.0), 1: (1.0, t), 2: (t, 1.0), 3: (0.0, t)}[int(side)]
        center = np.array(edge) * (size - 1)
        coverage = _blob(size, center, rng.uniform(0.06, 0.11) * size, 0.4, rng)
        return Defect(kind, coverage, np.full(3, 0.55, np.float32), 1.0)
    raise ValueError(f"defect kind: got {kind!r}, expected one of {DEFECT_TYPES}")


__all__ = ["DEFECT_TYPES", "Defect", "draw_defect"]
