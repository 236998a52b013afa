"""File-writing helpers shared by every atomic writer."""

from __future__ import annotations

import os


def make_readable(path: str | os.PathLike) -> None:
    """Gives a temporary file from tempfile.mkstemp (mode 0600) the mode a plain open() would
    have given it (0666 minus the umask), so results are readable like any other file."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
