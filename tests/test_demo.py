"""`vsad demo`, the first command a new user runs: synthetic and real-photo data, the default
model and the paper's UNet pipeline, at small sizes."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA

from vsad.cli import main

PHOTOS = SHARED_DATA / "multiview" / "kermit"


def _run(tmp_path, *args) -> dict:
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--quiet", "--train-samples", "4", *args])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    # Both detectors evaluated, every metric a probability, the pictures and report written.
    assert set(summary["metrics"]) == {"VSAD", "PatchKNN"}
    for metrics in summary["metrics"].values():
        assert all(0.0 <= metrics[k] <= 1.0 for k in ("S-AUROC", "V-AUROC", "P-AUROC", "AUPRO"))
    for name in ("report.html", "roc.png", "metrics.json", "scores.csv"):
        assert (out / "vsad" / name).is_file(), name
    assert any((out / "vsad" / "overlays").iterdir())
    assert (out / "model" / "detector.json").is_file()
    return summary


def test_demo_default_model_on_the_synthetic_category(tmp_path, capsys):
    summary = _run(tmp_path, "--test-samples", "4", "image_size=128")
    # The default model trains no UNet, so it estimates no homographies and reports none.
    assert "homography_corner_error_px" not in summary
    assert summary["config"]["feature_levels"] == []
    assert "synthetic category" in capsys.readouterr().out


def test_demo_unet_pipeline_reports_its_homographies(tmp_path):
    summary = _run(
        tmp_path,
        "--test-samples", "2", "--steps", "2",
        "encoder=unshuffle", "feature_levels=[-2,-1]", "latent_level=false", "image_size=64",
        "inversion_steps=1",
    )  # fmt: skip
    assert summary["config"]["train"]["steps"] == 2
    # Estimated from 4 training samples of the planar generator: within a few pixels.
    assert 0.0 <= summary["homography_corner_error_px"]["mean"] < 5.0


@pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"the shared photographs are not at {PHOTOS}")
def test_demo_on_photographs(tmp_path, capsys):
    summary = _run(
        tmp_path, "--photos", str(PHOTOS), "--preset", "easy", "--test-samples", "4",
        "image_size=128",
    )  # fmt: skip
    assert summary["data"].startswith("real-photo category (kermit, preset 'easy')")
    assert "homography_corner_error_px" not in summary
    assert "real-photo category" in capsys.readouterr().out


def test_demo_bad_preset_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(tmp_path), "--preset", "hard"])
    assert "invalid choice: 'hard'" in capsys.readouterr().err
