"""Load test of `vsad serve` on loopback (issue 33): latency and throughput at concurrency 1, 4
and 16, RSS over 10,000 requests, and a burst beyond the queue. Every figure is set against the
API's own `predict` time for the same model and inputs, measured in the same run.

Not a pytest file. Run from the repository root (bounded: ~5 min on 2 cores; every server it
starts is on 127.0.0.1 and is stopped at the end, also on an error):

    python bench/serve_load.py --out serve_load.json
    python bench/serve_load.py --quick          # fewer requests, for a smoke run

Models: "default" is the default VSAD (views registered, Lite0 at 384²) fitted on 8 synthetic
five-view 256² units — the latency a line sees; "tiny" is raw-pixel PatchKNN at 64² on 5 views
of 64², whose ~ms predict makes the service's own overhead and the 10,000-request memory run
visible in minutes. The client sends one pre-encoded multipart body (five PNG views) per
request over keep-alive connections (http.client, one thread per connection), so its own cost
stays small; it shares the machine's cores with the server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
BOUNDARY = "vsadbenchboundary"


def multipart(views: list[np.ndarray]) -> bytes:
    parts = []
    for k, view in enumerate(views):
        data = cv2.imencode(".png", cv2.cvtColor(view, cv2.COLOR_RGB2BGR))[1].tobytes()
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="view"; filename="{k}.png"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """`vsad serve` in a subprocess on 127.0.0.1; stop() sends SIGTERM and waits."""

    def __init__(self, model: Path, *extra: str) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "vsad", "serve", "--run", str(model), "--port",
               str(self.port), "--log-level", "warning", *extra]  # fmt: skip
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise RuntimeError(f"vsad serve did not start:\n{self.log.read().decode()}")
            try:
                status, _ = self.request("GET", "/health")
                if status == 200:
                    return
            except OSError:
                time.sleep(0.2)

    def request(self, method: str, path: str, body: bytes | None = None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        finally:
            conn.close()

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def load(service: Service, body: bytes, *, concurrency: int, requests: int, prefix: str,
         on_progress=None) -> dict:  # fmt: skip
    """`requests` POSTs from `concurrency` keep-alive connections; latencies and answers."""
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    lock = threading.Lock()
    next_index = [0]
    latencies: list[float] = []
    answers: dict[str, list[int]] = {}
    errors: list[str] = []

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=120)
        while True:
            with lock:
                k = next_index[0]
                if k >= requests:
                    break
                next_index[0] += 1
            rid = f"{prefix}-{k}"
            start = time.perf_counter()
            try:
                conn.request(
                    "POST", "/predict", body=body, headers={**headers, "X-Request-ID": rid}
                )
                r = conn.getresponse()
                raw, status = r.read(), r.status
                try:
                    payload = json.loads(raw)
                except ValueError:  # not the service's answer (e.g. uvicorn's own 503)
                    payload = {"request_id": f"not-json-{status}-{raw[:40]!r}"}
            except (OSError, http.client.HTTPException) as err:
                with lock:
                    errors.append(f"{rid}: {type(err).__name__} {err}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=120)
                continue
            elapsed = time.perf_counter() - start
            with lock:
                answers.setdefault(payload.get("request_id"), []).append(status)
                if status == 200:
                    latencies.append(elapsed)
                if on_progress is not None:
                    on_progress(len(answers))
            if status == 503 and payload.get("request_id") == rid:
                continue
        conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    statuses = [s for got in answers.values() for s in got]
    return {
        "concurrency": concurrency,
        "requests": requests,
        "wall_s": wall,
        "ok": statuses.count(200),
        "status_503": statuses.count(503),
        "other_status": len([s for s in statuses if s not in (200, 503)]),
        "client_errors": errors,
        "ids_answered_once": sorted(answers) == sorted(f"{prefix}-{k}" for k in range(requests))
        and all(len(v) == 1 for v in answers.values()),
        "p50_s": statistics.median(latencies) if latencies else None,
        "p99_s": float(np.percentile(latencies, 99)) if latencies else None,
        "throughput_per_s": statuses.count(200) / wall,
        "latencies": latencies,
    }


def paired(service: Service, detector, views, body: bytes, repeats: int) -> dict:
    """The API's own predict of the same views in this process and one service request,
    alternated `repeats` times (after a warm-up of each), so that both see the same load of
    a shared machine; the ratio of the medians is the service's latency in API units."""
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=120)
    api, served, server_predict = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = detector.predict(views).score
        for k in range(repeats + 1):
            start = time.perf_counter()
            detector.predict(views)
            api.append(time.perf_counter() - start)
            start = time.perf_counter()
            conn.request(
                "POST", "/predict", body=body, headers={**headers, "X-Request-ID": f"p{k}"}
            )
            answer = json.loads(conn.getresponse().read())
            served.append(time.perf_counter() - start)
            server_predict.append(answer["timing_ms"]["predict"] / 1e3)  # the worker's batch
            assert answer["score"] == expected, (answer["score"], expected)
    conn.close()
    api, served, server_predict = api[1:], served[1:], server_predict[1:]
    return {
        "repeats": repeats,
        "api_median_s": statistics.median(api),
        "service_median_s": statistics.median(served),
        "ratio_of_medians": statistics.median(served) / statistics.median(api),
        "median_paired_ratio": statistics.median(s / a for s, a in zip(served, api, strict=True)),
        "overhead_ms": (statistics.median(served) - statistics.median(api)) * 1e3,
        # Within the service's own process: the request against its predict inside it (HTTP,
        # parsing, decoding, queueing, answering), independent of how the machine's load
        # treats two processes.
        "server_predict_median_s": statistics.median(server_predict),
        "service_over_its_predict": statistics.median(
            s / p for s, p in zip(served, server_predict, strict=True)
        ),
    }


def fit_models(work: Path) -> dict[str, tuple[Path, list[np.ndarray]]]:
    from vsad.data import make_category
    from vsad.detector import VSAD, PatchKNN, PatchKNNConfig

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        big = make_category(n_train=8, n_test=2, n_views=5, image_size=256, seed=1)
        VSAD().fit(big.train, progress=False).save(work / "default")
        out["default"] = (work / "default", big.test[0].images)
        small = make_category(n_train=8, n_test=2, n_views=5, image_size=64, seed=2)
        PatchKNN(PatchKNNConfig(image_size=64)).fit(small.train, progress=False).save(work / "tiny")
        out["tiny"] = (work / "tiny", small.test[0].images)
    return out


def machine() -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="fewer requests (smoke run)")
    parser.add_argument("--rss-requests", type=int, default=10_000)
    parser.add_argument(
        "--paired-only", action="store_true", help="only the paired c=1 latencies (~3 min)"
    )
    args = parser.parse_args()
    scale = 0.25 if args.quick else 1.0
    results: dict = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    with tempfile.TemporaryDirectory() as tmp:
        models = fit_models(Path(tmp))
        from vsad.detector import load_detector

        for name, (model, views) in models.items():
            body = multipart(views)
            detector = load_detector(model)
            row = {"body_bytes": len(body), "levels": {}, "paired_c1": {}}
            # "auto": the service's default, a size chosen at start by timing the model.
            for max_batch in ("auto", "8") if name == "default" else ("1", "auto"):
                batch_args = () if max_batch == "auto" else ("--max-batch", max_batch)
                service = Service(model, *batch_args, "--max-queue", "32")
                try:
                    load(service, body, concurrency=1, requests=3, prefix="warm")
                    limits = service.request("GET", "/info")[1]["limits"]
                    row.setdefault("chosen_max_batch", {})[max_batch] = limits["max_batch"]
                    row.setdefault("auto_timings", {})[max_batch] = limits["max_batch_timings"]
                    repeats = max(5, int((30 if name == "default" else 200) * scale))
                    pair = paired(service, detector, views, body, repeats)
                    row["paired_c1"][f"max_batch={max_batch}"] = pair
                    print(f"{name} max_batch={max_batch} paired c=1: service "
                          f"{pair['service_median_s'] * 1e3:.1f} ms, API "
                          f"{pair['api_median_s'] * 1e3:.1f} ms, ratio "
                          f"{pair['ratio_of_medians']:.3f}; service / its own predict "
                          f"{pair['service_over_its_predict']:.3f}", flush=True)  # fmt: skip
                    if args.paired_only:
                        continue
                    api = pair["api_median_s"]
                    # Rounds of c = 1, 4, 16 in turn: a shared machine's load drifts, and each
                    # concurrency then sees the same drift; medians over rounds.
                    runs: dict[int, list] = {1: [], 4: [], 16: []}
                    base = 12 if name == "default" else 300
                    for r in range(2 if name == "default" else 3):
                        for c in runs:
                            n = max(int(base * scale * {1: 1, 4: 2, 16: 4}[c]), 2 * c)
                            tag = f"{name}-b{max_batch}-c{c}-r{r}"
                            runs[c].append(load(service, body, concurrency=c, requests=n,
                                                prefix=tag))  # fmt: skip
                    levels = {}
                    for c, got in runs.items():
                        lat = [x for run in got for x in run.pop("latencies")]
                        levels[c] = {
                            "rounds": got,
                            "p50_s": statistics.median(lat),
                            "p99_s": float(np.percentile(lat, 99)),
                            "throughput_per_s": statistics.median(
                                run["throughput_per_s"] for run in got
                            ),
                            "p50_over_api": statistics.median(lat) / api,
                        }
                        lv = levels[c]
                        print(f"{name} max_batch={max_batch} c={c}: p50 {lv['p50_s'] * 1e3:.1f} ms"
                              f" p99 {lv['p99_s'] * 1e3:.1f} ms {lv['throughput_per_s']:.2f}/s "
                              f"(rounds {[round(g['throughput_per_s'], 2) for g in got]}; "
                              f"API {api * 1e3:.1f} ms)", flush=True)  # fmt: skip
                    levels["c16_over_c1"] = (
                        levels[16]["throughput_per_s"] / levels[1]["throughput_per_s"]
                    )
                finally:
                    service.stop()
                row["levels"][f"max_batch={max_batch}"] = levels
            results[name] = row
        if args.paired_only:
            if args.out:
                from vsad._atomic import atomic_write_json

                atomic_write_json(args.out, results)
            return 0

        # Memory over many requests (tiny model, concurrency 4).
        model, views = models["tiny"]
        body = multipart(views)
        service = Service(model, "--max-batch", "8", "--max-queue", "32")
        samples: list[tuple[int, float]] = []
        total = int(args.rss_requests * (0.2 if args.quick else 1.0))
        try:
            load(service, body, concurrency=4, requests=200, prefix="rss-warm")
            samples.append((0, service.rss_mb()))
            marks = set(range(total // 10, total + 1, total // 10))

            def progress(done: int) -> None:
                if done in marks:
                    samples.append((done, service.rss_mb()))

            run = load(
                service, body, concurrency=4, requests=total, prefix="rss", on_progress=progress
            )
            samples.append((total, service.rss_mb()))
        finally:
            code = service.stop()
        rss = [mb for _, mb in samples]
        results["rss"] = {"requests": total, "after_warmup_mb": rss[0], "samples": samples,
                          "growth_mb": max(rss) - rss[0], "run": run,
                          "exit_code": code}  # fmt: skip
        print(f"RSS over {total} requests: {rss[0]:.1f} -> max {max(rss):.1f} MB "
              f"(+{max(rss) - rss[0]:.1f}); ok {run['ok']}, other {run['other_status']}, "
              f"client errors {len(run['client_errors'])}", flush=True)  # fmt: skip

        # A burst beyond the queue (default model: 0.3-0.5 s per sample): 64 at once.
        model, views = models["default"]
        body = multipart(views)
        service = Service(model, "--max-batch", "4", "--max-queue", "8")
        try:
            burst = load(service, body, concurrency=64, requests=64, prefix="burst")
            burst.pop("latencies")
            alive, _ = service.request("GET", "/health")
        finally:
            code = service.stop()
        service.log.seek(0)
        drained = "queue drained" in service.log.read().decode(errors="replace")
        # uvicorn re-raises SIGTERM after its graceful shutdown: -15 is the normal end.
        burst.update({"alive_after": alive == 200, "exit_code": code, "drained": drained})
        results["burst"] = burst
        print(f"burst of 64 (queue 8, batch 4): {burst['ok']} answered 200, {burst['status_503']} "
              f"503, {burst['other_status']} other, every id once: {burst['ids_answered_once']}, "
              f"alive after: {burst['alive_after']}, drained {drained}, exit {code}",
              flush=True)  # fmt: skip
    if args.out:
        from vsad._atomic import atomic_write_json

        atomic_write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
