"""The collector's uvicorn factory: each worker process builds its app from the environment.

Starting uvicorn, and choosing the database, is the command line's job (pixelpipe/collector.py)."""

from __future__ import annotations

import gc
import os

from pixelpipe.core.settings import Settings


def app_from_env():
    """uvicorn factory: each worker process builds its app from the environment."""
    from ingest_service.app import create_app

    extra_routes = []
    if os.environ.get("PIXELPIPE_DEMO_PAGE"):  # set by `pixelpipe up --demo`
        from ingest_service.http.demo import demo_routes

        extra_routes = demo_routes(os.environ["DATABASE_URL"])
    app = create_app(Settings.from_env(), os.environ["DATABASE_URL"], extra_routes)
    # Every request allocates a few short-lived objects; the default GC thresholds then run
    # full collections over everything imported at start-up, and those pauses were the pixel's
    # p99 (measured in docs/benchmarks.md).
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    return app
