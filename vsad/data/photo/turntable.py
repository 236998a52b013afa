"""Units that turn: a photo benchmark category from a real turntable sequence, where a unit set
down at another pose shows every camera another side of itself (parallax, self-occlusion,
shading) — the 3-D variation that 2-D view registration cannot undo.

A turntable sequence is N photographs of one object turning in equal steps in front of a fixed
camera (`../shared/data/turntable/dinosaur`: 36 photographs 10° apart). Seen from the object,
that is one camera going round it, so a station of M cameras `camera_step` photographs apart is
M photographs of the sequence, and a unit at pose d (d steps of the turntable) shows camera k
photograph (first_view + k·camera_step + d) mod N::

    category = make_turntable_category("shared/data/turntable/dinosaur", seed=0)
    category.train.poses        # the pose of every training unit: 0, 2, 4, 0, 2, ...
    category.test.poses         # test units at those poses and halfway between them (1, 3)
    category.seen_poses         # {0, 2, 4}

Everything else — the small placement jitter of each unit, light, noise, the five defect
families carried between neighbouring views — is the photo benchmark's
(vsad.data.photo.make_photo_category, docs/photo-benchmark.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from vsad.data.photo import PhotoCategory, PhotoSplit, _Plan, make_photo_category
from vsad.data.photo.defects import PHOTO_DEFECT_TYPES
from vsad.data.photo.presets import PhotoPreset
from vsad.data.photo.station import Station, load_photos, photo_files

#: The default station: five cameras two turntable steps (20° on the dinosaur) apart, training
#: units at three poses two steps apart, test units at those and at the poses halfway between.
TRAIN_POSES = (0, 2, 4)
TEST_POSES = (0, 1, 2, 3, 4)
#: The covered-pose variant: the training units take every pose the test units take.
COVERED_POSES = (0, 1, 2, 3, 4)


def product_mask(photo: np.ndarray, *, border: float = 0.05, tolerance: float = 0.08):
    """Where the product is in a turntable photograph: the pixels whose chromaticity (r, g, b
    over their sum) differs by more than `tolerance` from the median of the photo's outer
    `border` frame — the backdrop and the turntable, one colour on such a rig — and that are
    not nearly black. Only used to put defects on the product, not on the backdrop."""
    rgb = photo.astype(np.float32)
    chroma = rgb / np.maximum(rgb.sum(axis=2, keepdims=True), 1.0)
    h, w = photo.shape[:2]
    b = max(1, int(border * min(h, w)))
    frame = np.concatenate(
        [chroma[:b].reshape(-1, 3), chroma[-b:].reshape(-1, 3),
         chroma[:, :b].reshape(-1, 3), chroma[:, -b:].reshape(-1, 3)]
    )  # fmt: skip
    background = np.median(frame, axis=0)
    mask = (np.linalg.norm(chroma - background, axis=2) > tolerance) & (rgb.mean(axis=2) > 45)
    # Defect centres stay a little inside the product's outline.
    return cv2.erode(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)


def read_projections(folder: str | os.PathLike) -> np.ndarray | None:
    """The (N, 3, 4) projection matrices of `folder/cameras.json` (key `projection_matrices`),
    or None when the sequence has none."""
    path = Path(folder) / "cameras.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    matrices = np.asarray(data["projection_matrices"], dtype=np.float64)
    if matrices.ndim != 3 or matrices.shape[1:] != (3, 4):
        raise ValueError(
            f"{path}: projection_matrices has shape {matrices.shape}, expected (N, 3, 4)"
        )
    return matrices


_STATIONS: dict[tuple, Station] = {}


def make_turntable_category(
    photos: str | os.PathLike,
    preset: str | PhotoPreset = "pose",
    *,
    n_train: int = 40,
    n_test: int = 100,
    views: int = 5,
    camera_step: int = 2,
    first_view: int = 0,
    train_poses: Sequence[int] = TRAIN_POSES,
    test_poses: Sequence[int] = TEST_POSES,
    image_size: int = 256,
    crop: float = 0.8,
    defect_rate: float = 0.5,
    defect_types: Sequence[str] = PHOTO_DEFECT_TYPES,
    seed: int = 0,
    name: str | None = None,
) -> PhotoCategory:
    """A benchmark category from a turntable sequence (module docstring). Poses are turntable
    steps; training units take `train_poses` in turn, and the test units take `test_poses` in
    turn, the normal and the defective ones separately, so every pose has about the same share
    of defects. `category.seen_poses` are the training poses; `split.poses` gives each
    sample's. Other arguments as in make_photo_category."""
    files = photo_files(photos)
    n = len(files)
    for label, value in (("views", views), ("camera_step", camera_step)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label}: got {value!r}, expected an int >= 1")
    poses = sorted({*train_poses, *test_poses})
    if not train_poses or not test_poses:
        raise ValueError("train_poses, test_poses: expected at least one pose each")
    if any(isinstance(p, bool) or not isinstance(p, int) for p in poses):
        raise ValueError(f"train_poses, test_poses: got {poses}, expected ints (turntable steps)")
    span = (views - 1) * camera_step + max(poses) - min(poses) + 1
    if span > n:
        raise ValueError(
            f"views, camera_step, poses: the station needs {span} distinct photographs of the "
            f"sequence, which has {n}; use fewer views, a smaller step or fewer poses"
        )
    images, _ = load_photos(files, n, 0)
    names = [f.name for f in files]

    def station(pose: int) -> Station:
        chosen = [(first_view + k * camera_step + pose) % n for k in range(views)]
        key = (str(Path(photos).resolve()), tuple(chosen), image_size, crop)
        if key not in _STATIONS:
            picked = [images[i] for i in chosen]
            _STATIONS[key] = Station(
                picked, image_size, crop, product_masks=[product_mask(p) for p in picked]
            )
        return _STATIONS[key]

    stations = {pose: station(pose) for pose in poses}
    preset_name = preset if isinstance(preset, str) else "custom"
    label = os.path.basename(os.path.normpath(str(photos)))
    category = make_photo_category(
        [images[(first_view + k * camera_step) % n] for k in range(views)],
        preset,
        n_train=n_train,
        n_test=n_test,
        views=views,
        image_size=image_size,
        crop=crop,
        defect_rate=defect_rate,
        defect_types=defect_types,
        seed=seed,
        name=name or f"{label}_{preset_name}",
    )
    category.station = stations[train_poses[0]]
    category.stations = stations
    train_plans = [_Plan(pose=train_poses[i % len(train_poses)]) for i in range(n_train)]
    test_plans, counts = [], {True: 0, False: 0}
    for plan in category.test.plans:
        bad = plan.kind is not None
        pose = test_poses[counts[bad] % len(test_poses)]
        counts[bad] += 1
        test_plans.append(_Plan(plan.kind, plan.strength, pose))
    category.train = PhotoSplit(category, "train", train_plans)
    category.test = PhotoSplit(category, "test", test_plans)
    category.seen_poses = frozenset(train_poses)
    category.projections = read_projections(photos)
    category.settings.update(
        generator="vsad.data.photo.turntable",
        source=str(photos),
        photos=names,
        first_view=first_view,
        camera_step=camera_step,
        train_poses=list(train_poses),
        test_poses=list(test_poses),
    )
    return category


__all__ = [
    "COVERED_POSES",
    "TEST_POSES",
    "TRAIN_POSES",
    "make_turntable_category",
    "product_mask",
    "read_projections",
]
