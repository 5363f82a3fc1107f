"""The one intake core: what happens to a request's events once a front end has read, decoded and
translated them, the same for every protocol. No HTTP here (an import-linter contract says so):
the front ends in ingest_service/http/ refuse what they can before reading a body, then call
`IntakeCore.ingest` (or `reject_body` / `body_refused`) and turn the `Outcome` into their answer.

In order: bots, cookieless ids, admission (the site directory), the site's rate, the storage
bound, the dead letter, the commit; every 2xx a front end gives means: committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import operator
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from typing import NamedTuple

import orjson
import psycopg

from ingest_service.admission import SiteDirectory, TokenBuckets
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
    event_row,
    inflation_cap,
)
from ingest_service.metrics import CollectorMetrics
from ingest_service.offload import SlowDecoding
from ingest_service.visitors import (
    NEW_AGENTS_PER_REQUEST,
    DailySalts,
    classify,
    cookieless_visitor_id,
    known_verdict,
    stands_for_visitor,
)
from ingest_service.writer import DeadLetter, EventWriter, Overloaded, Unavailable
from pixelpipe.core.settings import Settings

RETRY_AFTER_SECONDS = "5"
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
# A write key as `pixelpipe site key` makes them (pixelpipe.core.sites): removed from whatever a
# dead letter keeps, wherever in the body it was. A fixed prefix and a bounded class: linear.
WRITE_KEY = re.compile(rb"ppk_[A-Za-z0-9_-]{43}")
GZIP_MAGIC = b"\x1f\x8b"


_EVENT_TEXT = operator.itemgetter(*(i for i, c in enumerate(EVENT_COLUMNS) if c not in ("timestamp", "event_id")))


def stored_text_bytes(rows: list[tuple], rejects: list[DeadLetter]) -> int:
    """What rows cost as text (UTF-8): every event row's text columns joined into one string
    without a Python-level loop (ASCII text, the usual case, is measured without encoding it),
    the few dead-letter rows value by value."""
    text = "".join(filter(None, chain.from_iterable(map(_EVENT_TEXT, rows))))
    total = len(text) if text.isascii() else len(text.encode())
    for row in rejects:
        for value in row:
            if isinstance(value, str):
                total += len(value.encode())
            elif isinstance(value, bytes):
                total += len(value)
    return total


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


class Received(NamedTuple):
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

    def summary_row(self, seconds: int) -> DeadLetter | None:
        if not self.requests:
            return None
        top = sorted(self.keys.items(), key=lambda kv: -kv[1])[:10]
        reason = (f"rate_limited: {self.requests} requests ({self.events} events) refused with 429 "
                  f"in the last {seconds} s from {len(self.keys)} addresses or sites; most: "
                  + ", ".join(f"{key} ({count})" for key, count in top))
        self.reset()
        return DeadLetter(reason[:REASON_MAX])


class IntakeCore:
    """The collector's state (settings, site directory, writer, limits, metrics) and the one path
    every protocol's events take through it."""

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
        self._ready = (-READINESS_TTL_SECONDS, False)
        self._ready_lock = asyncio.Lock()

    # --- what every event goes through -----------------------------------------------------------

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

    def dead_letter(self, reason: str, received: Received, raw: bytes | None = None,
                    size: int | None = None) -> DeadLetter:
        """A row for events_rejected: the reason and a capped copy of what was sent, with the
        size and SHA-256 of all of it."""
        raw = received.body if raw is None else raw
        content_type = received.content_type[:CONTENT_TYPE_MAX] if received.content_type else None
        kept = raw[:self.settings.dead_letter_body_cap]
        if raw[:2] == GZIP_MAGIC:
            kept = b""  # not inflated (it was refused): a write key inside could not be removed
        elif b"ppk_" in kept:
            kept = WRITE_KEY.sub(b"ppk_[removed]", kept)
        return DeadLetter(reason[:REASON_MAX], received.endpoint, content_type, received.context.client_ip,
                          min(len(raw) if size is None else size, 2**62), kept, hashlib.sha256(raw).hexdigest())

    def refused(self, status: int, code: str, detail: str, events: int = 0,
                retry_after: int | None = None) -> Outcome:
        return Outcome(status, 0, events, error=code, detail=detail, retry_after=retry_after)

    async def reject_body(self, received: Received, status: int, code: str, detail: str,
                          events: int = 1) -> Outcome:
        """The whole request is refused: one dead-letter row, then a 4xx (or 503)."""
        unavailable = await self.commit([], [self.dead_letter(f"{code}: {detail}", received, size=received.size)])
        return unavailable or self.refused(status, code, detail, events)

    async def ingest(self, received: Received, candidates: list, envelope: dict | None,
                     payload_bytes: int, keyed_site: str | None = None) -> Outcome:
        """Validate, admit, rate-limit, bound and commit one request's events."""
        context = received.context
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
            rejects = self._reject_rows(received, candidates, problems)
        budget = 2 * payload_bytes + STORE_BUDGET_FIXED + STORE_BUDGET_PER_ROW * (len(rows) + len(rejects))
        # A row holds at most ~3.6 KB of capped fields plus its raw JSON, which orjson writes at
        # most 5x the size it was sent in (1e15 -> 1000000000000000.0): a few rows from a body of
        # a few KiB cannot reach the budget, and the pixel need not count.
        provably_within = len(rows) + len(rejects) <= 4 and payload_bytes <= 8192
        if not provably_within and stored_text_bytes(rows, rejects) > budget:
            return await self.reject_body(
                received, 413, "too_much_to_store",
                f"These events would store more than {budget} bytes (twice the body plus "
                f"{STORE_BUDGET_FIXED} plus {STORE_BUDGET_PER_ROW} a row): a field repeated into every "
                "row (the envelope's url?) is too large. Send it in each event, or shorter.",
                len(candidates))

        def refuse(position: int, reason: str) -> DeadLetter:
            candidate = candidates[indexes[position]]
            raw = received.body if len(candidates) == 1 else orjson.dumps(getattr(candidate, "raw", candidate))
            return self.dead_letter(f"database_refused: {reason} (event {indexes[position]})", received, raw)

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

    def _reject_rows(self, received: Received, candidates: list, problems) -> list[DeadLetter]:
        if len(problems) > REJECTS_KEPT_SEPARATELY:
            counts: dict[str, int] = {}
            for _, error in problems:
                counts[error.code] = counts.get(error.code, 0) + 1
            reason = (f"{len(problems)} of {len(candidates)} events rejected: "
                      + ", ".join(f"{code} x{n}" for code, n in sorted(counts.items()))
                      + f"; first: {problems[0][1].detail} (event {problems[0][0]})")
            return [self.dead_letter(reason, received, size=received.size)]
        rows = []
        for index, error in problems:
            try:  # a lone event's body is the event (the pixel's: its query string)
                raw = received.body if len(candidates) == 1 else orjson.dumps(getattr(candidates[index], "raw",
                                                                                    candidates[index]))
            except orjson.JSONEncodeError:
                raw = received.body
            rows.append(self.dead_letter(f"{error.code}: {error.detail} (event {index})", received, raw))
        return rows

    async def commit(self, events: list[tuple], rejects: list[DeadLetter]) -> Outcome | None:
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

    # --- what a front end calls around reading and decoding a body -------------------------------

    def check_size(self, size: int, remedy: str) -> None:
        if size > self.limits.max_body_bytes:
            raise BodyRejected(413, "body_too_large",
                               f"The body is larger than the {self.limits.max_body_bytes}-byte cap; {remedy}.")

    async def body_refused(self, received: Received, error: BodyRejected) -> Outcome:
        """A refused body: what the refusal cost us (reading, inflating) counts against the
        address first, then one dead-letter row and the 4xx."""
        if error.code == "body_too_large":
            inflated = self.limits.max_body_bytes
        elif error.code.endswith("_ratio"):  # inflated up to its ratio cap before it was refused
            inflated = inflation_cap(len(received.body), self.limits)
        else:
            inflated = len(received.body)
        return self.ip_limited(received.context, inflated // BODY_BYTES_PER_TOKEN) \
            or await self.reject_body(received, error.status, error.code, error.detail)

    async def readiness(self) -> tuple[int, bytes]:
        if await self.ready():
            return 200, orjson.dumps({"status": "ready"})
        return 503, orjson.dumps({"status": "unavailable", "detail": "The database is unreachable."})
