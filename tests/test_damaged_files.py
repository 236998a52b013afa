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


COMMAND_CASES = [
    ("bank.safetensors", "zero-byte"),
    ("bank.safetensors", "truncated"),
    ("bank.safetensors", "pickle"),
    ("weights.safetensors", "header-only"),
    ("detector.json", "normal_scores.sample-shortened"),
    ("detector.json", "a-list"),
]


@pytest.mark.parametrize("command", ["test", "calibrate", "calibrate-split"])
@pytest.mark.parametrize(("file", "damage"), COMMAND_CASES)
def test_every_command_names_the_damaged_file(command, file, damage, saved, tmp_path, capsys):
    """`vsad test` and `vsad calibrate` (stored scores, or a split) load through the same
    checks as predict: exit status 2, the file named, no traceback, nothing rewritten."""
    import json

    from vsad.cli import main

    folders, marker, cases = saved
    case = next(c for c in cases if c.detector == "vsad" and (c.file, c.damage) == (file, damage))
    run = dm.damaged_copy(case, folders, tmp_path)
    data = {"root": str(tmp_path / "data"), "category": "toy", "format": "realiad"}
    (run / "run.json").write_text(json.dumps({"detector": "VSAD", "data": data}))
    before = {p.name: p.read_bytes() for p in (run / "model").iterdir() if p.is_file()}
    args = {
        "test": ["test", "--run", str(run), "--quiet"],
        "calibrate": ["calibrate", "--run", str(run), "--fpr", "0.2"],
        "calibrate-split": ["calibrate", "--run", str(run), "--split", "test", "--quiet"],
    }[command]
    code = main(args)
    output = capsys.readouterr().err
    assert code == 2 and file in output and "Traceback" not in output, output
    after = {p.name: p.read_bytes() for p in (run / "model").iterdir() if p.is_file()}
    assert after == before and not marker.exists()
