"""Every other SDK's write routes: one row per protocol (docs/sdks.md).

A row says where the route is, where its write key is, how its body is decoded and translated
(ingest_service/sdks/, pure code) and the answer's shape its SDK reads. The app routes by these
rows and the OpenAPI document is built from them. Adding a protocol: a module in sdks/ and a row.
"""

from __future__ import annotations

from starlette.requests import Request

from ingest_service.events import Limits
from ingest_service.http.collect import bearer_key
from ingest_service.http.openapi import OBJECT, POSTHOG_EVENT, SEGMENT_MESSAGE, SNOWPLOW_PAYLOAD
from ingest_service.http.write_path import KeyRule, WriteRoute
from ingest_service.sdks import jitsu, posthog, rudderstack, segment, snowplow


def _segment_not_found(call: str) -> dict:
    detail = f"/v1/{call} is not a Segment endpoint; use one of {', '.join('/v1/' + c for c in segment.CALLS)}."
    return {"code": "not_found", "message": detail, "error": "not_found", "detail": detail}


def _jitsu_not_found(call: str) -> dict:
    return {"error": "not_found",
            "detail": f"/api/s/{call} is not a Jitsu event type; use page, track, identify, group, alias or screen."}


def _present(key: str | None) -> tuple[bool, str | None]:
    return bool(key), key


def _posthog_decode(request: Request, body: bytes, limits: Limits):
    headers = request.headers
    return posthog.decode_payload(body, headers.get("content-type"), headers.get("content-encoding"),
                                  request.query_params.get("compression"), limits)


SEGMENT = WriteRoute(
    paths=("/v1/{call}",),
    summary="Segment's HTTP API (Segment's and RudderStack's SDKs): /v1/batch holds {batch: [...]}, the "
            "other calls one message. The write key is the basic-auth user.",
    request_schema={"oneOf": [{**OBJECT, "required": ["batch"], "properties": {
        "batch": {"type": "array", "items": SEGMENT_MESSAGE, "maxItems": 1000}}}, SEGMENT_MESSAGE]},
    # The basic-auth user, else the body's writeKey.
    key=KeyRule("header", "Authorization", "Basic", required=True,
                read=lambda request: _present(segment.basic_auth_user(request.headers.get("authorization")))),
    translate=lambda payload, request, call, limits: segment.segment_batch(
        payload, call, request.headers.get("authorization"), limits),
    answer=segment.segment_answer,
    calls=segment.CALLS, short_calls=segment.SHORT_CALLS, unknown_call=_segment_not_found,
)

POSTHOG = WriteRoute(
    paths=("/batch/", "/capture/", "/e/", "/i/v0/e/"),  # /i/v0/e/: newer posthog-js
    summary="PostHog's capture API: a batch {api_key, batch: [...]}, one event or an array; gzip, or a "
            "form field `data` (base64, or lz-string with ?compression=lz64).",
    request_schema={"oneOf": [{**OBJECT, "required": ["batch"], "properties": {
        "api_key": {"type": "string"},
        "batch": {"type": "array", "items": POSTHOG_EVENT, "maxItems": 1000}}},
        POSTHOG_EVENT, {"type": "array", "items": POSTHOG_EVENT, "maxItems": 1000}]},
    key=KeyRule("body", "api_key", required=True),
    translate=lambda payload, request, call, limits: posthog.capture_batch(payload, limits),
    answer=posthog.capture_answer,
    decode=_posthog_decode,
)

SNOWPLOW = WriteRoute(
    paths=("/com.snowplowanalytics.snowplow/tp2",),  # their GET is the pixel's /i
    summary="Snowplow's tracker protocol (POST): payload_data with an array of tracker payloads; `aid` "
            "is the site. Their GET is /i.",
    request_schema={"type": "object", "required": ["data"], "properties": {
        "schema": {"type": "string"},
        "data": {"type": "array", "items": SNOWPLOW_PAYLOAD, "maxItems": 1000}}},
    # Snowplow's protocol has no key; a sender for a site that requires one adds a Bearer header.
    key=KeyRule("header", "Authorization", "Bearer", required=False,
                read=lambda request: _present(bearer_key(request.headers.get("authorization")))),
    translate=lambda payload, request, call, limits: snowplow.tp2_batch(
        payload, request.headers.get("user-agent"), limits),
)

RUDDERSTACK_BEACON = WriteRoute(
    paths=("/beacon/v1/batch",),
    summary="RudderStack's beacon transport (its browser SDK with useBeacon): {batch: [...]} sent as "
            "text/plain, the write key in ?writeKey=.",
    request_schema={**OBJECT, "required": ["batch"], "properties": {
        "batch": {"type": "array", "items": SEGMENT_MESSAGE, "maxItems": 1000}}},
    key=KeyRule("query", "writeKey", required=True,
                read=lambda request: _present(request.query_params.get("writeKey"))),
    translate=lambda payload, request, call, limits: rudderstack.beacon_batch(
        payload, request.query_params.get("writeKey"), limits),
    answer=segment.segment_answer,
)

JITSU = WriteRoute(
    paths=("/api/s/{call}", "/api/s/s2s/{call}"),
    summary="Jitsu's SDKs (@jitsu/js): one Segment-shaped event of the path's type; the write key in "
            "X-Write-Key. Stored with source `jitsu`.",
    request_schema=SEGMENT_MESSAGE,
    key=KeyRule("header", "X-Write-Key", required=True,
                read=lambda request: _present(request.headers.get("x-write-key"))),
    translate=lambda payload, request, call, limits: jitsu.jitsu_batch(
        payload, call, request.headers.get("x-write-key"), limits),
    answer=segment.segment_answer,
    calls=tuple(call for call in segment.CALLS if call != "batch"), unknown_call=_jitsu_not_found,
)

SDK_ROUTES = (SEGMENT, POSTHOG, SNOWPLOW, RUDDERSTACK_BEACON, JITSU)
