"""report.html of `vsad test`: parsed (every picture an embedded PNG that decodes, every section
there, nothing fetched, no script) and rendered in headless Chromium (every image loads, the
page draws). The browser test skips without Chromium unless VSAD_REQUIRE_CHROMIUM=1 (CI)."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import warnings
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from vsad.data import make_category
from vsad.detector import PatchKNN, PatchKNNConfig
from vsad.detector.evaluate import evaluate_detector
from vsad.eval.html_report import REPORT_SECTIONS

WORST = 2
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class ReportParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.ids: list[str] = []
        self.scripts = 0
        self.external: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "script":
            self.scripts += 1
        if "id" in attrs:
            self.ids.append(attrs["id"])
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            if value and not value.startswith("data:"):
                self.external.append(value)

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """report.html of a calibrated and of an uncalibrated PatchKNN on a tiny category."""
    category = make_category(n_train=8, n_test=6, n_views=3, image_size=64, seed=7)
    out = tmp_path_factory.mktemp("report")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 8 samples cannot resolve the 5 % target
        calibrated = PatchKNN(PatchKNNConfig(image_size=64)).fit(category.train, progress=False)
    plain = PatchKNN(PatchKNNConfig(image_size=64, threshold_fpr=None))
    plain.__dict__.update({**calibrated.__dict__, "config": plain.config, "thresholds": None})
    paths = {}
    for name, detector in (("calibrated", calibrated), ("plain", plain)):
        evaluate_detector(
            detector, category.test, out / name, overlays=2, progress=False, worst=WORST,
            run_config={"config": detector.config.to_dict(), "note": "<script>x</script>"},
        )  # fmt: skip
        paths[name] = out / name / "report.html"
    return paths


def parse(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.mark.parametrize("which", ["calibrated", "plain"])
def test_report_is_self_contained_and_complete(reports, which):
    report = parse(reports[which])
    assert set(REPORT_SECTIONS) <= set(report.ids)
    assert report.scripts == 0 and report.external == []
    # curves + histogram + the worst normal and defective samples (3 of each in the split)
    assert len(report.images) == 2 + 2 * WORST
    for src in report.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        png = base64.b64decode(src[len(prefix) :], validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        picture = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        assert picture is not None and min(picture.shape[:2]) >= 16
    text = " ".join(report.text)
    assert "S-AUROC" in text and "<script>x</script>" in text  # escaped, shown as text
    if which == "calibrated":
        assert "false-reject rate" in text and "camera 2" in text and "train-loo" in text
    else:
        assert "uncalibrated" in text


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is None:
        if os.environ.get("VSAD_REQUIRE_CHROMIUM") == "1":
            pytest.fail(
                "VSAD_REQUIRE_CHROMIUM=1 but no chromium on PATH (apt-get install chromium)"
            )
        pytest.skip("no Chromium installed (Debian: apt-get install chromium); CI requires it")
    return found


def _run_chromium(binary: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )


def test_report_renders_in_headless_chromium(reports, tmp_path):
    binary = _chromium()
    # The report has no script; a copy gets one that records, after load, how many images
    # finished loading with a size (a broken data URI has naturalWidth 0).
    page = reports["calibrated"].read_text(encoding="utf-8")
    probe = (
        "<script>window.addEventListener('load', function () {"
        "var all = Array.from(document.images);"
        "var ok = all.filter(function (i) { return i.complete && i.naturalWidth > 0; });"
        "document.body.setAttribute('data-images', String(all.length));"
        "document.body.setAttribute('data-loaded', String(ok.length));"
        "document.body.setAttribute('data-height', String(document.body.scrollHeight));"
        "});</script>"
    )
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", probe + "</body>"), encoding="utf-8")
    dom = _run_chromium(binary, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    expected = 2 + 2 * WORST
    assert f'data-images="{expected}"' in dom.stdout, dom.stdout[-500:]
    assert f'data-loaded="{expected}"' in dom.stdout
    height = int(dom.stdout.split('data-height="')[1].split('"')[0])
    assert height > 1000  # tables, figures and panels laid out, not an empty page

    shot = tmp_path / "shot.png"
    result = _run_chromium(
        binary, "--window-size=1200,1600", f"--screenshot={shot}", reports["calibrated"].as_uri()
    )
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    picture = cv2.imread(str(shot))
    assert picture is not None and picture.shape[:2] == (1600, 1200)
    assert picture.std() > 20  # text, tables and figures, not a blank page
