"""The collector under faults, as its clients see it: whatever was acknowledged is stored exactly
once, whatever happens to the collector or the database in between."""

import asyncio
import time

import httpx
import orjson
import psycopg
import pytest

pytestmark = pytest.mark.faults
REQUEST_TIMEOUT = 15


class Load:
    """Clients posting small batches, each event with a unique id, recording every answer."""

    def __init__(self, url: str, concurrency: int = 32, per_request: int = 5):
        self.url = url
        self.concurrency = concurrency
        self.per_request = per_request
        self.answers: list[tuple[int, int | None, float]] = []  # (request, status, seconds)
        self.stop = asyncio.Event()
        self.changed = asyncio.Event()
        self._next = 0

    def acknowledged(self) -> set[int]:
        return {n for n, status, _ in self.answers if status == 200}

    def count(self, status) -> int:
        return sum(1 for _, s, _ in self.answers if s == status)

    async def until(self, condition) -> None:
        """Wait for answers until `condition()` holds (no fixed sleeps)."""
        while not condition():
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), REQUEST_TIMEOUT * 2)

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.url, limits=limits, timeout=REQUEST_TIMEOUT) as client:
            async def worker():
                while not self.stop.is_set():
                    n, self._next = self._next, self._next + 1
                    body = orjson.dumps([{"eventType": "load", "siteId": "s", "req": n, "seq": i}
                                         for i in range(self.per_request)])
                    started = time.monotonic()
                    try:
                        response = await client.post("/collect", content=body,
                                                     headers={"content-type": "application/json"})
                        status = response.status_code
                    except httpx.TimeoutException:
                        status = -1  # a hang: never acceptable
                    except httpx.TransportError:
                        status = None  # the connection broke: not acknowledged
                        await asyncio.sleep(0.01)
                    self.answers.append((n, status, time.monotonic() - started))
                    self.changed.set()
            await asyncio.gather(*(worker() for _ in range(self.concurrency)))


def stored(url: str) -> dict[int, int]:
    """request -> events stored for it."""
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT (raw_event_data->>'req')::int, count(*) FROM events_log "
                                 "WHERE event_type = 'load' GROUP BY 1").fetchall())


def test_collector_sigkilled_under_load_keeps_every_acknowledged_event_exactly_once(
        collector_process, database_url):
    collector = collector_process()

    async def scenario(load: Load):
        task = asyncio.create_task(load.run())
        await load.until(lambda: len(load.acknowledged()) >= 300)
        collector.process.kill()  # SIGKILL: no flush, no goodbye
        await load.until(lambda: load.count(None) >= 10)  # clients see it gone
        load.stop.set()
        await task

    load = Load(collector.url)
    asyncio.run(scenario(load))
    assert load.count(-1) == 0
    restarted = collector_process()  # the same database
    assert httpx.get(f"{restarted.url}/healthz").status_code == 200
    rows = stored(database_url)
    acknowledged = load.acknowledged()
    assert len(acknowledged) >= 300
    assert all(rows.get(n) == load.per_request for n in acknowledged), "an acknowledged event is missing"
    # Unacknowledged requests died with the process: all of a request's events or none, never twice.
    assert set(rows.values()) == {load.per_request}


def test_postgres_stopped_under_load_answers_503_without_hanging_and_recovers(collector_process, own_postgres):
    server, url = own_postgres
    collector = collector_process(url)

    async def scenario(load: Load):
        task = asyncio.create_task(load.run())
        await load.until(lambda: len(load.acknowledged()) >= 300)
        await asyncio.to_thread(server.stop)
        stopped_at = len(load.answers)
        await load.until(lambda: load.count(503) >= 50)
        during = load.answers[stopped_at:]
        await asyncio.to_thread(server.start)
        recovered_at = len(load.answers)
        await load.until(lambda: any(s == 200 for _, s, _ in load.answers[recovered_at:]))
        load.stop.set()
        await task
        return during

    load = Load(collector.url)
    during = asyncio.run(scenario(load))
    # While the database was down: 503 (never a 2xx), each within the request timeout.
    assert {status for _, status, _ in during} <= {200, 503}  # 200: committed just before
    assert load.count(-1) == 0 and max(seconds for *_, seconds in load.answers) < REQUEST_TIMEOUT
    assert {s for _, s, _ in load.answers} <= {200, 503}
    rows = stored(url)
    assert all(rows.get(n) == load.per_request for n in load.acknowledged())
    assert set(rows.values()) == {load.per_request}
