"""Segment's HTTP tracking API, which Segment's and RudderStack's SDKs speak: POST /v1/batch and
/v1/track, /page, /screen, /identify, /group, /alias, the write key as HTTP basic auth user."""

from __future__ import annotations

import base64

from ingest_service.events import EVENT_TYPE_MAX, BodyRejected, Limits, SdkEvent
from ingest_service.sdks import SdkBatch, as_dict, checked_batch, load_json, without_credentials

SOURCE = "segment"
CALLS = ("batch", "track", "page", "screen", "identify", "group", "alias")
# analytics.js (Segment's browser SDK) posts to /v1/t, /v1/p, ... under its apiHost.
SHORT_CALLS = {call[0]: call for call in CALLS}
# Where Segment's SDKs may put the write key inside a message (a single call's body is one).
CREDENTIALS = ("writeKey",)


def basic_auth_user(authorization: str | None) -> str | None:
    """The user of `Authorization: Basic base64(user:password)`: where the SDKs put the write key.
    None when there is none, or when it does not decode (segment_batch refuses that request)."""
    try:
        return _decoded_basic_user(authorization)
    except ValueError:
        return None


def _decoded_basic_user(authorization: str | None) -> str | None:
    """Every way a Basic header fails to decode is a ValueError: binascii.Error, the
    UnicodeDecodeError of a user that is not UTF-8, and the plain ValueError b64decode raises for
    a non-ASCII character (which was a 500)."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    return base64.b64decode(encoded.strip(), validate=True).decode().partition(":")[0] or None


def message_event(message, call: str) -> SdkEvent:
    """One Segment message under our names: a track is named by its event, the other calls by
    their type; userId, else anonymousId, is the visitor. (On the hot path of every Segment
    batch: plain lookups, no intermediate dicts.)"""
    if type(message) is not dict:
        return message  # the collector dead-letters it (not_an_object)
    kind = message.get("type") or call
    context = message.get("context")
    if type(context) is not dict:
        context = _EMPTY
    page = context.get("page")
    if type(page) is not dict:
        page = _EMPTY
    url, path = page.get("url"), page.get("path")
    if url is None or path is None:  # a page call may carry them in its properties
        properties = as_dict(message.get("properties"))
        url, path = url or properties.get("url"), path or properties.get("path")
    name = message.get("event") if kind == "track" else kind
    return SdkEvent({
        "eventType": name[:EVENT_TYPE_MAX] if type(name) is str else None,
        "eventId": message.get("messageId"),
        "visitorId": message.get("userId") or message.get("anonymousId"),
        "sessionId": context.get("sessionId"),
        "url": url,
        "path": path,
        "timestamp": message.get("timestamp") or message.get("originalTimestamp"),
        "userAgent": context.get("userAgent"),
    }, without_credentials(message, CREDENTIALS), SOURCE)


_EMPTY: dict = {}


def segment_batch(payload: bytes, call: str, authorization: str | None, limits: Limits) -> SdkBatch:
    """/v1/batch holds {"batch": [messages]}; /v1/<call> holds one message of that type."""
    document = load_json(payload)
    if not isinstance(document, dict):
        raise BodyRejected(400, "not_an_object", "The body must be a JSON object (a Segment message or batch).")
    if call == "batch":
        messages = document.get("batch")
        if not isinstance(messages, list):
            raise BodyRejected(400, "malformed_batch", '/v1/batch needs "batch": a JSON array of messages.')
    else:
        messages = [document]
    try:
        key = _decoded_basic_user(authorization) or document.get("writeKey")
    except ValueError:
        # The client meant to present a key: not passed over for one in the body.
        raise BodyRejected(400, "malformed_authorization",
                           "The Authorization header is not `Basic base64(writeKey:)` in ASCII; send the "
                           "site's write key as the SDK's writeKey.") from None
    return checked_batch([message_event(m, call) for m in messages], limits, key, len(payload))


def segment_answer(body: dict, status: int) -> dict:
    """Segment's own shape beside ours: the SDKs read `code` and `message` on an error."""
    if status < 300:
        return {"success": True, **body}
    return {"code": body.get("error"), "message": body.get("detail"), **body}
