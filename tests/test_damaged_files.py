"""Damaged run folders (issue 32): the generated matrix of tests/damage_matrix.py — every file
of four tiny saved detectors damaged in every generated way — through `load_detector` +
`predict` and through `vsad predict`. Each case must end in one vsad error naming the file
(exit status 2, no traceback) or, for the few harmless edits, load; no pickle ever runs.

By default a deterministic quarter of the per-tensor and per-key cases runs (plus every
whole-file damage); VSAD_FULL_MATRIX=1 runs all ~900 (about 3 minutes on two cores).
"""

from __future__ import annotations

import os
import shutil

import damage_matrix as dm
import pytest

from vsad.saved_files import SavedFileError

FULL = os.environ.get("VSAD_FULL_MATRIX") == "1"
WHOLE_FILE = ("zero-byte", "truncated", "header-only", "cut-in-header", "text", "json-text",
              "pickle", "torch-save", "garbage-header", "a-folder", "missing", "not-json",
              "empty", "a-list")  # fmt: skip


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("detectors")
    folders = dm.build_detectors(root)
    marker = root / "pickle-code-ran"
    return folders, marker, dm.generate_cases(folders, marker)


def _selected(cases):
    return [c for i, c in enumerate(cases) if FULL or c.damage in WHOLE_FILE or i % 4 == 0]


def test_the_matrix(saved, tmp_path):
    """Every selected case: the API and the CLI refuse it naming the file (or load it, for a
    harmless edit); no traceback; a refusal from the API is a SavedFileError."""
    folders, marker, cases = saved
    wrong = []
    selected = _selected(cases)
    for case in selected:
        run = dm.damaged_copy(case, folders, tmp_path)
        api, api_text, err = dm.through_api(run)
        cli, cli_text = dm.through_cli(run)
        for path, got, text in (("api", api, api_text), ("cli", cli, cli_text)):
            if got != case.expect:
                wrong.append(f"{path} {case.id}: expected {case.expect}, got {got}: {text[-400:]}")
            elif got == dm.REFUSED and case.file not in text:
                wrong.append(f"{path} {case.id}: the message does not name {case.file}: {text}")
        if api == dm.REFUSED and not isinstance(err, (SavedFileError, FileNotFoundError)):
            wrong.append(f"api {case.id}: {type(err).__name__}, expected SavedFileError")
        shutil.rmtree(run)
    assert not marker.exists(), "a loader executed pickled code"
    assert len(selected) >= (800 if FULL else 250), len(selected)
    assert not wrong, f"{len(wrong)} of {len(selected)} cases:\n" + "\n".join(wrong[:20])


def test_every_damage_kind_and_file_is_generated(saved):
    """The matrix covers each file of each detector with each whole-file damage, and every
    tensor of the banks."""
    folders, _, cases = saved
    seen = {(c.detector, c.file, c.damage) for c in cases}
    for name, folder in folders.items():
        for file in ("bank.safetensors", "weights.safetensors"):
            if (folder / file).exists():
                for damage in ("zero-byte", "truncated", "header-only", "text", "pickle"):
                    assert (name, file, damage) in seen
        assert (name, "detector.json", "normal_scores.sample-shortened") in seen
    assert any(c.damage.startswith("drop:model.") for c in cases)
    assert any(c.damage.startswith("shape:stats.") for c in cases)
