"""Anomaly maps as colours blended over their image, with the ground truth outlined.

Colours come from an explicit range (vmin, vmax) rather than each map's own extremes when the
caller passes one: with a per-map range every map has a red spot, even a perfectly normal
view, so only a range shared by the pictures being compared says which one is hotter.
"""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np

from vsad.viz._checks import (
    check_color,
    check_image,
    check_map,
    check_mask,
    check_number,
    check_range,
)

COLORMAPS = tuple(
    sorted(name[len("COLORMAP_") :].lower() for name in dir(cv2) if name.startswith("COLORMAP_"))
)
CONTOUR_COLOR = (255, 255, 255)  # white: absent from "jet", so the outline never blends in


@cache
def _lut(colormap: str) -> np.ndarray:
    code = getattr(cv2, f"COLORMAP_{colormap.upper()}")
    bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), code)
    lut = np.ascontiguousarray(bgr[:, 0, ::-1])
    lut.setflags(write=False)
    return lut


def colormap_lut(colormap: str = "jet") -> np.ndarray:
    """(256, 3) uint8 RGB table of an OpenCV colormap: entry 255 is the top (the hottest).
    A table lookup is what keeps a 5-view panel well under a millisecond per view."""
    if not isinstance(colormap, str) or colormap not in COLORMAPS:
        raise ValueError(f"colormap: got {colormap!r}, expected one of {COLORMAPS}")
    return _lut(colormap)


def map_levels(anomaly_map: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """uint8 levels: vmin -> 0, vmax -> 255, values outside the range clipped. Equal values
    get equal levels whatever the map, which is what makes a shared range comparable. With
    vmin == vmax (e.g. a constant map under its own range) values above it are 255, the rest 0:
    a flat map shows no hot spot."""
    values = np.asarray(anomaly_map, dtype=np.float32)
    span = vmax - vmin
    if not span > 0:
        return np.where(values > vmax, 255, 0).astype(np.uint8)
    scaled = (values - np.float32(vmin)) * np.float32(255.0 / span)
    np.clip(scaled, 0, 255, out=scaled)
    return np.rint(scaled).astype(np.uint8)


def colorize(anomaly_map, *, vmin=None, vmax=None, colormap: str = "jet") -> np.ndarray:
    """(H, W, 3) uint8 RGB heat map of a finite (H, W) map; vmin / vmax default to the map's
    own min / max."""
    values = check_map(anomaly_map, "anomaly_map", np.shape(anomaly_map)[:2], "itself")
    low, high = check_range(vmin, vmax, [values])
    return colormap_lut(colormap)[map_levels(values, low, high)]


def draw_mask_contour(canvas: np.ndarray, mask: np.ndarray, color=CONTOUR_COLOR) -> np.ndarray:
    """Draws (in place) a 1-pixel outline of every region and hole of `mask`: exactly the mask
    pixels that have a 4-neighbour outside the mask (the image border counts as outside), so
    the outline sits on the defect, never on the normal pixels around it."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    if contours:
        cv2.drawContours(canvas, contours, -1, tuple(int(c) for c in color), 1)
    return canvas


def overlay(
    image,
    anomaly_map,
    *,
    mask=None,
    vmin=None,
    vmax=None,
    alpha: float = 0.5,
    colormap: str = "jet",
    contour_color=CONTOUR_COLOR,
) -> np.ndarray:
    """The anomaly map as a heat map blended over its image, (H, W, 3) uint8 RGB.

    Args:
        image: (H, W, 3) uint8 RGB (grey (H, W) uint8 is accepted).
        anomaly_map: (H, W) finite scores, exactly the image's size.
        mask: optional (H, W) ground truth; its outline is drawn in `contour_color`.
        vmin, vmax: the scores shown as the bottom and top of the colormap. Pass the same
            range to every picture that is to be compared; each defaults to this map's min/max.
        alpha: weight of the heat map (0 = image only, 1 = heat map only).
        colormap: an OpenCV colormap name (see COLORMAPS).
    """
    image = check_image(image, "image")
    values = check_map(anomaly_map, "anomaly_map", image.shape[:2], "image")
    mask = None if mask is None else check_mask(mask, "mask", image.shape[:2], "image")
    low, high = check_range(vmin, vmax, [values])
    alpha = check_number(alpha, "alpha", low=0.0, high=1.0)
    color = check_color(contour_color, "contour_color")
    heat = colormap_lut(colormap)[map_levels(values, low, high)]
    out = cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)
    if mask is not None and mask.any():
        draw_mask_contour(out, mask, color)
    return out


__all__ = ["COLORMAPS", "colorize", "colormap_lut", "draw_mask_contour", "overlay"]
