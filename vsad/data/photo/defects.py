"""Defects drawn into real photographs: five families at two strengths.

A defect is drawn once per view that sees it, directly on that view's photograph, before the
unit's placement and shape are applied — so it moves and deforms with the unit like a real
defect on the part. Its geometry is defined in a local frame (photo pixels of the view it was
first placed in, centred on the defect); `frame` (a 2x2 matrix) maps that frame into the photo
it is drawn on: a rotation for the first view, times the local linearisation of the photo
homography for a neighbouring view, so the same physical defect appears foreshortened there.

Families (Real-IAD codes in brackets):
- scratch (HS): a thin curved line, lighter or darker than the surface;
- stain (ZW): an irregular, soft-edged, mottled tint (oil, rust, dirt);
- missing (QS): a chipped-out cavity, dark inside, with a lit rim on one side;
- particle (YW): a foreign speck or fibre with a small cast shadow;
- dent (BX): a local deformation of the surface — the texture is pushed around, no colour is
  added (shape only).
"Obvious" defects are larger and of higher contrast; "subtle" ones are what a tired inspector
misses: small, low-contrast, shallow.

Every defect reports its coverage (0..1 per photo pixel); the mask of a view is coverage >= 0.5
after the view's resampling. A drawn defect must change the pixels under its mask by a
minimum mean amount, else it is drawn elsewhere (a dent on a featureless patch shows nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

PHOTO_DEFECT_TYPES = ("scratch", "stain", "missing", "particle", "dent")
STRENGTHS = ("obvious", "subtle")
#: Minimum mean change (grey levels, averaged over the masked pixels and channels) for a drawn
#: defect to count as visible.
MIN_VISIBLE_CHANGE = {"obvious": 12.0, "subtle": 6.0}
_SHIFT = 3  # fractional bits of point coordinates given to OpenCV's drawing functions


@dataclass
class DefectSpec:
    """One physical defect: its family, strength and random shape parameters (photo pixels of
    the view it was first placed in)."""

    kind: str
    strength: str
    params: dict = field(default_factory=dict)

    @property
    def extent(self) -> float:
        """Radius (local frame pixels) beyond which the defect changes nothing."""
        p = self.params
        if self.kind in ("scratch",) or (self.kind == "particle" and p["fibre"]):
            return 0.6 * p["length"] + 4 * p["width"]
        return 1.6 * p["radius"] + 6


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def draw_spec(kind: str, strength: str, rng: np.random.Generator) -> DefectSpec:
    """Random shape parameters of a defect of `kind` and `strength`."""
    if kind not in PHOTO_DEFECT_TYPES:
        raise ValueError(f"kind: got {kind!r}, expected one of {PHOTO_DEFECT_TYPES}")
    if strength not in STRENGTHS:
        raise ValueError(f"strength: got {strength!r}, expected one of {STRENGTHS}")
    obvious = strength == "obvious"
    pick = (lambda a, b: _u(rng, *a)) if obvious else (lambda a, b: _u(rng, *b))  # noqa: E731
    p: dict = {"angle": _u(rng, 0, 2 * np.pi), "harmonics": rng.uniform(-1, 1, (3, 2)).tolist()}
    if kind == "scratch":
        p.update(
            length=pick((40, 90), (25, 60)),
            width=pick((2.0, 3.5), (1.8, 2.8)),
            bend=_u(rng, -0.3, 0.3),
            bright=bool(rng.random() < 0.7),
            contrast=pick((70, 110), (35, 55)),
        )
    elif kind == "stain":
        tints = ((0.62, 0.48, 0.33), (0.45, 0.45, 0.50), (0.78, 0.46, 0.30), (0.55, 0.60, 0.40))
        p.update(
            radius=pick((14, 30), (10, 22)),
            tint=list(tints[rng.integers(len(tints))]),
            opacity=pick((0.45, 0.65), (0.25, 0.35)),
            mottle_seed=int(rng.integers(1 << 30)),
        )
    elif kind == "missing":
        p.update(
            radius=pick((10, 22), (6, 12)),
            depth=pick((0.15, 0.3), (0.4, 0.5)),
            rim=pick((50, 80), (25, 40)),
        )
    elif kind == "particle":
        fibre = bool(rng.random() < 0.4)
        colour = rng.integers(3)
        rgb = (
            [_u(rng, 10, 40)] * 3
            if colour == 0
            else [_u(rng, 225, 250)] * 3
            if colour == 1
            else list(rng.permutation([_u(rng, 180, 240), _u(rng, 30, 90), _u(rng, 20, 60)]))
        )
        p.update(
            fibre=fibre,
            radius=pick((3.5, 7.0), (2.5, 4.0)),
            length=pick((30, 60), (20, 40)),
            width=_u(rng, 1.2, 2.0),
            bend=_u(rng, -0.4, 0.4),
            colour=[float(c) for c in rgb],
            blend=1.0 if obvious else _u(rng, 0.6, 0.75),
        )
    else:  # dent
        p.update(
            radius=pick((18, 35), (14, 28)),
            amplitude=pick((4.0, 7.0), (2.5, 4.0)),
            aspect=_u(rng, 0.6, 1.0),
        )
    return DefectSpec(kind, strength, p)


def local_frame(spec: DefectSpec) -> np.ndarray:
    """The 2x2 map from the defect's own frame to the photo it was first placed in."""
    a = spec.params["angle"]
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def homography_jacobian(H: np.ndarray, point: np.ndarray) -> np.ndarray:
    """The 2x2 derivative of the projective map H at `point` (how it stretches a small patch)."""
    x, y = point
    u, v, w = H @ np.array([x, y, 1.0])
    return np.array(
        [
            [(H[0, 0] * w - u * H[2, 0]) / w**2, (H[0, 1] * w - u * H[2, 1]) / w**2],
            [(H[1, 0] * w - v * H[2, 0]) / w**2, (H[1, 1] * w - v * H[2, 1]) / w**2],
        ]
    )


def render_defect(
    spec: DefectSpec, photo: np.ndarray, centre: np.ndarray, frame: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Draws `spec` at `centre` (photo pixels) with `frame` (2x2, local -> photo).

    Returns (photo with the defect, coverage (H, W) float32, mean change under the mask), or
    None when the defect would fall outside the photo. `photo` is float32 RGB, not modified.
    """
    h, w = photo.shape[:2]
    reach = spec.extent * float(np.sqrt(max(abs(np.linalg.det(frame)), 1e-6))) * 1.5 + 4
    x0, y0 = int(max(0, np.floor(centre[0] - reach))), int(max(0, np.floor(centre[1] - reach)))
    x1, y1 = int(min(w, np.ceil(centre[0] + reach))), int(min(h, np.ceil(centre[1] + reach)))
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    patch = photo[y0:y1, x0:x1].copy()
    origin = np.asarray(centre, np.float64) - [x0, y0]  # defect centre in patch pixels
    drawn, coverage = _DRAW[spec.kind](spec, patch, origin, np.asarray(frame, np.float64))
    mask = coverage >= 0.5
    if not mask.any():
        return None
    change = float(np.abs(drawn - patch)[mask].mean())
    out = photo.copy()
    out[y0:y1, x0:x1] = drawn
    full = np.zeros((h, w), np.float32)
    full[y0:y1, x0:x1] = coverage
    return out, full, change


# -- drawing helpers ------------------------------------------------------------------------
def _pts(xy: np.ndarray) -> np.ndarray:
    return np.round(xy * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def _to_patch(local: np.ndarray, origin: np.ndarray, frame: np.ndarray) -> np.ndarray:
    return local @ frame.T + origin


def _frame_scale(frame: np.ndarray) -> float:
    return float(np.sqrt(max(abs(np.linalg.det(frame)), 1e-6)))


def _curve(length: float, bend: float) -> np.ndarray:
    t = np.linspace(0, 1, 48)[:, None]
    start, end = np.array([-length / 2, 0.0]), np.array([length / 2, 0.0])
    control = np.array([0.0, 2 * bend * length])
    return (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end


def _line_coverage(shape, points: np.ndarray, width: float) -> np.ndarray:
    canvas = np.zeros(shape[:2], np.uint8)
    cv2.polylines(
        canvas, [_pts(points)], False, 255, max(1, int(round(width))), cv2.LINE_AA, _SHIFT
    )
    coverage = canvas.astype(np.float32) / 255.0
    if width < 1.5:  # thinner than OpenCV draws: fade instead of narrowing
        coverage *= width / 1.5
    return coverage


def _blob_outline(radius: float, harmonics, roughness: float, aspect: float = 1.0) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    wobble = np.zeros_like(angles)
    for k, (amp, phase) in zip((2, 3, 5), harmonics, strict=True):
        wobble += amp * np.cos(k * angles + np.pi * phase) / k
    r = radius * (1 + roughness * wobble)
    return np.stack([r * np.cos(angles), aspect * r * np.sin(angles)], axis=1)


def _fill_coverage(shape, outline: np.ndarray) -> np.ndarray:
    canvas = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(canvas, [_pts(outline)], 255, cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) / 255.0


def _local_mean(patch: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(patch, (0, 0), 6.0)


# -- the five families ---------------------------------------------------------------------
def _scratch(spec, patch, origin, frame):
    p = spec.params
    points = _to_patch(_curve(p["length"], p["bend"]), origin, frame)
    coverage = _line_coverage(patch.shape, points, p["width"] * _frame_scale(frame))
    grey = _local_mean(patch).mean(axis=2, keepdims=True)
    target = np.clip(grey + p["contrast"] if p["bright"] else grey - p["contrast"], 0, 255)
    alpha = 0.9 * coverage[..., None]
    return patch * (1 - alpha) + target * alpha, coverage


def _stain(spec, patch, origin, frame):
    p = spec.params
    outline = _to_patch(_blob_outline(p["radius"], p["harmonics"], 0.5), origin, frame)
    hard = _fill_coverage(patch.shape, outline)
    soft = cv2.GaussianBlur(hard, (0, 0), max(0.8, 0.25 * p["radius"] * _frame_scale(frame)))
    noise = np.random.default_rng(p["mottle_seed"]).standard_normal(patch.shape[:2])
    mottle = cv2.GaussianBlur(noise.astype(np.float32), (0, 0), 2.5)
    mottle = 1 + 0.35 * mottle / (mottle.std() + 1e-6)
    strength = np.clip(soft * mottle, 0, 1)[..., None] * p["opacity"]
    tint = np.asarray(p["tint"], np.float32)
    return patch * (1 - strength * (1 - tint)), soft


def _missing(spec, patch, origin, frame):
    p = spec.params
    outline = _to_patch(_blob_outline(p["radius"], p["harmonics"], 0.45), origin, frame)
    coverage = _fill_coverage(patch.shape, outline)
    h, w = coverage.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    light = np.array([np.cos(p["angle"] + 1.0), np.sin(p["angle"] + 1.0)])
    radius = p["radius"] * _frame_scale(frame)
    along = ((xs - origin[0]) * light[0] + (ys - origin[1]) * light[1]) / max(radius, 1.0)
    # The cavity's inner wall: darker away from the light, never brighter than the surface.
    shade = np.clip(p["depth"] * (1.0 + 0.35 * along), 0.05, 1.0)[..., None]
    cavity = _local_mean(patch) * shade
    # The rim where the chipped edge catches the light: the edge facing the light.
    gy, gx = np.gradient(cv2.GaussianBlur(coverage, (0, 0), 0.8))
    rim = np.clip(-(gx * light[0] + gy * light[1]) * 2.0, 0, 1)
    alpha = coverage[..., None]
    drawn = patch * (1 - alpha) + cavity * alpha + p["rim"] * rim[..., None]
    return np.clip(drawn, 0, 255), np.maximum(coverage, (rim > 0.15).astype(np.float32))


def _particle(spec, patch, origin, frame):
    p = spec.params
    if p["fibre"]:
        points = _to_patch(_curve(p["length"], p["bend"]), origin, frame)
        coverage = _line_coverage(patch.shape, points, p["width"] * _frame_scale(frame))
    else:
        outline = _to_patch(_blob_outline(p["radius"], p["harmonics"], 0.3), origin, frame)
        coverage = _fill_coverage(patch.shape, outline)
    offset = np.float32([[1, 0, 2.0], [0, 1, 2.0]])  # the shadow falls down and to the right
    shadow = cv2.warpAffine(coverage, offset, coverage.shape[::-1])
    shadow = cv2.GaussianBlur(shadow, (0, 0), 1.2)
    colour = np.asarray(p["colour"], np.float32)
    target = p["blend"] * colour + (1 - p["blend"]) * _local_mean(patch)
    shaded = patch * (1 - 0.3 * p["blend"] * shadow[..., None])
    alpha = coverage[..., None]
    return shaded * (1 - alpha) + target * alpha, np.maximum(coverage, (shadow > 0.3) * 1.0)


def _dent(spec, patch, origin, frame):
    p = spec.params
    h, w = patch.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    # Local coordinates of every patch pixel, in a frame where the dent is a circle.
    shape = frame @ np.diag([1.0, p["aspect"]])
    inverse = np.linalg.inv(shape)
    d = np.stack([xs - origin[0], ys - origin[1]], axis=-1)
    local = d @ inverse.T
    rho = np.linalg.norm(local, axis=-1)
    r = p["radius"]
    inside = rho < r
    # Radial push that vanishes at the centre and the rim: the surface sinks and the texture
    # around the centre is stretched outward (what a dent does to a printed or machined surface).
    magnitude = np.where(inside, p["amplitude"] * np.sin(np.pi * rho / r), 0.0)
    direction = local / np.maximum(rho, 1e-6)[..., None]
    push = (direction * magnitude[..., None]) @ frame.T  # back into photo pixels
    map_x = (xs + push[..., 0]).astype(np.float32)
    map_y = (ys + push[..., 1]).astype(np.float32)
    drawn = cv2.remap(patch, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    coverage = np.clip((0.9 * r - rho) / 2.0 + 0.5, 0, 1).astype(np.float32)
    return drawn, coverage


_DRAW = {
    "scratch": _scratch,
    "stain": _stain,
    "missing": _missing,
    "particle": _particle,
    "dent": _dent,
}

__all__ = [
    "MIN_VISIBLE_CHANGE",
    "PHOTO_DEFECT_TYPES",
    "STRENGTHS",
    "DefectSpec",
    "draw_spec",
    "homography_jacobian",
    "local_frame",
    "render_defect",
]
