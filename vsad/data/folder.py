"""Generic folder layout, for your own multi-camera station.

One folder per category, one folder per sample, one image file per view::

    <root>/<category>/
        train/good/<sample>/<view files>            normal training samples
        test/good/<sample>/<view files>             normal test samples
        test/<defect>/<sample>/<view files>         defective test samples, one folder per class
        ground_truth/<defect>/<sample>/<view stem>.png      mask of each view showing the defect
                                                   (<view stem>_mask.png is accepted too)

- View files are any of .png .jpg .jpeg .bmp .tif .tiff .webp. Views are ordered by natural sort
  of their file names (``cam2`` before ``cam10``), so name them by camera, identically in every
  sample (``cam1.png … cam5.png``); every sample must have the same number of views.
- Masks: non-zero = defective pixel, same size as the view. In a defective sample, a view with a
  mask file is an anomalous view and a view without one is a normal view (the defect is not
  visible from that camera). A defective sample with no mask at all is an error.
- ``<sample>`` names are free (``0001``, a serial number, a timestamp); ``sample_id`` is
  ``<group>/<sample>`` (e.g. ``good/0001``, ``scratch/0042``).

Example, 3 cameras::

    station/bracket/train/good/0001/cam1.png  cam2.png  cam3.png
    station/bracket/test/good/0101/cam1.png  cam2.png  cam3.png
    station/bracket/test/dent/0102/cam1.png  cam2.png  cam3.png
    station/bracket/ground_truth/dent/0102/cam2.png        (dent seen by camera 2 only)
"""

from __future__ import annotations

from pathlib import Path

from vsad.data.errors import DatasetError, MissingFileError
from vsad.data.imageio import IMAGE_EXTENSIONS
from vsad.data.sample import (
    NORMAL,
    MultiViewDataset,
    MultiViewSample,
    SampleRecord,
    check_split,
    load_record_views,
    natural_key,
    normalize_image_size,
)


def _is_category_dir(path: Path) -> bool:
    return (path / "train").is_dir() or (path / "test").is_dir()


def folder_categories(root: str | Path) -> list[str]:
    """Names of the category folders (those holding train/ or test/) under root."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and _is_category_dir(d))


def _view_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: natural_key(p.name))


class FolderDataset(MultiViewDataset):
    """One split of one category in the generic folder layout (see the module docstring).

    Args:
        root: folder holding the category folders.
        category: category folder name; None when root itself is the category folder.
        split: "train" or "test".
        num_views: views per sample; None accepts any count shared by all samples.
        image_size: resize views (and masks, nearest) to this size on load; None keeps it.
        load_masks: read ground-truth masks (default: for the test split only).
    """

    def __init__(
        self,
        root: str | Path,
        category: str | None = None,
        split: str = "test",
        *,
        num_views: int | None = None,
        image_size: int | tuple[int, int] | None = None,
        load_masks: bool | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = check_split(split)
        self.image_size = normalize_image_size(image_size)
        self.load_masks = (split == "test") if load_masks is None else bool(load_masks)
        if not self.root.is_dir():
            raise MissingFileError(f"root: dataset folder '{self.root}' does not exist")
        self.category_dir = self.root if category is None else self.root / category
        if not _is_category_dir(self.category_dir):
            raise MissingFileError(
                f"category: unknown category {category!r}: '{self.category_dir}' has no train/ "
                f"or test/ folder (categories present under '{self.root}': "
                f"{folder_categories(self.root)})"
            )
        self.category = self.category_dir.name
        self.records = self._scan()
        self.num_views = self._check_view_counts(num_views)

    def _mask_path(self, defect: str, sample: str, view: Path) -> Path | None:
        folder = self.category_dir / "ground_truth" / defect / sample
        for candidate in (folder / f"{view.stem}.png", folder / f"{view.stem}_mask.png"):
            if candidate.is_file():
                return candidate
        for candidate in folder.glob(f"{view.stem}.*") if folder.is_dir() else []:
            if candidate.suffix.lower() in IMAGE_EXTENSIONS:
                return candidate
        return None

    def _scan(self) -> list[SampleRecord]:
        split_dir = self.category_dir / self.split
        if not split_dir.is_dir():
            raise MissingFileError(f"split folder not found: '{split_dir}'")
        groups = sorted(
            (d.name for d in split_dir.iterdir() if d.is_dir()), key=lambda n: (n != "good", n)
        )
        if self.split == "train":
            groups = [g for g in groups if g == "good"]
        records = []
        for group in groups:
            samples = sorted(
                (d for d in (split_dir / group).iterdir() if d.is_dir()),
                key=lambda d: natural_key(d.name),
            )
            for sample_dir in samples:
                views = _view_files(sample_dir)
                if not views:
                    raise DatasetError(f"sample folder '{sample_dir}' holds no image file")
                normal = group == "good"
                masks = tuple(
                    None if normal else self._mask_path(group, sample_dir.name, v) for v in views
                )
                view_labels = tuple(int(m is not None) for m in masks)
                if not normal and not any(view_labels):
                    raise MissingFileError(
                        f"defective sample '{sample_dir}' has no mask: expected at least one of "
                        f"'{self.category_dir / 'ground_truth' / group / sample_dir.name}/"
                        f"<view stem>.png' for views {[v.name for v in views]}"
                    )
                records.append(
                    SampleRecord(
                        sample_id=f"{group}/{sample_dir.name}",
                        image_paths=tuple(views),
                        mask_paths=masks,
                        label=int(not normal),
                        defect_type=NORMAL if normal else group,
                        view_labels=view_labels,
                    )
                )
        if not records:
            raise DatasetError(
                f"the {self.split} split of '{self.category_dir}' is empty: no sample folder "
                f"under '{split_dir}'" + ("/good" if self.split == "train" else "")
            )
        return records

    def _check_view_counts(self, num_views: int | None) -> int:
        expected = num_views if num_views is not None else len(self.records[0].image_paths)
        for record in self.records:
            if len(record.image_paths) != expected:
                raise DatasetError(
                    f"sample folder '{record.image_paths[0].parent}' has "
                    f"{len(record.image_paths)} views, expected {expected}"
                )
        return expected

    def _load(self, record: SampleRecord) -> MultiViewSample:
        return load_record_views(record, image_size=self.image_size, load_masks=self.load_masks)


__all__ = ["FolderDataset", "folder_categories"]
