"""The one atomic-write helper (vsad._atomic): a failure mid-write leaves the old file intact and
no temporary file behind; results get ordinary permissions; writers that take a path keep their
extension."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from vsad._atomic import (
    atomic_directory,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)


class Boom(Exception):
    pass


def leftovers(folder):
    """Every hidden (temporary) entry in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def default_mode(directory=False):
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def test_bytes_text_and_json_round_trip_with_plain_permissions(tmp_path):
    target = tmp_path / "sub" / "a.bin"
    assert atomic_write_bytes(target, b"\x00\x01") == target
    assert target.read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(target.stat().st_mode) == default_mode()
    atomic_write_text(tmp_path / "t.csv", "a,b\r\nö,2\r\n")
    assert (tmp_path / "t.csv").read_bytes() == "a,b\r\nö,2\r\n".encode()  # no newline rewriting
    atomic_write_json(tmp_path / "j.json", {"x": [1, 2.5]})
    assert json.loads((tmp_path / "j.json").read_text()) == {"x": [1, 2.5]}
    assert (tmp_path / "j.json").read_text().endswith("\n")
    assert leftovers(tmp_path) == []


def test_an_unserialisable_payload_leaves_the_old_file(tmp_path):
    target = tmp_path / "j.json"
    atomic_write_json(target, {"old": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"new": object()})
    assert json.loads(target.read_text()) == {"old": 1}
    assert leftovers(tmp_path) == []


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(target, "new, half written")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_atomic_path_keeps_the_extension_and_cleans_up_on_error(tmp_path):
    target = tmp_path / "maps.npy"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".npy" and tmp.name.startswith(".")
        np.save(tmp, np.arange(3))  # np.save would append .npy to any other name
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert stat.S_IMODE(target.stat().st_mode) == default_mode()
    with pytest.raises(Boom), atomic_path(target) as tmp:
        np.save(tmp, np.arange(5))
        raise Boom
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert leftovers(tmp_path) == []


def test_atomic_directory_swaps_a_whole_folder_or_nothing(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "b").write_text("1")
    assert stat.S_IMODE(target.stat().st_mode) == default_mode(directory=True)
    with pytest.raises(Boom), atomic_directory(target) as tmp:
        (tmp / "a").write_text("2")
        raise Boom
    assert sorted(p.name for p in target.iterdir()) == ["a", "b"]
    assert (target / "a").read_text() == "1"
    with atomic_directory(target) as tmp:  # replaces, never merges
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c"]
    assert leftovers(tmp_path) == []


def test_every_writer_uses_the_helper():
    """No module keeps its own temp-file-and-rename code (one helper, DEVELOPERS.md)."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    pattern = re.compile(r"os\.replace\(|tempfile\.mkstemp|\.tmp-\{os\.getpid")
    offenders = [
        str(p.relative_to(root))
        for folder in ("vsad",)
        for p in (root / folder).rglob("*.py")
        if p.name != "_atomic.py" and pattern.search(p.read_text(encoding="utf-8"))
    ]
    assert offenders == [], f"hand-written atomic writes in {offenders}; use vsad._atomic"
