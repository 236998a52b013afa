"""Checks of the paths a command writes to or reads its settings from, made before any work
starts: a run of several minutes must not end in `FileExistsError` because `--out` names a
file, nor write half its results before finding that a folder cannot be created."""

from __future__ import annotations

import os
from pathlib import Path


class OutputPathError(ValueError):
    """An output path that cannot be written as the folder (or file) a command needs."""


def check_output_folder(path, what: str) -> Path:
    """`path` is an existing folder or can be created as one: it is not a file, no parent of
    it is a file, and its nearest existing parent is writable. Returns it as a Path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(
            f"{what}: '{path}' is a file, expected a folder (existing or new) to write into; "
            "name another path or move the file"
        )
    parent = path
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise OutputPathError(
            f"{what}: '{parent}' is a file, so the folder '{path}' cannot be created inside it; "
            "name another path"
        )
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"{what}: '{parent}' is not writable, so '{path}' cannot be written; name a folder "
            "you can write to"
        )
    return path


def check_input_file(path, what: str) -> Path:
    """`path` is an existing regular file (not a folder)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what}: '{path}' is a folder, expected a file")
    if not path.is_file():
        raise FileNotFoundError(f"{what}: file '{path}' does not exist")
    return path


__all__ = ["OutputPathError", "check_input_file", "check_output_folder"]
