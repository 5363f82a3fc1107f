"""The operator's and the browser's other endpoints: the tracker script, health, readiness,
metrics, the OpenAPI document, and the admin port (PIXELPIPE_ADMIN_PORT) that serves metrics and
readiness apart from the internet-facing port."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from pathlib import Path

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest_service.http.bodies import json_response
from ingest_service.intake import RETRY_AFTER_SECONDS, IntakeCore

STATIC = Path(__file__).resolve().parent.parent / "static"


class Operator:
    """The endpoints that carry no events."""

    def __init__(self, core: IntakeCore, openapi: dict):
        self.core = core
        self.openapi_body = orjson.dumps(openapi)
        tracker = (STATIC / "t.js").read_bytes()
        self.tracker_js = tracker
        self.tracker_gz = gzip.compress(tracker, 9, mtime=0)  # what browsers download (~2.6 KB)
        self.tracker_etag = '"' + hashlib.sha256(tracker).hexdigest()[:16] + '"'

    def routes(self, on_admin_port: bool) -> list[Route]:
        """/readyz and /metrics are on the main port unless the admin port serves them."""
        return [
            Route("/t.js", self.tracker, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            *([] if on_admin_port else [Route("/readyz", self.readyz, methods=["GET"]),
                                        Route("/metrics", self.metrics_text, methods=["GET"])]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]

    async def tracker(self, request: Request) -> Response:
        gzipped = "gzip" in request.headers.get("accept-encoding", "")
        # Each encoding is its own representation, so its own ETag.
        etag = self.tracker_etag[:-1] + '-gz"' if gzipped else self.tracker_etag
        headers = {"Cache-Control": "public, max-age=300", "ETag": etag, "Vary": "Accept-Encoding"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        if gzipped:
            return Response(self.tracker_gz, media_type="application/javascript",
                            headers={**headers, "Content-Encoding": "gzip"})
        return Response(self.tracker_js, media_type="application/javascript", headers=headers)

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "alive"})

    async def readyz(self, request: Request) -> Response:
        status, body = await self.core.readiness()
        return Response(body, status, {"Retry-After": RETRY_AFTER_SECONDS} if status != 200 else None,
                        media_type="application/json")

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.core.metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi(self, request: Request) -> Response:
        return Response(self.openapi_body, media_type="application/json")

    async def serve_admin(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """GET /metrics and /readyz on PIXELPIPE_ADMIN_PORT (127.0.0.1 only), one per connection."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            path = parts[1].split(b"?")[0] if len(parts) == 3 and parts[0] == b"GET" else b""
            if path == b"/metrics":
                status, body, kind = 200, self.core.metrics.render().encode(), b"text/plain; version=0.0.4"
            elif path == b"/readyz":
                status, body = await self.core.readiness()
                kind = b"application/json"
            else:
                status, body, kind = 404, b'{"error": "not_found"}', b"application/json"
            writer.write(b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
                         b"connection: close\r\n\r\n" % (status, b"OK" if status == 200 else b"-", kind,
                                                         len(body)) + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
