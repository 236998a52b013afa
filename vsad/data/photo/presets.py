"""Difficulty presets of the real-photo benchmark: every knob of the unit-to-unit variation, the
imaging nuisances and the defects, with the three named levels.

Distances are in view pixels or fractions of the view side, angles in degrees, so a preset means
the same thing at every view size. Ranges are uniform: a knob `x` draws from [-x, x] (or
[lo, hi] for a pair).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class PhotoPreset:
    """How much normal units differ from each other and how hard the defects are to see.

    Placement of the unit on the station (one draw per sample, the same in every view):
        rotation_deg:   in-plane rotation, ± degrees.
        shift:          translation, ± fraction of the view side (each axis).
        scale:          scale change, ± fraction (distance to the cameras).
        camera_jitter:  an extra shift per view, ± fraction of the view side (camera mounts
                        that are not perfectly rigid).
    Shape of the unit (drawn per sample and view):
        shape_px:       amplitude of a smooth non-rigid deformation, view pixels (0 = rigid
                        units); a sum of Gaussian bumps of width `shape_width` view sides.
        shape_width:    correlation length of that deformation, fraction of the view side.
    Light and colour (drawn per sample and view):
        exposure:       global gain, ± fraction.
        light_gradient: a linear ramp of the illumination across the view, ± fraction of the
                        gain from one side to the centre.
        light_spot:     a soft spot light or shadow (Gaussian, a third of the view wide),
                        ± fraction of the gain at its centre.
        color_balance:  per-channel gain (white balance), ± fraction.
        gamma:          tone curve exponent, 1 ± gamma.
    Sensor and compression (drawn per sample and view):
        blur_px:        (lo, hi) σ of a Gaussian blur (focus), view pixels.
        noise:          (lo, hi) σ of the sensor noise at mid-grey, grey levels (signal
                        dependent: shot noise grows with brightness).
        jpeg_quality:   (lo, hi) JPEG quality; 100 = no compression.
    Defects:
        subtle_fraction: fraction of the defective samples whose defect is "subtle" (lower
                        contrast, smaller, shallower) instead of "obvious".
        defect_views:   probabilities that a defect lies where 1, 2 or 3 neighbouring cameras
                        see it (a view that sees too little of it stays normal).
    """

    rotation_deg: float = 0.0
    shift: float = 0.0
    scale: float = 0.0
    camera_jitter: float = 0.0
    shape_px: float = 0.0
    shape_width: float = 0.25
    exposure: float = 0.0
    light_gradient: float = 0.0
    light_spot: float = 0.0
    color_balance: float = 0.0
    gamma: float = 0.0
    blur_px: tuple[float, float] = (0.0, 0.0)
    noise: tuple[float, float] = (0.0, 0.0)
    jpeg_quality: tuple[int, int] = (100, 100)
    subtle_fraction: float = 0.0
    defect_views: tuple[float, float, float] = (1.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
                raise ValueError(f"{f.name}: got {value!r}, expected numbers")
            if any(not 0 <= v < float("inf") for v in values):
                raise ValueError(f"{f.name}: got {value!r}, expected finite values >= 0")
        for name in ("blur_px", "noise", "jpeg_quality"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: got {(lo, hi)}, expected (lo, hi) with lo <= hi")
        lo, hi = self.jpeg_quality
        if not 1 <= lo <= hi <= 100:
            raise ValueError(f"jpeg_quality: got {(lo, hi)}, expected 1 <= lo <= hi <= 100")
        if self.subtle_fraction > 1:
            raise ValueError(f"subtle_fraction: got {self.subtle_fraction}, expected in [0, 1]")
        if len(self.defect_views) != 3 or abs(sum(self.defect_views) - 1) > 1e-6:
            raise ValueError(
                f"defect_views: got {self.defect_views}, expected 3 probabilities summing to 1"
            )
        if self.shape_width <= 0:
            raise ValueError(f"shape_width: got {self.shape_width}, expected > 0")
        if self.scale >= 0.5 or self.exposure >= 0.5 or self.gamma >= 0.5:
            raise ValueError("scale, exposure, gamma: expected fractions below 0.5")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def with_changes(self, **changes) -> PhotoPreset:
        """A copy with some knobs changed (unknown names are an error)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"preset: unknown knob(s) {unknown}; known knobs: {sorted(known)}")
        return replace(self, **{k: tuple(v) if isinstance(v, list) else v
                                for k, v in changes.items()})  # fmt: skip


#: The named levels. They were fixed by looking at the rendered pictures, before any detector
#: was run on them (BENCHMARKS.md, "Real-photo benchmark"), and are not tuned to any detector.
PRESETS: dict[str, PhotoPreset] = {
    # A well-fixtured station: units nearly in the same place, steady light, clear defects.
    "easy": PhotoPreset(
        rotation_deg=1.0,
        shift=0.01,
        scale=0.01,
        camera_jitter=0.002,
        exposure=0.04,
        light_gradient=0.03,
        color_balance=0.02,
        blur_px=(0.0, 0.3),
        noise=(1.0, 2.0),
        jpeg_quality=(92, 97),
        subtle_fraction=0.0,
        defect_views=(0.6, 0.4, 0.0),
    ),
    # Loose fixturing: units placed by hand (several degrees, several per cent of the view);
    # light and defects as in "easy".
    "placement": PhotoPreset(
        rotation_deg=6.0,
        shift=0.05,
        scale=0.05,
        camera_jitter=0.004,
        exposure=0.04,
        light_gradient=0.03,
        color_balance=0.02,
        blur_px=(0.0, 0.3),
        noise=(1.0, 2.0),
        jpeg_quality=(92, 97),
        subtle_fraction=0.0,
        defect_views=(0.6, 0.4, 0.0),
    ),
    # What a real line shows: moderate placement changes, units that differ slightly in shape,
    # uneven and changing light, colour drift, focus, noise and compression, and half of the
    # defects subtle.
    "realistic": PhotoPreset(
        rotation_deg=3.0,
        shift=0.03,
        scale=0.03,
        camera_jitter=0.004,
        shape_px=2.5,
        shape_width=0.25,
        exposure=0.15,
        light_gradient=0.2,
        light_spot=0.2,
        color_balance=0.06,
        gamma=0.1,
        blur_px=(0.0, 1.0),
        noise=(2.0, 5.0),
        jpeg_quality=(75, 92),
        subtle_fraction=0.5,
        defect_views=(0.5, 0.35, 0.15),
    ),
}
# Units that turn (vsad.data.photo.turntable): the pose is the turntable's, so the 2-D
# placement is only the small jitter of a fixtured station ("easy"); light a little less
# steady, clear defects.
PRESETS["pose"] = PRESETS["easy"].with_changes(exposure=0.06, light_gradient=0.05)


def get_preset(preset: str | PhotoPreset) -> PhotoPreset:
    if isinstance(preset, PhotoPreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"preset: got {preset!r}, expected one of {sorted(PRESETS)}")
    return PRESETS[preset]


__all__ = ["PRESETS", "PhotoPreset", "get_preset"]
