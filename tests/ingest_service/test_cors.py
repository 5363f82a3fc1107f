"""CORS as browsers and the browser SDKs see it: every browser-facing route answers each SDK's
preflight (credentialed, its request headers allowed), and reflects only allowed origins.

The header lists here were read from the SDKs' npm packages on their own (not copied from
ingest_service/cors.py), so a header dropped from the collector's list fails this test;
tests/tracker/test_browser_sdks_in_chromium.py sends them from the real SDKs."""

from __future__ import annotations

import base64
import json

import pytest

from ingest_service.app import OPENAPI
from pixelpipe.core import sites
from tests.conftest import new_database
from tests.ingest_service.conftest import make_client

SDK_HEADERS = {
    # browser-tracker-core createHeaders(), 4.10.1 (SP-Anonymous with serverAnonymization)
    "snowplow": ["Content-Type", "SP-Anonymous"],
    # analytics-next plugins/segmentio/fetch-dispatcher.js, 1.84.3
    "segment": ["Content-Type", "Authorization", "X-Retry-Count"],
    # analytics-js XhrQueue, 3.34.1: every request, then a retried and a reclaimed item
    "rudderstack": ["Accept", "Content-Type", "Authorization", "AnonymousId", "SentAt",
                    "Rsa-Retry-Attempt", "Rsa-Since-Last-Attempt", "Rsa-Since-First-Attempt",
                    "Rsa-Retry-Reason", "Rsa-Recovered"],
    # @jitsu/js 1.11.0 send(): key, privacy.ipPolicy, debug
    "jitsu": ["Content-Type", "X-Write-Key", "X-IP-Policy", "X-Enable-Debug"],
    "posthog": ["Content-Type"],
    "pixelpipe": ["Content-Type", "Content-Encoding", "Authorization"],
}
# Operators' and the script's routes: not called by a page's JavaScript.
NOT_BROWSER_FACING = {"/t.js", "/healthz", "/readyz", "/metrics", "/openapi.json"}
SAMPLE_CALLS = {"/v1/{call}": ["/v1/t", "/v1/track", "/v1/batch"], "/api/s/{call}": ["/api/s/page"],
                "/api/s/s2s/{call}": ["/api/s/s2s/track"]}
ORIGIN = "https://shop.example.com"


def browser_routes() -> list[tuple[str, str]]:
    """(method, path) of every route the OpenAPI document lists that a page may call."""
    routes = []
    for path, operations in OPENAPI["paths"].items():
        if path in NOT_BROWSER_FACING:
            continue
        for method in operations:
            routes += [(method.upper(), concrete) for concrete in SAMPLE_CALLS.get(path, [path])]
    return routes


def test_the_sample_covers_each_route_of_the_document():
    routes = browser_routes()
    assert ("POST", "/beacon/v1/batch") in routes and ("GET", "/i") in routes
    assert not any("{" in path for _, path in routes)


@pytest.fixture(scope="module")
def restricted(postgres_server, template_database):
    """One collector for every route's preflights (they touch no database)."""
    with make_client(new_database(postgres_server, template_database), cors_origins=(ORIGIN,)) as client:
        yield client


@pytest.mark.parametrize(("method", "path"), browser_routes())
def test_every_browser_route_answers_each_sdks_preflight(restricted, method, path):
    for sdk, headers in SDK_HEADERS.items():
        answer = restricted.options(path, headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": ",".join(h.lower() for h in headers)})
        assert 200 <= answer.status_code < 300, (sdk, answer.status_code, answer.text)
        assert answer.headers["access-control-allow-origin"] == ORIGIN, sdk
        assert answer.headers["access-control-allow-credentials"] == "true", sdk
        assert method in answer.headers["access-control-allow-methods"], sdk
        allowed = {h.strip().lower() for h in answer.headers["access-control-allow-headers"].split(",")}
        assert {h.lower() for h in headers} <= allowed, (sdk, {h.lower() for h in headers} - allowed)
        assert "Origin" in answer.headers["vary"]
    refused = restricted.options(path, headers={
        "Origin": "https://elsewhere.example", "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "content-type"})
    assert "access-control-allow-origin" not in refused.headers
    assert "access-control-allow-credentials" not in refused.headers
    assert refused.status_code == 403 and refused.json()["error"] == "origin_not_allowed"


def test_a_keyed_sites_answer_is_readable_only_from_its_allowed_hosts(database_url, db):
    """The key names the site; its allowed_hosts decide which pages may read the answer, even
    where PIXELPIPE_CORS_ORIGINS allows any origin."""
    sites.save_site(db, "shop", create=True, allowed_hosts=["shop.example.com"])
    key = sites.new_write_key(db, "shop")
    auth = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode(),
            "Content-Type": "text/plain"}
    message = json.dumps({"type": "track", "event": "Clicked", "anonymousId": "a-1"})
    with make_client(database_url) as client:
        own = client.post("/v1/t", content=message, headers={**auth, "Origin": "https://www.shop.example.com"})
        other = client.post("/v1/t", content=message, headers={**auth, "Origin": "https://elsewhere.example"})
        unkeyed = client.post("/collect", json={"eventType": "x", "siteId": "blog"},
                              headers={"Origin": "https://elsewhere.example"})
    assert own.status_code == 200
    assert own.headers["access-control-allow-origin"] == "https://www.shop.example.com"
    assert own.headers["access-control-allow-credentials"] == "true"
    assert "Retry-After" in own.headers["access-control-expose-headers"]
    assert "access-control-allow-origin" not in other.headers and other.headers["vary"] == "Origin"
    assert unkeyed.headers["access-control-allow-origin"] == "https://elsewhere.example"


def test_a_routes_own_vary_keeps_the_origin_beside_it(client):
    script = client.get("/t.js", headers={"Origin": ORIGIN, "Accept-Encoding": "gzip"})
    assert script.headers["vary"] == "Accept-Encoding, Origin"
