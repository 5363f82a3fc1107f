"""Snowplow's tracker protocol: GET /i with the tracker's parameters (beside our own pixel's) and
POST /com.snowplowanalytics.snowplow/tp2 with a payload_data array. `aid` (the app id) is the site."""

from __future__ import annotations

import base64

import orjson

from ingest_service.events import EVENT_TYPE_MAX, BodyRejected, EventRejected, Limits, SdkEvent
from ingest_service.sdks import SdkBatch, checked_batch, load_json

SOURCE = "snowplow"
# Snowplow's own names for its event codes (the enriched event_name); a self-describing event is
# named by its schema.
EVENT_NAMES = {"pv": "page_view", "pp": "page_ping", "se": "event", "tr": "transaction",
               "ti": "transaction_item", "ue": "unstruct"}
# Base64 fields and the names their decoded JSON is kept under (as a tracker sends it unencoded).
_ENCODED = (("cx", "co"), ("ue_px", "ue_pr"))


def is_tracker_query(params: dict) -> bool:
    """A Snowplow tracker's GET /i: it always sends the event code and its tracker version."""
    return "e" in params and "tv" in params


def _decoded(params: dict) -> dict:
    """The parameters with contexts and self-describing events as JSON, not (base64) text."""
    raw = dict(params)
    for encoded, plain in _ENCODED:
        if encoded in raw:
            # A tp2 payload is JSON: the field may hold any value. Only a string is base64 (str()
            # of a list nested 1,000 deep raised RecursionError: a 500).
            text = raw.pop(encoded)
            if not isinstance(text, str):
                raise EventRejected("bad_base64", f"The {encoded!r} parameter must be a base64 string.")
            try:
                # binascii.Error, a non-ASCII character's ValueError, orjson's JSONDecodeError
                # (also for nesting past its limit): all ValueErrors.
                raw[plain] = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            except ValueError:
                raise EventRejected("bad_base64", f"The {encoded!r} parameter is not base64 JSON.") from None
        elif isinstance(raw.get(plain), str):
            try:
                raw[plain] = orjson.loads(raw[plain])
            except orjson.JSONDecodeError:
                raise EventRejected("malformed_json", f"The {plain!r} parameter is not JSON.") from None
    return raw


def _event_name(code, raw: dict) -> str | None:
    """Snowplow's name for the event; tp2 payloads are JSON, so nothing here is assumed a string."""
    if not isinstance(code, str) or not code:
        return None  # the event is dead-lettered (missing_event_type)
    if code == "ue":
        envelope = raw.get("ue_pr")
        data = envelope.get("data") if isinstance(envelope, dict) else None
        schema = data.get("schema") if isinstance(data, dict) else None
        parts = schema.removeprefix("iglu:").split("/") if isinstance(schema, str) else []
        return parts[1][:EVENT_TYPE_MAX] if len(parts) == 4 else "unstruct"
    return EVENT_NAMES.get(code, code[:EVENT_TYPE_MAX])


def tracker_event(params, request_agent: str | None) -> SdkEvent:
    """One tracker payload under our names. The user agent is `ua`, else the request's when the
    tracker runs in a browser (p=web): a server tracker's request comes from its HTTP library."""
    if not isinstance(params, dict):
        return params
    try:
        raw = _decoded(params)
    except EventRejected as problem:
        return SdkEvent({"eventType": "invalid"}, params, SOURCE, problem)
    return SdkEvent({
        "eventType": _event_name(params.get("e"), raw),
        "eventId": params.get("eid"),
        "visitorId": params.get("uid") or params.get("duid"),
        "sessionId": params.get("sid"),
        "url": params.get("url"),
        "timestamp": params.get("dtm") or params.get("ttm") or params.get("stm"),
        "userAgent": params.get("ua") or (request_agent if params.get("p") == "web" else None),
        "siteId": params.get("aid"),
    }, raw, SOURCE)


def tp2_batch(payload: bytes, request_agent: str | None, limits: Limits) -> SdkBatch:
    """{"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/...", "data": [payloads]}."""
    document = load_json(payload)
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list):
        raise BodyRejected(400, "malformed_batch", 'A tp2 body needs "data": a JSON array of tracker payloads.')
    return checked_batch([tracker_event(p, request_agent) for p in data], limits, None, len(payload))
