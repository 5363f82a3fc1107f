"""POST /collect: the tracker's and server-side senders' own route, as one row of the write path.

Its JSON is ours (one event, an array, or the batch envelope, events.py); a server-side sender may
add `Authorization: Bearer <write key>`, checked before the body is read.
"""

from __future__ import annotations

from starlette.requests import Request

from ingest_service.events import Limits, decode_body, parse_events
from ingest_service.http.openapi import COLLECT_OPERATION
from ingest_service.http.write_path import KeyRule, WriteRoute
from ingest_service.sdks import SdkBatch


def bearer_key(authorization: str | None) -> str | None:
    """The key of `Authorization: Bearer <key>`; None for any other header."""
    scheme, _, key = (authorization or "").partition(" ")
    return key.strip() or None if scheme.lower() == "bearer" else None


def _sent_key(request: Request) -> tuple[bool, str | None]:
    # Any Authorization header is a claim to a key: one that is not a valid Bearer key is refused.
    authorization = request.headers.get("authorization")
    return authorization is not None, bearer_key(authorization)


def _decode(request: Request, body: bytes, limits: Limits) -> bytes:
    # /collect checks the media type (415 for anything but JSON or text/plain).
    return decode_body(body, request.headers.get("content-type"), request.headers.get("content-encoding"), limits)


def _translate(payload: bytes, request: Request, call: str | None, limits: Limits) -> SdkBatch:
    events, envelope = parse_events(payload, limits)
    return SdkBatch(events, None, len(payload), envelope)


COLLECT = WriteRoute(
    paths=("/collect",),
    summary=COLLECT_OPERATION["post"]["summary"],
    request_schema=COLLECT_OPERATION["post"]["requestBody"]["content"]["application/json"]["schema"],
    key=KeyRule("header", "Authorization", "Bearer", required=False, read=_sent_key,
                refusal="The Authorization header holds no valid write key (Bearer <key>); "
                        "`pixelpipe site key SITE` makes one. Nothing was stored."),
    translate=_translate,
    decode=_decode,
    too_large_remedy="send smaller batches",
    described=COLLECT_OPERATION,
)
