"""Choosing a reader: format detection and one entry point for the CLI."""

from __future__ import annotations

from pathlib import Path

from vsad.data.errors import DatasetError, MissingFileError
from vsad.data.folder import FolderDataset, folder_categories
from vsad.data.manta import MantaTinyDataset, manta_categories
from vsad.data.realiad import RealIADDataset, realiad_categories
from vsad.data.sample import MultiViewDataset

FORMATS = ("realiad", "manta", "folder")


def detect_format(root: str | Path) -> str:
    """ "realiad" if root holds realiad_jsons/, "folder" if its categories hold per-sample
    folders, "manta" if they hold tiled image files (directly or under domain folders)."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"root: dataset folder '{root}' does not exist")
    if (root / "realiad_jsons").is_dir():
        return "realiad"
    for category in folder_categories(root):
        for split in ("train", "test"):
            good = root / category / split / "good"
            if good.is_dir():
                return "folder" if any(p.is_dir() for p in good.iterdir()) else "manta"
    if manta_categories(root):
        return "manta"
    raise DatasetError(
        f"root: cannot tell the layout of '{root}': no realiad_jsons/ folder, no "
        "<category>/train|test/ folders, no <domain>/<class>/train|test/ folders"
    )


def list_categories(root: str | Path, format: str = "auto") -> list[str]:
    """Category names that open_dataset accepts for this root."""
    format = detect_format(root) if format == "auto" else format
    if format == "realiad":
        return realiad_categories(root)
    if format == "manta":
        return manta_categories(root) or folder_categories(root)
    if format == "folder":
        return folder_categories(root)
    raise ValueError(f"format: got {format!r}, expected 'auto' or one of {FORMATS}")


def open_dataset(
    root: str | Path, category: str, split: str = "test", *, format: str = "auto", **options
) -> MultiViewDataset:
    """Opens one split of one category with the reader of `format` ("auto" detects it).

    `options` go to the reader (image_size, load_masks, num_views, resolution for Real-IAD…).
    """
    format = detect_format(root) if format == "auto" else format
    if format == "realiad":
        return RealIADDataset(root, category, split, **options)
    if options.pop("allow_outside_root", False):
        raise ValueError(
            f"allow_outside_root: only Real-IAD reads file paths from a json; this "
            f"{format} dataset's files are listed from its folders"
        )
    if format == "manta":
        return MantaTinyDataset(root, category, split, **options)
    if format == "folder":
        return FolderDataset(root, category, split, **options)
    raise ValueError(f"format: got {format!r}, expected 'auto' or one of {FORMATS}")


__all__ = ["FORMATS", "detect_format", "list_categories", "open_dataset"]
