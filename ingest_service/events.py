"""Payload -> rows: parsing, validation and field extraction, as pure functions.

Everything here is synchronous and I/O free so it can be tested directly and stays cheap on
the hot path. A problem with the whole body raises BodyRejected (the request gets a 4xx); a
problem with one event raises EventRejected (that event is dead-lettered, the rest are kept).
"""

from __future__ import annotations

import functools
import ipaddress
import random
import re
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import orjson

from pixelpipe.core.events_log import EVENT_COLUMNS  # noqa: F401 - the row layout event_row builds
from pixelpipe.core.settings import Settings

MAX_DEPTH = 32
EVENT_TYPE_MAX = 50
ID_MAX = 100
EVENT_ID_MAX = 200
# Client event ids that are not UUIDs (some SDKs' messageIds) map to a UUID in this namespace,
# always the same one for the same text, so a re-sent event is still recognised.
_EVENT_ID_NAMESPACE = uuid.UUID("5f1c4a0e-3a8b-4c6e-9a55-7d2f0b8e1c41")
# UUID version 8 (bits 76-79) and the RFC 4122 variant (bits 62-63).
_V8_MASK = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_V8_BITS = (0x8 << 76) | (0x2 << 62)
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
PATH_MAX = 500
# Caps on what a client can make us store per row beyond its own body (docs/security.md).
URL_MAX = 2048
USER_AGENT_MAX = 512
ACCEPTED_CONTENT_TYPES = ("application/json", "text/plain")
# A compressed body (gzip, lz64) may inflate to at most this many times its size, from its first
# byte: far more than real batches compress, far less than a bomb (ratios in docs/benchmarks.md).
MAX_INFLATION_RATIO = 400
# Always used with fullmatch: `$` would let a trailing newline through.
SITE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# What PostgreSQL's timestamptz and Python's datetime can both hold, with room for any offset.
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 1, 1, tzinfo=UTC)



class BodyRejected(Exception):
    """The whole request is unusable: answer `status` with `code`, dead-letter the body."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail

    def __reduce__(self):  # raised in the decoding process too (ingest_service/offload.py)
        return BodyRejected, (self.status, self.code, self.detail)


class EventRejected(Exception):
    """One event is unusable: dead-letter it with `code`, keep the others."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class RequestContext:
    """What the request itself tells about its events."""

    received_at: datetime
    client_ip: str | None
    user_agent: str | None
    referer: str | None
    origin: str | None = None


_DEFAULTS = Settings()


@dataclass(frozen=True)
class Limits:
    """The size caps a body is parsed under (PIXELPIPE_MAX_BODY_BYTES, PIXELPIPE_MAX_BATCH_EVENTS)."""

    max_body_bytes: int = _DEFAULTS.max_body_bytes
    max_batch_events: int = _DEFAULTS.max_batch_events


def decode_body(body: bytes, content_type: str | None, content_encoding: str | None,
                limits: Limits) -> bytes:
    """Check the media type and inflate gzip, never past the size cap."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type not in ACCEPTED_CONTENT_TYPES:
        raise BodyRejected(
            415, "unsupported_media_type",
            f"Content-Type {media_type or '(none)'!r} is not accepted; "
            "send application/json or text/plain (navigator.sendBeacon).",
        )
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("identity", ""):
        return body
    if encoding != "gzip":
        raise BodyRejected(415, "unsupported_encoding",
                           f"Content-Encoding {encoding!r} is not accepted; use gzip or none.")
    return inflate_gzip(body, limits)


def inflation_cap(compressed_bytes: int, limits: Limits) -> int:
    """How far a compressed body (gzip, lz64) may inflate: MAX_INFLATION_RATIO times its size,
    from its first byte, and never past the body cap."""
    return min(limits.max_body_bytes, MAX_INFLATION_RATIO * compressed_bytes)


def too_inflated(encoding: str, past_ratio: bool, limits: Limits) -> BodyRejected:
    """The refusal for a body that inflates past its cap, naming the bound it broke."""
    if past_ratio:
        return BodyRejected(
            413, f"{encoding}_ratio",
            f"The {encoding} body inflates more than {MAX_INFLATION_RATIO} times its size; send it "
            "uncompressed or in smaller batches.")
    return BodyRejected(413, "body_too_large",
                        f"The {encoding} body inflates past the {limits.max_body_bytes}-byte cap; send smaller batches.")


def inflate_gzip(body: bytes, limits: Limits) -> bytes:
    """A gzip body inflated, never past the size cap nor past MAX_INFLATION_RATIO times its size:
    zlib stops at the bound, so the work is linear in what was sent."""
    cap = inflation_cap(len(body), limits)
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(body, cap + 1)
    except zlib.error as error:
        raise BodyRejected(400, "bad_gzip", f"The gzip body could not be inflated: {error}.") from None
    if len(inflated) > cap:
        consumed = len(body) - len(inflater.unconsumed_tail)
        raise too_inflated("gzip", len(inflated) > MAX_INFLATION_RATIO * consumed, limits)
    if not inflater.eof:
        raise BodyRejected(400, "bad_gzip", "The gzip body is truncated.")
    return inflated


# orjson refuses documents nesting deeper than this (its own recursion limit).
ORJSON_MAX_DEPTH = 1024
_NOT_STRUCTURE = bytes(set(range(256)) - set(b'"[]{}'))


def _without_escapes(text: bytes) -> bytes:
    """The text with every escaped backslash and escaped quote removed, so that each `"` left
    opens or closes a string. Runs of backslashes pair from their start, as a JSON string reads
    them; two C-speed passes, linear (a regex doing this backtracks: quadratic on `\\"` runs)."""
    return text.replace(b"\\\\", b"").replace(b'\\"', b"")


def nesting_depth(payload: bytes, stop: int | None = None) -> int:
    """How deeply the (possibly invalid) JSON text is nested at byte `stop` (default: its end),
    brackets inside strings not counted. Linear: the strings are cut out by splitting at quotes."""
    prefix = payload if stop is None else payload[:stop]
    if prefix.count(b"[") + prefix.count(b"{") <= ORJSON_MAX_DEPTH:
        return 0
    # Only quotes and brackets matter; two quotes side by side (an empty string, or one string's
    # end and the next one's start) change nothing for any bracket, so they go too, in C: the
    # split then makes one piece per run of brackets at most, not one per string.
    structure = _without_escapes(prefix).translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    outside = b"".join(structure.split(b'"')[::2])
    return outside.count(b"[") + outside.count(b"{") - outside.count(b"]") - outside.count(b"}")


def refused_json(payload: bytes, error: orjson.JSONDecodeError) -> BodyRejected:
    """Why orjson refused a body, read from the text (not from orjson's message), in time linear
    in its size: a string never closed, nesting past orjson's limit where it stopped, else the
    parser's own words."""
    if _without_escapes(payload).count(b'"') % 2:
        return BodyRejected(400, "malformed_json",
                            "The body is not valid JSON: a string is never closed.")
    stop = getattr(error, "pos", None)
    # orjson's position is just past the opening bracket it refused; one byte more is harmless.
    if nesting_depth(payload, None if not isinstance(stop, int) else stop + 1) > ORJSON_MAX_DEPTH:
        return BodyRejected(400, "too_deep", f"The JSON nests deeper than {MAX_DEPTH} levels.")
    return BodyRejected(400, "malformed_json", f"The body is not valid JSON: {error}.")


def load_json(payload: bytes):
    """The body as JSON, or BodyRejected saying why not."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        raise refused_json(payload, error) from None


def parse_events(payload: bytes, limits: Limits) -> tuple[list, dict]:
    """JSON body -> (candidate events, envelope defaults).

    Accepts one event object, a JSON array of events, or the tracker's batch envelope
    {"eventType": "batch", "events": [...]}; the envelope itself is not an event.
    """
    document = load_json(payload)
    envelope: dict = {}
    if isinstance(document, dict) and document.get("eventType") == "batch":
        events = document.get("events")
        if not isinstance(events, list):
            raise BodyRejected(400, "malformed_batch",
                               'A batch envelope needs "events": a JSON array of event objects.')
        envelope = {k: document[k] for k in ("siteId", "sessionId", "visitorId", "url", "cookieless") if k in document}
    elif isinstance(document, list):
        events = document
    elif isinstance(document, dict):
        events = [document]
    else:
        raise BodyRejected(400, "not_an_object",
                           "The body must be an event object, an array of them, or a batch envelope.")
    if len(events) > limits.max_batch_events:
        raise BodyRejected(
            413, "too_many_events",
            f"{len(events)} events in one request; the cap is {limits.max_batch_events}. Split the batch.",
        )
    return events, envelope


def _check_depth(value, depth: int = 1) -> None:
    """Reject absurd nesting; only containers are walked (most event fields are scalars)."""
    if depth > MAX_DEPTH:
        raise EventRejected("too_deep", f"The event nests deeper than {MAX_DEPTH} levels.")
    for item in value.values() if isinstance(value, dict) else value:
        if isinstance(item, (dict, list)):
            _check_depth(item, depth + 1)


def _has_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in key or _has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def _raw_json(event: dict) -> str:
    """The event as stored in raw_event_data, or EventRejected for absurd nesting or a NUL
    (PostgreSQL's JSONB cannot hold one).

    Both are looked for in the serialised JSON first (C speed), and the event is walked only
    when that is inconclusive: it cannot nest deeper than it has containers, and orjson writes
    a NUL as \\u0000 (a literal backslash-u0000 in a string is kept).
    """
    try:
        raw = orjson.dumps(event)
    except orjson.JSONEncodeError:  # orjson's own recursion limit, far past ours
        raise EventRejected("too_deep", f"The event nests deeper than {MAX_DEPTH} levels.") from None
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH:
        _check_depth(event)
    if b"\\u0000" in raw and _has_nul(event):
        raise EventRejected("nul_character", "The event contains a NUL character (\\u0000).")
    return raw.decode()


def _text(value, limit: int | None = None) -> str | None:
    if value is None or value == "":
        return None
    text = value if isinstance(value, str) else str(value)
    return text[:limit] if limit else text


def server_event_id() -> str:
    """A random id for an event sent without one: UUID version 8, which marks it as ours.

    Only client ids can repeat (a re-send), so the export looks for duplicates among the others
    only (sql/010_tracker_privacy.sql makes the column default the same kind of id). The id
    needs to be unique, not secret: 122 bits from `random` (reseeded in each forked worker), as
    the 32 hex digits PostgreSQL accepts for a uuid. It is made for every pixel and most events:
    0.4 µs, where uuid.uuid4() and str() of it take 5 µs (docs/benchmarks.md).
    """
    return "%032x" % ((random.getrandbits(128) & _V8_MASK) | _V8_BITS)


def event_id(value) -> uuid.UUID | str:
    """The client's eventId (the export removes re-sent copies), else a new server id."""
    if value is None or value == "":
        return server_event_id()
    if not isinstance(value, str) or len(value) > EVENT_ID_MAX:
        raise EventRejected("invalid_event_id",
                            f'"eventId" must be a string of at most {EVENT_ID_MAX} characters.')
    if _CANONICAL_UUID.fullmatch(value):  # what browsers and SDKs send: no parsing needed
        if value[14] != "8":  # version 8 is reserved for server ids
            return value.lower()
        return uuid.uuid5(_EVENT_ID_NAMESPACE, value)
    try:
        given = uuid.UUID(value)
    except ValueError:
        given = None
    if given is None or given.version == 8:
        return uuid.uuid5(_EVENT_ID_NAMESPACE, value)
    return given


def parse_timestamp(value, fallback: datetime) -> datetime:
    """ISO 8601 or epoch milliseconds, in UTC; anything else, or anything outside 1970..9999,
    falls back to the receive time.

    Always UTC: PostgreSQL refuses offsets past +-15:59 that Python accepts.
    """
    try:
        if isinstance(value, bool) or value is None:
            return fallback
        if isinstance(value, (int, float)):
            parsed = datetime.fromtimestamp(value / 1000, UTC)
        elif isinstance(value, str) and len(value) <= 64:
            text = value.strip()
            if text.isascii() and text.isdigit():
                parsed = datetime.fromtimestamp(int(text) / 1000, UTC)
            else:
                parsed = datetime.fromisoformat(text)
                parsed = parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        else:
            return fallback
    except (ValueError, OverflowError, OSError):
        return fallback
    return parsed if _EARLIEST <= parsed < _LATEST else fallback


def page_host(url: str | None) -> str | None:
    """The URL's host as ASCII (IDNA), lower case, or None when it has no valid DNS host."""
    if not url:
        return None
    try:
        host = urlsplit(url).hostname
        if not host:
            return None
        ascii_host = host.rstrip(".").encode("idna").decode("ascii").lower()
    except (ValueError, UnicodeError):
        return None
    labels = ascii_host.split(".")
    if not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return None
    return ascii_host


def site_id_from_url(url: str | None) -> str | None:
    """The original design's domain discovery (docs/architecture.md): shop.example.com ->
    shop-example-com.

    Injective: a "-" of the host is doubled, so shop-example.com (shop--example-com) and
    shop.example-com (shop-example--com) stay two sites. A DNS label never starts or ends with
    "-", so "." and "-" cannot be confused. Hosts are IDNA-encoded first (a Unicode host gets
    its xn-- form), and the result must pass the same rule as a siteId, else None.
    """
    host = page_host(url)
    if host is None:
        return None
    site = host.replace("-", "--").replace(".", "-")
    return site if SITE_ID.fullmatch(site) else None


def anonymize_ip(address: str) -> str:
    """Zero the last IPv4 octet or the last 80 bits of an IPv6 address."""
    ip = ipaddress.ip_address(address)
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


@functools.lru_cache(maxsize=4096)
def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parsed once per distinct address: the pixel sees the same peers over and over."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # PostgreSQL's inet has no zone (fe80::1%eth0): such an address is not a client's anyway.
    return None if getattr(address, "scope_id", None) else address


@functools.lru_cache(maxsize=4096)
def _ip_text(text: str) -> str | None:
    address = _ip(text)
    return str(address) if address is not None else None


def client_ip(peer: str | None, forwarded_for: str | None,
              trusted_proxies: tuple[ipaddress._BaseNetwork, ...]) -> str | None:
    """The peer address, or the client from X-Forwarded-For when the peer is a trusted proxy."""
    if not peer:
        return None
    address = _ip(peer)
    if address is None or not forwarded_for or not any(address in net for net in trusted_proxies):
        return _ip_text(peer)
    # Walk the chain from the right, skipping our own proxies.
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        hop_address = _ip(hop)
        if hop_address is None:
            break
        address = hop_address
        if not any(hop_address in net for net in trusted_proxies):
            break
    return str(address)


class SdkEvent(dict):
    """An event an SDK sent (ingest_service/sdks/), already under our field names (eventType,
    eventId, visitorId, sessionId, url, path, timestamp, userAgent, siteId; None or "" counts as
    not sent). `raw` is the event as the SDK sent it, which raw_event_data keeps; `source` names
    the protocol. Its userAgent is its own or none: a server-side SDK's request comes from a
    library, not from the visitor."""

    __slots__ = ("raw", "source", "problem")

    def __init__(self, fields: dict, raw, source: str, problem: EventRejected | None = None):
        super().__init__(fields)
        self.raw = raw
        self.source = source
        self.problem = problem  # found while translating it: the event is dead-lettered with it


def event_row(event, context: RequestContext, envelope: dict | None = None) -> tuple:
    """One event object -> a row in EVENT_COLUMNS order, or EventRejected."""
    if not isinstance(event, dict):
        raise EventRejected("not_an_object", "Each event must be a JSON object.")
    sdk = isinstance(event, SdkEvent)
    if sdk and event.problem is not None:
        raise event.problem
    raw_json = _raw_json(event.raw if sdk else event)
    event_type = event.get("eventType")
    if not isinstance(event_type, str) or not event_type.strip():
        raise EventRejected("missing_event_type", 'The event has no "eventType" string.')
    if len(event_type) > EVENT_TYPE_MAX:
        raise EventRejected("event_type_too_long",
                            f'"eventType" is longer than {EVENT_TYPE_MAX} characters.')
    defaults = envelope or {}
    url = _text(event.get("url", defaults.get("url")), URL_MAX) or _text(context.referer, URL_MAX)
    site = event.get("siteId", defaults.get("siteId"))
    if site is not None and site != "":
        site = str(site)
        if not SITE_ID.fullmatch(site):
            raise EventRejected(
                "invalid_site_id",
                '"siteId" must be 1-100 letters, digits, ".", "_" or "-", starting with a letter or digit.',
            )
    else:
        site = site_id_from_url(url)
        if not site:
            raise EventRejected("missing_site_id",
                                'The event has no "siteId" and no page URL with a valid host '
                                "(at most 100 characters as a site id) to derive it from.")
    path = _text(event.get("path"))
    if path is None and url:
        try:
            path = urlsplit(url).path or None
        except ValueError:
            path = None
    agent = _text(event.get("userAgent"), USER_AGENT_MAX)
    return (
        event_id(event.get("eventId")),
        event_type,
        _text(event.get("sessionId", defaults.get("sessionId")), ID_MAX),
        _text(event.get("visitorId", defaults.get("visitorId")), ID_MAX),
        site,
        parse_timestamp(event.get("timestamp"), context.received_at),
        url,
        path[:PATH_MAX] if path else None,
        agent if sdk or agent else _text(context.user_agent, USER_AGENT_MAX),
        context.client_ip,
        raw_json,
        event.source if sdk else "pixelpipe",
    )
