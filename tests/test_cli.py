from __future__ import annotations

import json

import pytest

import vsad
from vsad.cli import main


def test_info_reports_backends(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vsad"] == vsad.__version__
    assert info["backends"]["cpp"] is True
    assert info["backends"]["cpu_isa"] in ("generic", "avx2", "avx512")


def test_help_and_unknown_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "info" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


@pytest.fixture(scope="module")
def realiad_root(tmp_path_factory):
    from vsad.data import make_category, write_realiad

    root = tmp_path_factory.mktemp("realiad")
    category = make_category(n_train=4, n_test=4, n_views=5, image_size=96, seed=5)
    write_realiad(category, root, "toy")
    return root


@pytest.mark.parametrize("model", ["patchknn", "vsad"])
def test_train_test_predict_on_a_realiad_tree(model, realiad_root, tmp_path, capsys):
    run = tmp_path / "run"
    tiny = ["image_size=64", "train.steps=2", "inversion_steps=1"] if model == "vsad" else []
    args = ["train", "--data", str(realiad_root), "--category", "toy", "--out", str(run)]
    args += ["--image-size", "80"]  # views resized on load; predict must do the same
    assert main([*args, "--model", model, "--quiet", "image_size=64", *tiny]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["detector"] == {"vsad": "VSAD", "patchknn": "PatchKNN"}[model]
    assert info["versions"]["vsad"] == vsad.__version__ and info["config"]["image_size"] == 64
    assert (run / "model" / "detector.json").is_file()

    assert main(["test", "--run", str(run), "--quiet", "--overlays", "2"]) == 0
    out = run / "test" / "toy"
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]["all"]
    for key in ("S-AUROC", "V-AUROC", "P-AUROC", "AUPRO"):
        assert 0.0 <= metrics[key] <= 1.0
    assert (out / "metrics.csv").is_file() and "S-AUROC" in (out / "metrics.md").read_text()
    assert (out / "metrics.json").stat().st_mode & 0o044, "results must be readable like any file"
    assert (out / "roc.png").is_file() and len(list((out / "overlays").glob("*_panel.png"))) == 2
    assert "| toy" in capsys.readouterr().out

    from vsad.data import open_dataset

    test = open_dataset(realiad_root, "toy", "test")
    files = [str(p) for p in test.records[0].image_paths]
    assert main(["predict", "--run", str(run), *files, "--out", str(tmp_path / "pred")]) == 0
    predictions = json.loads((tmp_path / "pred" / "predictions.json").read_text())["predictions"]
    assert len(predictions) == 1 and len(predictions[0]["view_scores"]) == 5


def test_cli_errors_name_the_problem(realiad_root, tmp_path, capsys):
    args = ["train", "--data", str(realiad_root), "--out", str(tmp_path / "r"), "--quiet"]
    assert main([*args, "--category", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main([*args, "--category", "toy", "bank_mode=nearest"]) == 2
    assert "bank_mode: got 'nearest'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no run.json"):
        main(["test", "--run", str(tmp_path / "missing")])
