"""Serve the collector with uvicorn, against DATABASE_URL or the embedded PostgreSQL."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import uvicorn

from pixelpipe.database import database_url
from pixelpipe.migrations import migrate
from pixelpipe.process import exit_on_sigterm
from pixelpipe.settings import Settings


def app_from_env():
    """uvicorn factory: each worker process builds its app from the environment."""
    from ingest_service.app import create_app

    extra_routes = []
    if os.environ.get("PIXELPIPE_DEMO_PAGE"):  # set by `pixelpipe up --demo`
        from starlette.responses import FileResponse
        from starlette.routing import Route

        page = Path(__file__).resolve().parent / "static" / "demo.html"
        extra_routes.append(Route("/demo", lambda request: FileResponse(page), methods=["GET"]))
    app = create_app(Settings.from_env(), os.environ["DATABASE_URL"], extra_routes)
    # Every request allocates a few short-lived objects; the default GC thresholds then run
    # full collections over everything imported at start-up, and those pauses were the pixel's
    # p99 (measured in docs/benchmarks.md).
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    return app


def serve(settings: Settings, host: str | None = None, port: int | None = None,
          workers: int | None = None) -> int:
    exit_on_sigterm()
    with database_url(settings) as url:
        migrate(url)  # idempotent and locked; partitions ahead so no insert hits the default
        os.environ["DATABASE_URL"] = url  # the worker processes read it
        uvicorn.run(
            "ingest_service.server:app_from_env",
            factory=True,
            host=host or settings.collector_host,
            port=port or settings.collector_port,
            workers=workers or settings.collector_workers,
            access_log=False,
            # The client address comes from our own rule (PIXELPIPE_TRUSTED_PROXIES, one rule
            # for every route); uvicorn's would trust X-Forwarded-For from loopback by default.
            proxy_headers=False,
            http="ingest_service.http_limits:BoundedHttpToolsProtocol",
            log_level="info",
            timeout_graceful_shutdown=30,
        )
    return 0
