"""Routes only: the pixel, /collect, the tracker script, health, readiness, metrics, OpenAPI.

Parsing lives in events.py, writing in writer.py. Every 2xx here means: committed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl

import orjson
import psycopg
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest_service.events import (
    EVENT_COLUMNS,
    BodyRejected,
    EventRejected,
    Limits,
    RequestContext,
    anonymize_ip,
    client_ip,
    decode_body,
    event_row,
    parse_events,
)
from ingest_service.metrics import CollectorMetrics
from ingest_service.openapi import OPENAPI
from ingest_service.writer import EventWriter, Overloaded, Unavailable
from pixelpipe.settings import Settings

# A 1x1 transparent GIF.
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
_PIXEL_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"image/gif"), (b"content-length", str(len(PIXEL_GIF)).encode()),
                (b"cache-control", b"no-store, max-age=0")],
}
_ANY_ORIGIN = [(b"access-control-allow-origin", b"*")]
_PIXEL_BODY = {"type": "http.response.body", "body": PIXEL_GIF}
RETRY_AFTER_SECONDS = "5"
_PIXEL_REQUEST_HEADERS = frozenset((b"x-forwarded-for", b"user-agent", b"referer", b"origin"))
STATIC = Path(__file__).resolve().parent / "static"
SITE_COLUMN = EVENT_COLUMNS.index("site_id")
BLOCKED_SITES_REFRESH_SECONDS = 30


def _json(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def _unavailable(reason: str) -> Response:
    return _json(
        {"error": "unavailable", "detail": f"{reason}; nothing from this request was stored, retry later."},
        503, {"Retry-After": RETRY_AFTER_SECONDS},
    )


class Collector:
    """The collector's state: settings, writer and metrics, shared by the route handlers."""

    def __init__(self, settings: Settings, database_url: str):
        self.settings = settings
        self.limits = Limits(settings.max_body_bytes, settings.max_batch_events)
        self.trusted = tuple(ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies)
        self.metrics = CollectorMetrics()
        self.writer = EventWriter(
            database_url,
            self.metrics,
            flush_interval=settings.flush_interval_ms / 1000,
            flush_max_rows=settings.flush_max_rows,
            queue_max_rows=settings.queue_max_rows,
            flushers=settings.flush_connections,
        )
        self.tracker_js = (STATIC / "t.js").read_bytes()
        self.database_url = database_url
        self.blocked_sites: frozenset[str] = frozenset()
        origins = frozenset(settings.cors_origins or ("*",))
        self.cors_origins = frozenset() if "*" in origins else origins  # empty: any origin

    async def refresh_blocked_sites(self) -> None:
        """Sites with sites.allowed = false; their events go to the dead letter."""
        try:
            async with await psycopg.AsyncConnection.connect(
                    self.database_url, connect_timeout=2, autocommit=True) as conn:
                cursor = await conn.execute("SELECT site_id FROM sites WHERE NOT allowed")
                self.blocked_sites = frozenset(row[0] for row in await cursor.fetchall())
        except psycopg.Error:
            pass  # keep the last known list; the writer reports the database itself

    async def keep_blocked_sites_fresh(self) -> None:
        while True:
            await asyncio.sleep(BLOCKED_SITES_REFRESH_SECONDS)
            await self.refresh_blocked_sites()

    def checked_row(self, candidate, context: RequestContext, envelope: dict | None = None) -> tuple:
        row = event_row(candidate, context, envelope)
        if row[SITE_COLUMN] in self.blocked_sites:
            raise EventRejected("site_not_allowed",
                                f"Site {row[SITE_COLUMN]!r} is not allowed (sites.allowed = false).")
        return row

    def context(self, peer: str | None, forwarded_for: str | None, user_agent: str | None,
                referer: str | None) -> RequestContext:
        ip = client_ip(peer, forwarded_for, self.trusted)
        if ip and self.settings.anonymize_ip:
            ip = anonymize_ip(ip)
        return RequestContext(datetime.now(UTC), ip, user_agent, referer)

    def request_context(self, request: Request) -> RequestContext:
        headers = request.headers
        return self.context(request.client.host if request.client else None,
                            headers.get("x-forwarded-for"), headers.get("user-agent"),
                            headers.get("referer"))

    def reject_row(self, reason: str, endpoint: str, content_type: str | None,
                   context: RequestContext, raw: bytes, size: int | None = None) -> tuple:
        cap = self.settings.dead_letter_body_cap
        return (reason, endpoint, content_type, context.client_ip,
                len(raw) if size is None else size, raw[:cap])

    async def commit(self, events: list[tuple], rejects: list[tuple]) -> Response | None:
        """Write and wait for the commit; a 503 response when that is impossible."""
        try:
            await self.writer.write(events, rejects)
        except Overloaded:
            self.metrics.requests_refused += 1
            return _unavailable("The collector's queue is full")
        except Unavailable:
            self.metrics.requests_refused += 1
            return _unavailable("The database is unavailable")
        return None

    # --- routes ----------------------------------------------------------------------------

    async def pixel(self, scope, receive, send) -> None:
        """GET /i as a bare ASGI endpoint: the hottest path skips Starlette's request and
        response objects and its middleware (CORS does not apply to an image)."""
        headers = {}
        for name, value in scope["headers"]:
            if name in _PIXEL_REQUEST_HEADERS:
                headers[name] = value.decode("latin-1")
        peer = scope.get("client")
        context = self.context(peer[0] if peer else None, headers.get(b"x-forwarded-for"),
                               headers.get(b"user-agent"), headers.get(b"referer"))
        query = scope["query_string"].decode("latin-1")
        try:
            events, rejects = [self.checked_row(dict(parse_qsl(query, keep_blank_values=True)), context)], []
        except EventRejected as error:
            events, rejects = [], [self.reject_row(f"{error.code}: {error.detail}", "/i", None, context,
                                                   query.encode("latin-1"))]
        try:
            refused = await self.commit(events, rejects)
        except psycopg.Error as error:  # the database refused the row: keep it in the dead letter
            reason = f"database_refused: {' '.join(str(error).split())}"
            refused = await self.commit([], [self.reject_row(reason, "/i", None, context,
                                                             query.encode("latin-1"))])
            events = []
        if refused is not None:
            await refused(scope, receive, send)
            return
        if events:
            self.metrics.request_events.observe(1)
        # Always the GIF, also for bad input (it is in the dead letter): a page never shows a
        # broken image.
        origin = headers.get(b"origin")
        if origin is None:
            await send(_PIXEL_START)
        elif not self.cors_origins:
            await send({**_PIXEL_START, "headers": _PIXEL_START["headers"] + _ANY_ORIGIN})
        else:
            allowed = [(b"access-control-allow-origin", origin.encode("latin-1"))] \
                if origin in self.cors_origins else []
            await send({**_PIXEL_START, "headers": [*_PIXEL_START["headers"], *allowed, (b"vary", b"Origin")]})
        await send(_PIXEL_BODY)

    async def collect(self, request: Request) -> Response:
        context = self.request_context(request)
        content_type = request.headers.get("content-type")
        body, size = await self._read_body(request)
        try:
            if size > self.limits.max_body_bytes:
                raise BodyRejected(
                    413, "body_too_large",
                    f"The body is larger than the {self.limits.max_body_bytes}-byte cap; send smaller batches.",
                )
            payload = decode_body(body, content_type,
                                  request.headers.get("content-encoding"), self.limits)
            candidates, envelope = parse_events(payload, self.limits)
        except BodyRejected as error:
            reject = self.reject_row(f"{error.code}: {error.detail}", "/collect", content_type, context,
                                     body, size)
            refused = await self.commit([], [reject])
            if refused is not None:
                return refused
            return _json({"error": error.code, "detail": error.detail, "accepted": 0, "rejected": 1},
                         error.status)
        events, rejects, errors = [], [], []
        for index, candidate in enumerate(candidates):
            try:
                events.append(self.checked_row(candidate, context, envelope))
            except EventRejected as error:
                try:
                    raw = orjson.dumps(candidate)
                except orjson.JSONEncodeError:
                    raw = body
                rejects.append(self.reject_row(
                    f"{error.code}: {error.detail} (event {index})", "/collect", content_type, context, raw))
                errors.append({"index": index, "error": error.code, "detail": error.detail})
        try:
            refused = await self.commit(events, rejects)
        except psycopg.Error as error:
            # The database refused these rows; keep the body in the dead letter instead.
            reason = f"database_refused: {' '.join(str(error).split())}"
            refused = await self.commit([], [self.reject_row(reason, "/collect", content_type, context, body)])
            if refused is not None:
                return refused
            return _json({"error": "database_refused", "detail": reason, "accepted": 0,
                          "rejected": len(candidates)}, 400)
        if refused is not None:
            return refused
        if events:
            self.metrics.request_events.observe(len(events))
        result = {"accepted": len(events), "rejected": len(rejects)}
        if errors:
            result["errors"] = errors[:50]
        if rejects and not events:
            # Nothing usable: a 4xx naming the (first) problem; all of it is in the dead letter.
            return _json({"error": errors[0]["error"], "detail": errors[0]["detail"], **result}, 400)
        return _json(result)

    async def _read_body(self, request: Request) -> tuple[bytes, int]:
        """Read at most the cap (plus one byte to tell it was exceeded); return (body, size)."""
        cap = self.limits.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            return b"", int(declared)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                chunks.append(chunk[: max(0, self.settings.dead_letter_body_cap - (size - len(chunk)))])
                return b"".join(chunks), size
            chunks.append(chunk)
        return b"".join(chunks), size

    async def tracker(self, request: Request) -> Response:
        return Response(self.tracker_js, media_type="application/javascript",
                        headers={"Cache-Control": "public, max-age=300"})

    async def healthz(self, request: Request) -> Response:
        return _json({"status": "alive"})

    async def readyz(self, request: Request) -> Response:
        if await self.writer.ping():
            return _json({"status": "ready"})
        return _json({"status": "unavailable", "detail": "The database is unreachable."}, 503,
                     {"Retry-After": RETRY_AFTER_SECONDS})

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi(self, request: Request) -> Response:
        return _json(OPENAPI)


class _PixelFirst:
    """The collector's ASGI app: GET /i goes straight to the pixel, everything else to Starlette.

    The pixel is CPU-bound in the collector: with Starlette's middleware chain and
    Request/Response objects out of its way (and the writer's round trips trimmed) it went from
    141 to ~90-100 us of CPU per request on 2 cores.
    """

    def __init__(self, app: Starlette, collector: Collector):
        self.app = app
        self.collector = collector

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/i" and scope["method"] in ("GET", "HEAD"):
            await self.collector.pixel(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def create_app(settings: Settings, database_url: str, extra_routes: list | None = None) -> _PixelFirst:
    """The collector as an ASGI app; `extra_routes` lets `pixelpipe up --demo` add /demo."""
    collector = Collector(settings, database_url)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await collector.refresh_blocked_sites()
        refresher = asyncio.create_task(collector.keep_blocked_sites_fresh())
        await collector.writer.start()
        try:
            yield
        finally:
            refresher.cancel()
            # SIGTERM: uvicorn stops accepting and lets requests finish; then we flush the rest.
            await collector.writer.close()

    app = Starlette(
        routes=[
            Route("/collect", collector.collect, methods=["POST"]),
            Route("/t.js", collector.tracker, methods=["GET"]),
            Route("/healthz", collector.healthz, methods=["GET"]),
            Route("/readyz", collector.readyz, methods=["GET"]),
            Route("/metrics", collector.metrics_text, methods=["GET"]),
            Route("/openapi.json", collector.openapi, methods=["GET"]),
            *(extra_routes or []),
        ],
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=sorted(collector.cors_origins) or ["*"],
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Content-Type", "Content-Encoding"],
                allow_credentials=False,
                max_age=86400,
            )
        ],
        lifespan=lifespan,
    )
    return _PixelFirst(app, collector)
