"""The one order every write route follows (/collect and each SDK's), so no protocol skips a step:

1. refuse an address in debt before reading anything (`refuse_early`, before Starlette);
2. check a write key that is outside the body (a header, the query string) before reading it;
3. read the body within its cap; 4. decode it; 5. translate it to events;
6. charge the address for the rest of the request, check a key the body held;
7. the intake core (intake.py): bots, ids, admission, limits, the bound, the dead letter, the commit.

A route is one `WriteRoute` row: its paths, where its key is, how to decode and translate its
body and how to shape the answer. The OpenAPI document is built from the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response

from ingest_service.cors import note_site
from ingest_service.events import BodyRejected, Limits, decode_body
from ingest_service.http.bodies import (
    declared_size,
    json_response,
    read_body,
    request_context,
    scope_context,
)
from ingest_service.intake import BODY_BYTES_PER_TOKEN, IntakeCore, Outcome, Received
from ingest_service.sdks import SdkBatch
from ingest_service.sdks.posthog import Lz64Text

KEY_NOT_A_SITES = ("The write key in the Authorization header is no site's "
                   "(`pixelpipe site key SITE` makes one). Nothing was stored.")
NO_VALID_KEY = ("No valid write key: send the site's key as the SDK's write key / api_key "
                "(`pixelpipe site key SITE` makes one). Nothing was stored.")


@dataclass(frozen=True)
class KeyRule:
    """Where a protocol carries its write key.

    `where` is "header", "query" or "body" (with `name`, and the Authorization `scheme`); `read`
    returns (presented, key) for a key outside the body, checked before the body is read.
    `required`: without a valid key (outside or in the body) the request is refused with 401."""

    where: str
    name: str | None = None
    scheme: str | None = None
    required: bool = False
    read: Callable[[Request], tuple[bool, str | None]] | None = None
    refusal: str = KEY_NOT_A_SITES

    @property
    def outside_body(self) -> bool:
        return self.read is not None


def default_decode(request: Request, body: bytes, limits: Limits) -> bytes:
    """JSON whatever the Content-Type says (SDKs send text/plain too), inflated by Content-Encoding."""
    return decode_body(body, "application/json", request.headers.get("content-encoding"), limits)


def identity_answer(body: dict, status: int) -> dict:
    return body


@dataclass(frozen=True)
class WriteRoute:
    """One protocol's write route(s): a row of the table the app and the OpenAPI document share."""

    paths: tuple[str, ...]
    summary: str
    request_schema: dict
    key: KeyRule
    # (payload, request, call, limits) -> the events, a key the body held, the decoded size
    translate: Callable[[bytes, Request, str | None, Limits], SdkBatch]
    answer: Callable[[dict, int], dict] = identity_answer
    decode: Callable[[Request, bytes, Limits], bytes | Lz64Text] = default_decode
    too_large_remedy: str = "lower the SDK's batch size"
    # Routes with a {call} in their path: the calls, short names, and the 404 body for any other.
    calls: tuple[str, ...] = ()
    short_calls: dict = field(default_factory=dict)
    unknown_call: Callable[[str], dict] | None = None
    # An OpenAPI path item written out by hand, where the generic one says too little (/collect).
    described: dict | None = None


async def refuse_early(core: IntakeCore, scope, receive, send) -> bool:
    """Step 1: an address over its rate gets its 429 before Starlette sees the request, before a
    byte of the body: under a flood, refusals must cost as little as possible. True if refused."""
    if not core.ip_limits:
        return False
    context, _ = scope_context(core, scope)
    outcome = core.ip_limited(context, 1)
    if outcome is None:
        return False
    await json_response(outcome.body(), outcome.status, outcome.headers())(scope, receive, send)
    return True


async def receive(core: IntakeCore, route: WriteRoute, request: Request, call: str | None) -> Outcome:
    """Steps 2 to 7 for one request on `route` (step 1 ran before Starlette)."""
    context = request_context(core, request)
    content_type = request.headers.get("content-type")
    path = request.url.path
    keyed_site = None
    if route.key.read is not None:
        presented, key = route.key.read(request)
        if presented:
            keyed_site = await core.sites.site_for_key(key) if key else None
            if keyed_site is None:
                return await core.reject_body(Received(path, content_type, context, b"", declared_size(request)),
                                              401, "invalid_write_key", route.key.refusal)
            note_site(request.scope, keyed_site)  # the answer is readable from the site's hosts only
    try:
        body, size = await read_body(core, request)
    except BodyRejected as error:
        return await core.body_refused(Received(path, content_type, context, b"", declared_size(request)), error)
    received = Received(path, content_type, context, body, size)
    try:
        core.check_size(size, route.too_large_remedy)
        payload = route.decode(request, body, core.limits)
        if isinstance(payload, Lz64Text):  # pure Python, ~20 ms for 64 KiB: off the event loop
            payload = await core.slow_decoding.run(payload.decode)
        received = received._replace(body=payload)  # what a dead letter keeps: the decoded text
        batch = route.translate(payload, request, call, core.limits)
    except BodyRejected as error:
        return await core.body_refused(received, error)
    # The rest of the request's cost, before any event is looked at: one token per further
    # event and per BODY_BYTES_PER_TOKEN inflated bytes (a gzip bomb pays for what it costs).
    limited = core.ip_limited(context, len(batch.events) - 1 + batch.payload_bytes // BODY_BYTES_PER_TOKEN)
    if limited is not None:
        return limited
    if route.key.required and keyed_site is None:
        keyed_site = await core.sites.site_for_key(batch.write_key) if batch.write_key else None
        if keyed_site is None:
            return await core.reject_body(received, 401, "invalid_write_key", NO_VALID_KEY, len(batch.events))
        note_site(request.scope, keyed_site)
    envelope = batch.envelope
    if keyed_site is not None and "siteId" not in (envelope or ()):
        envelope = {**(envelope or {}), "siteId": keyed_site}
    return await core.ingest(received, batch.events, envelope, batch.payload_bytes, keyed_site)


def endpoint(core: IntakeCore, route: WriteRoute):
    """The Starlette endpoint of one row."""

    async def write(request: Request) -> Response:
        call = request.path_params.get("call")
        if call is not None and route.calls:
            call = route.short_calls.get(call, call)
            if call not in route.calls:
                return json_response(route.unknown_call(call), 404)
        outcome = await receive(core, route, request, call)
        return json_response(route.answer(outcome.body(), outcome.status), outcome.status, outcome.headers())

    return write
