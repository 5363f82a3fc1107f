"""GET /i, the tracking pixel, and the ASGI entry in front of Starlette.

The pixel is the hottest path and CPU-bound in the collector: as a bare ASGI endpoint it skips
Starlette's request and response objects and its middleware (docs/benchmarks.md). Its event is
its query string: there is no body to refuse before reading, and no key.
"""

from __future__ import annotations

import base64
from urllib.parse import parse_qsl

from starlette.applications import Starlette

from ingest_service.cors import CorsPolicy
from ingest_service.http.bodies import json_response, scope_context
from ingest_service.http.write_path import refuse_early
from ingest_service.intake import IntakeCore, Received
from ingest_service.sdks.snowplow import is_tracker_query, tracker_event

# A 1x1 transparent GIF.
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
_PIXEL_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"image/gif"), (b"content-length", str(len(PIXEL_GIF)).encode()),
                (b"cache-control", b"no-store, max-age=0")],
}
_PIXEL_BODY = {"type": "http.response.body", "body": PIXEL_GIF}
_EMPTY_BODY = {"type": "http.response.body", "body": b""}


async def pixel(core: IntakeCore, cors: CorsPolicy, scope, receive, send) -> None:
    """GET and HEAD /i (CORS does not apply to an image, except to Snowplow's credentialed GET)."""
    if scope["method"] == "HEAD":  # a link checker or a prefetch: no event
        await send(_PIXEL_START)
        await send(_EMPTY_BODY)
        return
    context, origin = scope_context(core, scope)
    query = scope["query_string"]
    received = Received("/i", None, context, query, len(query))
    params = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
    if is_tracker_query(params):  # a Snowplow tracker's GET
        params = tracker_event(params, context.user_agent)
    outcome = core.ip_limited(context, 1) or await core.ingest(received, [params], None, len(query))
    if outcome.status in (429, 503):
        await json_response(outcome.body(), outcome.status, outcome.headers())(scope, receive, send)
        return
    # Always the GIF, also for bad input (it is in the dead letter): a page never shows a
    # broken image.
    if origin is None:
        await send(_PIXEL_START)
    else:  # Snowplow's GET is a credentialed fetch: CORS as for every other route
        await send({**_PIXEL_START, "headers": _PIXEL_START["headers"] + cors.response_headers(origin)})
    await send(_PIXEL_BODY)


class PixelFirst:
    """The collector's ASGI app: GET /i goes straight to the pixel; every POST (every write
    route, including any added later) first meets the refusal of an address in debt, before
    Starlette, the body, inflating or parsing; everything else goes to Starlette."""

    def __init__(self, app: Starlette, collector: IntakeCore, cors: CorsPolicy):
        self.app = app
        self.collector = collector
        self.cors = cors

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/i" and scope["method"] in ("GET", "HEAD"):
            await pixel(self.collector, self.cors, scope, receive, send)
        elif scope["type"] == "http" and scope["method"] == "POST":
            if not await refuse_early(self.collector, scope, receive, send):
                await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, send)
