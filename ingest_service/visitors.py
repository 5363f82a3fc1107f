"""Who sent an event: crawlers recognised by a maintained list, and cookieless visitor ids.

Bots: the visitor's user agent (the event's own, else the request's when a browser sent it, not
an HTTP library) against the `crawlerdetect` package (a Python port of the CrawlerDetect list,
kept up to date upstream). Its check costs ~0.2 ms, ten times a whole event's handling, so verdicts are cached
per user agent and a request may bring at most NEW_AGENTS_PER_REQUEST agents not seen before:
a batch of a thousand made-up user agents cannot buy 200 ms of CPU.

Cookieless visitors (the tracker's `data-cookieless`): nothing is stored in the browser; the
visitor id is an HMAC of site, address and user agent under a salt that exists for one UTC day.
The salt lives in PostgreSQL (`visitor_salts`) so every worker derives the same id, and creating
a day's salt deletes the earlier ones, so an id cannot be recomputed or linked across days.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from datetime import date

import psycopg
from crawlerdetect import CrawlerDetect

_CRAWLERS = CrawlerDetect()
VERDICTS_KEPT = 16384
NEW_AGENTS_PER_REQUEST = 16
_verdicts: dict[str, bool] = {}


# The first product token of HTTP libraries' default user agents (curl/8.5.0, python-requests/2.32,
# Python-urllib/3.12, Go-http-client/1.1, ...): a request from one is a program posting events
# (a backend, a script), not a visitor's browser, so its user agent is nobody's (see stands_for_visitor).
HTTP_LIBRARIES = frozenset((
    "curl", "wget", "python-requests", "python-urllib", "python-httpx", "python", "aiohttp",
    "go-http-client", "node-fetch", "node", "undici", "axios", "got", "okhttp", "java",
    "apache-httpclient", "jakarta commons-httpclient", "libwww-perl", "guzzlehttp", "ruby", "faraday",
    "php", "httpie", "postmanruntime", "insomnia", "dart", "rest-client", "reqwest", "hackney",
    "powershell", "winhttp", "deno", "bun",
))


def stands_for_visitor(request_agent: str) -> bool:
    """Whether a request's User-Agent is its visitor's: a browser's (or a crawler's, which is
    what the crawler list is for), not an HTTP library's. A backend posting its own events is
    not a crawler visiting a page; the crawler list then applies to the event's own userAgent."""
    product = request_agent.split("/", 1)[0].split(" (", 1)[0].strip().lower()
    return product not in HTTP_LIBRARIES


def known_verdict(user_agent: str | None) -> bool | None:
    """The cached verdict on a user agent (no agent: not a bot), None when not classified yet."""
    return _verdicts.get(user_agent) if user_agent else False


def classify(user_agent: str) -> bool:
    """True when the maintained crawler list recognises the user agent; cached (bounded)."""
    verdict = bool(_CRAWLERS.isCrawler(user_agent))
    if len(_verdicts) >= VERDICTS_KEPT:
        _verdicts.clear()
    _verdicts[user_agent] = verdict
    return verdict


def cookieless_visitor_id(salt: bytes, site_id: str, ip: str | None, user_agent: str | None) -> str:
    """A visitor id stable for one day and one site, unlinkable once the salt is gone."""
    message = "\x1f".join((site_id, ip or "", user_agent or "")).encode()
    return "cl-" + hmac.new(salt, message, hashlib.sha256).hexdigest()[:32]


class DailySalts:
    """Today's salt, shared by the workers through PostgreSQL and cached for the day."""

    def __init__(self, database_url: str):
        self.database_url = database_url
        self._day: date | None = None
        self._salt = b""
        self._loading = asyncio.Lock()

    async def salt(self, day: date) -> bytes:
        if day != self._day:
            # One load per worker and day: a burst of cookieless requests at midnight (or at
            # start) waits for it instead of opening a connection each.
            async with self._loading:
                if day != self._day:
                    self._salt = await self._load(day)
                    self._day = day
        return self._salt

    def forget(self) -> None:
        """Drop the cached salt, so the next event reads (or creates) the stored one again."""
        self._day = None
        self._salt = b""

    async def _load(self, day: date) -> bytes:
        async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True,
                                                         connect_timeout=5) as conn:
            async with conn.transaction():
                await conn.execute("INSERT INTO visitor_salts (day, salt) VALUES (%s, %s) "
                                   "ON CONFLICT (day) DO NOTHING", (day, os.urandom(32)))
                await conn.execute("DELETE FROM visitor_salts WHERE day < %s", (day,))
                cursor = await conn.execute("SELECT salt FROM visitor_salts WHERE day = %s", (day,))
                (salt,) = await cursor.fetchone()
        return bytes(salt)
