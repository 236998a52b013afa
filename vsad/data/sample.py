"""The sample and dataset types shared by every reader and the synthetic generator."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsad.data.errors import DatasetError
from vsad.data.imageio import read_image, read_mask, resize_image, resize_mask

SPLITS = ("train", "test")
NORMAL = "good"  # defect_type of a normal sample, whatever the dataset calls it ("OK", "good")


@dataclass
class MultiViewSample:
    """One object seen by M cameras.

    images:      M arrays (H, W, 3) uint8 RGB, in camera order.
    masks:       M arrays (H, W) bool (True = defective pixel; all False for a normal view), or
                 None when the reader was asked not to load ground truth (training split).
    view_labels: M ints, 1 iff that view shows a defect.
    label:       1 iff any view is anomalous.
    sample_id:   stable identifier within the split (e.g. "NG/HS/S0002").
    paths:       where each view came from (file paths, or a synthetic description).
    defect_type: the defect class ("good" for a normal sample).
    """

    images: list[np.ndarray]
    masks: list[np.ndarray] | None
    view_labels: list[int]
    label: int
    sample_id: str
    paths: list[str]
    defect_type: str = NORMAL

    @property
    def num_views(self) -> int:
        return len(self.images)

    def stacked_images(self) -> np.ndarray:
        """The views as one (M, H, W, 3) uint8 array (all views must share a size)."""
        return np.stack(self.images)

    def stacked_masks(self) -> np.ndarray:
        """The masks as one (M, H, W) bool array; all False when masks were not loaded."""
        if self.masks is None:
            return np.zeros((self.num_views, *self.images[0].shape[:2]), dtype=bool)
        return np.stack(self.masks)


@dataclass(frozen=True)
class SampleRecord:
    """What a reader knows about a sample before loading its pixels.

    view_labels is None when the labels only come from the pixels (MANTA's tiled masks, the
    synthetic generator's visibility test); the loaded MultiViewSample always has them.
    """

    sample_id: str
    image_paths: tuple[Path, ...]
    mask_paths: tuple[Path | None, ...]
    label: int
    defect_type: str = NORMAL
    view_labels: tuple[int, ...] | None = None


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split: got {split!r}, expected one of {SPLITS}")
    return split


#: The largest size a reader resizes views to: 16384² RGB is 805 MB per view as uint8, and
#: OpenCV's resize refuses sides beyond 32767 (a larger value is a typo, not a wish).
MAX_READ_SIZE = 16384


def normalize_image_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """None (keep native size), an int (square) or (height, width) -> (height, width) | None;
    each side an integer in 1..MAX_READ_SIZE (not a bool, a float or a string)."""
    if image_size is None:
        return None

    def is_int(v) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

    if is_int(image_size):
        size = (int(image_size), int(image_size))
    elif (
        isinstance(image_size, (list, tuple))
        and len(image_size) == 2
        and all(is_int(s) for s in image_size)
    ):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        size = None
    if size is None or not all(1 <= s <= MAX_READ_SIZE for s in size):
        raise ValueError(
            f"image_size: got {image_size!r}, expected None, an integer or (height, width) "
            f"integers in 1..{MAX_READ_SIZE}"
        )
    return size  # type: ignore[return-value]


_NATURAL_CHUNK = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders "view2" before "view10"."""
    return tuple(int(part) if part.isdigit() else part for part in _NATURAL_CHUNK.split(name))


class MultiViewDataset:
    """A lazy, indexable split of multi-view samples.

    Subclasses fill `records` at construction (cheap: paths and labels only) and implement
    `_load(record)`. Pixels are read only by __getitem__/__iter__, one sample at a time, so a
    test split never has to sit in memory.
    """

    category: str
    split: str
    num_views: int
    records: list[SampleRecord]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> MultiViewSample:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"index: expected an int, got {type(index).__name__}")
        n = len(self.records)
        if not -n <= index < n:
            raise IndexError(f"index: {index} is out of range for a split of {n} samples")
        return self._load(self.records[int(index) % n])

    def __iter__(self) -> Iterator[MultiViewSample]:
        for record in self.records:
            yield self._load(record)

    @property
    def labels(self) -> np.ndarray:
        """Sample labels (0 normal, 1 anomalous), known without loading any pixels."""
        return np.array([r.label for r in self.records], dtype=np.int64)

    @property
    def sample_ids(self) -> list[str]:
        return [r.sample_id for r in self.records]

    def _load(self, record: SampleRecord) -> MultiViewSample:
        raise NotImplementedError

    def __repr__(self) -> str:
        n_bad = int(self.labels.sum()) if self.records else 0
        return (
            f"{type(self).__name__}(category={self.category!r}, split={self.split!r}, "
            f"samples={len(self)}, anomalous={n_bad}, num_views={self.num_views})"
        )


def check_mask_size(mask: np.ndarray, image: np.ndarray, mask_path, image_path) -> None:
    if mask.shape != image.shape[:2]:
        raise DatasetError(
            f"mask '{mask_path}' is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image "
            f"'{image_path}' is {image.shape[0]}x{image.shape[1]}: a mask must match its image"
        )


def load_record_views(
    record: SampleRecord, *, image_size: tuple[int, int] | None, load_masks: bool
) -> MultiViewSample:
    """Loads a record whose views are separate files with separate (or absent) mask files."""
    images, masks = [], []
    for image_path, mask_path in zip(record.image_paths, record.mask_paths, strict=True):
        image = read_image(image_path)
        if load_masks:
            if mask_path is None:
                mask = np.zeros(image.shape[:2], dtype=bool)
            else:
                mask = read_mask(mask_path)
                check_mask_size(mask, image, mask_path, image_path)
            masks.append(mask if image_size is None else resize_mask(mask, image_size))
        images.append(image if image_size is None else resize_image(image, image_size))
    view_labels = list(record.view_labels) if record.view_labels is not None else []
    return MultiViewSample(
        images=images,
        masks=masks if load_masks else None,
        view_labels=view_labels,
        label=record.label,
        sample_id=record.sample_id,
        paths=[str(p) for p in record.image_paths],
        defect_type=record.defect_type,
    )


__all__ = [
    "NORMAL",
    "SPLITS",
    "MultiViewDataset",
    "MultiViewSample",
    "SampleRecord",
    "natural_key",
    "normalize_image_size",
]
