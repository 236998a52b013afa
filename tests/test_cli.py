from __future__ import annotations

import json

import numpy as np
import pytest

import vsad
from vsad.cli import MODELS, main


def test_info_reports_backends(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vsad"] == vsad.__version__
    assert info["backends"]["cpp"] is True
    assert info["backends"]["cpu_isa"] in ("generic", "avx2", "avx512", "avx512_bf16")


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


@pytest.mark.parametrize("model", ["patchknn", "vsad", "patchcore"])
def test_train_test_predict_on_a_realiad_tree(model, realiad_root, tmp_path, capsys):
    run = tmp_path / "run"
    tiny = ["image_size=64", "train.steps=2", "inversion_steps=1"] if model == "vsad" else []
    args = ["train", "--data", str(realiad_root), "--category", "toy", "--out", str(run)]
    args += ["--image-size", "80"]  # views resized on load; predict must do the same
    assert main([*args, "--model", model, "--quiet", "image_size=64", *tiny]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["detector"] == MODELS[model]
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
    for name in ("report.html", "curves.png", "scores_hist.png"):
        assert (out / name).is_file(), name
    decisions = json.loads((out / "metrics.json").read_text())["decisions"]
    assert decisions["thresholds"]["source"] == "train-loo"
    for level in ("sample", "view"):
        assert set(decisions[level]["confusion"]) == {"tp", "fp", "tn", "fn"}
        assert 0.0 <= decisions[level]["frr"] <= 1.0 and 0.0 <= decisions[level]["escape_rate"] <= 1
    assert len(decisions["per_view"]) == 5
    printed = capsys.readouterr().out
    assert "| toy" in printed and "at the stored thresholds" in printed

    from vsad.data import open_dataset

    test = open_dataset(realiad_root, "toy", "test")
    files = [str(p) for p in test.records[0].image_paths]
    assert main(["predict", "--run", str(run), *files, "--out", str(tmp_path / "pred")]) == 0
    predictions = json.loads((tmp_path / "pred" / "predictions.json").read_text())["predictions"]
    assert len(predictions) == 1 and len(predictions[0]["view_scores"]) == 5
    decided = json.loads((tmp_path / "pred" / "decisions.json").read_text())
    assert decided["samples"][0]["decision"] in ("OK", "NG") and decided["summary"]["samples"] == 1
    assert (tmp_path / "pred" / "decisions.csv").read_text().startswith("sample,decision,score")
    assert "1 samples: " in capsys.readouterr().out


def test_calibrate_and_predict_decisions(realiad_root, tmp_path, capsys):
    from vsad.data import open_dataset

    run = tmp_path / "run"
    args = ["train", "--data", str(realiad_root), "--category", "toy", "--out", str(run)]
    with pytest.warns(UserWarning, match="needs at least 19 normal scores, got 4"):
        assert main([*args, "--model", "patchknn", "--quiet", "image_size=64"]) == 0
    meta_path = run / "model" / "detector.json"
    loo = json.loads(meta_path.read_text())
    assert loo["thresholds"]["source"] == "train-loo" and loo["thresholds"]["n_normal"] == 4

    # Another target from the stored training scores (no data), then F1 on a labelled split.
    assert main(["calibrate", "--run", str(run), "--fpr", "0.4"]) == 0
    assert json.loads(meta_path.read_text())["thresholds"]["fpr"] == 0.4
    assert main(["calibrate", "--run", str(run), "--split", "test", "--f1", "--quiet"]) == 0
    f1 = json.loads(meta_path.read_text())["thresholds"]
    assert f1["source"] == "validation" and f1["criterion"] == "f1"
    assert "F1-optimal" in capsys.readouterr().out

    # Manual thresholds override both; predict decides with them and draws the NG views.
    normal = np.ravel(loo["normal_scores"]["view"])
    view_t, sample_t = float(np.min(normal)), float(np.max(loo["normal_scores"]["sample"]))
    assert main(["calibrate", "--run", str(run), "--view-threshold", str(view_t),
                 "--sample-threshold", str(sample_t)]) == 0  # fmt: skip
    assert json.loads(meta_path.read_text())["thresholds"]["source"] == "manual"
    test = open_dataset(realiad_root, "toy", "test")
    files = [str(p) for r in test.records[:2] for p in r.image_paths]
    pred = tmp_path / "pred"
    capsys.readouterr()
    assert main(["predict", "--run", str(run), *files, "--out", str(pred)]) == 0
    printed = capsys.readouterr().out.splitlines()
    decided = json.loads((pred / "decisions.json").read_text())
    assert decided["thresholds"]["view"] == view_t
    for k, record in enumerate(decided["samples"]):
        assert record["decision"] == ("NG" if record["score"] > sample_t else "OK")
        above = [v for v, s in enumerate(record["view_scores"]) if s > min(view_t, sample_t)]
        assert record["ng_views"] == (above if record["decision"] == "NG" else [])
        drawn = sorted(int(p.stem.rsplit("view", 1)[1]) for p in pred.glob(f"sample{k:04d}_view*"))
        assert drawn == record["ng_views"]
        assert printed[k].startswith(f"sample{k:04d}: {record['decision']}  score ")
    assert printed[2].startswith("2 samples: ") and "manual" in printed[2]

    # Bad input is named; nothing is rewritten.
    before = meta_path.read_text()
    assert main(["calibrate", "--run", str(run), "--fpr", "1.5"]) == 2
    assert "fpr: got 1.5, expected a false-reject rate strictly between 0 and 1" in (
        capsys.readouterr().err
    )
    assert main(["calibrate", "--run", str(run), "--sample-threshold=-1e6"]) == 2
    assert "sample_threshold: got -1e+06, below every known normal" in capsys.readouterr().err
    assert meta_path.read_text() == before

    # A model saved before thresholds existed: scores, no decision, a warning naming the fix.
    meta = json.loads(before)
    del meta["thresholds"], meta["normal_scores"]
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="vsad calibrate"):
        assert main(["predict", "--run", str(run), *files[:5], "--out", str(pred)]) == 0
    assert "n/a (uncalibrated)" in capsys.readouterr().out
    assert json.loads((pred / "decisions.json").read_text())["samples"][0]["decision"] is None


def test_cli_errors_name_the_problem(realiad_root, tmp_path, capsys):
    args = ["train", "--data", str(realiad_root), "--out", str(tmp_path / "r"), "--quiet"]
    assert main([*args, "--category", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main([*args, "--category", "toy", "bank_mode=nearest"]) == 2
    assert "bank_mode: got 'nearest'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no run.json"):
        main(["test", "--run", str(tmp_path / "missing")])


def test_predict_a_realiad_sample_folder_with_its_masks_beside(realiad_root, tmp_path, capsys):
    """A defective Real-IAD sample folder holds `<stem>.png` masks next to `<stem>.jpg`
    views: predict takes the five views, not the masks."""
    from vsad.data import open_dataset

    run = tmp_path / "run"
    args = ["train", "--data", str(realiad_root), "--category", "toy", "--out", str(run)]
    assert main([*args, "--model", "patchknn", "--quiet", "image_size=64"]) == 0
    test = open_dataset(realiad_root, "toy", "test")
    defective = next(r for r in test.records if any(m is not None for m in r.mask_paths))
    folder = defective.image_paths[0].parent
    inside = sorted(p.suffix for p in folder.iterdir())
    assert ".png" in inside and len(inside) > 5  # masks really are beside the views
    assert main(["predict", "--run", str(run), str(folder), "--out", str(tmp_path / "p")]) == 0
    predictions = json.loads((tmp_path / "p" / "predictions.json").read_text())["predictions"]
    assert len(predictions) == 1 and len(predictions[0]["view_scores"]) == 5
    assert folder.name in capsys.readouterr().out
