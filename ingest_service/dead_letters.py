"""Whom a dead-letter row is about: its body read back the way the collector read it when it
refused it, so an erasure finds a visitor's dead letters by their decoded visitor and site, never
by searching text (`"note":"alice"` is not the visitor alice; `\\u0061lice` is).

Pure code, no I/O: the erasure (pipeline/erasure.py) hands in the row and a lookup from write
key to site. Each endpoint's body goes through the same translator as on the way in (the pixel's
query string, /collect's JSON, Segment, PostHog and Snowplow bodies, gzip and lz64 included);
the site is the event's own, the envelope's, the write key's, or the page URL's host, as in
event_row. A body the collector could not parse at all (truncated or invalid JSON) is read by
a lenient linear scan of its JSON strings for the visitor and site fields every protocol uses.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable, Iterator
from urllib.parse import parse_qsl

from ingest_service.events import (
    ID_MAX,
    BodyRejected,
    EventRejected,
    Limits,
    decode_body,
    parse_events,
    site_id_from_url,
)
from ingest_service.sdks.posthog import Lz64Text, capture_batch, decode_payload
from ingest_service.sdks.segment import segment_batch
from ingest_service.sdks.snowplow import is_tracker_query, tp2_batch, tracker_event

_GZIP_MAGIC = b"\x1f\x8b"
_POSTHOG_PATHS = ("/batch/", "/capture/", "/e/", "/i/v0/e/")
_SNOWPLOW_PATH = "/com.snowplowanalytics.snowplow/tp2"
# A body the collector could not parse: the fields that carry a visitor, a site or a write key
# in any protocol we accept (ours, Segment, PostHog, Snowplow).
_VISITOR_FIELDS = frozenset({"visitorId", "userId", "anonymousId", "distinct_id", "uid", "duid"})
_SITE_FIELDS = frozenset({"siteId", "aid"})
_KEY_FIELDS = frozenset({"writeKey", "api_key", "token"})
_URL_FIELDS = frozenset({"url", "$current_url"})

SiteForKey = Callable[[str], "str | None"]
Identity = tuple["str | None", "str | None"]  # (site, visitor); None where the row does not say


def _text(value) -> str | None:
    """A visitor id as event_row stores it."""
    if value is None or value == "":
        return None
    return (value if isinstance(value, str) else str(value))[:ID_MAX]


def _site(event: dict, envelope: dict, referer: str | None = None) -> str | None:
    site = event.get("siteId", envelope.get("siteId"))
    if site is not None and site != "":
        return str(site)
    url = event.get("url", envelope.get("url")) or referer
    return site_id_from_url(url if isinstance(url, str) else None)


def _identities(events: list, envelope: dict) -> Iterator[Identity]:
    for event in events:
        if isinstance(event, dict):
            yield _site(event, envelope), _text(event.get("visitorId", envelope.get("visitorId")))


def _inflated(body: bytes, limits: Limits) -> bytes:
    if body[:2] == _GZIP_MAGIC:
        return decode_body(body, "application/json", "gzip", limits)
    return body


def _posthog_batch(body: bytes, content_type: str | None, limits: Limits):
    """posthog-js names lz64 in the query string, which the dead letter does not keep: a form
    body that is not plain base64 JSON is tried as lz64."""
    try:
        return capture_batch(decode_payload(body, content_type, None, None, limits), limits)
    except BodyRejected:
        payload = decode_payload(body, content_type, None, "lz64", limits)
        return capture_batch(payload.decode() if isinstance(payload, Lz64Text) else payload, limits)


def _parsed(endpoint: str, content_type: str | None, body: bytes, site_for_key: SiteForKey,
            limits: Limits) -> list[Identity]:
    """The row's events through the endpoint's own translator; BodyRejected when they cannot be."""
    if endpoint == "/i":
        params = dict(parse_qsl(body.decode("latin-1"), keep_blank_values=True))
        event = tracker_event(params, None) if is_tracker_query(params) else params
        return list(_identities([event], {}))
    if endpoint == "/collect":
        events, envelope = parse_events(_inflated(body, limits), limits)
        return list(_identities(events, envelope))
    if endpoint.startswith("/v1/"):
        call = endpoint.removeprefix("/v1/")
        batch = segment_batch(_inflated(body, limits), call, None, limits)
    elif endpoint in _POSTHOG_PATHS:
        batch = _posthog_batch(body, content_type, limits)
    elif endpoint == _SNOWPLOW_PATH:
        batch = tp2_batch(_inflated(body, limits), None, limits)
    else:
        raise BodyRejected(400, "unknown_endpoint", endpoint)
    keyed = site_for_key(batch.write_key) if batch.write_key else None
    return list(_identities(batch.events, {"siteId": keyed} if keyed else {}))


def json_string_pairs(text: str) -> Iterator[tuple[str, str]]:
    """(key, value) of every `"key": "value"` in a JSON text that may be invalid or cut short,
    escapes decoded. One pass, linear in the text: each string is read once, to its closing
    quote or to the end."""
    previous: list[str | None] = [None, None]  # the last two tokens: a string, ":" or None
    position, end = 0, len(text)
    while position < end:
        char = text[position]
        if char == '"':
            close = position + 1
            while close < end and text[close] != '"':
                close += 2 if text[close] == "\\" else 1
            if close >= end:
                return  # unterminated: the text was cut here
            try:
                value = json.loads(text[position:close + 1])
            except ValueError:
                value = None
            if previous[1] == ":" and isinstance(previous[0], str) and isinstance(value, str):
                yield previous[0], value
                previous = [None, None]
            else:
                previous = [previous[1], value if isinstance(value, str) else None]
            position = close + 1
            continue
        if char == ":":
            previous = [previous[1], ":"]
        elif not char.isspace():
            previous = [None, None]
        position += 1


def _scanned(body: bytes, site_for_key: SiteForKey, limits: Limits) -> list[Identity]:
    """A body no translator could read: its visitor and site fields, found by a lenient scan."""
    try:
        body = _inflated(body, limits)
    except BodyRejected:
        return []
    visitors, sites = set(), set()
    for key, value in json_string_pairs(body.decode("utf-8", "replace")):
        if key in _VISITOR_FIELDS:
            visitors.add(value[:ID_MAX])
        elif key in _SITE_FIELDS:
            sites.add(value)
        elif key in _KEY_FIELDS and (keyed := site_for_key(value)):
            sites.add(keyed)
        elif key in _URL_FIELDS and (host_site := site_id_from_url(value)):
            sites.add(host_site)
    return [(site, visitor) for visitor in visitors for site in (sites or {None})]


def dead_letter_identities(endpoint: str | None, content_type: str | None, body: bytes,
                           site_for_key: SiteForKey, limits: Limits | None = None) -> list[Identity]:
    """(site, visitor) of each event a dead-letter row holds, as the collector decoded them."""
    limits = limits or Limits()
    try:
        return _parsed(endpoint or "", content_type, body, site_for_key, limits)
    except (BodyRejected, EventRejected, ValueError, UnicodeDecodeError, binascii.Error, RecursionError):
        return _scanned(body, site_for_key, limits)


def names_visitor(endpoint: str | None, content_type: str | None, body: bytes, site: str, visitor: str,
                  site_for_key: SiteForKey) -> bool:
    """Whether the row holds an event of `visitor` of `site`. A row whose site cannot be told
    (an SDK's event dead-lettered alone, without its batch's key) counts for any site: the
    erasure errs towards removing the visitor's data, never another visitor's."""
    return any(found_visitor == visitor and found_site in (site, None)
               for found_site, found_visitor in dead_letter_identities(endpoint, content_type, body, site_for_key))

