"""Which events a tenant may send, from where, how fast: the collector's admission rules.

The `sites` table decides (docs/security.md): under the open policy unseen sites are admitted,
at most PIXELPIPE_NEW_SITES_PER_HOUR a clock hour; under the allowlist policy only sites with
`allowed`. A site may name the page hosts its events may come from, and a write key that
server-side senders present instead. Each worker caches the table and refreshes it every few
seconds, so the hot path never waits on the database for a known site.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import orjson
import psycopg

from ingest_service.events import EventRejected, page_host
from pixelpipe.core.sites import write_key_hash

SITES_REFRESH_SECONDS = 10
# An unknown key refreshes the cache at most this often, so that a stream of wrong keys cannot
# hammer the database; a key `pixelpipe site key` just made is announced (follow_changes) anyway.
UNKNOWN_KEY_REFRESH_SECONDS = 1.0


@dataclass(frozen=True)
class SiteRule:
    allowed: bool
    allowed_hosts: tuple[str, ...] | None  # None: any host
    require_key: bool = False

    @property
    def open(self) -> bool:
        """Anyone may send for it: the usual case, decided without looking at the request."""
        return self.allowed and self.allowed_hosts is None and not self.require_key


_SITE_COLUMNS = "SELECT site_id, allowed, allowed_hosts, write_key_sha256, require_key FROM sites"


def _rule(row: tuple) -> SiteRule:
    _, allowed, hosts, _, require_key = row
    return SiteRule(allowed, tuple(h.lower() for h in hosts) if hosts else None, require_key)


def _announced_ids(payload: str) -> list[str] | None:
    """The site ids a change announced; None: reload everything."""
    try:
        ids = orjson.loads(payload) if payload else None
    except orjson.JSONDecodeError:
        return None
    return [str(i) for i in ids] if isinstance(ids, list) else None


def host_allowed(host: str | None, allowed_hosts: tuple[str, ...]) -> bool:
    """host is one of allowed_hosts or a subdomain of one."""
    return host is not None and any(host == h or host.endswith("." + h) for h in allowed_hosts)


class SiteDirectory:
    """The collector's cached view of `sites`, and the admission of unseen sites."""

    def __init__(self, database_url: str, policy: str, new_sites_per_hour: int, metrics=None):
        self.database_url = database_url
        self.policy = policy
        self.new_sites_per_hour = new_sites_per_hour
        self.metrics = metrics
        self.sites: dict[str, SiteRule] = {}
        self.keys: dict[str, str] = {}  # write key hash -> site_id
        self._key_of: dict[str, str] = {}  # site_id -> write key hash
        self._over_cap: tuple[int, frozenset[str]] = (-1, frozenset())  # (hour, refused ids)
        self._conn: psycopg.AsyncConnection | None = None
        self._lock = asyncio.Lock()
        self._last_refresh = -math.inf

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.database_url, connect_timeout=2, autocommit=True)
        return self._conn

    async def _query(self, text: str, params=None) -> list[tuple] | None:
        try:
            conn = await self._connection()
            cursor = await conn.execute(text, params)
            return await cursor.fetchall()
        except psycopg.Error:
            if self._conn is not None:
                await self._conn.close()
            return None

    async def refresh(self, unless_newer_than: float | None = None) -> bool:
        """Reload the table; keep the last copy when the database cannot be reached.

        With `unless_newer_than`, a copy loaded that many seconds ago or less is kept, decided
        inside the lock: a burst of callers that all found it stale waits for one reload."""
        async with self._lock:
            if unless_newer_than is not None and time.monotonic() - self._last_refresh <= unless_newer_than:
                return True
            rows = await self._query(_SITE_COLUMNS)
            if rows is None:
                return False
            self._last_refresh = time.monotonic()
            if self.metrics is not None:
                self.metrics.site_reloads_full += 1
            self.sites = {row[0]: _rule(row) for row in rows}
            self._key_of = {row[0]: row[3] for row in rows if row[3]}
            self.keys = {key: site for site, key in self._key_of.items()}
        return True

    async def reload_sites(self, site_ids: list[str]) -> bool:
        """Reload only these rows (a change announced with its ids); a deleted site is forgotten."""
        async with self._lock:
            rows = await self._query(_SITE_COLUMNS + " WHERE site_id = ANY(%s)", (site_ids,))
            if rows is None:
                return False
            if self.metrics is not None:
                self.metrics.site_reloads_changed += 1
            found = {row[0]: row for row in rows}
            for site in site_ids:
                old_key = self._key_of.pop(site, None)
                if old_key is not None and self.keys.get(old_key) == site:
                    del self.keys[old_key]
                row = found.get(site)
                if row is None:
                    self.sites.pop(site, None)
                    continue
                self.sites[site] = _rule(row)
                if row[3]:
                    self._key_of[site] = row[3]
                    self.keys[row[3]] = site
        return True

    async def keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(SITES_REFRESH_SECONDS)
            await self.refresh()

    async def site_for_key(self, key: str) -> str | None:
        digest = write_key_hash(key)
        site = self.keys.get(digest)
        if site is None and time.monotonic() - self._last_refresh > UNKNOWN_KEY_REFRESH_SECONDS:
            await self.refresh(unless_newer_than=UNKNOWN_KEY_REFRESH_SECONDS)
            site = self.keys.get(digest)
        return site

    async def follow_changes(self) -> None:
        """Apply every change to `sites` as it is announced (sql/014_site_keys_and_changes.sql:
        the ids that changed), so a new key or a blocked site takes effect at once rather than
        at the next periodic refresh, and a change costs a reload of its rows, not of the table."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self.database_url, connect_timeout=2, autocommit=True) as conn:
                    await conn.execute("LISTEN pixelpipe_sites")
                    await self.refresh()  # what changed while we were not listening
                    async for notice in conn.notifies():
                        site_ids = _announced_ids(notice.payload)
                        if site_ids is None:
                            await self.refresh(unless_newer_than=0)
                        else:
                            await self.reload_sites(site_ids)
            except psycopg.Error:
                await asyncio.sleep(SITES_REFRESH_SECONDS)  # keep_fresh covers the gap

    async def admit(self, unseen: set[str]) -> set[str]:
        """Admit unseen sites under the open policy; returns those that may send now.

        Raises psycopg.Error when the database cannot be asked (the caller answers 503).
        """
        hour = int(time.time() // 3600)
        over_hour, over = self._over_cap
        if over_hour == hour:
            unseen = unseen - over
        if not unseen:
            return set()
        async with self._lock:
            try:
                conn = await self._connection()
                cursor = await conn.execute("SELECT sites_admit(%s, %s)",
                                            (sorted(unseen), self.new_sites_per_hour))
                admitted = {row[0] for row in await cursor.fetchall()}
            except psycopg.Error:
                if self._conn is not None:
                    await self._conn.close()
                raise
        for site in admitted:
            self.sites.setdefault(site, SiteRule(True, None))
        refused = unseen - admitted
        if refused:
            # Remember this hour's refusals (bounded), so a flood of new ids costs no query each.
            known = over if over_hour == hour else frozenset()
            if len(known) < 100_000:
                self._over_cap = (hour, known | refused)
        return admitted

    def check(self, site: str, url: str | None, origin: str | None, referer: str | None,
              keyed_site: str | None) -> None:
        """EventRejected unless this (known or just admitted) site may send this event."""
        if keyed_site is not None and site != keyed_site:
            raise EventRejected("key_for_another_site", f"The write key is site {keyed_site!r}'s; a key "
                                f"writes only its own site's events, not {site!r}'s.")
        rule = self.sites.get(site)
        if rule is None:
            if self.policy == "allowlist":
                raise EventRejected("site_not_allowed", f"Site {site!r} is not on the allowlist "
                                    "(PIXELPIPE_SITE_POLICY=allowlist; `pixelpipe site add`).")
            raise EventRejected("new_site_limit", f"Site {site!r} is new and this hour's quota of "
                                f"{self.new_sites_per_hour} new sites is used up "
                                "(PIXELPIPE_NEW_SITES_PER_HOUR).")
        if not rule.allowed:
            raise EventRejected("site_not_allowed", f"Site {site!r} is not allowed (sites.allowed = false).")
        if rule.require_key and keyed_site is None:
            raise EventRejected("write_key_required", f"Site {site!r} takes events only with its write key "
                                "(sites.require_key; `pixelpipe site set SITE --no-require-key` lifts it).")
        if rule.allowed_hosts is None:
            return
        if site == keyed_site and origin is None and referer is None:
            # A server-side sender with the key. A browser's request (it names its page in Origin
            # or Referer) must come from the site's hosts even with the key: the key is in the
            # site's pages (posthog-js, analytics.js), so any page can copy it.
            return
        hosts = [page_host(u) for u in (url, origin, referer) if u]
        if not hosts or not all(host_allowed(h, rule.allowed_hosts) for h in hosts):
            raise EventRejected(
                "host_not_allowed",
                f"Site {site!r} accepts events only from pages on {', '.join(rule.allowed_hosts)} "
                "(sites.allowed_hosts), or server-side with its write key.")


class TokenBuckets:
    """Events per second per key (an IP or a site), one bucket each, per worker.

    A bucket holds one second's worth. A request passes while its bucket holds what it costs,
    or is full (a batch larger than a second's worth may pass then); what it costs is always
    taken, so the bucket may go into debt and the key waits until it is paid. Work already done
    before a refusal (a body inflated, a batch parsed) is charged too, so a stream of costly
    refusals cannot go on at the price of a cheap one. Idle buckets are forgotten, so a stream
    of new keys cannot grow memory past `max_keys`.
    """

    def __init__(self, rate: float, max_keys: int = 100_000, max_debt_seconds: float = 10.0):
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self.max_debt = rate * max_debt_seconds
        self.max_keys = max_keys
        self._buckets: dict[str, list[float]] = {}

    def __bool__(self) -> bool:
        return self.rate > 0

    def retry_after(self, key: str, events: int = 1, now: float | None = None) -> int:
        """Take `events`; 0 when they may pass, otherwise whole seconds until the key may send."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self.prune(now)
            bucket = self._buckets[key] = [self.capacity, now]
        tokens = min(self.capacity, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        passes = tokens >= min(float(events), self.capacity)
        bucket[0] = max(tokens - events, -self.max_debt)
        if passes:
            return 0
        return max(1, math.ceil((1 - bucket[0]) / self.rate))

    def prune(self, now: float | None = None) -> None:
        if not self.rate:
            return
        now = time.monotonic() if now is None else now
        full_after = (self.capacity + self.max_debt) / self.rate
        self._buckets = {k: b for k, b in self._buckets.items() if now - b[1] < full_after}
        if len(self._buckets) >= self.max_keys:
            self._buckets.clear()  # an address flood: forget everyone rather than grow
