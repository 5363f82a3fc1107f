"""The collector as a real process: load, a database outage, SIGTERM, real client addresses."""

import asyncio
import signal
import time

import httpx
import orjson
import psycopg
import pytest

from pixelpipe.core.migrations import apply_migrations
from pixelpipe.embedded_postgres import EmbeddedPostgres
from pixelpipe.process import free_port


async def _post_batches(url: str, requests: int, per_request: int, concurrency: int):
    """Post `requests` batches concurrently; returns [(request number, status)]."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def one(n):
            body = {"eventType": "batch", "siteId": f"site-{n % 7}", "events": [
                {"eventType": "click", "req": n, "seq": i} for i in range(per_request)]}
            try:
                response = await client.post("/collect", content=orjson.dumps(body),
                                             headers={"content-type": "application/json"})
                return n, response.status_code
            except httpx.TransportError:
                return n, None
        return await asyncio.gather(*(one(n) for n in range(requests)))


def test_1000_concurrent_requests_with_100000_events_are_stored_exactly_once(collector_process, db):
    collector = collector_process()
    results = asyncio.run(_post_batches(collector.url, 1000, 100, concurrency=1000))
    acknowledged = [n for n, status in results if status == 200]
    assert len(acknowledged) == 1000, {s for _, s in results}
    stored = db.execute(
        """SELECT (raw_event_data->>'req')::int AS req, count(*), count(DISTINCT raw_event_data->>'seq'),
                  count(DISTINCT created_at)
           FROM events_log GROUP BY 1"""
    ).fetchall()
    assert {row[0] for row in stored} == set(acknowledged)
    for req, rows, distinct_seq, created_ats in stored:
        assert (rows, distinct_seq) == (100, 100), req  # every event, exactly once
        assert created_ats == 1, req  # one request's rows: one transaction


def test_a_full_queue_answers_503_and_stores_none_of_the_refused_requests(collector_process, db):
    # 20,000 rows against a queue of 300 drained once a second: full whatever the machine's load
    # (with 1,000 drained every 50 ms, a client slowed by a busy machine never filled it).
    collector = collector_process(env={"PIXELPIPE_QUEUE_MAX_ROWS": "300",
                                       "PIXELPIPE_FLUSH_INTERVAL_MS": "1000"})
    results = asyncio.run(_post_batches(collector.url, 200, 100, concurrency=200))
    statuses = [status for _, status in results]
    assert 503 in statuses and 200 in statuses
    acknowledged = {n for n, status in results if status == 200}
    stored = {r[0] for r in db.execute("SELECT DISTINCT (raw_event_data->>'req')::int FROM events_log")}
    assert stored == acknowledged


def test_database_down_means_503_never_2xx_and_service_resumes(collector_process, state_dir):
    server = EmbeddedPostgres(state_dir / f"outage-{free_port()}" / "data", free_port())
    url = server.start()
    try:
        apply_migrations(url)
        collector = collector_process(url)
        event = {"eventType": "x", "siteId": "s"}
        assert httpx.post(f"{collector.url}/collect", json=event).status_code == 200

        server.stop()
        down = [httpx.post(f"{collector.url}/collect", json={**event, "n": i}, timeout=30) for i in range(5)]
        pixel = httpx.get(f"{collector.url}/i", params=event, timeout=30)
        ready = httpx.get(f"{collector.url}/readyz", timeout=30)
        assert [r.status_code for r in down] == [503] * 5
        assert all(r.headers.get("retry-after") for r in down)
        assert down[0].json()["error"] == "unavailable"
        assert pixel.status_code == 503
        assert ready.status_code == 503

        server.start()
        deadline = time.monotonic() + 30
        while True:  # the collector reconnects by itself
            response = httpx.post(f"{collector.url}/collect", json={**event, "n": "after"}, timeout=30)
            if response.status_code == 200 or time.monotonic() > deadline:
                break
        assert response.status_code == 200
        with psycopg.connect(url) as conn:
            stored = [r[0] for r in conn.execute("SELECT raw_event_data->>'n' FROM events_log ORDER BY id")]
        assert stored == [None, "after"]  # nothing acknowledged was lost, nothing refused was stored
    finally:
        server.stop()


def test_sigterm_flushes_what_was_accepted_then_exits(collector_process, db):
    collector = collector_process(env={"PIXELPIPE_FLUSH_INTERVAL_MS": "200"})

    async def scenario():
        task = asyncio.create_task(_post_batches(collector.url, 50, 20, concurrency=50))
        # Wait until the requests are in the collector's queue, then ask it to stop.
        async with httpx.AsyncClient() as client:
            for _ in range(200):
                metrics = (await client.get(f"{collector.url}/metrics")).text
                if "pixelpipe_queue_rows 0" not in metrics:
                    break
                await asyncio.sleep(0.01)
        collector.process.send_signal(signal.SIGTERM)
        return await task

    results = asyncio.run(scenario())
    assert collector.process.wait(30) == 0
    acknowledged = {n for n, status in results if status == 200}
    assert acknowledged, results
    stored = {r[0] for r in db.execute("SELECT DISTINCT (raw_event_data->>'req')::int FROM events_log")}
    assert acknowledged <= stored


@pytest.mark.parametrize("anonymize", [False, True])
def test_client_address_from_trusted_proxy_and_anonymised(collector_process, db, anonymize):
    collector = collector_process(env={
        "PIXELPIPE_TRUSTED_PROXIES": "127.0.0.1/32",
        "PIXELPIPE_ANONYMIZE_IP": "true" if anonymize else "false",
    })
    httpx.get(f"{collector.url}/i", params={"eventType": "x", "siteId": "s"},
              headers={"x-forwarded-for": "198.51.100.77"})
    [ip] = [r[0] for r in db.execute("SELECT host(ip_address) FROM events_log")]
    assert ip == ("198.51.100.0" if anonymize else "198.51.100.77")
