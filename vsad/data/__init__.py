"""Multi-view datasets: Real-IAD, MANTA-Tiny, a generic folder layout, a synthetic generator
with exact ground truth, and a benchmark builder from real multi-view photographs
(`make_photo_category`: real objects, made-up unit variation, nuisances and defects).

Every reader is a lazy split (`MultiViewDataset`: len, iteration, indexing, `num_views`,
`split`, `category`, `labels`) of `MultiViewSample`s — M views of one object with per-view
masks and labels. Pixels are read one sample at a time. Layouts are described in each reader's
module docstring and in docs/data-formats.md; the generic layout for your own station is::

    <root>/<category>/train/good/<sample>/<view files>
    <root>/<category>/test/{good,<defect>}/<sample>/<view files>
    <root>/<category>/ground_truth/<defect>/<sample>/<view stem>.png

Bad input (missing or corrupt files, wrong view counts, mask/image size mismatch, empty
splits, unknown categories) raises DatasetError (a ValueError; MissingFileError is also a
FileNotFoundError) whose message names the path.
"""

from __future__ import annotations

from vsad.data.errors import DatasetError, MissingFileError
from vsad.data.folder import FolderDataset, folder_categories
from vsad.data.formats import FORMATS, detect_format, list_categories, open_dataset
from vsad.data.imageio import read_image, read_mask, write_image, write_mask
from vsad.data.manta import MantaTinyDataset, manta_categories
from vsad.data.photo import (
    PHOTO_DEFECT_TYPES,
    PRESETS,
    PhotoCategory,
    PhotoPreset,
    make_photo_category,
)
from vsad.data.realiad import RealIADDataset, realiad_categories
from vsad.data.sample import MultiViewDataset, MultiViewSample, SampleRecord
from vsad.data.synthetic import (
    DEFECT_TYPES,
    SyntheticCategory,
    SyntheticSplit,
    make_category,
    write_realiad,
)
from vsad.data.textures import default_texture, load_textures

__all__ = [
    "DEFECT_TYPES",
    "FORMATS",
    "PHOTO_DEFECT_TYPES",
    "PRESETS",
    "PhotoCategory",
    "PhotoPreset",
    "DatasetError",
    "FolderDataset",
    "MantaTinyDataset",
    "MissingFileError",
    "MultiViewDataset",
    "MultiViewSample",
    "RealIADDataset",
    "SampleRecord",
    "SyntheticCategory",
    "SyntheticSplit",
    "default_texture",
    "detect_format",
    "folder_categories",
    "list_categories",
    "load_textures",
    "make_category",
    "make_photo_category",
    "manta_categories",
    "open_dataset",
    "read_image",
    "read_mask",
    "realiad_categories",
    "write_image",
    "write_mask",
    "write_realiad",
]
