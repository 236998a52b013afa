"""MANTA-Tiny reader.

Layout::

    <root>/<domain>/<class>/train/good/*.png
    <root>/<domain>/<class>/test/good/*.png
    <root>/<domain>/<class>/test/<defect>/*.png
    <root>/<domain>/<class>/ground_truth/<defect>/<same name>.png   (or <stem>_mask.png)

Each PNG holds the M views side by side (5 views of 256 px in MANTA-Tiny), so a file is
(H, M*W); its mask is tiled the same way. A view is anomalous iff its mask tile has a defective
pixel, so view labels are known once the mask is read; a defect image whose mask is empty in
every tile is an error (nothing would say which view shows the defect).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vsad.data.errors import DatasetError, MissingFileError
from vsad.data.imageio import IMAGE_EXTENSIONS, read_image, read_mask, resize_image, resize_mask
from vsad.data.sample import (
    NORMAL,
    MultiViewDataset,
    MultiViewSample,
    SampleRecord,
    check_mask_size,
    check_split,
    natural_key,
    normalize_image_size,
)


def _is_class_dir(path: Path) -> bool:
    return (path / "train").is_dir() or (path / "test").is_dir()


def manta_categories(root: str | Path) -> list[str]:
    """ "<domain>/<class>" for every class folder under root."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        f"{domain.name}/{cls.name}"
        for domain in root.iterdir()
        if domain.is_dir()
        for cls in domain.iterdir()
        if cls.is_dir() and _is_class_dir(cls)
    )


def _image_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: natural_key(p.name))


def split_tiles(array: np.ndarray, num_views: int, path: Path) -> list[np.ndarray]:
    """Cuts an (H, M*W, ...) array into M (H, W, ...) views, left to right."""
    width = array.shape[1]
    if width % num_views:
        raise DatasetError(
            f"'{path}' is {width} px wide, which does not split into num_views={num_views} "
            "equal tiles"
        )
    w = width // num_views
    return [np.ascontiguousarray(array[:, k * w : (k + 1) * w]) for k in range(num_views)]


class MantaTinyDataset(MultiViewDataset):
    """One split of one MANTA-Tiny class.

    Args:
        root: folder holding the domain folders.
        category: "<domain>/<class>", or "<class>" when that name is unique across domains.
        split: "train" or "test".
        num_views: tiles per PNG (5 in MANTA).
        image_size: resize each view (and mask tile, nearest) to this size; None keeps it.
        load_masks: read ground-truth masks (default: for the test split only). View labels of
            the test split come from the masks, so they are read for the test split regardless.
        check_files: check at construction that every defect image has its mask file.
    """

    def __init__(
        self,
        root: str | Path,
        category: str,
        split: str = "test",
        *,
        num_views: int = 5,
        image_size: int | tuple[int, int] | None = None,
        load_masks: bool | None = None,
        check_files: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = check_split(split)
        if num_views < 1:
            raise ValueError(f"num_views: got {num_views}, expected >= 1")
        self.num_views = int(num_views)
        self.image_size = normalize_image_size(image_size)
        self.load_masks = (split == "test") if load_masks is None else bool(load_masks)
        if not self.root.is_dir():
            raise MissingFileError(f"root: MANTA folder '{self.root}' does not exist")
        self.class_dir = self._resolve_category(category)
        self.category = f"{self.class_dir.parent.name}/{self.class_dir.name}"
        self.records = self._scan(check_files)

    def _resolve_category(self, category: str) -> Path:
        direct = self.root / category
        if _is_class_dir(direct):
            return direct
        matches = [d / category for d in sorted(self.root.iterdir()) if _is_class_dir(d / category)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise DatasetError(
                f"category: {category!r} exists in several domains under '{self.root}': "
                f"{[str(m) for m in matches]}; pass '<domain>/{category}'"
            )
        raise MissingFileError(
            f"category: unknown category {category!r}: no '{direct}' nor "
            f"'{self.root}/<domain>/{category}' with train/ or test/ (categories present: "
            f"{manta_categories(self.root)})"
        )

    def _mask_path(self, defect: str, image: Path) -> Path:
        folder = self.class_dir / "ground_truth" / defect
        candidates = [
            folder / image.name,
            folder / f"{image.stem}_mask.png",
            folder / f"{image.stem}.png",
        ]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        return candidates[0]

    def _scan(self, check_files: bool) -> list[SampleRecord]:
        split_dir = self.class_dir / self.split
        if not split_dir.is_dir():
            raise MissingFileError(f"split folder not found: '{split_dir}'")
        groups = (
            ["good"]
            if self.split == "train"
            else sorted(
                (d.name for d in split_dir.iterdir() if d.is_dir()), key=lambda n: (n != "good", n)
            )
        )
        records = []
        for group in groups:
            folder = split_dir / group
            if not folder.is_dir():
                raise MissingFileError(
                    f"folder of normal {self.split} images not found: '{folder}'"
                )
            for image in _image_files(folder):
                normal = group == "good"
                mask = None if normal else self._mask_path(group, image)
                if mask is not None and check_files and not mask.is_file():
                    raise MissingFileError(
                        f"mask file not found for defect image '{image}': expected '{mask}'"
                    )
                records.append(
                    SampleRecord(
                        sample_id=f"{group}/{image.stem}",
                        image_paths=(image,),
                        mask_paths=(mask,),
                        label=int(not normal),
                        defect_type=NORMAL if normal else group,
                        view_labels=(0,) * self.num_views if normal else None,
                    )
                )
        if not records:
            raise DatasetError(
                f"the {self.split} split of '{self.class_dir}' is empty: no images under "
                f"'{split_dir}'"
            )
        return records

    def _load(self, record: SampleRecord) -> MultiViewSample:
        image_path, mask_path = record.image_paths[0], record.mask_paths[0]
        image = read_image(image_path)
        views = split_tiles(image, self.num_views, image_path)
        mask_tiles = None
        if mask_path is not None and (self.load_masks or record.view_labels is None):
            mask = read_mask(mask_path)
            check_mask_size(mask, image, mask_path, image_path)
            mask_tiles = split_tiles(mask, self.num_views, mask_path)
        if record.view_labels is not None:
            view_labels = list(record.view_labels)
        else:
            view_labels = [int(t.any()) for t in mask_tiles]
            if not any(view_labels):
                raise DatasetError(
                    f"mask '{mask_path}' of defect image '{image_path}' is empty in every view: "
                    "the views showing the defect cannot be told"
                )
        masks = None
        if self.load_masks:
            if mask_tiles is None:
                mask_tiles = [np.zeros(v.shape[:2], dtype=bool) for v in views]
            masks = mask_tiles
            if self.image_size is not None:
                masks = [resize_mask(m, self.image_size) for m in masks]
        if self.image_size is not None:
            views = [resize_image(v, self.image_size) for v in views]
        return MultiViewSample(
            images=views,
            masks=masks,
            view_labels=view_labels,
            label=record.label,
            sample_id=record.sample_id,
            paths=[f"{image_path}#view{k}" for k in range(self.num_views)],
            defect_type=record.defect_type,
        )


__all__ = ["MantaTinyDataset", "manta_categories", "split_tiles"]
