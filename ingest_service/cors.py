"""CORS as the browser SDKs need it: credentialed answers, their own request headers.

Browser SDKs send with credentials by default (Snowplow's v4 tracker: `credentials: "include"`),
and a browser refuses `Access-Control-Allow-Origin: *` for such a request. So, as Snowplow's own
collector does, an allowed Origin is reflected with `Access-Control-Allow-Credentials: true` and
`Vary: Origin`. That is safe here: the collector sets no cookie and its answers carry nothing but
the request's own outcome, so a page that reads them learns nothing about anyone else.

An origin is reflected only when PIXELPIPE_CORS_ORIGINS allows it and, once the request's write
key has named its site, when that site's `allowed_hosts` admit the origin's host (a preflight
carries no key, so it is answered by PIXELPIPE_CORS_ORIGINS alone).

A preflight never fails for a header a supported SDK sends: the allowed list below is taken
from the SDKs' published sources, and a header outside it gets a 204 that allows only the
list (the browser then refuses the request itself) rather than an error.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from ingest_service.admission import host_allowed
from ingest_service.events import page_host

# Request headers each supported browser SDK sets, as found in its npm package (the version
# named is the one read; tests/ingest_service/test_cors.py sends each set in a preflight).
SDK_REQUEST_HEADERS: dict[str, tuple[str, ...]] = {
    "t.js": ("Content-Type",),
    # browser-tracker-core's createHeaders(): the JSON type; SP-Anonymous with serverAnonymization.
    "@snowplow/browser-tracker 4.10.1": ("Content-Type", "SP-Anonymous"),
    # plugins/segmentio fetch- and batched-dispatcher: the write key as Basic auth, a retry's count.
    "@segment/analytics-next 1.84.3": ("Content-Type", "Authorization", "X-Retry-Count"),
    # XhrQueue: Basic auth, base64 anonymous id, send time; a retried or reclaimed item's Rsa-*.
    "@rudderstack/analytics-js 3.34.1": (
        "Content-Type", "Accept", "Authorization", "AnonymousId", "SentAt", "Rsa-Recovered",
        "Rsa-Retry-Attempt", "Rsa-Since-Last-Attempt", "Rsa-Since-First-Attempt", "Rsa-Retry-Reason"),
    # jitsu.es.js send(): the write key, the privacy option's IP policy, the debug flag.
    "@jitsu/js 1.11.0": ("Content-Type", "X-Write-Key", "X-IP-Policy", "X-Enable-Debug"),
    "posthog-js 1.449.2": ("Content-Type",),
    # Our own protocol: gzip bodies, a write key for /collect.
    "pixelpipe": ("Content-Encoding", "Authorization"),
}
ALLOWED_HEADERS = tuple(dict.fromkeys(h for headers in SDK_REQUEST_HEADERS.values() for h in headers))
ALLOWED_METHODS = "GET, POST, HEAD"
# Chromium keeps a preflight's answer at most 2 hours, Firefox 24.
PREFLIGHT_MAX_AGE = "86400"
# What an SDK must be able to read of a refusal: analytics-next waits Retry-After on a 429.
EXPOSED_HEADERS = "Retry-After"
SCOPE_KEY = "pixelpipe.cors_site"

_ALLOW_HEADERS = ", ".join(ALLOWED_HEADERS).encode()
_VARY = b"Origin"


class CorsPolicy:
    """Which origins may read the collector's answers.

    `origins` is PIXELPIPE_CORS_ORIGINS (`*`: any); `site_hosts(site)` gives a site's
    allowed_hosts (None: any host), from the collector's cached site directory.
    """

    def __init__(self, origins: tuple[str, ...], site_hosts: Callable[[str], tuple[str, ...] | None]):
        configured = frozenset(origins or ("*",))
        self.any_origin = "*" in configured
        self.origins = configured - {"*"}
        self.site_hosts = site_hosts

    def allows(self, origin: str, site: str | None = None) -> bool:
        if not self.any_origin and origin not in self.origins:
            return False
        hosts = self.site_hosts(site) if site is not None else None
        return hosts is None or host_allowed(page_host(origin), hosts)

    def response_headers(self, origin: str | None, site: str | None = None) -> list[tuple[bytes, bytes]]:
        """The CORS headers of an answer to a request with this Origin (none without one)."""
        if origin is None:
            return []
        if not self.allows(origin, site):
            return [(b"vary", _VARY)]
        return [(b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-credentials", b"true"),
                (b"access-control-expose-headers", EXPOSED_HEADERS.encode()),
                (b"vary", _VARY)]

    def preflight(self, origin: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """(status, headers, body) for an OPTIONS preflight from this origin."""
        if not self.allows(origin):
            body = orjson.dumps({"error": "origin_not_allowed",
                                 "detail": f"The origin {origin[:200]} is not in PIXELPIPE_CORS_ORIGINS."})
            return 403, [(b"content-type", b"application/json"), (b"vary", _VARY)], body
        return 204, [(b"access-control-allow-origin", origin.encode("latin-1")),
                     (b"access-control-allow-credentials", b"true"),
                     (b"access-control-allow-methods", ALLOWED_METHODS.encode()),
                     (b"access-control-allow-headers", _ALLOW_HEADERS),
                     (b"access-control-max-age", PREFLIGHT_MAX_AGE.encode()),
                     (b"vary", _VARY)], b""


def note_site(scope, site: str | None) -> None:
    """Tell the CORS layer which site a request's write key named, so that its answer is
    readable only from that site's allowed hosts."""
    if site is not None and SCOPE_KEY in scope:
        scope[SCOPE_KEY] = site


class CorsMiddleware:
    """ASGI: answers preflights and puts the policy's headers on every answer to a request
    that has an Origin."""

    def __init__(self, app, policy: CorsPolicy):
        self.app = app
        self.policy = policy

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = None
        preflight = False
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"access-control-request-method":
                preflight = True
        if origin is None:
            await self.app(scope, receive, send)
            return
        if preflight and scope["method"] == "OPTIONS":
            status, headers, body = self.policy.preflight(origin)
            await send({"type": "http.response.start", "status": status,
                        "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        scope[SCOPE_KEY] = None
        policy = self.policy

        async def send_with_cors(message) -> None:
            if message["type"] == "http.response.start":
                extra = policy.response_headers(origin, scope[SCOPE_KEY])
                headers = [(k, v) for k, v in message.get("headers", [])]
                vary = next((i for i, (k, _) in enumerate(headers) if k.lower() == b"vary"), None)
                if vary is not None:  # one Vary: what the route varies on, and the Origin
                    headers[vary] = (b"vary", headers[vary][1] + b", " + _VARY)
                    extra = [h for h in extra if h[0] != b"vary"]
                message = {**message, "headers": headers + extra}
            await send(message)

        await self.app(scope, receive, send_with_cors)
