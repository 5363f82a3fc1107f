"""Routes only: the pixel, /collect, the tracker script, health, readiness, metrics, OpenAPI.

Parsing lives in events.py, admission in admission.py, writing in writer.py; `Collector.ingest`
is the one path every event takes between them. Every 2xx here means: committed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import ipaddress
import operator
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qsl

import orjson
import psycopg
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ingest_service.admission import SiteDirectory, TokenBuckets
from ingest_service.cors import CorsMiddleware, CorsPolicy, note_site
from ingest_service.events import (
    EVENT_COLUMNS,
    URL_MAX,
    USER_AGENT_MAX,
    BodyRejected,
    EventRejected,
    Limits,
    RequestContext,
    anonymize_ip,
    client_ip,
    decode_body,
    event_row,
    inflation_cap,
    parse_events,
)
from ingest_service.metrics import CollectorMetrics
from ingest_service.offload import SlowDecoding
from ingest_service.openapi import OPENAPI
from ingest_service.sdks.jitsu import jitsu_batch
from ingest_service.sdks.posthog import Lz64Text, capture_answer, capture_batch, decode_payload
from ingest_service.sdks.rudderstack import beacon_batch
from ingest_service.sdks.segment import CALLS as SEGMENT_CALLS
from ingest_service.sdks.segment import SHORT_CALLS as SEGMENT_SHORT_CALLS
from ingest_service.sdks.segment import basic_auth_user, segment_answer, segment_batch
from ingest_service.sdks.snowplow import is_tracker_query, tp2_batch, tracker_event
from ingest_service.visitors import (
    NEW_AGENTS_PER_REQUEST,
    DailySalts,
    classify,
    cookieless_visitor_id,
    known_verdict,
    stands_for_visitor,
)
from ingest_service.writer import EventWriter, Overloaded, Unavailable
from pixelpipe.core.settings import Settings

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
RETRY_AFTER_SECONDS = "5"
_PIXEL_REQUEST_HEADERS = frozenset((b"x-forwarded-for", b"user-agent", b"referer", b"origin"))
STATIC = Path(__file__).resolve().parent / "static"
SITE_COLUMN = EVENT_COLUMNS.index("site_id")
URL_COLUMN = EVENT_COLUMNS.index("url")
VISITOR_COLUMN = EVENT_COLUMNS.index("visitor_id")
SESSION_COLUMN = EVENT_COLUMNS.index("session_id")
USER_AGENT_COLUMN = EVENT_COLUMNS.index("user_agent")
IP_COLUMN = EVENT_COLUMNS.index("ip_address")
RAW_COLUMN = EVENT_COLUMNS.index("raw_event_data")
# A cookieless event's own ids, left out of its raw_event_data (a client may send them anyway).
CLIENT_IDS = ("visitorId", "sessionId")
# What one request may make us store, as text (docs/security.md): twice its (inflated) body,
# plus a fixed allowance, plus a per-row allowance for ids, timestamps and the capped user agent.
STORE_BUDGET_FIXED = 64 * 1024
STORE_BUDGET_PER_ROW = 1024
# Past this many rejected events, a request leaves one dead-letter row instead of one each.
REJECTS_KEPT_SEPARATELY = 5
REASON_MAX = 1000
CONTENT_TYPE_MAX = 100
READINESS_TTL_SECONDS = 1.0
# Under PIXELPIPE_RATE_LIMIT_PER_IP, a body also counts one event per this many inflated bytes.
BODY_BYTES_PER_TOKEN = 16 * 1024
FLOOD_SUMMARY_SECONDS = 60
_CONTENT_LENGTH = re.compile(r"[0-9]{1,20}")
# A write key as `pixelpipe site key` makes them (pixelpipe.core.sites): removed from whatever a
# dead letter keeps, wherever in the body it was. A fixed prefix and a bounded class: linear.
WRITE_KEY = re.compile(rb"ppk_[A-Za-z0-9_-]{43}")
GZIP_MAGIC = b"\x1f\x8b"


def _json(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


_EVENT_TEXT = operator.itemgetter(*(i for i, c in enumerate(EVENT_COLUMNS) if c not in ("timestamp", "event_id")))


def stored_text_bytes(rows: list[tuple], rejects: list[tuple]) -> int:
    """What rows cost as text (UTF-8): the event rows' text columns joined and measured in C,
    the few dead-letter rows value by value."""
    total = sum(len("".join(filter(None, _EVENT_TEXT(row))).encode()) for row in rows)
    for row in rejects:
        for value in row:
            if isinstance(value, str):
                total += len(value.encode())
            elif isinstance(value, bytes):
                total += len(value)
    return total


def bearer_key(authorization: str | None) -> str | None:
    """The key of `Authorization: Bearer <key>`; None for any other header."""
    scheme, _, key = (authorization or "").partition(" ")
    return key.strip() or None if scheme.lower() == "bearer" else None


def declared_size(request: Request) -> int:
    """The body's size as its Content-Length says, for a request refused before reading it."""
    declared = request.headers.get("content-length", "")
    return int(declared) if _CONTENT_LENGTH.fullmatch(declared) else 0


def forwarded_for(values: list[str]) -> str | None:
    """Every X-Forwarded-For line of a request, in order, as one chain: the one rule all
    routes share (a proxy may add a line instead of appending to the last one)."""
    return ",".join(values) if values else None


@dataclass
class Outcome:
    """What one request's events came to."""

    status: int
    accepted: int = 0
    rejected: int = 0
    errors: list[dict] | None = None
    error: str | None = None
    detail: str | None = None
    retry_after: int | None = None

    def body(self) -> dict:
        body = {"accepted": self.accepted, "rejected": self.rejected}
        if self.error:
            body = {"error": self.error, "detail": self.detail, **body}
        if self.errors:
            body["errors"] = self.errors[:50]
        return body

    def headers(self) -> dict | None:
        return {"Retry-After": str(self.retry_after)} if self.retry_after else None


class Intake(NamedTuple):
    """One request as the dead letter records it (a tuple: built once per pixel, cheaply)."""

    endpoint: str
    content_type: str | None
    context: RequestContext
    body: bytes  # as received (possibly gzip), at most the dead-letter cap is kept
    size: int  # the whole body's size, also when it was not read


class FloodTally:
    """Requests refused by rate limits: counted, then summarised in one dead-letter row a
    minute, so a flood costs the database nothing per request."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.events = 0
        self.keys: dict[str, int] = {}

    def add(self, key: str, events: int) -> None:
        self.requests += 1
        self.events += events
        if key in self.keys or len(self.keys) < 10_000:
            self.keys[key] = self.keys.get(key, 0) + 1

    def summary_row(self, seconds: int) -> tuple | None:
        if not self.requests:
            return None
        top = sorted(self.keys.items(), key=lambda kv: -kv[1])[:10]
        reason = (f"rate_limited: {self.requests} requests ({self.events} events) refused with 429 "
                  f"in the last {seconds} s from {len(self.keys)} addresses or sites; most: "
                  + ", ".join(f"{key} ({count})" for key, count in top))
        self.reset()
        return (reason[:REASON_MAX], None, None, None, None, None, None)


class Collector:
    """The collector's state: settings, site directory, writer and metrics, shared by the routes."""

    def __init__(self, settings: Settings, database_url: str):
        self.settings = settings
        self.limits = Limits(settings.max_body_bytes, settings.max_batch_events)
        self.trusted = tuple(ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies)
        self.metrics = CollectorMetrics()
        self.writer = EventWriter(
            database_url,
            self.metrics,
            flush_interval=settings.flush_interval_ms / 1000,
            flush_max_rows=settings.flush_max_rows,
            queue_max_rows=settings.queue_max_rows,
            flushers=settings.flush_connections,
        )
        self.sites = SiteDirectory(database_url, settings.site_policy, settings.new_sites_per_hour, self.metrics)
        self.ip_limits = TokenBuckets(settings.rate_limit_per_ip)
        self.site_limits = TokenBuckets(settings.rate_limit_per_site)
        self.flood = FloodTally()
        self.salts = DailySalts(database_url)
        self.slow_decoding = SlowDecoding()
        tracker = (STATIC / "t.js").read_bytes()
        self.tracker_js = tracker
        self.tracker_gz = gzip.compress(tracker, 9, mtime=0)  # what browsers download (~2.6 KB)
        self.tracker_etag = '"' + hashlib.sha256(tracker).hexdigest()[:16] + '"'
        self.cors = CorsPolicy(settings.cors_origins, self.site_hosts)
        self._ready = (-READINESS_TTL_SECONDS, False)
        self._ready_lock = asyncio.Lock()

    # --- the one intake path -----------------------------------------------------------------

    def site_hosts(self, site: str) -> tuple[str, ...] | None:
        rule = self.sites.sites.get(site)
        return rule.allowed_hosts if rule is not None else None

    def context(self, peer: str | None, forwarded: str | None, user_agent: str | None,
                referer: str | None, origin: str | None) -> RequestContext:
        ip = client_ip(peer, forwarded, self.trusted)
        if ip and self.settings.anonymize_ip:
            ip = anonymize_ip(ip)
        if user_agent and not stands_for_visitor(user_agent):
            user_agent = None  # a program's request: its agent is neither stored nor checked for bots
        return RequestContext(datetime.now(UTC), ip, user_agent[:USER_AGENT_MAX] if user_agent else None,
                              referer[:URL_MAX] if referer else None, origin[:URL_MAX] if origin else None)

    def dead_letter(self, reason: str, intake: Intake, raw: bytes | None = None,
                    size: int | None = None) -> tuple:
        """A row for events_rejected: the reason and a capped copy of what was sent, with the
        size and SHA-256 of all of it."""
        raw = intake.body if raw is None else raw
        content_type = intake.content_type[:CONTENT_TYPE_MAX] if intake.content_type else None
        kept = raw[:self.settings.dead_letter_body_cap]
        if raw[:2] == GZIP_MAGIC:
            kept = b""  # not inflated (it was refused): a write key inside could not be removed
        elif b"ppk_" in kept:
            kept = WRITE_KEY.sub(b"ppk_[removed]", kept)
        return (reason[:REASON_MAX], intake.endpoint, content_type, intake.context.client_ip,
                min(len(raw) if size is None else size, 2**62), kept, hashlib.sha256(raw).hexdigest())

    def refused(self, status: int, code: str, detail: str, events: int = 0,
                retry_after: int | None = None) -> Outcome:
        return Outcome(status, 0, events, error=code, detail=detail, retry_after=retry_after)

    async def reject_body(self, intake: Intake, status: int, code: str, detail: str,
                          events: int = 1) -> Outcome:
        """The whole request is refused: one dead-letter row, then a 4xx (or 503)."""
        unavailable = await self.commit([], [self.dead_letter(f"{code}: {detail}", intake, size=intake.size)])
        return unavailable or self.refused(status, code, detail, events)

    async def ingest(self, intake: Intake, candidates: list, envelope: dict | None,
                     payload_bytes: int, keyed_site: str | None = None) -> Outcome:
        """Validate, admit, rate-limit, bound and commit one request's events."""
        context = intake.context
        rows: list[tuple] = []
        indexes: list[int] = []
        problems: list[tuple[int, EventRejected]] = []
        cookieless: list[int] = []
        new_agents = 0
        for index, candidate in enumerate(candidates):
            try:
                row = event_row(candidate, context, envelope)
                bot = self.settings.drop_bots and known_verdict(row[USER_AGENT_COLUMN])
                if bot is None:  # an agent not classified yet: a few per request
                    if new_agents < NEW_AGENTS_PER_REQUEST:
                        new_agents += 1
                        bot = classify(row[USER_AGENT_COLUMN])
                    else:
                        self.metrics.bot_checks_skipped += 1
                if bot:
                    self.metrics.bot_events += 1
                    raise EventRejected("bot", "The user agent is a known crawler's; "
                                        "set PIXELPIPE_DROP_BOTS=false to keep such events.")
            except EventRejected as error:
                problems.append((index, error))
                continue
            if (candidate.get("cookieless") or (envelope or {}).get("cookieless")) is True:
                cookieless.append(len(rows))
            rows.append(row)
            indexes.append(index)
        if cookieless:
            try:
                rows = await self._cookieless_visitors(rows, cookieless, context)
            except (psycopg.Error, OSError):
                return self._unavailable("The database is unavailable")
        if rows:
            try:
                rows, indexes = await self._admit(rows, indexes, problems, context, keyed_site)
            except Unavailable:
                return self._unavailable("The database is unavailable")
        limited = self._site_limited(rows) if self.site_limits else None
        if limited is not None:
            return limited
        rejects = []
        if problems:
            problems.sort(key=lambda problem: problem[0])
            rejects = self._reject_rows(intake, candidates, problems)
        budget = 2 * payload_bytes + STORE_BUDGET_FIXED + STORE_BUDGET_PER_ROW * (len(rows) + len(rejects))
        # A row holds at most ~3.6 KB of capped fields plus its raw JSON, which orjson writes at
        # most 5x the size it was sent in (1e15 -> 1000000000000000.0): a few rows from a body of
        # a few KiB cannot reach the budget, and the pixel need not count.
        provably_within = len(rows) + len(rejects) <= 4 and payload_bytes <= 8192
        if not provably_within and stored_text_bytes(rows, rejects) > budget:
            return await self.reject_body(
                intake, 413, "too_much_to_store",
                f"These events would store more than {budget} bytes (twice the body plus "
                f"{STORE_BUDGET_FIXED} plus {STORE_BUDGET_PER_ROW} a row): a field repeated into every "
                "row (the envelope's url?) is too large. Send it in each event, or shorter.",
                len(candidates))

        def refuse(position: int, reason: str) -> tuple:
            candidate = candidates[indexes[position]]
            raw = intake.body if len(candidates) == 1 else orjson.dumps(getattr(candidate, "raw", candidate))
            return self.dead_letter(f"database_refused: {reason} (event {indexes[position]})", intake, raw)

        try:
            refused_positions = await self.writer.write(rows, rejects, refuse)
        except Overloaded:
            return self._unavailable("The collector's queue is full")
        except Unavailable:
            return self._unavailable("The database is unavailable")
        accepted = len(rows) - len(refused_positions)
        if accepted:
            self.metrics.request_events.observe(accepted)
        if not problems and not refused_positions:
            return Outcome(200, accepted, 0)
        errors = [{"index": index, "error": error.code, "detail": error.detail} for index, error in problems]
        errors += [{"index": indexes[p], "error": "database_refused",
                    "detail": "The database refused this event; it is in the dead letter."}
                   for p in refused_positions]
        outcome = Outcome(200, accepted, len(candidates) - accepted, errors)
        if not accepted:
            # Nothing usable: a 4xx naming the (first) problem; all of it is in the dead letter.
            first = min(errors, key=lambda e: e["index"])
            outcome.status, outcome.error, outcome.detail = 400, first["error"], first["detail"]
        return outcome

    async def _cookieless_visitors(self, rows: list[tuple], positions: list[int],
                                   context: RequestContext) -> list[tuple]:
        """Rows sent without browser storage get today's keyed-hash visitor id, no session, no
        address, and none of the client's own ids in raw_event_data: nothing stored links them
        to another day's rows (docs/tracker.md). The user agent stays (see there why)."""
        salt = await self.salts.salt(context.received_at.date())
        for position in positions:
            row = list(rows[position])
            row[VISITOR_COLUMN] = cookieless_visitor_id(salt, row[SITE_COLUMN], context.client_ip,
                                                        row[USER_AGENT_COLUMN])
            row[SESSION_COLUMN] = None
            row[IP_COLUMN] = None
            raw = orjson.loads(row[RAW_COLUMN])
            if any(name in raw for name in CLIENT_IDS):
                row[RAW_COLUMN] = orjson.dumps({k: v for k, v in raw.items() if k not in CLIENT_IDS}).decode()
            rows[position] = tuple(row)
        return rows

    async def _admit(self, rows, indexes, problems, context: RequestContext, keyed_site):
        """Keep the rows whose site may send them; the others join `problems`."""
        sites = self.sites
        unseen = {row[SITE_COLUMN] for row in rows if row[SITE_COLUMN] not in sites.sites
                  and keyed_site in (None, row[SITE_COLUMN])}  # a key admits no other site
        if unseen and sites.policy == "open":
            try:
                await sites.admit(unseen)
            except psycopg.Error as error:
                raise Unavailable(str(error)) from None
        known = sites.sites
        kept, kept_indexes = [], []
        for row, index in zip(rows, indexes, strict=True):
            rule = known.get(row[SITE_COLUMN])
            if rule is not None and rule.open and keyed_site is None:  # the usual case
                kept.append(row)
                kept_indexes.append(index)
                continue
            try:
                sites.check(row[SITE_COLUMN], row[URL_COLUMN], context.origin, context.referer, keyed_site)
            except EventRejected as error:
                problems.append((index, error))
                continue
            kept.append(row)
            kept_indexes.append(index)
        return kept, kept_indexes

    def ip_limited(self, context: RequestContext, events: int) -> Outcome | None:
        """429 once this address has sent more events (good or bad) than its rate allows.

        Taken once per request before anything else (1 event), then for the rest of a batch
        once it is parsed, so a flood of bad events is limited like a flood of good ones, and
        every hostile request that follows costs us only this check."""
        if not self.ip_limits or not context.client_ip or events < 1:
            return None
        wait = self.ip_limits.retry_after(context.client_ip, events)
        return self._limited(f"ip {context.client_ip}", events, wait) if wait else None

    def _site_limited(self, rows: list[tuple]) -> Outcome | None:
        if not rows or not self.site_limits:
            return None
        per_site: dict[str, int] = {}
        for row in rows:
            per_site[row[SITE_COLUMN]] = per_site.get(row[SITE_COLUMN], 0) + 1
        for site, count in per_site.items():
            wait = self.site_limits.retry_after(site, count)
            if wait:
                return self._limited(f"site {site}", len(rows), wait)
        return None

    def _limited(self, key: str, events: int, wait: int) -> Outcome:
        self.metrics.rate_limited += 1
        self.flood.add(key, events)
        kind, name = key.split(" ", 1)
        return self.refused(429, "rate_limited", f"Too many events from this {kind} ({name}); nothing "
                            f"was stored, retry in {wait} s.", events, wait)

    def _reject_rows(self, intake: Intake, candidates: list, problems) -> list[tuple]:
        if len(problems) > REJECTS_KEPT_SEPARATELY:
            counts: dict[str, int] = {}
            for _, error in problems:
                counts[error.code] = counts.get(error.code, 0) + 1
            reason = (f"{len(problems)} of {len(candidates)} events rejected: "
                      + ", ".join(f"{code} x{n}" for code, n in sorted(counts.items()))
                      + f"; first: {problems[0][1].detail} (event {problems[0][0]})")
            return [self.dead_letter(reason, intake, size=intake.size)]
        rows = []
        for index, error in problems:
            try:  # a lone event's body is the event (the pixel's: its query string)
                raw = intake.body if len(candidates) == 1 else orjson.dumps(getattr(candidates[index], "raw",
                                                                                    candidates[index]))
            except orjson.JSONEncodeError:
                raw = intake.body
            rows.append(self.dead_letter(f"{error.code}: {error.detail} (event {index})", intake, raw))
        return rows

    async def commit(self, events: list[tuple], rejects: list[tuple]) -> Outcome | None:
        """Write and wait for the commit; a 503 outcome when that is impossible."""
        try:
            await self.writer.write(events, rejects)
        except Overloaded:
            return self._unavailable("The collector's queue is full")
        except Unavailable:
            return self._unavailable("The database is unavailable")
        return None

    def _unavailable(self, reason: str) -> Outcome:
        self.metrics.requests_refused += 1
        return self.refused(503, "unavailable",
                            f"{reason}; nothing from this request was stored, retry later.",
                            retry_after=int(RETRY_AFTER_SECONDS))

    async def ready(self) -> bool:
        """Database reachable, asked at most once a second per worker."""
        checked_at, ok = self._ready
        if time.monotonic() - checked_at < READINESS_TTL_SECONDS:
            return ok
        async with self._ready_lock:
            checked_at, ok = self._ready
            if time.monotonic() - checked_at >= READINESS_TTL_SECONDS:
                ok = await self.sites.refresh()
                self._ready = (time.monotonic(), ok)
        return ok

    async def summarise_floods(self) -> None:
        while True:
            await asyncio.sleep(FLOOD_SUMMARY_SECONDS)
            await self.write_flood_summary()

    async def write_flood_summary(self) -> None:
        row = self.flood.summary_row(FLOOD_SUMMARY_SECONDS)
        if row is not None:
            with contextlib.suppress(Overloaded, Unavailable):
                await self.writer.write([], [row])
        self.ip_limits.prune()
        self.site_limits.prune()

    # --- routes ------------------------------------------------------------------------------

    def scope_context(self, scope) -> tuple[RequestContext, str | None]:
        """The request context from raw ASGI headers (and the Origin), without Starlette."""
        headers: dict[bytes, str] = {}
        forwarded: list[str] = []
        for name, value in scope["headers"]:
            if name in _PIXEL_REQUEST_HEADERS:
                if name == b"x-forwarded-for":
                    forwarded.append(value.decode("latin-1"))
                else:
                    headers[name] = value.decode("latin-1")
        peer = scope.get("client")
        origin = headers.get(b"origin")
        return self.context(peer[0] if peer else None, forwarded_for(forwarded), headers.get(b"user-agent"),
                            headers.get(b"referer"), origin), origin

    async def refuse_early(self, scope, receive, send) -> bool:
        """An address over its rate gets its 429 before Starlette sees the request: under a
        flood, refusals must cost as little as possible. True when it was refused."""
        if not self.ip_limits:
            return False
        context, _ = self.scope_context(scope)
        outcome = self.ip_limited(context, 1)
        if outcome is None:
            return False
        await _json(outcome.body(), outcome.status, outcome.headers())(scope, receive, send)
        return True

    async def pixel(self, scope, receive, send) -> None:
        """GET and HEAD /i as a bare ASGI endpoint: the hottest path skips Starlette's request
        and response objects and its middleware (CORS does not apply to an image)."""
        if scope["method"] == "HEAD":  # a link checker or a prefetch: no event
            await send(_PIXEL_START)
            await send(_EMPTY_BODY)
            return
        context, origin = self.scope_context(scope)
        query = scope["query_string"]
        intake = Intake("/i", None, context, query, len(query))
        params = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
        if is_tracker_query(params):  # a Snowplow tracker's GET
            params = tracker_event(params, context.user_agent)
        outcome = self.ip_limited(context, 1) or await self.ingest(intake, [params], None, len(query))
        if outcome.status in (429, 503):
            await _json(outcome.body(), outcome.status, outcome.headers())(scope, receive, send)
            return
        # Always the GIF, also for bad input (it is in the dead letter): a page never shows a
        # broken image.
        if origin is None:
            await send(_PIXEL_START)
        else:  # Snowplow's GET is a credentialed fetch: CORS as for every other route
            await send({**_PIXEL_START, "headers": _PIXEL_START["headers"] + self.cors.response_headers(origin)})
        await send(_PIXEL_BODY)

    async def collect(self, request: Request) -> Response:
        outcome = await self._collect(request)
        return _json(outcome.body(), outcome.status, outcome.headers())

    def request_context(self, request: Request) -> RequestContext:
        headers = request.headers
        return self.context(request.client.host if request.client else None,
                            forwarded_for(headers.getlist("x-forwarded-for")),
                            headers.get("user-agent"), headers.get("referer"), headers.get("origin"))

    async def _collect(self, request: Request) -> Outcome:
        headers = request.headers
        context = self.request_context(request)
        content_type = headers.get("content-type")
        keyed_site = None
        authorization = headers.get("authorization")
        if authorization is not None:  # the key is checked before the body is read
            key = bearer_key(authorization)
            keyed_site = await self.sites.site_for_key(key) if key else None
            if keyed_site is None:
                return await self.reject_body(
                    Intake("/collect", content_type, context, b"", declared_size(request)), 401,
                    "invalid_write_key", "The Authorization header holds no valid write key (Bearer <key>); "
                    "`pixelpipe site key SITE` makes one. Nothing was stored.")
        note_site(request.scope, keyed_site)
        try:
            body, size = await self._read_body(request)
        except BodyRejected as error:
            return await self.body_refused(Intake("/collect", content_type, context, b"",
                                                  declared_size(request)), error)
        intake = Intake("/collect", content_type, context, body, size)
        try:
            self.check_size(size, "send smaller batches")
            payload = decode_body(body, content_type, headers.get("content-encoding"), self.limits)
            intake = intake._replace(body=payload)  # what a dead letter keeps: the decoded text
            candidates, envelope = parse_events(payload, self.limits)
        except BodyRejected as error:
            return await self.body_refused(intake, error)
        # The rest of the request's cost, before any event is looked at: one token per further
        # event and per BODY_BYTES_PER_TOKEN inflated bytes (a gzip bomb pays for what it costs).
        limited = self.ip_limited(context, len(candidates) - 1 + len(payload) // BODY_BYTES_PER_TOKEN)
        if limited is not None:
            return limited
        if keyed_site is not None and "siteId" not in envelope:
            envelope = {**envelope, "siteId": keyed_site}
        return await self.ingest(intake, candidates, envelope, len(payload), keyed_site)

    # --- other SDKs' protocols (ingest_service/sdks/) ----------------------------------------

    async def segment(self, request: Request) -> Response:
        """Segment's and RudderStack's SDKs: /v1/batch and the single calls."""
        call = request.path_params["call"]
        call = SEGMENT_SHORT_CALLS.get(call, call)
        if call not in SEGMENT_CALLS:
            detail = f"/v1/{call} is not a Segment endpoint; use one of {', '.join('/v1/' + c for c in SEGMENT_CALLS)}."
            return _json({"code": "not_found", "message": detail, "error": "not_found", "detail": detail}, 404)
        authorization = request.headers.get("authorization")
        outcome = await self._sdk(request, lambda payload: segment_batch(payload, call, authorization, self.limits),
                                  keyed=True, header_key=basic_auth_user(authorization))
        return _json(segment_answer(outcome.body(), outcome.status), outcome.status, outcome.headers())

    async def posthog(self, request: Request) -> Response:
        """PostHog's SDKs: /batch/, /capture/, /e/ (and /i/v0/e/ of newer posthog-js)."""
        headers, compression = request.headers, request.query_params.get("compression")

        def decode(body: bytes) -> bytes | Lz64Text:
            return decode_payload(body, headers.get("content-type"), headers.get("content-encoding"),
                                  compression, self.limits)

        outcome = await self._sdk(request, lambda payload: capture_batch(payload, self.limits),
                                  keyed=True, decode=decode)
        return _json(capture_answer(outcome.body(), outcome.status), outcome.status, outcome.headers())

    async def rudderstack_beacon(self, request: Request) -> Response:
        """RudderStack's browser SDK with `useBeacon`: a batch, the write key in the query string."""
        key = request.query_params.get("writeKey")
        outcome = await self._sdk(request, lambda payload: beacon_batch(payload, key, self.limits),
                                  keyed=True, header_key=key)
        return _json(segment_answer(outcome.body(), outcome.status), outcome.status, outcome.headers())

    async def jitsu(self, request: Request) -> Response:
        """Jitsu's SDKs: one Segment-shaped event per request, the write key in X-Write-Key."""
        call, key = request.path_params["call"], request.headers.get("x-write-key")
        if call not in SEGMENT_CALLS or call == "batch":
            detail = f"/api/s/{call} is not a Jitsu event type; use page, track, identify, group, alias or screen."
            return _json({"error": "not_found", "detail": detail}, 404)
        outcome = await self._sdk(request, lambda payload: jitsu_batch(payload, call, key, self.limits),
                                  keyed=True, header_key=key)
        return _json(segment_answer(outcome.body(), outcome.status), outcome.status, outcome.headers())

    async def snowplow(self, request: Request) -> Response:
        """Snowplow trackers' POST; their GET is the pixel's /i."""
        agent, key = request.headers.get("user-agent"), bearer_key(request.headers.get("authorization"))
        # Snowplow's protocol has no key; a sender for a site that requires one adds a Bearer header.
        outcome = await self._sdk(request, lambda payload: tp2_batch(payload, agent, self.limits),
                                  keyed=key is not None, header_key=key)
        return _json(outcome.body(), outcome.status, outcome.headers())

    async def _sdk(self, request: Request, translate, *, keyed: bool, decode=None,
                   header_key: str | None = None) -> Outcome:
        """An SDK's request through the one intake path: read within the cap, decoded, translated,
        the write key checked (401 without a valid one), limited like /collect, then ingested.
        `decode` turns the body as received into JSON text (default: inflate by Content-Encoding).
        A key in a header (`header_key`) is checked before the body is read; a key that only the
        body holds (PostHog's api_key, Segment's writeKey) after it is decoded."""
        context = self.request_context(request)
        content_type = request.headers.get("content-type")
        keyed_site = None
        if keyed and header_key:
            keyed_site = await self.sites.site_for_key(header_key)
            if keyed_site is None:
                return await self.reject_body(
                    Intake(request.url.path, content_type, context, b"", declared_size(request)), 401,
                    "invalid_write_key", "The write key in the Authorization header is no site's "
                    "(`pixelpipe site key SITE` makes one). Nothing was stored.")
        try:
            body, size = await self._read_body(request)
        except BodyRejected as error:
            return await self.body_refused(Intake(request.url.path, content_type, context, b"",
                                                  declared_size(request)), error)
        intake = Intake(request.url.path, content_type, context, body, size)
        try:
            self.check_size(size, "lower the SDK's batch size")
            payload = decode(body) if decode else decode_body(
                body, "application/json", request.headers.get("content-encoding"), self.limits)
            if isinstance(payload, Lz64Text):  # pure Python, ~20 ms for 64 KiB: off the event loop
                payload = await self.slow_decoding.run(payload.decode)
            intake = intake._replace(body=payload)  # what a dead letter keeps: the decoded text
            batch = translate(payload)
        except BodyRejected as error:
            return await self.body_refused(intake, error)
        # The first event's token was taken before the body (refuse_early).
        limited = self.ip_limited(context, len(batch.events) - 1 + batch.payload_bytes // BODY_BYTES_PER_TOKEN)
        if limited is not None:
            return limited
        if keyed and keyed_site is None:
            keyed_site = await self.sites.site_for_key(batch.write_key) if batch.write_key else None
            if keyed_site is None:
                return await self.reject_body(
                    intake, 401, "invalid_write_key",
                    "No valid write key: send the site's key as the SDK's write key / api_key "
                    "(`pixelpipe site key SITE` makes one). Nothing was stored.", len(batch.events))
        note_site(request.scope, keyed_site)
        envelope = {"siteId": keyed_site} if keyed_site else None
        return await self.ingest(intake, batch.events, envelope, batch.payload_bytes, keyed_site)

    def check_size(self, size: int, remedy: str) -> None:
        if size > self.limits.max_body_bytes:
            raise BodyRejected(413, "body_too_large",
                               f"The body is larger than the {self.limits.max_body_bytes}-byte cap; {remedy}.")

    async def body_refused(self, intake: Intake, error: BodyRejected) -> Outcome:
        """A refused body: what the refusal cost us (reading, inflating) counts against the
        address first, then one dead-letter row and the 4xx."""
        if error.code == "body_too_large":
            inflated = self.limits.max_body_bytes
        elif error.code.endswith("_ratio"):  # inflated up to its ratio cap before it was refused
            inflated = inflation_cap(len(intake.body), self.limits)
        else:
            inflated = len(intake.body)
        return self.ip_limited(intake.context, inflated // BODY_BYTES_PER_TOKEN) \
            or await self.reject_body(intake, error.status, error.code, error.detail)

    async def _read_body(self, request: Request) -> tuple[bytes, int]:
        """Read at most the cap (plus one chunk to tell it was exceeded); return (body, size).
        BodyRejected when the client is gone before the end."""
        cap = self.limits.max_body_bytes
        declared = request.headers.get("content-length", "")
        if _CONTENT_LENGTH.fullmatch(declared) and int(declared) > cap:
            return b"", int(declared)
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > cap:
                    chunks.append(chunk[: max(0, self.settings.dead_letter_body_cap - (size - len(chunk)))])
                    return b"".join(chunks), size
                chunks.append(chunk)
        except ClientDisconnect:  # gone, or closed by the body timeout (http_limits.py)
            raise BodyRejected(408, "body_incomplete", f"The client sent {size} bytes of its body and "
                               "no more in time (PIXELPIPE_BODY_TIMEOUT_SECONDS).") from None
        return b"".join(chunks), size

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
        return _json({"status": "alive"})

    async def readyz(self, request: Request) -> Response:
        status, body = await self.readiness()
        return Response(body, status, {"Retry-After": RETRY_AFTER_SECONDS} if status != 200 else None,
                        media_type="application/json")

    async def readiness(self) -> tuple[int, bytes]:
        if await self.ready():
            return 200, orjson.dumps({"status": "ready"})
        return 503, orjson.dumps({"status": "unavailable", "detail": "The database is unreachable."})

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi(self, request: Request) -> Response:
        return _json(OPENAPI)

    # --- the admin port ----------------------------------------------------------------------

    async def serve_admin(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """GET /metrics and /readyz on PIXELPIPE_ADMIN_PORT (127.0.0.1 only), one per connection."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            path = parts[1].split(b"?")[0] if len(parts) == 3 and parts[0] == b"GET" else b""
            if path == b"/metrics":
                status, body, kind = 200, self.metrics.render().encode(), b"text/plain; version=0.0.4"
            elif path == b"/readyz":
                status, body = await self.readiness()
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


class _PixelFirst:
    """The collector's ASGI app: GET /i goes straight to the pixel, everything else to Starlette.

    The pixel is CPU-bound in the collector; with Starlette's middleware chain and
    Request/Response objects out of its way it costs much less per request (docs/benchmarks.md).
    """

    def __init__(self, app: Starlette, collector: Collector):
        self.app = app
        self.collector = collector

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/i" and scope["method"] in ("GET", "HEAD"):
            await self.collector.pixel(scope, receive, send)
        elif scope["type"] == "http" and scope["method"] == "POST":
            # Every write route (/collect, the SDKs' and any added later): the request's first
            # token is taken here, before Starlette, the body, inflating or parsing.
            if not await self.collector.refuse_early(scope, receive, send):
                await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def create_app(settings: Settings, database_url: str, extra_routes: list | None = None) -> _PixelFirst:
    """The collector as an ASGI app; `extra_routes` lets `pixelpipe up --demo` add /demo."""
    collector = Collector(settings, database_url)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await collector.sites.refresh()
        background = [asyncio.create_task(collector.sites.keep_fresh()),
                      asyncio.create_task(collector.sites.follow_changes()),
                      asyncio.create_task(collector.summarise_floods())]
        admin = None
        if settings.admin_port:
            # Every worker binds the port (SO_REUSEPORT) and answers for itself, as on the main port.
            admin = await asyncio.start_server(collector.serve_admin, "127.0.0.1", settings.admin_port,
                                               reuse_port=True, limit=8192)
        await collector.writer.start()
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            if admin is not None:
                admin.close()
            await collector.write_flood_summary()
            # SIGTERM: uvicorn stops accepting and lets requests finish; then we flush the rest.
            await collector.writer.close()
            collector.slow_decoding.close()

    operator_routes = [] if settings.admin_port else [
        Route("/readyz", collector.readyz, methods=["GET"]),
        Route("/metrics", collector.metrics_text, methods=["GET"]),
    ]
    app = Starlette(
        routes=[
            Route("/collect", collector.collect, methods=["POST"]),
            Route("/v1/{call}", collector.segment, methods=["POST"]),
            *(Route(path, collector.posthog, methods=["POST"])
              for path in ("/batch/", "/capture/", "/e/", "/i/v0/e/")),
            Route("/com.snowplowanalytics.snowplow/tp2", collector.snowplow, methods=["POST"]),
            Route("/beacon/v1/batch", collector.rudderstack_beacon, methods=["POST"]),
            *(Route(path, collector.jitsu, methods=["POST"]) for path in ("/api/s/{call}", "/api/s/s2s/{call}")),
            Route("/t.js", collector.tracker, methods=["GET"]),
            Route("/healthz", collector.healthz, methods=["GET"]),
            *operator_routes,
            Route("/openapi.json", collector.openapi, methods=["GET"]),
            *(extra_routes or []),
        ],
        middleware=[Middleware(CorsMiddleware, policy=collector.cors)],
        lifespan=lifespan,
    )
    return _PixelFirst(app, collector)
