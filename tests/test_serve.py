"""`vsad serve` (vsad/serve/): bad requests answered with a 4xx naming the problem and the next
request served; disconnects and stalled uploads; a full queue answers 503 with Retry-After and
every request exactly once; shutdown finishes accepted work; the token; and the service's
answers equal `vsad predict`'s and the API's on the same files."""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from vsad.data import make_category  # noqa: E402
from vsad.detector import PatchKNN, PatchKNNConfig  # noqa: E402
from vsad.serve.app import ServeSettings, create_app  # noqa: E402
from vsad.serve.batcher import Batcher, QueueFull  # noqa: E402

VIEWS = 3
SIZE = 64
MAX_IMAGE = 200_000  # bytes: small, so that "too large" costs nothing to send


@pytest.fixture(scope="module")
def category():
    return make_category(n_train=4, n_test=3, n_views=VIEWS, image_size=SIZE, seed=11)


@pytest.fixture(scope="module")
def detector(category):
    with pytest.warns(UserWarning, match="normal scores"):
        return PatchKNN(PatchKNNConfig(image_size=SIZE, smoothing_sigma=2.0)).fit(
            category.train, progress=False
        )


def png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def huge_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height pixels, with almost no data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory, category):
    """The allowed root: one sample folder, loose files, a link out of the root."""
    base = tmp_path_factory.mktemp("serve")
    root = base / "root"
    (root / "unit1").mkdir(parents=True)
    for k, view in enumerate(category.test[0].images):
        (root / "unit1" / f"{k}.png").write_bytes(png(view))
    (root / "two").mkdir()
    for k in range(2):
        (root / "two" / f"{k}.png").write_bytes(png(category.test[0].images[k]))
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "big.png").write_bytes(huge_png(30_000, 30_000))
    (root / "large.png").write_bytes(b"\x00" * (MAX_IMAGE + 1))
    (base / "outside.png").write_bytes(png(category.test[0].images[0]))
    (root / "link.png").symlink_to(base / "outside.png")
    return root


@pytest.fixture(scope="module")
def client(detector, root):
    settings = ServeSettings(
        max_batch=4, max_queue=8, max_image_bytes=MAX_IMAGE, max_pixels=4_000_000,
        allowed_root=root,
    )  # fmt: skip
    with TestClient(create_app(detector, settings), raise_server_exceptions=False) as c:
        yield c


def good_files(category, index: int = 0):
    return [
        ("view", (f"{k}.png", png(v), "image/png"))
        for k, v in enumerate(category.test[index].images)
    ]


def check_good(client, category) -> None:
    r = client.post("/predict", files=good_files(category), headers={"X-Request-ID": "good"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == "good" and len(body["views"]) == VIEWS
    assert body["decision"] in ("OK", "NG")


# -- bad requests -------------------------------------------------------------------------------
def bad_cases(images: list[np.ndarray]):
    """(id, request kwargs, expected status or None for any 4xx, a piece of the message)."""
    v = [png(x) for x in images]
    cases = []

    def files(*parts):
        return {"files": list(parts)}

    def view(data, name="v.png", kind="image/png"):
        return ("view", (name, data, kind))

    # Wrong number of views: none up to twice too many.
    for n in (0, 1, 2, 4, 5, 6):
        parts = [view(v[k % VIEWS]) for k in range(n)]
        kw = files(*parts) if n else {"files": [("other", ("x.png", v[0], "image/png"))]}
        expected = "expected 3" if n else "unknown"
        cases.append((f"views-{n}", kw, 422, expected))
    # Corrupt images in each camera's place.
    from PIL import Image

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(images[0]).save(buffer, "GIF")
    gif = buffer.getvalue()
    corrupt = {
        "empty": (b"", 400, "empty file"),
        "random": (rng.integers(0, 256, 500, dtype=np.uint8).tobytes(), 415, "not an image"),
        "text": (b"hello, I am not an image", 415, "not an image"),
        "png-signature-only": (b"\x89PNG\r\n\x1a\n", 415, "not an image"),
        "jpeg-header-only": (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", 415, "not an image"),
        "gif": (gif, 415, "GIF"),
        "bmp-garbage": (b"BM" + bytes(60), None, None),
    }
    for cut in (20, 40, 60, 100, 200):
        corrupt[f"png-truncated-{cut}"] = (v[0][:cut], None, None)
    corrupt["png-garbled-data"] = (
        v[0][:60] + bytes(255 - b for b in v[0][60:-12]) + v[0][-12:],
        None,
        None,
    )
    for name, (data, status, message) in corrupt.items():
        for k in range(VIEWS):
            parts = [view(v[j]) if j != k else view(data, f"bad{k}.png") for j in range(VIEWS)]
            cases.append((f"corrupt-{name}-view{k}", files(*parts), status, message or f"view {k}"))
    # Huge: a header claiming too many pixels, a file above the byte limit, a body above it.
    for k in range(VIEWS):
        parts = [view(v[j]) if j != k else view(huge_png(30_000, 20_000)) for j in range(VIEWS)]
        cases.append((f"huge-pixels-view{k}", files(*parts), 413, "MP, above the limit"))
        parts = [
            view(v[j]) if j != k else view(b"\x89PNG" + b"\x00" * MAX_IMAGE) for j in range(VIEWS)
        ]
        cases.append((f"huge-bytes-view{k}", files(*parts), 413, "above the limit"))
    for w, h in ((100_000, 100), (100, 100_000), (2100, 2000)):
        parts = [view(huge_png(w, h)), view(v[1]), view(v[2])]
        cases.append((f"huge-{w}x{h}", files(*parts), 413, "MP"))

    def raw(body: bytes, kind: str | None) -> dict:
        return {"content": body, "headers": {"content-type": kind} if kind else {}}

    def with_fields(**fields) -> dict:
        return {"files": [view(x) for x in v], "data": fields}

    multipart_x = "multipart/form-data; boundary=x"
    big = b"x" * (VIEWS * MAX_IMAGE + 2**20 + 10)
    cases.append(("body-too-large", raw(big, multipart_x), 413, "body"))
    # Wrong types.
    for k in range(VIEWS):
        parts = [view(v[j]) for j in range(VIEWS)]
        parts[k] = ("view", (None, "not a file"))
        cases.append((f"view-as-text-{k}", {"files": parts}, 422, "text field"))
    id_file = ("sample_id", ("s.txt", b"x", "text/plain"))
    cases.append(("sample-id-as-file", files(*[view(x) for x in v], id_file), 422, "sample_id"))
    cases.append(("sample-id-too-long", with_fields(sample_id="s" * 300), 422, "sample_id"))
    for maps in ("yes", "jpeg", "1", "PNG "):
        cases.append((f"maps-{maps}", with_fields(maps=maps), 422, "maps"))
    cases.append(("unknown-field", with_fields(colour="red"), 422, "unknown"))
    kinds = ("text/plain", "application/xml", "image/png", "application/x-www-form-urlencoded")
    for kind in kinds:
        cases.append((f"content-type-{kind}", raw(b"abc", kind), 415, "content-type"))
    cases.append(("no-content-type", raw(b"abc", None), 415, "content-type"))
    for boundary in ("x", "nothing-like-it"):
        kind = f"multipart/form-data; boundary={boundary}"
        garbled = raw(b"--y\r\nwhat\r\n\r\n--y--", kind)
        cases.append((f"multipart-garbled-{boundary}", garbled, 400, "multipart"))
    no_boundary = raw(b"abc", "multipart/form-data")
    cases.append(("multipart-no-boundary", no_boundary, 400, "multipart"))
    cases.append(("too-many-files", files(*[view(v[0])] * 12), 400, "multipart"))
    # A view of another size than view 0 (view 0 of the training size).
    small = png(cv2.resize(images[1], (32, 40)))
    cases.append(
        ("view-size-mismatch", files(view(v[0]), view(small), view(v[2])), 422, "view 0 is")
    )
    cases.append(
        ("unknown-route", {"url": "/predikt", "files": [view(x) for x in v]}, 404, "Not Found")
    )

    # JSON: malformed, wrong shapes, paths outside the root or missing.
    def js(payload):
        if isinstance(payload, bytes):
            return {"content": payload, "headers": {"content-type": "application/json"}}
        return {"json": payload}

    for name, payload, status, message in [
        ("json-malformed", b"{paths: [", 400, "not valid JSON"),
        ("json-not-utf8", b"\xff\xfe{", 400, "not valid JSON"),
        ("json-list", [1, 2, 3], 422, "expected an object"),
        ("json-string", "paths", 422, "expected an object"),
        ("json-empty-object", {}, 422, "exactly one"),
        ("json-both", {"paths": [], "folder": "unit1"}, 422, "exactly one"),
        ("json-unknown-key", {"paths": [], "camera": 1}, 422, "unknown keys"),
        ("paths-not-list", {"paths": "unit1/0.png"}, 422, "expected a list"),
        ("paths-too-few", {"paths": ["unit1/0.png"]}, 422, "expected 3"),
        ("paths-too-many", {"paths": ["unit1/0.png"] * 4}, 422, "expected 3"),
        ("paths-number", {"paths": [1, 2, 3]}, 422, "path string"),
        ("paths-empty-string", {"paths": ["", "unit1/1.png", "unit1/2.png"]}, 422, "path string"),
        ("paths-nul", {"paths": ["unit1/0.png\x00", "unit1/1.png", "unit1/2.png"]}, 422, "path"),
        (
            "paths-dotdot",
            {"paths": ["../outside.png", "unit1/1.png", "unit1/2.png"]},
            403,
            "outside the allowed root",
        ),
        (
            "paths-absolute",
            {"paths": ["/etc/passwd", "unit1/1.png", "unit1/2.png"]},
            403,
            "outside the allowed root",
        ),
        (
            "paths-symlink-out",
            {"paths": ["link.png", "unit1/1.png", "unit1/2.png"]},
            403,
            "outside the allowed root",
        ),
        ("paths-deep-dotdot", {"paths": ["unit1/../../root/../../x.png"] * 3}, 403, "outside"),
        (
            "paths-missing",
            {"paths": ["unit1/9.png", "unit1/1.png", "unit1/2.png"]},
            404,
            "not a file",
        ),
        (
            "paths-folder-as-file",
            {"paths": ["unit1", "unit1/1.png", "unit1/2.png"]},
            404,
            "not a file",
        ),
        (
            "paths-corrupt",
            {"paths": ["corrupt.png", "unit1/1.png", "unit1/2.png"]},
            415,
            "not an image",
        ),
        ("paths-huge-pixels", {"paths": ["big.png", "unit1/1.png", "unit1/2.png"]}, 413, "MP"),
        ("paths-huge-bytes", {"paths": ["large.png", "unit1/1.png", "unit1/2.png"]}, 413, "bytes"),
        ("folder-outside", {"folder": ".."}, 403, "outside"),
        ("folder-missing", {"folder": "nope"}, 404, "not a folder"),
        ("folder-is-file", {"folder": "unit1/0.png"}, 404, "not a folder"),
        ("folder-two-views", {"folder": "two"}, 422, "expected 3"),
        ("folder-not-string", {"folder": ["unit1"]}, 422, "path string"),
        ("json-sample-id-number", {"folder": "unit1", "sample_id": 7}, 422, "sample_id"),
        ("json-maps-number", {"folder": "unit1", "maps": 3}, 422, "maps"),
    ]:
        cases.append((name, js(payload), status, message))
    return cases


BAD_IDS = [c[0] for c in bad_cases([np.zeros((SIZE, SIZE, 3), np.uint8)] * VIEWS)]


@pytest.mark.parametrize("case", BAD_IDS)
def test_bad_request_is_a_4xx_naming_the_problem_and_the_next_request_is_served(
    case, client, category
):
    ((_, kwargs, status, message),) = [
        c for c in bad_cases(category.test[0].images) if c[0] == case
    ]
    r = client.post(kwargs.pop("url", "/predict"), **kwargs)
    body = r.json()
    assert 400 <= r.status_code < 500, (r.status_code, body)
    if status is not None:
        assert r.status_code == status, body
    assert set(body) == {"error", "request_id"} and body["request_id"] == r.headers["x-request-id"]
    if message is not None:
        assert message in body["error"], body["error"]
    check_good(client, category)


def test_there_are_over_a_hundred_bad_request_cases():
    assert len(BAD_IDS) >= 100 and len(set(BAD_IDS)) == len(BAD_IDS)


def test_token_health_info_and_maps(detector, category):
    app = create_app(detector, ServeSettings(token="s3cret"))
    with TestClient(app) as c:
        assert c.get("/health").json()["status"] == "ok"  # no token needed
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "s3cret"}):
            for r in (
                c.get("/info", headers=headers),
                c.post("/predict", headers=headers, files=good_files(category)),
            ):
                assert r.status_code == 401 and "Bearer" in r.json()["error"]
                assert r.headers["www-authenticate"] == "Bearer"
        auth = {"Authorization": "Bearer s3cret"}
        info = c.get("/info", headers=auth).json()
        assert info["cameras"] == VIEWS and info["view_size"] == [SIZE, SIZE]
        assert info["thresholds"]["sample"] == detector.thresholds["sample"]
        r = c.post(
            "/predict",
            headers=auth,
            files=good_files(category),
            data={"maps": "png", "sample_id": "u7"},
        )
        body = r.json()
        assert r.status_code == 200 and body["sample_id"] == "u7"
    expected = detector.predict(category.test[0].images)
    for k, m in enumerate(body["maps"]):
        raw = cv2.imdecode(
            np.frombuffer(__import__("base64").b64decode(m["png"]), np.uint8), cv2.IMREAD_UNCHANGED
        )
        assert raw.dtype == np.uint16 and raw.shape == (SIZE, SIZE)
        decoded = m["min"] + raw / 65535 * (m["max"] - m["min"])
        span = m["max"] - m["min"]
        assert np.abs(decoded - expected.maps[k]).max() <= span / 65535  # quantisation only
        assert m["max"] == float(expected.maps[k].max())


# -- the same answers ---------------------------------------------------------------------------
def test_service_predict_cli_and_api_give_the_same_answers(tmp_path, capsys):
    """A run folder from `vsad train` (the default VSAD, small), then one set of files through
    the API, `vsad predict`, the service (uploads and server-side paths) and an export."""
    from vsad.cli import main
    from vsad.data import open_dataset, read_image, write_realiad
    from vsad.detector import load_detector

    data = tmp_path / "data"
    write_realiad(
        make_category(n_train=4, n_test=4, n_views=VIEWS, image_size=96, seed=7), data, "toy"
    )
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--category", "toy", "--out", str(run), "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 4 training samples: thresholds backed by few scores
        assert main([*args, "image_size=64"]) == 0
    test = open_dataset(data, "toy", "test")
    folders = [Path(r.image_paths[0]).parent for r in test.records]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny synthetic views may not register
        assert (
            main(["predict", "--run", str(run), *map(str, folders), "--out", str(tmp_path / "p")])
            == 0
        )
    cli = json.loads((tmp_path / "p" / "predictions.json").read_text())["predictions"]
    cli_decisions = json.loads((tmp_path / "p" / "decisions.json").read_text())["samples"]

    detector = load_detector(run / "model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        api = [detector.predict([read_image(p) for p in r.image_paths]) for r in test.records]
    settings = ServeSettings(allowed_root=data, max_batch=1)
    with TestClient(create_app(detector, settings)) as c:
        for k, record in enumerate(test.records):
            uploads = [
                ("view", (Path(p).name, Path(p).read_bytes(), "image/jpeg"))
                for p in record.image_paths
            ]
            by_upload = c.post("/predict", files=uploads).json()
            by_folder = c.post("/predict", json={"folder": str(folders[k])}).json()
            by_paths = c.post(
                "/predict", json={"paths": [str(p) for p in record.image_paths]}
            ).json()
            for body in (by_upload, by_folder, by_paths):
                assert body["score"] == api[k].score == cli[k]["score"]
                assert [v["score"] for v in body["views"]] == [float(s) for s in api[k].view_scores]
                assert [v["score"] for v in body["views"]] == cli[k]["view_scores"]
                assert body["decision"] == api[k].decision == cli_decisions[k]["decision"]
                assert [v["decision"] for v in body["views"]] == api[k].view_decisions
                assert body["thresholds"]["sample"] == detector.thresholds["sample"]
            assert by_folder["sample_id"] == folders[k].name

    # Concurrent requests are predicted together: the same answers up to float rounding
    # (oneDNN's convolutions block differently for another batch size).
    images = [[read_image(p) for p in r.image_paths] for r in test.records]
    server = Server(create_app(detector, ServeSettings(max_batch=4)))
    try:
        bodies = _concurrent(
            server.url,
            [
                [("view", (f"{j}.png", png(v), "image/png")) for j, v in enumerate(views)]
                for views in images
            ],
        )
    finally:
        server.stop()
    assert max(b["batch_size"] for b in bodies) >= 1
    for body, expected in zip(bodies, api, strict=True):
        np.testing.assert_allclose(
            [v["score"] for v in body["views"]], expected.view_scores, rtol=1e-5
        )
        assert body["decision"] == expected.decision


def _concurrent(url: str, requests: list) -> list[dict]:
    import httpx

    results: list = [None] * len(requests)

    def send(k):
        with httpx.Client(timeout=60) as c:
            results[k] = c.post(url + "/predict", files=requests[k]).json()

    threads = [threading.Thread(target=send, args=(k,)) for k in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


# -- queue, shutdown, disconnects (a real server on loopback) ----------------------------------
class SlowDetector:
    """A detector whose batches take `delay` seconds (and count their sizes)."""

    def __init__(self, detector, delay: float) -> None:
        self._detector, self.delay, self.batches = detector, delay, []

    def __getattr__(self, name):
        return getattr(self._detector, name)

    def predict_many(self, samples, **kwargs):
        time.sleep(self.delay)
        self.batches.append(len(samples))
        return self._detector.predict_many(samples, **kwargs)


class Server:
    """uvicorn on 127.0.0.1 on a free port, in a thread; stop() is what SIGTERM does."""

    def __init__(self, app) -> None:
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=30
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not (self.server.started and self.server.servers):
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        assert not self.thread.is_alive()


def test_a_burst_beyond_the_queue_is_answered_503_and_every_request_exactly_once(
    detector, category
):
    import httpx

    slow = SlowDetector(detector, 0.6)
    server = Server(create_app(slow, ServeSettings(max_batch=2, max_queue=3)))
    answers: dict[str, list] = {}
    lock = threading.Lock()

    def send(k):
        rid = f"req-{k}"
        with httpx.Client(timeout=60) as c:
            r = c.post(
                server.url + "/predict", files=good_files(category), headers={"X-Request-ID": rid}
            )
        with lock:
            answers.setdefault(rid, []).append((r.status_code, r.json(), dict(r.headers)))

    try:
        threads = [threading.Thread(target=send, args=(k,)) for k in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        server.stop()
    assert sorted(answers) == sorted(f"req-{k}" for k in range(20))
    statuses = []
    for rid, got in answers.items():
        assert len(got) == 1, rid
        status, body, headers = got[0]
        assert body["request_id"] == rid and status in (200, 503)
        if status == 503:
            assert "queue: full" in body["error"] and int(headers["retry-after"]) >= 1
        statuses.append(status)
    assert statuses.count(503) >= 1 and statuses.count(200) >= 3
    assert max(slow.batches) == 2  # requests that waited together were predicted together


def test_shutdown_finishes_the_accepted_requests(detector, category):
    import httpx

    slow = SlowDetector(detector, 0.2)
    app = create_app(slow, ServeSettings(max_batch=1, max_queue=16))
    server = Server(app)
    results: list = []

    def send():
        with httpx.Client(timeout=60) as c:
            results.append(c.post(server.url + "/predict", files=good_files(category)).status_code)

    threads = [threading.Thread(target=send) for _ in range(5)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while sum(app.state.batcher.depth()) < 5:  # all five accepted, most still waiting
        assert time.monotonic() < deadline
        time.sleep(0.01)
    server.stop()  # as on SIGTERM: stop accepting, finish what was accepted
    for t in threads:
        t.join(60)
    assert results == [200] * 5 and slow.batches == [1] * 5


def _raw_request(port: int, head: bytes, body: bytes, *, read: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head + body)
        if not read:
            return b""
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def test_a_client_that_disconnects_or_stalls_mid_upload_does_not_hurt_the_service(
    detector, category
):
    import httpx

    app = create_app(detector, ServeSettings(read_timeout=1.0))
    server = Server(app)
    try:
        head = (
            b"POST /predict HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 100000\r\nConnection: close\r\n\r\n"
        )
        for cut in (0, 10, 1000, 50000):
            _raw_request(server.port, head, b"--b\r\n" + b"x" * cut, read=False)  # then gone
        stalled = _raw_request(server.port, head, b"--b\r\n")  # sends part, waits for the answer
        assert stalled.startswith(b"HTTP/1.1 408") and b"nothing received for 1 s" in stalled
        deadline = time.monotonic() + 10
        while app.state.counters["disconnects"] < 4:
            assert time.monotonic() < deadline, app.state.counters
            time.sleep(0.05)
        with httpx.Client(timeout=60) as c:
            r = c.post(server.url + "/predict", files=good_files(category))
            assert r.status_code == 200, r.text
    finally:
        server.stop()


def test_batcher_refuses_beyond_its_queue_and_survives_a_failing_batch():
    import asyncio

    gate = threading.Event()

    def predict(samples):
        gate.wait(10)
        if any(s == "bad" for s in samples):
            raise ValueError("views: bad sample")
        return [f"ok {s}" for s in samples]

    async def main():
        batcher = Batcher(predict, max_batch=2, max_queue=2)
        first = batcher.submit("a", None)  # taken by the worker at once
        await asyncio.sleep(0.2)
        waiting = [batcher.submit("bad", None), batcher.submit("c", None)]
        with pytest.raises(QueueFull):
            batcher.submit("d", None)
        assert batcher.retry_after() >= 1
        gate.set()
        assert (await first).prediction == "ok a"
        with pytest.raises(ValueError, match="bad sample"):
            await waiting[0]
        assert (await waiting[1]).prediction == "ok c"  # retried alone, not failed with "bad"
        assert batcher.close(10)

    asyncio.run(main())


def test_serve_refuses_a_public_address_without_a_token(tmp_path, capsys):
    from vsad.cli import main
    from vsad.serve import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")
    assert main(["serve", "--run", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert "give a token" in capsys.readouterr().err


@pytest.mark.parametrize(
    "cost, expected",
    [
        (lambda b: 0.4 * b * (1.3 if b > 1 else 1), 1),  # slower per sample in batches
        (lambda b: 0.004 + 0.001 * b, 8),  # a fixed cost per call: batching pays
        (lambda b: 0.01 * b * (0.95 if b > 1 else 1), 1),  # 5 % is not worth the latency
        (lambda b: {1: 1, 2: 1.6, 4: 2.4, 8: 6.4}[b], 4),  # best at 4
    ],
)
def test_the_batch_size_is_chosen_where_it_pays(cost, expected):
    from vsad.serve.batcher import choose_max_batch

    now = [0.0]

    def predict(samples):
        now[0] += cost(len(samples))
        return samples

    chosen, per_sample = choose_max_batch(predict, "views", 8, clock=lambda: now[0])
    assert chosen == expected, per_sample


def test_uploads_beyond_the_memory_budget_are_answered_503_before_being_read(detector, category):
    """Two stalled uploads hold the whole budget; a third is refused at once, not buffered."""
    import httpx

    settings = ServeSettings(max_image_bytes=2**20, upload_budget_bytes=0, read_timeout=5.0)
    app = create_app(detector, settings)  # budget: 4 bodies of 3 x 1 MiB + 1 MiB
    server = Server(app)
    length = 4 * 2**20  # the largest body: reserves a quarter of the budget each
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        + f"Content-Length: {length}\r\n\r\n".encode()
    )
    held = []
    try:
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            s.sendall(head + b"--b\r\n")
            held.append(s)
        deadline = time.monotonic() + 10
        while app.state.counters["buffered"] < 4 * length:
            assert time.monotonic() < deadline, app.state.counters
            time.sleep(0.02)
        with httpx.Client(timeout=30) as c:
            r = c.post(server.url + "/predict", files=good_files(category))
            assert r.status_code == 503 and "budget" in r.json()["error"]
            assert r.headers["retry-after"] == "1"
            for s in held:
                s.close()
            deadline = time.monotonic() + 10
            while app.state.counters["buffered"]:
                assert time.monotonic() < deadline, app.state.counters
                time.sleep(0.02)
            assert c.post(server.url + "/predict", files=good_files(category)).status_code == 200
    finally:
        for s in held:
            s.close()
        server.stop()


def test_non_finite_scores_and_maps_answer_as_valid_json():
    from vsad.detector.base import Prediction
    from vsad.serve.app import prediction_record

    maps = np.array([[[1.0, np.inf], [np.nan, -2.0]]], np.float32)
    prediction = Prediction(maps=maps, view_scores=np.array([np.inf], np.float32), score=np.inf)
    record = prediction_record(prediction, "s", maps=True)
    assert record["score"] is None and record["views"][0]["score"] is None
    assert (record["maps"][0]["min"], record["maps"][0]["max"]) == (-2.0, 1.0)
    json.dumps(record, allow_nan=False)  # what the response does
