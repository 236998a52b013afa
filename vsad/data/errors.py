"""Errors raised by the dataset readers: each message names the offending path."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset on disk is not what its reader expects (layout, labels, sizes, contents)."""


class MissingFileError(DatasetError, FileNotFoundError):
    """A file or folder the dataset refers to does not exist.

    Also a FileNotFoundError, so callers that handle missing files generically still catch it.
    """


__all__ = ["DatasetError", "MissingFileError"]
