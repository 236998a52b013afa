"""Synthetic multi-view categories with exact ground truth.

A textured planar object (a crop of a real photograph) lies on a textured surface and is seen by
M cameras (`cameras.py`), so the homography between any two views is known exactly. Each sample
gets its own placement of the object (±5°, ±0.03 object widths) and its own lighting and
exposure; anomalous test samples carry one defect (scratch, stain, missing chunk or foreign
particle) drawn on the object and warped into every view where enough of it is visible, with an
exact mask. Everything is deterministic given the seed, and samples are rendered on access::

    category = make_category(n_train=20, n_test=20, seed=0)    # packaged texture by default
    sample = category.test[3]          # MultiViewSample: images, masks, view labels
    category.homographies[0, 2]        # view 0 pixel -> view 2 pixel (3x3)
    write_realiad(category, "out/")    # the Real-IAD layout, readable by RealIADDataset
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vsad.data.sample import (
    NORMAL,
    MultiViewDataset,
    MultiViewSample,
    SampleRecord,
    normalize_image_size,
)
from vsad.data.synthetic.cameras import camera_rig, view_homographies
from vsad.data.synthetic.defects import DEFECT_TYPES, Defect, draw_defect
from vsad.data.synthetic.render import (
    Photometric,
    Scene,
    build_scene,
    defect_coverages,
    random_pose,
    render_views,
)
from vsad.data.textures import default_texture, load_textures

_SPLIT_CODE = {"train": 0, "test": 1}
MAX_PLACEMENT_TRIES = 50


@dataclass
class _Settings:
    name: str
    seed: int
    placement_jitter: float
    photometric_jitter: float
    noise_sigma: float
    min_visible_fraction: float


class SyntheticSplit(MultiViewDataset):
    """One split of a synthetic category; samples are rendered deterministically on access."""

    def __init__(
        self,
        scene: Scene,
        settings: _Settings,
        split: str,
        defect_kinds: list[str | None],
    ) -> None:
        self.scene, self.settings, self.split = scene, settings, split
        self.category = settings.name
        self.num_views = len(scene.plane_to_view)
        self.defect_kinds = defect_kinds
        self.records = [
            SampleRecord(
                sample_id=f"{split}/{i:04d}",
                image_paths=(),
                mask_paths=(),
                label=int(kind is not None),
                defect_type=kind or NORMAL,
            )
            for i, kind in enumerate(defect_kinds)
        ]

    def render(self, index: int, *, with_defects: bool = True) -> MultiViewSample:
        """Sample `index`; with_defects=False renders the same sample (placement, lighting,
        noise) without its defect, which shows exactly what the defect changed."""
        n = len(self.records)
        if not -n <= index < n:
            raise IndexError(f"index: {index} is out of range for a split of {n} samples")
        index %= n
        s = self.settings
        streams = np.random.SeedSequence([s.seed, _SPLIT_CODE[self.split], index]).spawn(4)
        pose_rng, photo_rng, noise_rng, defect_rng = (np.random.default_rng(x) for x in streams)
        pose = random_pose(pose_rng, s.placement_jitter)
        photometric = Photometric.random(photo_rng, s.photometric_jitter)
        kind = self.defect_kinds[index]
        defects = self._place_defect(kind, pose, defect_rng) if kind else []
        if not with_defects:
            defects = []
        images, masks = render_views(
            self.scene, pose, photometric, defects, noise_rng, s.noise_sigma
        )
        record = self.records[index]
        view_labels = [int(m.any()) for m in masks]
        return MultiViewSample(
            images=images,
            masks=masks,
            view_labels=view_labels,
            label=int(any(view_labels)),
            sample_id=record.sample_id,
            paths=[f"synthetic:{s.name}/{record.sample_id}/view{k}" for k in range(len(images))],
            defect_type=record.defect_type if any(view_labels) else NORMAL,
        )

    def _place_defect(self, kind: str, pose: np.ndarray, rng: np.random.Generator):
        """Draws the defect again until at least one view sees enough of it; views that see
        too little get nothing drawn (their label stays normal)."""
        height, width = self.scene.image_size
        min_pixels = max(4, int(self.settings.min_visible_fraction * height * width))
        for _ in range(MAX_PLACEMENT_TRIES):
            defect: Defect = draw_defect(kind, self.scene.object_pixels, rng)
            coverages = defect_coverages(self.scene, pose, defect)
            visible = [c if np.count_nonzero(c >= 0.5) >= min_pixels else None for c in coverages]
            if any(v is not None for v in visible):
                return [(defect, visible)]
        raise RuntimeError(
            f"could not place a visible {kind} defect in {MAX_PLACEMENT_TRIES} tries "
            f"(min_visible_fraction={self.settings.min_visible_fraction})"
        )

    def _load(self, record: SampleRecord) -> MultiViewSample:
        return self.render(int(record.sample_id.rsplit("/", 1)[1]))


@dataclass
class SyntheticCategory:
    """A synthetic category: its splits and its exact geometry.

    homographies:  (M, M, 3, 3) float64, H[i, j] maps view i pixel coordinates (x = column,
                   y = row, pixel centres at integers) to view j's; exact on the object plane.
    plane_to_view: (M, 3, 3) float64, object-plane units -> view pixels.
    """

    name: str
    train: SyntheticSplit
    test: SyntheticSplit
    homographies: np.ndarray
    plane_to_view: np.ndarray
    image_size: tuple[int, int]
    seed: int
    settings: dict = field(default_factory=dict)

    @property
    def num_views(self) -> int:
        return len(self.plane_to_view)


def make_category(
    textures: str | os.PathLike | np.ndarray | Sequence | None = None,
    n_train: int = 20,
    n_test: int = 20,
    *,
    n_views: int = 5,
    image_size: int | tuple[int, int] = 256,
    defect_rate: float = 0.5,
    defect_types: Sequence[str] = DEFECT_TYPES,
    seed: int = 0,
    name: str = "synthetic",
    placement_jitter: float = 1.0,
    photometric_jitter: float = 1.0,
    noise_sigma: float = 1.5,
    min_visible_fraction: float = 1e-4,
) -> SyntheticCategory:
    """Builds a synthetic multi-view category (rendered lazily, deterministic given `seed`).

    Args:
        textures: images for the object (first) and the surface it lies on (second, optional):
            None for the packaged texture, a folder, a file, an array or a sequence of these.
        n_train, n_test: number of samples; training samples are all normal.
        n_views: cameras (1 looks at the centre, the others sit on a ring around it).
        image_size: view size, an int (square) or (height, width).
        defect_rate: fraction of anomalous test samples (rounded to a count).
        defect_types: the defect kinds to use, spread evenly over the anomalous samples.
        placement_jitter, photometric_jitter: scale the per-sample variation (0 = none).
        noise_sigma: sensor noise, grey levels.
        min_visible_fraction: a defect counts as visible in a view (and is drawn there) only if
            its mask covers at least this fraction of the view (and at least 4 pixels).
    """
    size = normalize_image_size(image_size)
    if n_train < 0 or n_test < 0:
        raise ValueError(f"n_train, n_test: got {n_train}, {n_test}, expected >= 0")
    if n_views < 1:
        raise ValueError(f"n_views: got {n_views}, expected >= 1")
    if not 0.0 <= defect_rate <= 1.0:
        raise ValueError(f"defect_rate: got {defect_rate}, expected a fraction in [0, 1]")
    defect_types = tuple(defect_types)
    unknown = [k for k in defect_types if k not in DEFECT_TYPES]
    if unknown or not defect_types:
        raise ValueError(
            f"defect_types: got {list(defect_types)}, expected a non-empty subset of "
            f"{list(DEFECT_TYPES)}"
        )
    for label, value in (("placement_jitter", placement_jitter), ("noise_sigma", noise_sigma)):
        if value < 0:
            raise ValueError(f"{label}: got {value}, expected >= 0")
    if photometric_jitter < 0:
        raise ValueError(f"photometric_jitter: got {photometric_jitter}, expected >= 0")

    rig_rng, scene_rng, plan_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    plane_to_view = camera_rig(n_views, size, rig_rng)
    scene = build_scene(load_textures(textures), plane_to_view, size, scene_rng, photometric_jitter)

    n_bad = int(round(defect_rate * n_test))
    kinds = [defect_types[i % len(defect_types)] for i in range(n_bad)]
    plan_rng.shuffle(kinds)
    test_kinds: list[str | None] = [None] * n_test
    for position, kind in zip(plan_rng.permutation(n_test)[:n_bad], kinds, strict=True):
        test_kinds[int(position)] = kind

    settings = _Settings(
        name, seed, placement_jitter, photometric_jitter, noise_sigma, min_visible_fraction
    )
    return SyntheticCategory(
        name=name,
        train=SyntheticSplit(scene, settings, "train", [None] * n_train),
        test=SyntheticSplit(scene, settings, "test", test_kinds),
        homographies=view_homographies(plane_to_view),
        plane_to_view=plane_to_view,
        image_size=size,
        seed=seed,
        settings=dict(vars(settings)),
    )


from vsad.data.synthetic.writer import write_realiad  # noqa: E402  (needs SyntheticCategory)

__all__ = [
    "DEFECT_TYPES",
    "SyntheticCategory",
    "SyntheticSplit",
    "default_texture",
    "make_category",
    "write_realiad",
]
