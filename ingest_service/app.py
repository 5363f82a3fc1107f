"""Assembles the collector: the intake core (intake.py), its HTTP front ends (http/), the CORS
layer and the lifespan of the background tasks. Nothing else lives here.

Every request to a write route takes one path (http/write_path.py) into the one core; every
2xx means: committed.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from ingest_service.cors import CorsMiddleware, CorsPolicy
from ingest_service.http.collect import COLLECT
from ingest_service.http.openapi import document
from ingest_service.http.operator import STATIC, Operator
from ingest_service.http.pixel import PixelFirst
from ingest_service.http.sdk_routes import SDK_ROUTES
from ingest_service.http.write_path import endpoint
from ingest_service.intake import IntakeCore
from pixelpipe.core.settings import Settings

__all__ = ["OPENAPI", "STATIC", "WRITE_ROUTES", "create_app"]

# Every write route, in the order Starlette tries them; the OpenAPI document lists the same.
WRITE_ROUTES = (COLLECT, *SDK_ROUTES)
OPENAPI = document(WRITE_ROUTES)


def create_app(settings: Settings, database_url: str, extra_routes: list | None = None) -> PixelFirst:
    """The collector as an ASGI app; `extra_routes` lets `pixelpipe up --demo` add /demo."""
    core = IntakeCore(settings, database_url)
    operator = Operator(core, OPENAPI)
    cors = CorsPolicy(settings.cors_origins, core.site_hosts)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await core.sites.refresh()
        background = [asyncio.create_task(core.sites.keep_fresh()),
                      asyncio.create_task(core.sites.follow_changes()),
                      asyncio.create_task(core.summarise_floods())]
        admin = None
        if settings.admin_port:
            # Every worker binds the port (SO_REUSEPORT) and answers for itself, as on the main port.
            admin = await asyncio.start_server(operator.serve_admin, "127.0.0.1", settings.admin_port,
                                               reuse_port=True, limit=8192)
        await core.writer.start()
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            if admin is not None:
                admin.close()
            await core.write_flood_summary()
            # SIGTERM: uvicorn stops accepting and lets requests finish; then we flush the rest.
            await core.writer.close()
            core.slow_decoding.close()

    app = Starlette(
        routes=[
            *(Route(path, endpoint(core, route), methods=["POST"]) for route in WRITE_ROUTES for path in route.paths),
            *operator.routes(on_admin_port=bool(settings.admin_port)),
            *(extra_routes or []),
        ],
        middleware=[Middleware(CorsMiddleware, policy=cors)],
        lifespan=lifespan,
    )
    return PixelFirst(app, core, cors)
