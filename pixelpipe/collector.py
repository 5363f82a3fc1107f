"""`pixelpipe collector`: the collector under uvicorn, against DATABASE_URL or the embedded
PostgreSQL, with the HTTP parser that refuses oversized lines and headers."""

from __future__ import annotations

import os

import uvicorn

from pixelpipe.core.migrations import migrate
from pixelpipe.core.settings import Settings
from pixelpipe.embedded_postgres import database_url
from pixelpipe.process import exit_on_sigterm


def serve(settings: Settings, host: str | None = None, port: int | None = None,
          workers: int | None = None, database=database_url) -> int:
    """`database(settings)`: a context manager yielding the URL (the CLI's finds a running stack)."""
    exit_on_sigterm()
    with database(settings) as url:
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
            # Idle keep-alive connections; slow headers and bodies are http_limits' timeouts.
            timeout_keep_alive=settings.keepalive_timeout_seconds,
        )
    return 0
