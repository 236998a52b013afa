"""Atomic file writes: every file vsad writes goes through here.

A result is written under a temporary name in its destination folder, flushed to disk, and
renamed over the destination (os.replace, atomic on POSIX), so a reader — or a rerun after a
crash or SIGKILL — sees either the previous file or the complete new one, never a torn one.
On an error the temporary file is removed and the previous file stays as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "atomic_directory",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_readable(path: str | os.PathLike, directory: bool = False) -> None:
    """tempfile creates 0600 files and 0700 folders; results get the mode a plain open() or
    mkdir() would have given them (0666/0777 minus the umask)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str | os.PathLike) -> None:
    """Makes a rename in `path` durable; best effort (not every platform opens folders)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_file(path: Path, keep_suffix: bool) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Libraries such as cv2.imwrite, savefig or np.save pick the format from the extension (and
    # np.save appends ".npy" when it is missing), so a temp name for them ends in the real one.
    suffix = ".tmp" + (path.suffix if keep_suffix else "")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    _make_readable(tmp)
    return tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path` (same extension) for a writer that takes a file
    name — safetensors' save_file, cv2.imwrite, np.save, savefig; on a clean exit the file is
    flushed and renamed over `path`, on an exception it is removed.

        with atomic_path(out / "bank.safetensors") as tmp:
            save_file(tensors, tmp)
    """
    path = Path(path)
    tmp = _temp_file(path, keep_suffix=True)
    try:
        yield Path(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes `data` to `path` atomically; returns the path."""
    path = Path(path)
    tmp = _temp_file(path, keep_suffix=False)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes `text` as UTF-8 atomically, byte for byte (no newline translation: CSV rows keep
    their own line ends); returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(
    path: str | os.PathLike, payload, *, indent: int | None = 2, **kwargs
) -> Path:
    """json.dumps(payload, indent=indent, **kwargs) plus a final newline, written atomically.
    The payload is serialised before anything is written, so an unserialisable value leaves the
    previous file untouched."""
    return atomic_write_text(path, json.dumps(payload, indent=indent, **kwargs) + "\n")


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty temporary folder beside `directory`; on a clean exit its files are
    flushed and it replaces `directory` (a previous one is moved aside, then deleted), on an
    exception it is deleted and `directory` stays as it was.

    The swap is two renames: a crash between them leaves the previous folder under a hidden
    `.<name>.old-*` name and no `directory`, never a mix of old and new files."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    _make_readable(tmp, directory=True)
    try:
        yield tmp
        for root, _, files in os.walk(tmp):
            for name in files:
                _fsync_file(os.path.join(root, name))
        if directory.exists():
            old = Path(
                tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".old", dir=directory.parent)
            )
            os.replace(directory, old)  # rename(2) onto an empty folder replaces it
            try:
                os.replace(tmp, directory)
            except BaseException:
                os.replace(old, directory)  # put the previous folder back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(directory.parent)
