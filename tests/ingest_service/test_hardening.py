"""The collector against an attacker (issue: harden the collector for the open internet).

One test per attack class at least, each against the real collector and database, asserting
what an operator would see: HTTP status and body, rows in events_log and events_rejected.
"""

import asyncio
import gzip
import re
import socket
import subprocess
import sys
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import httpx
import orjson
import psycopg
import pytest
from starlette.testclient import TestClient

from ingest_service.app import create_app
from ingest_service.events import USER_AGENT_MAX
from ingest_service.intake import STORE_BUDGET_FIXED, STORE_BUDGET_PER_ROW
from ingest_service.metrics import CollectorMetrics
from ingest_service.writer import EventWriter
from pixelpipe.core.settings import Settings
from pixelpipe.process import free_port
from tests.ingest_service.conftest import make_client


def post(client, body, content_type="application/json", **headers):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post("/collect", content=data, headers={"content-type": content_type, **headers})


def stored_bytes(db) -> int:
    """What the request left in both tables, counted as the text of each row."""
    return db.execute("""SELECT (SELECT coalesce(sum(octet_length(e::text)), 0) FROM events_log e)
                              + (SELECT coalesce(sum(octet_length(r::text)), 0) FROM events_rejected r)""").fetchone()[0]


def row_count(db) -> tuple[int, int]:
    return db.execute("SELECT (SELECT count(*) FROM events_log), (SELECT count(*) FROM events_rejected)").fetchone()


def reasons(db) -> list[str]:
    return [r[0] for r in db.execute("SELECT reason FROM events_rejected ORDER BY id")]


# --- bounded writes ----------------------------------------------------------------------------

def test_an_envelope_url_repeated_into_every_row_is_refused_with_one_dead_letter(client, db):
    # The attack: a tiny gzipped envelope whose url would be copied into 1,000 rows.
    body = orjson.dumps({"eventType": "batch", "siteId": "s", "url": "https://a.example/" + "x" * 100_000,
                         "events": [{"eventType": "e"}] * 1000})
    compressed = gzip.compress(body)
    assert len(compressed) < 2000
    # Gzipped, it is refused before it is even inflated whole; plain, by the storage bound.
    assert post(client, compressed, **{"content-encoding": "gzip"}).json()["error"] == "gzip_ratio"
    response = post(client, body)
    assert response.status_code == 413
    assert response.json()["error"] == "too_much_to_store"
    assert row_count(db) == (0, 2)
    assert stored_bytes(db) < 2 * len(body) + STORE_BUDGET_FIXED + STORE_BUDGET_PER_ROW


@pytest.mark.parametrize("name", ["envelope_url_capped", "many_tiny_events_with_big_headers",
                                  "many_bad_events", "long_ids_and_paths"])
def test_no_request_stores_more_than_its_bound(database_url, db, name):
    headers = {"user-agent": "U" * 8000, "referer": "https://r.example/" + "r" * 8000}
    url = "https://a.example/" + "u" * 600
    bodies = {
        "envelope_url_capped": {"eventType": "batch", "siteId": "s", "url": url,
                                "events": [{"eventType": "e"}] * 1000},
        "many_tiny_events_with_big_headers": [{"eventType": "e", "siteId": "s"}] * 1000,
        "many_bad_events": [{"siteId": "s"}] * 1000,
        "long_ids_and_paths": [{"eventType": "e", "siteId": "s", "sessionId": "i" * 5000,
                                "path": "/" + "p" * 5000, "userAgent": "a" * 5000}] * 20,
    }
    body = orjson.dumps(bodies[name])
    with make_client(database_url) as collector:
        response = post(collector, body, **headers)
    assert response.status_code < 500
    events, rejects = row_count(db)
    assert stored_bytes(db) <= 2 * len(body) + STORE_BUDGET_FIXED + STORE_BUDGET_PER_ROW * (events + rejects)


def test_header_values_are_capped_before_they_are_stored(client, db):
    post(client, {"eventType": "e", "siteId": "s"},
         **{"user-agent": "U" * 10_000, "referer": "https://r.example/" + "r" * 10_000})
    user_agent, url = db.execute("SELECT user_agent, url FROM events_log").fetchone()
    assert len(user_agent) == USER_AGENT_MAX and len(url) == 2048


def test_a_flood_of_bad_events_leaves_one_capped_dead_letter_row_with_size_and_hash(database_url, db):
    body = orjson.dumps([{"siteId": "s", "pad": "p" * 900}] * 1000)
    with make_client(database_url, dead_letter_body_cap=4096) as collector:
        response = post(collector, body)
    assert response.status_code == 400 and response.json()["rejected"] == 1000
    [(reason, size, raw, digest)] = db.execute(
        "SELECT reason, body_size, raw_body, body_sha256 FROM events_rejected").fetchall()
    assert reason.startswith("1000 of 1000 events rejected: missing_event_type x1000")
    assert len(bytes(raw)) == 4096 and size > 4096 and len(digest) == 64


# --- the HTTP layer, uvicorn's proxy handling, the admin port (a real process) ---------------------

def _raw_request(port: int, request: bytes) -> bytes:
    """Send bytes as they are; return the response once its body is complete."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        response = b""
        while b"\r\n\r\n" not in response or len(response.split(b"\r\n\r\n", 1)[1]) < int(
                re.search(rb"content-length: (\d+)", response.split(b"\r\n\r\n", 1)[0], re.I)[1]):
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
    return response


def test_http_limits_proxy_headers_and_the_admin_port(collector_process, db):
    admin_port = free_port()
    collector = collector_process(env={"PIXELPIPE_ADMIN_PORT": str(admin_port)})
    port = collector.port
    too_long = _raw_request(port, b"GET /i?eventType=x&siteId=s&pad=" + b"a" * 3_000_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert too_long.startswith(b"HTTP/1.1 414") and b'"uri_too_long"' in too_long
    big_headers = b"".join(b"X-Pad-%d: %s\r\n" % (n, b"h" * 1000) for n in range(20))
    too_big = _raw_request(port, b"GET /i?eventType=x&siteId=s HTTP/1.1\r\nHost: x\r\n" + big_headers + b"\r\n")
    assert too_big.startswith(b"HTTP/1.1 431") and b'"headers_too_large"' in too_big
    # A Content-Length beyond BIGINT: a 413 with its size clamped, not a 500.
    huge = _raw_request(port, b"POST /collect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 9223372036854775808\r\nConnection: close\r\n\r\n{}")
    assert huge.startswith(b"HTTP/1.1 413")
    assert row_count(db) == (0, 1)
    # No PIXELPIPE_TRUSTED_PROXIES: X-Forwarded-For from loopback is not believed.
    httpx.get(f"{collector.url}/i", params={"eventType": "x", "siteId": "s"},
              headers={"x-forwarded-for": "203.0.113.9"})
    assert db.execute("SELECT host(ip_address) FROM events_log").fetchone()[0] == "127.0.0.1"
    # Operators' routes live on the loopback admin port only.
    assert httpx.get(f"{collector.url}/metrics").status_code == 404
    assert httpx.get(f"{collector.url}/readyz").status_code == 404
    assert "pixelpipe_events_accepted_total 1" in httpx.get(f"http://127.0.0.1:{admin_port}/metrics").text
    assert httpx.get(f"http://127.0.0.1:{admin_port}/readyz").json() == {"status": "ready"}


def test_one_forwarded_for_rule_for_every_route(collector_process, db):
    collector = collector_process(env={"PIXELPIPE_TRUSTED_PROXIES": "127.0.0.1/32,10.0.0.0/8"})
    # Two header lines: the chain is read as one, from the right, skipping trusted proxies.
    forwarded = [("x-forwarded-for", "198.51.100.1"), ("x-forwarded-for", "192.0.2.7, 10.1.2.3")]
    httpx.get(f"{collector.url}/i", params={"eventType": "pixel", "siteId": "s"}, headers=forwarded)
    httpx.post(f"{collector.url}/collect", json={"eventType": "post", "siteId": "s"}, headers=forwarded)
    assert dict(db.execute("SELECT event_type, host(ip_address) FROM events_log").fetchall()) == {
        "pixel": "192.0.2.7", "post": "192.0.2.7"}


# --- no 500 for anything a client sends ----------------------------------------------------------

@pytest.mark.parametrize(("event", "status", "code"), [
    ({"eventType": "x", "siteId": "victim\n"}, 400, "invalid_site_id"),
    ({"eventType": "x", "url": "https://ＥＸＡＭＰＬＥ\u3002com/"}, 200, None),
    ({"eventType": "x", "siteId": "s", "timestamp": "2026-11-30T12:00:00+23:59"}, 200, None),
    ({"eventType": "x", "siteId": "s", "timestamp": "0001-01-01T00:00:00+01:00"}, 200, None),
    (b'{"eventType": "x", "siteId": "s", "timestamp": 1' + b"0" * 30 + b"}", 200, None),
    (b'{"eventType": "x", "siteId": "s", "timestamp": 1e300}', 200, None),
    (b'{"eventType": "x", "siteId": "s", "n": 1' + b"0" * 300 + b"}", 200, None),
])
def test_values_postgres_would_refuse_are_validated_first(client, db, event, status, code):
    response = post(client, event)
    assert response.status_code == status, response.text
    if code:
        assert response.json()["error"] == code
        assert reasons(db)[0].startswith(code)
    else:
        [(site, stamp)] = db.execute('SELECT site_id, "timestamp" FROM events_log').fetchall()
        assert site in ("s", "example-com")
        assert datetime(1970, 1, 1, tzinfo=UTC) <= stamp


def test_a_row_the_database_refuses_is_isolated_and_the_rest_of_the_group_commits(database_url, db):
    db.execute("ALTER TABLE events_log ADD CONSTRAINT no_poison CHECK (event_type <> 'poison')")
    def row(event_type="e"):  # EVENT_COLUMNS order; each event its own id
        return (uuid.uuid4(), event_type, None, None, "s", datetime.now(UTC), None, None, None, None, "{}",
                "pixelpipe")

    async def scenario():
        writer = EventWriter(database_url, CollectorMetrics())
        writes = [asyncio.ensure_future(writer.write(rows, [], lambda i, why: (
            f"database_refused: {why}", "/test", None, None, 2, b"{}", "0" * 64)))
            for rows in ([row(), row(), row()], [row(), row("poison"), row()], [row(), row()])]
        await asyncio.sleep(0)  # all three queued: one group
        await writer.start()
        results = await asyncio.gather(*writes)
        await writer.close()
        return results

    assert asyncio.run(scenario()) == [[], [1], []]
    assert db.execute("SELECT count(*) FROM events_log").fetchone()[0] == 7
    [reason] = reasons(db)
    assert reason.startswith("database_refused:") and "no_poison" in reason


# --- tenants -------------------------------------------------------------------------------------

def test_allowlist_policy_takes_only_allowed_sites(database_url, db):
    db.execute("INSERT INTO sites (site_id) VALUES ('listed')")
    with make_client(database_url, site_policy="allowlist") as collector:
        response = post(collector, [{"eventType": "x", "siteId": "listed"}, {"eventType": "x", "siteId": "other"}])
    assert response.json()["accepted"] == 1
    assert [r.split(":")[0] for r in reasons(db)] == ["site_not_allowed"]


def test_new_sites_are_admitted_up_to_the_hourly_cap(database_url, db):
    with make_client(database_url, new_sites_per_hour=3) as collector:
        first = post(collector, [{"eventType": "x", "siteId": f"new-{n}"} for n in range(5)])
        again = post(collector, {"eventType": "x", "siteId": "new-4"})
        known = post(collector, {"eventType": "x", "siteId": "new-0"})
    assert first.json()["accepted"] == 3
    assert [e["error"] for e in first.json()["errors"]] == ["new_site_limit"] * 2
    assert again.status_code == 400 and again.json()["error"] == "new_site_limit"
    assert known.status_code == 200
    assert db.execute("SELECT count(*) FROM sites").fetchone()[0] == 3


def test_allowed_hosts_and_write_keys(database_url, db, tmp_path):
    env = {"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pixelpipe.cli", "site", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    assert cli("add", "shop", "--allowed-hosts", "shop.example.com").returncode == 0
    old_key = cli("key", "shop").stdout.strip()
    new = cli("key", "shop")
    key = new.stdout.strip()
    assert new.stdout == key + "\n" and key.startswith("ppk_") and key != old_key  # only the key
    stored = db.execute("SELECT write_key_sha256 FROM sites WHERE site_id = 'shop'").fetchone()[0]
    assert key not in stored and old_key not in stored
    assert "shop.example.com" in cli("list").stdout
    with make_client(database_url) as collector:
        ours = post(collector, {"eventType": "x", "siteId": "shop", "url": "https://www.shop.example.com/a"},
                    origin="https://www.shop.example.com")
        forged = post(collector, {"eventType": "x", "siteId": "shop", "url": "https://shop.example.com/a"},
                      origin="https://evil.example")
        server_side = post(collector, {"eventType": "x"}, authorization=f"Bearer {key}")
        wrong = post(collector, {"eventType": "x"}, authorization=f"Bearer {old_key}")
        pixel = collector.get("/i", params={"eventType": "x", "siteId": "shop"},
                              headers={"referer": "https://evil.example/"})
    assert ours.status_code == 200
    assert forged.status_code == 400 and forged.json()["error"] == "host_not_allowed"
    assert server_side.status_code == 200
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_write_key"
    assert pixel.status_code == 200  # the GIF, but dead-lettered
    assert db.execute("SELECT count(*) FROM events_log WHERE site_id = 'shop'").fetchone()[0] == 2
    assert [r.split(":")[0] for r in reasons(db)] == ["host_not_allowed", "invalid_write_key", "host_not_allowed"]
    assert "No site 'nope'" in cli("key", "nope").stderr


# --- rate limits ---------------------------------------------------------------------------------

def test_rate_limits_answer_429_with_retry_after_and_are_summarised(database_url, db):
    app = create_app(replace(Settings(), rate_limit_per_ip=5), database_url)
    with TestClient(app, client=("203.0.113.5", 5000)) as collector:
        statuses = [post(collector, {"eventType": "x", "siteId": "s"}).status_code for _ in range(8)]
        pixel = collector.get("/i", params={"eventType": "x", "siteId": "s"})
        metrics = collector.get("/metrics").text
        assert reasons(db) == []  # nothing per refused request
    assert statuses[:5] == [200] * 5 and set(statuses[5:]) == {429}
    assert pixel.status_code == 429 and int(pixel.headers["retry-after"]) >= 1
    assert "pixelpipe_requests_rate_limited_total 4" in metrics
    [summary] = reasons(db)  # written once, at the latest when the worker stops
    assert summary.startswith("rate_limited: 4 requests") and "ip 203.0.113.5 (4)" in summary
    with make_client(database_url, rate_limit_per_site=3) as collector:
        response = post(collector, [{"eventType": "x", "siteId": "busy"}] * 2)
        limited = post(collector, [{"eventType": "x", "siteId": "busy"}] * 2)
    assert response.status_code == 200 and limited.status_code == 429
    assert "site" in limited.json()["detail"]


# --- small doors ---------------------------------------------------------------------------------

def test_head_pixel_stores_nothing_and_readyz_asks_the_database_at_most_once_a_second(database_url, db):
    app = make_client(database_url)
    collector = app.app.collector
    calls = []
    refresh = collector.sites.refresh

    async def counted():
        calls.append(1)
        return await refresh()

    with app:
        head = app.head("/i", params={"eventType": "x", "siteId": "s"})
        collector.sites.refresh = counted
        ready = [app.get("/readyz").status_code for _ in range(50)]
    assert head.status_code == 200 and head.headers["content-type"] == "image/gif" and head.content == b""
    assert row_count(db) == (0, 0)
    assert ready == [200] * 50 and len(calls) <= 2


def test_the_embedded_postgres_refuses_a_connection_without_its_password(postgres_server):
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{postgres_server.port}/postgres", connect_timeout=5)


def test_bad_admission_settings_name_the_variable(monkeypatch):
    monkeypatch.setenv("PIXELPIPE_SITE_POLICY", "closed")
    with pytest.raises(Exception, match="PIXELPIPE_SITE_POLICY"):
        Settings.from_env()
    assert replace(Settings(), site_policy="allowlist").site_policy == "allowlist"


# --- bots ----------------------------------------------------------------------------------------

GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def test_crawlers_are_dead_lettered_as_bot_unless_turned_off(database_url, db):
    event = {"eventType": "pageview", "siteId": "crawled", "url": "https://crawled.example/"}
    with make_client(database_url) as collector:
        refused = collector.post("/collect", json=event, headers={"User-Agent": GOOGLEBOT})
        # A server forwarding the visitor's user agent in the event is judged by that one.
        forwarded = collector.post("/collect", json={**event, "userAgent": GOOGLEBOT},
                                   headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0"})
        metrics = collector.get("/metrics").text
    assert (refused.status_code, refused.json()["error"]) == (400, "bot")
    assert (forwarded.status_code, forwarded.json()["error"]) == (400, "bot")
    assert "pixelpipe_bot_events_total 2" in metrics
    assert [r.split(":")[0] for r in reasons(db)] == ["bot", "bot"]
    assert db.execute("SELECT count(*) FROM events_log").fetchone()[0] == 0

    with make_client(database_url, drop_bots=False) as collector:
        kept = collector.post("/collect", json=event, headers={"User-Agent": GOOGLEBOT})
    assert kept.status_code == 200
    assert db.execute("SELECT user_agent FROM events_log").fetchall() == [(GOOGLEBOT,)]


def test_one_request_cannot_buy_more_than_a_few_crawler_list_checks(database_url, db):
    # Each check costs ~0.2 ms (ten times an event): made-up user agents are classified at most
    # NEW_AGENTS_PER_REQUEST a request; the rest are kept unchecked and counted.
    from ingest_service.visitors import NEW_AGENTS_PER_REQUEST

    events = [{"eventType": "x", "siteId": "s", "userAgent": f"Googlebot/{n}.{uuid.uuid4()}"} for n in range(40)]
    with make_client(database_url) as collector:
        answer = collector.post("/collect", json=events)
        metrics = collector.get("/metrics").text
    assert answer.status_code == 200
    assert answer.json()["accepted"] == 40 - NEW_AGENTS_PER_REQUEST
    assert f"pixelpipe_bot_events_total {NEW_AGENTS_PER_REQUEST}\n" in metrics
    assert f"pixelpipe_bot_checks_skipped_total {40 - NEW_AGENTS_PER_REQUEST}\n" in metrics


def test_a_body_refused_for_its_gzip_ratio_is_charged_what_inflating_it_cost(database_url):
    """A gzip body refused past 400x inflation was inflated up to that cap first: it counts that
    against the address, so the next request of a flood is refused before its body (it counted
    only its compressed size: 2,188 SDK-flood refusals in 15 s in bench/abuse.py, all 413)."""
    import gzip

    bomb = gzip.compress(b'{"batch": [{"type": "track", "event": "e", "userId": "u", "pad": "' + b"p" * 2_000_000 + b'"}]}')
    app = create_app(replace(Settings(), rate_limit_per_ip=20), database_url)
    with TestClient(app, client=("203.0.113.9", 5000)) as collector:
        headers = {"content-type": "application/json", "content-encoding": "gzip"}
        answers = [collector.post("/v1/batch", content=bomb, headers=headers) for _ in range(3)]
    # Inflating it cost more than the address's whole second: refused (the refusal's detail
    # names the limit), and so is what follows, before its body is inflated again.
    assert [answer.status_code for answer in answers] == [429, 429, 429]
    assert "203.0.113.9" in answers[0].json()["detail"]
