"""What the HTTP request tells the intake core: its context, and its body read within the cap."""

from __future__ import annotations

import re

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ingest_service.events import BodyRejected, RequestContext
from ingest_service.intake import IntakeCore

_CONTENT_LENGTH = re.compile(r"[0-9]{1,20}")
_CONTEXT_HEADERS = frozenset((b"x-forwarded-for", b"user-agent", b"referer", b"origin"))


def json_response(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def forwarded_for(values: list[str]) -> str | None:
    """Every X-Forwarded-For line of a request, in order, as one chain: the one rule all
    routes share (a proxy may add a line instead of appending to the last one)."""
    return ",".join(values) if values else None


def declared_size(request: Request) -> int:
    """The body's size as its Content-Length says, for a request refused before reading it."""
    declared = request.headers.get("content-length", "")
    return int(declared) if _CONTENT_LENGTH.fullmatch(declared) else 0


def request_context(core: IntakeCore, request: Request) -> RequestContext:
    headers = request.headers
    return core.context(request.client.host if request.client else None,
                        forwarded_for(headers.getlist("x-forwarded-for")),
                        headers.get("user-agent"), headers.get("referer"), headers.get("origin"))


def scope_context(core: IntakeCore, scope) -> tuple[RequestContext, str | None]:
    """The request context from raw ASGI headers (and the Origin), without Starlette: the
    pixel and the refusal of an address in debt cost as little as possible."""
    headers: dict[bytes, str] = {}
    forwarded: list[str] = []
    for name, value in scope["headers"]:
        if name in _CONTEXT_HEADERS:
            if name == b"x-forwarded-for":
                forwarded.append(value.decode("latin-1"))
            else:
                headers[name] = value.decode("latin-1")
    peer = scope.get("client")
    origin = headers.get(b"origin")
    return core.context(peer[0] if peer else None, forwarded_for(forwarded), headers.get(b"user-agent"),
                        headers.get(b"referer"), origin), origin


async def read_body(core: IntakeCore, request: Request) -> tuple[bytes, int]:
    """Read at most the cap (plus one chunk to tell it was exceeded); return (body, size).
    BodyRejected when the client is gone before the end."""
    cap = core.limits.max_body_bytes
    declared = request.headers.get("content-length", "")
    if _CONTENT_LENGTH.fullmatch(declared) and int(declared) > cap:
        return b"", int(declared)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                chunks.append(chunk[: max(0, core.settings.dead_letter_body_cap - (size - len(chunk)))])
                return b"".join(chunks), size
            chunks.append(chunk)
    except ClientDisconnect:  # gone, or closed by the body timeout (http_limits.py)
        raise BodyRejected(408, "body_incomplete", f"The client sent {size} bytes of its body and "
                           "no more in time (PIXELPIPE_BODY_TIMEOUT_SECONDS).") from None
    return b"".join(chunks), size
