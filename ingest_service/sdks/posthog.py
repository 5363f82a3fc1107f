"""PostHog's capture API, which PostHog's SDKs speak: POST /batch/, /capture/ and /e/, the
project api_key (here: the site's write key) in the body, gzip or lz64 compression."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from urllib.parse import parse_qs

from ingest_service.events import (
    EVENT_TYPE_MAX,
    BodyRejected,
    Limits,
    SdkEvent,
    inflate_gzip,
    inflation_cap,
    too_inflated,
)
from ingest_service.sdks import SdkBatch, as_dict, checked_batch, load_json, without_credentials
from ingest_service.sdks.lz64 import decompress_base64

SOURCE = "posthog"
# lz-string decompresses at ~3 MB/s in Python (~20 ms for this size, off the event loop:
# ingest_service/offload.py). Modern posthog-js sends gzip; lz64 is only for older versions,
# whose batches are small.
LZ64_MAX_BODY = 64 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
# Where PostHog's SDKs put the project key (here: the site's write key) in an event.
CREDENTIALS = ("api_key", "token")
PROPERTY_CREDENTIALS = ("token",)


@dataclass(frozen=True)
class Lz64Text:
    """A form's lz64 `data`, to be decoded (lz64.decompress_base64) within `max_bytes`."""

    text: str
    max_bytes: int
    too_large: BodyRejected

    def decode(self) -> bytes:
        return decompress_base64(self.text, self.max_bytes, self.too_large)


def decode_payload(body: bytes, content_type: str | None, content_encoding: str | None,
                   compression: str | None, limits: Limits) -> bytes | Lz64Text:
    """The JSON text of a capture request, however posthog-js or posthog-python packed it:
    plain, gzip (Content-Encoding, ?compression=gzip-js, or just gzip's magic bytes: posthog-js
    1.449 marks it nowhere), or a form field `data` holding base64, or lz-string base64
    (?compression=lz64), which is returned undecoded: it is slow, the caller decodes it off the
    event loop. Either compression may inflate MAX_INFLATION_RATIO times the body, at most."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    gzip = (content_encoding or "").strip().lower() == "gzip" or compression in ("gzip", "gzip-js")
    if gzip or body[:2] == _GZIP_MAGIC:  # posthog-js may send gzip as text/plain, unmarked
        return inflate_gzip(body, limits)
    if media_type != "application/x-www-form-urlencoded":
        return body
    try:
        form = parse_qs(body.decode("latin-1"), max_num_fields=10)
    except ValueError:
        raise BodyRejected(400, "malformed_form", "The form body has more than 10 fields.") from None
    data = (form.get("data") or [""])[0]
    compression = (form.get("compression") or [compression])[0]
    if compression == "lz64":
        if len(body) > LZ64_MAX_BODY:
            raise BodyRejected(413, "body_too_large", f"An lz64 body may be at most {LZ64_MAX_BODY} bytes; "
                               "newer posthog-js versions send gzip, which has no such limit.")
        cap = inflation_cap(len(body), limits)
        return Lz64Text(data, cap, too_inflated("lz64", cap < limits.max_body_bytes, limits))
    try:
        return base64.b64decode(data, validate=False)
    except ValueError:  # binascii.Error, or a non-ASCII character
        raise BodyRejected(400, "bad_base64", "The form field `data` is not base64.") from None


def capture_event(event) -> SdkEvent:
    """One PostHog event under our names: its name, uuid, distinct_id, $session_id, $current_url."""
    if not isinstance(event, dict):
        return event
    properties = as_dict(event.get("properties"))
    name = event.get("event")
    return SdkEvent({
        "eventType": name[:EVENT_TYPE_MAX] if isinstance(name, str) else None,
        "eventId": event.get("uuid"),
        "visitorId": event.get("distinct_id") or properties.get("distinct_id"),
        "sessionId": properties.get("$session_id"),
        "url": properties.get("$current_url"),
        "path": properties.get("$pathname"),
        "timestamp": event.get("timestamp"),
        "userAgent": properties.get("$raw_user_agent"),
    }, without_credentials(event, CREDENTIALS, PROPERTY_CREDENTIALS), SOURCE)


def _key_of(event) -> str | None:
    if not isinstance(event, dict):
        return None
    return event.get("api_key") or event.get("token") or as_dict(event.get("properties")).get("token")


def capture_batch(payload: bytes, limits: Limits) -> SdkBatch:
    """{"api_key", "batch": [...]} (posthog-python), one event, or a JSON array (posthog-js)."""
    document = load_json(payload)
    if isinstance(document, dict) and isinstance(document.get("batch"), list):
        events, key = document["batch"], _key_of(document)
    elif isinstance(document, dict):
        events, key = [document], _key_of(document)
    elif isinstance(document, list):
        events, key = document, None
    else:
        raise BodyRejected(400, "not_an_object", "The body must be a PostHog event, a list of them or a batch.")
    key = key or next((k for k in map(_key_of, events) if k), None)
    return checked_batch([capture_event(e) for e in events], limits, key, len(payload))


def capture_answer(body: dict, status: int) -> dict:
    """PostHog answers {"status": 1}; on an error its SDKs read `detail`, which ours has."""
    return {"status": 1, **body} if status < 300 else {"type": "validation_error", **body}
