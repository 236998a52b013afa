"""A multi-view benchmark built from real photographs: each normal sample is one physical unit
with its own placement, shape deviation, lighting and camera noise; defective samples carry one
defect (five families, two strengths) seen by one or several neighbouring cameras.

Input is a sequence of real photographs of one object from several viewpoints (one per camera,
e.g. `shared/data/multiview/kermit`); M consecutive photographs make an M-camera station. The
difficulty is a named preset (`easy`, `placement`, `realistic`, see presets.py for every knob).
Samples are rendered deterministically from (seed, split, index) when accessed::

    category = make_photo_category("path/to/kermit", preset="realistic", seed=0)
    sample = category.test[3]          # MultiViewSample: images, masks, view labels
    write_realiad(category, "out/")    # the Real-IAD layout, readable by RealIADDataset

What is real: the objects, their texture, their 3D shape and the viewpoints. What is made up:
the unit-to-unit variation (2-D placement and a smooth deformation of each photograph, not a
new 3-D pose), the light and sensor nuisances, and the defects. There are no exact homographies
between the views (the objects are not planar): detectors estimate their own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vsad.data.photo.defects import (
    MIN_VISIBLE_CHANGE,
    PHOTO_DEFECT_TYPES,
    STRENGTHS,
    DefectSpec,
    draw_spec,
    homography_jacobian,
    local_frame,
    render_defect,
)
from vsad.data.photo.presets import PRESETS, PhotoPreset, get_preset
from vsad.data.photo.station import MULTIVIEW_ENV, Station, load_photos, multiview_root
from vsad.data.photo.units import (
    Placement,
    camera_response,
    fitting_maps,
    resample,
    resample_coverage,
)
from vsad.data.sample import NORMAL, MultiViewDataset, MultiViewSample, SampleRecord

_SPLIT_CODE = {"train": 0, "test": 1}
MAX_PLACEMENT_TRIES = 60
#: A view is labelled defective when its mask holds at least this many pixels (per 256² view).
MIN_DEFECT_PIXELS = 6


@dataclass(frozen=True)
class _Plan:
    """What a sample carries: None (normal) or (family, strength), and the unit's pose (an
    index into the category's stations; 0 for a category photographed at one pose)."""

    kind: str | None = None
    strength: str | None = None
    pose: int = 0


class PhotoSplit(MultiViewDataset):
    """One split of a photo category; samples are rendered deterministically on access."""

    def __init__(self, category: PhotoCategory, split: str, plans: list[_Plan]) -> None:
        self._category, self.split = category, split
        self.category = category.name
        self.num_views = category.station.num_views
        self.plans = plans
        #: Per sample, the pose of the unit (turntable categories; all 0 otherwise).
        self.poses = [plan.pose for plan in plans]
        self.records = [
            SampleRecord(
                sample_id=f"{split}/{i:04d}",
                image_paths=(),
                mask_paths=(),
                label=int(plan.kind is not None),
                defect_type=plan.kind or NORMAL,
            )
            for i, plan in enumerate(plans)
        ]

    def render(self, index: int, *, with_defects: bool = True) -> MultiViewSample:
        """Sample `index`; with_defects=False renders the same unit (placement, shape, light,
        noise) without its defect, which shows exactly what the defect changed."""
        n = len(self.records)
        if not -n <= index < n:
            raise IndexError(f"index: {index} is out of range for a split of {n} samples")
        index %= n
        c = self._category
        plan = self.plans[index]
        station, preset = c.station_at(plan.pose), c.preset
        streams = np.random.SeedSequence([c.seed, _SPLIT_CODE[self.split], index]).spawn(3)
        unit_rng, camera_seed, defect_rng = (np.random.default_rng(s) for s in streams)
        # One generator per view, for the maps and then the camera response, so that a
        # sample rendered with and without its defect differs only by the defect.
        view_seeds = camera_seed.bit_generator.seed_seq.spawn(station.num_views)
        placement, maps, view_rngs = fitting_maps(
            station, Placement.random(preset, unit_rng), preset, view_seeds
        )
        drawn: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if plan.kind is not None and with_defects:
            drawn = self._place_defect(plan, station, maps, defect_rng)
        images, masks = [], []
        for k in range(station.num_views):
            photo, coverage = drawn.get(k, (station.photos[k], None))
            view = resample(photo, maps[k][:2], station.photo_per_view_px(k) / placement.scale)
            images.append(camera_response(view, preset, view_rngs[k]))
            mask = np.zeros((station.view_size,) * 2, bool)
            if coverage is not None:
                mask = resample_coverage(coverage, maps[k][:2]) >= 0.5
            masks.append(mask)
        record = self.records[index]
        view_labels = [int(m.any()) for m in masks]
        return MultiViewSample(
            images=images,
            masks=masks,
            view_labels=view_labels,
            label=int(any(view_labels)),
            sample_id=record.sample_id,
            paths=[f"photo:{c.name}/{record.sample_id}/view{k}" for k in range(len(images))],
            defect_type=record.defect_type if any(view_labels) else NORMAL,
        )

    def _place_defect(self, plan: _Plan, station: Station, maps, rng: np.random.Generator) -> dict:
        """Draws the defect in a first view and carries it into the neighbours it should also
        be seen by; retries elsewhere until the first view shows it clearly enough."""
        c = self._category
        M = station.num_views
        wanted = 1 + int(rng.choice(3, p=c.preset.defect_views))
        min_pixels = max(4, round(MIN_DEFECT_PIXELS * (station.view_size / 256) ** 2))
        for _ in range(MAX_PLACEMENT_TRIES):
            first = int(rng.integers(M))
            start = int(np.clip(first - rng.integers(wanted), 0, max(M - wanted, 0)))
            views = [first] + [v for v in range(start, min(start + wanted, M)) if v != first]
            spec: DefectSpec = draw_spec(plan.kind, plan.strength, rng)
            site = station.random_site(first, rng)
            drawn = {}
            for k in views:
                if k == first:
                    centre, frame = site, local_frame(spec)
                else:
                    H = station.homography(first, k)
                    if H is None:
                        continue
                    projected = H @ np.array([*site, 1.0])
                    centre = projected[:2] / projected[2]
                    frame = homography_jacobian(H, site) @ local_frame(spec)
                if not station.inside_crop(k, centre) or not _lands_inside(
                    maps[k][2], centre, station.view_size
                ):
                    continue
                result = render_defect(spec, station.photos[k], centre, frame)
                if result is None or result[2] < MIN_VISIBLE_CHANGE[plan.strength]:
                    continue
                photo, coverage, _ = result
                if (resample_coverage(coverage, maps[k][:2]) >= 0.5).sum() < min_pixels:
                    continue
                drawn[k] = (photo, coverage)
            if first in drawn:
                return drawn
        raise RuntimeError(
            f"could not place a visible {plan.strength} {plan.kind} defect in "
            f"{MAX_PLACEMENT_TRIES} tries on category {c.name!r}"
        )

    def _load(self, record: SampleRecord) -> MultiViewSample:
        return self.render(int(record.sample_id.rsplit("/", 1)[1]))


def _lands_inside(object_to_view: np.ndarray, point: np.ndarray, size: int) -> bool:
    """Whether an object point shows up inside the view, at least 8 % of the side from its
    border (after the unit's placement)."""
    q = object_to_view @ np.array([*point, 1.0])
    margin = 0.08 * size
    return bool(np.all(q[:2] >= margin) and np.all(q[:2] <= size - 1 - margin))


@dataclass
class PhotoCategory:
    """A benchmark category built from real photographs.

    station:  the photographs as cameras (vsad.data.photo.station.Station).
    preset:   the difficulty (PhotoPreset).
    settings: everything needed to rebuild it (recorded in the Real-IAD json's meta).
    homographies: None — real views of a 3-D object have no exact homographies.
    """

    name: str
    station: Station
    preset: PhotoPreset
    seed: int
    image_size: tuple[int, int]
    settings: dict = field(default_factory=dict)
    train: PhotoSplit | None = None
    test: PhotoSplit | None = None
    homographies: np.ndarray | None = None
    #: pose -> the photographs the cameras see of a unit at that pose (turntable categories,
    #: vsad.data.photo.turntable); empty: every unit is at pose 0, seen as `station`.
    stations: dict[int, Station] = field(default_factory=dict)
    #: The poses the training units take (turntable categories).
    seen_poses: frozenset = frozenset({0})
    #: (N, 3, 4) projection matrices of the sequence's photographs, where it has them.
    projections: np.ndarray | None = None

    @property
    def num_views(self) -> int:
        return self.station.num_views

    def station_at(self, pose: int) -> Station:
        if not self.stations:
            return self.station
        return self.stations[pose]


_STATIONS: dict[tuple, Station] = {}


def make_photo_category(
    photos: str | os.PathLike | Sequence[str | os.PathLike | np.ndarray],
    preset: str | PhotoPreset = "realistic",
    *,
    n_train: int = 40,
    n_test: int = 60,
    views: int = 5,
    first_view: int = 0,
    image_size: int = 256,
    crop: float = 0.8,
    defect_rate: float = 0.5,
    defect_types: Sequence[str] = PHOTO_DEFECT_TYPES,
    seed: int = 0,
    name: str | None = None,
) -> PhotoCategory:
    """Builds a Real-IAD-like category from real photographs of one object (lazy,
    deterministic given `seed`).

    Args:
        photos: a folder of photographs (one per camera, in name order), the name of a
            sequence in $VSAD_MULTIVIEW_DATA (e.g. "kermit"), or a sequence of files/arrays.
        preset: "easy", "placement", "realistic" (vsad.data.photo.PRESETS) or a PhotoPreset.
        n_train, n_test: samples per split; training samples are all normal.
        views, first_view: the station is photographs first_view .. first_view + views - 1.
        image_size: side of the square views (pixels).
        crop: fraction of each photograph's shorter side a view shows (its central square).
        defect_rate: fraction of defective test samples (rounded to a count).
        defect_types: families to use, spread evenly over the defective samples; each gets
            the preset's share of subtle defects.
        seed: everything (placements, light, defects) follows from it.
        name: category name (default: the folder name and the preset).
    """
    spec = get_preset(preset)
    for label, value in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{label}: got {value!r}, expected an int >= 0")
    if isinstance(views, bool) or not isinstance(views, int) or views < 1:
        raise ValueError(f"views: got {views!r}, expected an int >= 1")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size: got {image_size!r}, expected an int >= 32")
    if not 0.0 <= defect_rate <= 1.0:
        raise ValueError(f"defect_rate: got {defect_rate}, expected a fraction in [0, 1]")
    defect_types = tuple(defect_types)
    unknown = [k for k in defect_types if k not in PHOTO_DEFECT_TYPES]
    if unknown or not defect_types:
        raise ValueError(
            f"defect_types: got {list(defect_types)}, expected a non-empty subset of "
            f"{list(PHOTO_DEFECT_TYPES)}"
        )
    images, names = load_photos(photos, views, first_view)
    source = str(photos) if isinstance(photos, (str, os.PathLike)) else "arrays"
    key = (source, tuple(names), first_view, image_size, crop)
    station = _STATIONS.get(key) if source != "arrays" else None
    if station is None:
        station = Station(images, image_size, crop)
        if source != "arrays":
            _STATIONS[key] = station
    label = os.path.basename(os.path.normpath(source)) if source != "arrays" else "photos"
    preset_name = preset if isinstance(preset, str) else "custom"
    name = name or f"{label}_{preset_name}"

    plan_rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    n_bad = int(round(defect_rate * n_test))
    kinds = [defect_types[i % len(defect_types)] for i in range(n_bad)]
    # Each family's occurrences alternate between the strengths in the preset's proportion
    # (a Bresenham spread, phase-shifted per family so that rounding evens out).
    strengths = []
    for i in range(n_bad):
        j, phase = i // len(defect_types), (i % len(defect_types)) * 0.5
        subtle = np.floor((j + 1) * spec.subtle_fraction + phase) > np.floor(
            j * spec.subtle_fraction + phase
        )
        strengths.append("subtle" if subtle else "obvious")
    plans_bad = [_Plan(k, s) for k, s in zip(kinds, strengths, strict=True)]
    plan_rng.shuffle(plans_bad)
    test_plans = [_Plan()] * n_test
    for position, plan in zip(plan_rng.permutation(n_test)[:n_bad], plans_bad, strict=True):
        test_plans[int(position)] = plan

    category = PhotoCategory(
        name=name,
        station=station,
        preset=spec,
        seed=seed,
        image_size=(image_size, image_size),
        settings={
            "generator": "vsad.data.photo",
            "photos": names,
            "source": source,
            "first_view": first_view,
            "preset": preset_name,
            "knobs": spec.to_dict(),
            "seed": seed,
            "crop": crop,
            "defect_rate": defect_rate,
            "defect_types": list(defect_types),
        },
    )
    category.train = PhotoSplit(category, "train", [_Plan()] * n_train)
    category.test = PhotoSplit(category, "test", test_plans)
    return category


__all__ = [
    "MULTIVIEW_ENV",
    "PHOTO_DEFECT_TYPES",
    "PRESETS",
    "STRENGTHS",
    "PhotoCategory",
    "PhotoPreset",
    "PhotoSplit",
    "make_photo_category",
    "multiview_root",
]
