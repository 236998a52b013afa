"""The HTTP service: FastAPI on uvicorn, one loaded detector, one batching worker.

Endpoints (docs: README "Run it at a line"; `GET /docs` is FastAPI's own page):

- `POST /predict` — one unit. Either `multipart/form-data` with one file field `view` per
  camera, in camera order (optional fields `sample_id`, `maps=png`), or, when the service was
  started with `--allowed-root`, `application/json` `{"paths": [...]}` (one image per camera) or
  `{"folder": "..."}` (a sample folder, views chosen as by `vsad predict`), relative to the root
  or absolute inside it, with optional `"sample_id"` and `"maps": "png"`. Answers the sample's
  decision, score and thresholds, per camera its decision and score, and with `maps=png` each
  view's anomaly map as a base64 16-bit grey PNG with the value range it encodes.
- `GET /health` — liveness and queue depth (503 while draining at shutdown).
- `GET /info` — the model: kind, cameras, view size, thresholds, config, where it came from,
  the service's limits.

Every answer carries the request id (`X-Request-ID` if the client sent one, else a fresh one) in
its body and header, errors included: `{"error": "...", "request_id": "..."}`.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from vsad.serve.batcher import Batcher, QueueFull, ShuttingDown, choose_max_batch
from vsad.serve.inputs import (
    RequestError,
    decode_upload,
    fit_views,
    folder_files,
    read_path,
    resolve_under,
)

log = logging.getLogger("vsad.serve")
#: The largest batch `max_batch=None` (auto) tries.
AUTO_BATCH_LIMIT = 8


@dataclass
class ServeSettings:
    #: None: chosen at start by timing the model (batcher.choose_max_batch, up to 8).
    max_batch: int | None = None
    max_queue: int = 32
    max_image_bytes: int = 16 * 2**20
    max_pixels: int = 40_000_000
    allowed_root: Path | None = None
    token: str | None = None
    #: Seconds a client may take between two pieces of its request body.
    read_timeout: float = 30.0
    #: Upload bytes held at once (at least 4 bodies of the largest size); beyond: 503.
    upload_budget_bytes: int = 512 * 2**20
    source: str = ""


def _float(x) -> float | None:
    """A score for JSON, which has no NaN or infinity: those become null."""
    value = float(x)
    return value if math.isfinite(value) else None


def encode_map(values: np.ndarray) -> dict:
    """A map as a 16-bit grey PNG: value = min + pixel / 65535 · (max − min)."""
    import cv2

    finite = np.isfinite(values)
    if not finite.all():  # clipped to the finite range (JSON has no infinity)
        kept = values[finite]
        values = np.clip(np.nan_to_num(values), kept.min(), kept.max()) if kept.size else 0 * finite
    lo, hi = float(values.min()), float(values.max())
    span = hi - lo
    scaled = (
        np.zeros(values.shape, np.uint16)
        if span == 0
        else np.round((values - lo) / span * 65535).astype(np.uint16)
    )
    ok, png = cv2.imencode(".png", scaled)
    if not ok:
        raise RuntimeError("maps: OpenCV could not encode a PNG")
    return {"min": lo, "max": hi, "png": base64.b64encode(png.tobytes()).decode("ascii")}


def prediction_record(prediction, sample_id: str, maps: bool) -> dict:
    """The JSON answer of one sample (scores as the float32 values the API returns)."""
    decisions = prediction.view_decisions
    views = [
        {"view": k, "decision": None if decisions is None else decisions[k], "score": _float(s)}
        for k, s in enumerate(prediction.view_scores)
    ]
    record = {
        "sample_id": sample_id,
        "decision": prediction.decision,
        "score": _float(prediction.score),
        "ng_views": [v["view"] for v in views if v["decision"] == "NG"],
        "thresholds": None
        if prediction.thresholds is None
        else {
            k: _float(v) if isinstance(v, float) else v for k, v in prediction.thresholds.items()
        },
        "views": views,
        # > 1: unlike every training unit (vsad/detector/coverage.py); null: not known
        "pose_novelty": None
        if prediction.pose_novelty is None
        else _float(prediction.pose_novelty),
    }
    if maps:
        record["maps"] = [
            {"view": k, "encoding": "png16", **encode_map(m)} for k, m in enumerate(prediction.maps)
        ]
    return record


def model_info(detector, settings: ServeSettings, batch_timings=None) -> dict:
    import vsad

    t = detector.thresholds
    export = getattr(detector, "export_meta", None)
    return {
        "vsad_version": vsad.__version__,
        "detector": detector.kind,
        "source": settings.source,
        "export": export is not None,
        "cameras": detector.num_views,
        "view_size": list(detector.view_size),
        "thresholds": None
        if t is None
        else {k: t.get(k) for k in ("view", "sample", "source", "fpr", "n_normal")},
        "config": {k: v for k, v in detector.config.to_dict().items()},
        "limits": {
            "max_batch": settings.max_batch,
            "max_batch_timings": batch_timings,
            "max_queue": settings.max_queue,
            "max_image_bytes": settings.max_image_bytes,
            "max_pixels": settings.max_pixels,
            "paths": settings.allowed_root is not None,
        },
    }


def create_app(detector, settings: ServeSettings | None = None):
    """The FastAPI application serving `detector` (already loaded)."""
    from contextlib import asynccontextmanager

    settings = settings or ServeSettings()
    if settings.allowed_root is not None:
        settings.allowed_root = Path(settings.allowed_root).resolve()
    num_views, view_size = detector.num_views, tuple(detector.view_size)
    # The largest body: every view at the image limit, plus the multipart overhead.
    max_body = num_views * settings.max_image_bytes + 2**20
    # Bodies held at once (reserved by Content-Length, or the limit without one): beyond this
    # a request is answered 503 before its body is read, so many large concurrent uploads
    # cannot exhaust memory.
    body_budget = max(4 * max_body, settings.upload_budget_bytes)
    state = {"draining": False, "disconnects": 0, "errors": 0, "answered": 0, "buffered": 0}

    def predict(samples: list) -> list:
        return detector.predict_many(samples, batch_size=len(samples), progress=False)

    batch_timings = None
    if settings.max_batch is None:
        from vsad.export import probe_views

        probe = probe_views(num_views, view_size)
        settings.max_batch, batch_timings = choose_max_batch(predict, probe, AUTO_BATCH_LIMIT)
        log.info(
            "max batch %d (s per sample by batch size: %s)",
            settings.max_batch,
            {k: round(v, 4) for k, v in batch_timings.items()},
        )

    @asynccontextmanager
    async def lifespan(app):
        app.state.batcher = Batcher(
            predict, max_batch=settings.max_batch, max_queue=settings.max_queue
        )
        try:
            yield
        finally:
            # uvicorn has stopped accepting and waited for the open requests; whatever is
            # still queued is finished before the worker ends.
            state["draining"] = True
            await asyncio.to_thread(app.state.batcher.close)
            log.info(
                "stopped: queue drained, %d samples predicted in %d batches",
                app.state.batcher.samples,
                app.state.batcher.batches,
            )

    app = FastAPI(title="vsad", lifespan=lifespan, docs_url="/docs", redoc_url=None)

    def answer(status: int, body: dict, request_id: str, headers: dict | None = None):
        state["answered"] += 1
        return JSONResponse(
            {**body, "request_id": request_id},
            status_code=status,
            headers={"X-Request-ID": request_id, **(headers or {})},
        )

    def request_id_of(request: Request) -> str:
        given = request.headers.get("x-request-id", "")
        if given and len(given) <= 128 and given.isprintable():
            return given
        return uuid.uuid4().hex

    def check_token(request: Request) -> None:
        if settings.token is None:
            return
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), settings.token.encode()
        ):
            raise RequestError(
                401,
                "authorization: expected 'Authorization: Bearer <token>' with the service's "
                "token (vsad serve --token)",
                {"WWW-Authenticate": "Bearer"},
            )

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise RequestError(400, f"content-length: got {length!r}, expected a number")
            if int(length) > max_body:
                raise RequestError(
                    413,
                    f"body: {length} bytes, above the limit of {max_body} ({num_views} views of "
                    f"at most {settings.max_image_bytes} bytes each, --max-image-mb)",
                )
        body = bytearray()
        stream = request.stream().__aiter__()
        while True:
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), settings.read_timeout)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise RequestError(
                    408, f"body: nothing received for {settings.read_timeout:g} s"
                ) from None
            body += chunk
            if len(body) > max_body:
                raise RequestError(413, f"body: above the limit of {max_body} bytes")
        return bytes(body)

    async def views_from_form(request: Request, body: bytes) -> tuple[list, dict]:
        from starlette.datastructures import UploadFile
        from starlette.formparsers import MultiPartException

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(
                max_files=num_views + 4, max_fields=8, max_part_size=4096
            )
        except MultiPartException as err:
            raise RequestError(400, f"multipart body: {err.message}") from None
        except StarletteHTTPException as err:  # Starlette's own "Invalid multipart data."
            raise RequestError(err.status_code, f"multipart body: {err.detail}") from None
        try:
            options, views = {}, []
            for key, value in form.multi_items():
                if key == "view":
                    if not isinstance(value, UploadFile):
                        raise RequestError(
                            422, f"view {len(views)}: a text field, expected an image file"
                        )
                    views.append((value.filename, await value.read()))
                elif key in ("sample_id", "maps"):
                    if isinstance(value, UploadFile):
                        raise RequestError(422, f"{key}: a file, expected a text field")
                    options[key] = value
                else:
                    raise RequestError(
                        422,
                        f"field {key!r}: unknown, expected 'view' (one per camera), "
                        "'sample_id' or 'maps'",
                    )
        finally:
            await form.close()
        if len(views) != num_views:
            raise RequestError(
                422,
                f"views: got {len(views)} 'view' files, expected {num_views} (one image per "
                "camera, in camera order)",
            )

        def decode() -> list:  # one thread hop for decoding and resizing
            decoded = [
                decode_upload(
                    data,
                    f"view {k} ({name!r})",
                    max_bytes=settings.max_image_bytes,
                    max_pixels=settings.max_pixels,
                )
                for k, (name, data) in enumerate(views)
            ]
            return fit_views(decoded, num_views, view_size)

        return await asyncio.to_thread(decode), options

    async def views_from_json(body: bytes) -> tuple[list, dict]:
        root = settings.allowed_root
        if root is None:
            raise RequestError(
                415,
                "content-type: JSON (server-side paths) is off; start the service with "
                "--allowed-root DIR, or send multipart/form-data with one 'view' file per camera",
            )
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(400, f"body: not valid JSON ({err})") from None
        if not isinstance(payload, dict):
            raise RequestError(422, f"body: a JSON {type(payload).__name__}, expected an object")
        unknown = set(payload) - {"paths", "folder", "sample_id", "maps"}
        if unknown:
            raise RequestError(
                422,
                f"body: unknown keys {sorted(unknown)}, expected 'paths' or 'folder', "
                "'sample_id', 'maps'",
            )
        if ("paths" in payload) == ("folder" in payload):
            raise RequestError(422, "body: expected exactly one of 'paths' and 'folder'")
        options = {k: payload[k] for k in ("sample_id", "maps") if k in payload}
        limits = {"max_bytes": settings.max_image_bytes, "max_pixels": settings.max_pixels}

        def read() -> list:
            if "folder" in payload:
                folder = resolve_under(root, payload["folder"], "folder")
                files = folder_files(folder, num_views, "folder")
                if "sample_id" not in options:
                    options["sample_id"] = folder.name
                views = [read_path(p, f"view {k}", **limits) for k, p in enumerate(files)]
                return fit_views(views, num_views, view_size)
            paths = payload["paths"]
            if not isinstance(paths, list):
                raise RequestError(422, f"paths: got {type(paths).__name__}, expected a list")
            if len(paths) != num_views:
                raise RequestError(
                    422, f"paths: got {len(paths)}, expected {num_views} (one image per camera)"
                )
            files = [resolve_under(root, p, f"paths[{k}]") for k, p in enumerate(paths)]
            views = [read_path(p, f"paths[{k}]", **limits) for k, p in enumerate(files)]
            return fit_views(views, num_views, view_size)

        return await asyncio.to_thread(read), options

    def parse_options(options: dict, request_id: str) -> tuple[str, bool]:
        sample_id = options.get("sample_id", request_id)
        if not isinstance(sample_id, str) or not 0 < len(sample_id) <= 256:
            raise RequestError(
                422, f"sample_id: got {sample_id!r}, expected a string of 1-256 characters"
            )
        maps = options.get("maps", "none")
        if maps not in ("none", "png", False, True, "true", "false"):
            raise RequestError(422, f"maps: got {maps!r}, expected 'png' or 'none'")
        return sample_id, maps in ("png", True, "true")

    @app.exception_handler(RequestError)
    async def request_error(request: Request, err: RequestError):
        return answer(err.status, {"error": err.message}, request_id_of(request), err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):  # 404, 405, ...
        message = f"{request.method} {request.url.path}: {err.detail}"
        return answer(err.status_code, {"error": message}, request_id_of(request), err.headers)

    @app.get("/health")
    async def health(request: Request):
        waiting, running = request.app.state.batcher.depth()
        status = "draining" if state["draining"] else "ok"
        body = {"status": status, "queued": waiting, "predicting": running}
        return answer(503 if state["draining"] else 200, body, request_id_of(request))

    @app.get("/info")
    async def info(request: Request):
        check_token(request)
        return answer(200, model_info(detector, settings, batch_timings), request_id_of(request))

    @app.post("/predict")
    async def predict_endpoint(request: Request):
        started = time.perf_counter()
        request_id = request_id_of(request)
        check_token(request)
        batcher: Batcher = request.app.state.batcher
        length = request.headers.get("content-length", "")
        reserve = min(int(length), max_body) if length.isdigit() else max_body
        if state["buffered"] + reserve > body_budget:
            return answer(
                503,
                {"error": f"uploads: {state['buffered']} bytes in flight, the budget is "
                 f"{body_budget}; retry in 1 s"},
                request_id,
                {"Retry-After": "1"},
            )  # fmt: skip
        state["buffered"] += reserve
        try:
            try:
                body = await read_body(request)
            except ClientDisconnect:
                state["disconnects"] += 1
                log.info("request %s: the client disconnected during the upload", request_id)
                return answer(400, {"error": "body: the client disconnected"}, request_id)
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind == "multipart/form-data":
                views, options = await views_from_form(request, body)
            elif kind == "application/json":
                views, options = await views_from_json(body)
            else:
                raise RequestError(
                    415,
                    f"content-type: got {kind or 'none'!r}, expected multipart/form-data (one "
                    "'view' file per camera) or application/json (paths, with --allowed-root)",
                )
            del body
        finally:
            state["buffered"] -= reserve
        sample_id, want_maps = parse_options(options, request_id)
        try:
            future = batcher.submit(views, sample_id)
        except QueueFull:
            retry = batcher.retry_after()
            return answer(
                503,
                {"error": f"queue: full ({batcher.max_queue} samples waiting); retry in {retry} s"},
                request_id,
                {"Retry-After": str(retry)},
            )
        except ShuttingDown:
            return answer(
                503, {"error": "service: shutting down"}, request_id, {"Retry-After": "5"}
            )
        try:
            outcome = await future
        except ValueError as err:  # the detector refused the sample: its message names why
            return answer(422, {"error": str(err)}, request_id)
        except Exception as err:  # noqa: BLE001 - logged, answered, the service goes on
            state["errors"] += 1
            log.exception("request %s: prediction failed", request_id)
            return answer(
                500, {"error": f"prediction failed: {type(err).__name__}: {err}"}, request_id
            )
        if want_maps:  # PNG encoding: off the event loop
            record = await asyncio.to_thread(
                prediction_record, outcome.prediction, sample_id, want_maps
            )
        else:
            record = prediction_record(outcome.prediction, sample_id, want_maps)
        record["warnings"] = outcome.warnings
        record["batch_size"] = outcome.batch_size
        record["timing_ms"] = {
            "queue": round(outcome.queue_s * 1e3, 3),
            "predict": round(outcome.predict_s * 1e3, 3),
            "total": round((time.perf_counter() - started) * 1e3, 3),
        }
        return answer(200, record, request_id)

    app.state.counters = state
    app.state.batch_timings = batch_timings
    return app
