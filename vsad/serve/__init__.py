"""`vsad serve`: an inspection service over HTTP (FastAPI + uvicorn) with the model loaded once.

Why FastAPI + uvicorn: both are widely used and maintained, pure Python wheels (no compiler on
a line PC), async I/O so that slow or broken uploads never block the model's thread, and
graceful shutdown (stop accepting, finish the open requests) built in. The model runs on one
worker thread (`vsad.serve.batcher`), the event loop only parses, checks and answers.

`serve(...)` is what the command runs; `create_app(detector, ServeSettings(...))` gives the
application for tests or another ASGI server. The packages are the `serve` extra
(`pip install "vsad[serve]"`); without them `vsad serve` says so and exits.
"""

from __future__ import annotations

import ipaddress
import socket

SERVE_PACKAGES = ("fastapi", "uvicorn", "multipart")
INSTALL_HINT = 'pip install "vsad[serve]"  (fastapi, uvicorn, python-multipart)'


def check_installed() -> None:
    import importlib.util

    missing = [m for m in SERVE_PACKAGES if importlib.util.find_spec(m) is None]
    if missing:
        names = {"multipart": "python-multipart"}
        raise ImportError(
            f"vsad serve needs {', '.join(names.get(m, m) for m in missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed: {INSTALL_HINT}"
        )


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) resolves to loopback addresses only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def serve(
    detector,
    *,
    host: str = "127.0.0.1",
    port: int = 8470,
    settings=None,
    log_level: str = "info",
    graceful_timeout: int = 60,
) -> None:
    """Runs the service until SIGINT/SIGTERM; then finishes the requests it accepted."""
    import uvicorn

    from vsad.serve.app import ServeSettings, create_app

    settings = settings or ServeSettings()
    if not is_loopback(host) and not settings.token:
        raise ValueError(
            f"host: {host!r} is reachable from other machines; give a token (--token-file FILE "
            "or the VSAD_SERVE_TOKEN variable) so that only clients holding it are answered"
        )
    app = create_app(detector, settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        workers=1,
        timeout_graceful_shutdown=graceful_timeout,
        # Connections beyond this get uvicorn's own plain 503 (no request id, no Retry-After);
        # the queue answers long before. It bounds the bodies held at once.
        limit_concurrency=max(256, 8 * (settings.max_queue + settings.max_batch)),
        access_log=log_level == "debug",
    )
    uvicorn.Server(config).run()
