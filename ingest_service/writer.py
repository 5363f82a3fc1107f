"""The bulk writer: group commit with COPY, and acknowledgement only after commit.

Requests hand their rows to `EventWriter.write()` and wait. A few flusher tasks, each with its
own connection, take whatever is waiting, write it with one COPY per table in one transaction,
commit, and only then release the waiting requests. When nothing is being committed the rows go
at once; while a commit is in flight the next flusher gathers for up to `flush_interval` (or
`flush_max_rows`), so under load each transaction carries many requests. A request's rows never straddle two transactions, so they share one created_at.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

import psycopg

from ingest_service.events import EVENT_COLUMNS
from ingest_service.metrics import CollectorMetrics

REJECT_COLUMNS = ("reason", "endpoint", "content_type", "client_ip", "body_size", "raw_body")
_COPY_EVENTS = f"COPY events_log ({', '.join(EVENT_COLUMNS)}) FROM STDIN".replace(
    "timestamp", '"timestamp"')
_COPY_REJECTS = f"COPY events_rejected ({', '.join(REJECT_COLUMNS)}) FROM STDIN"


class Overloaded(Exception):
    """The queue is full: answer 503 with Retry-After instead of growing memory."""


class Unavailable(Exception):
    """The rows were not committed (database down, or shutting down): answer 503."""


@dataclass
class _Pending:
    events: list[tuple]
    rejects: list[tuple]
    done: asyncio.Future = field(default=None)

    @property
    def size(self) -> int:
        return len(self.events) + len(self.rejects)


class EventWriter:
    """Group-committing writer for events_log and events_rejected."""

    def __init__(
        self,
        conninfo: str,
        metrics: CollectorMetrics,
        *,
        flush_interval: float = 0.005,
        flush_max_rows: int = 5000,
        queue_max_rows: int = 100_000,
        flushers: int = 2,
        connect_timeout: int = 2,
    ):
        self.conninfo = conninfo
        self.metrics = metrics
        self.flush_interval = flush_interval
        self.flush_max_rows = flush_max_rows
        self.queue_max_rows = queue_max_rows
        self.flushers = flushers
        self.connect_timeout = connect_timeout
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self._flushing = 0  # flushes in progress
        self.database_ok = False

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._flusher()) for _ in range(self.flushers)]

    async def write(self, events: list[tuple], rejects: list[tuple]) -> None:
        """Return once these rows are committed; raise Overloaded or Unavailable otherwise."""
        if self._closing:
            raise Unavailable("the collector is shutting down")
        item = _Pending(events, rejects, asyncio.get_running_loop().create_future())
        if self._queued_rows + item.size > self.queue_max_rows and self._queue:
            raise Overloaded(f"{self._queued_rows} rows are already waiting")
        self._queue.append(item)
        self._queued_rows += item.size
        self.metrics.queue_rows = self._queued_rows
        self._wakeup.set()
        await item.done

    async def close(self) -> None:
        """Stop taking rows, flush what was accepted, close connections."""
        self._closing = True
        self._wakeup.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def ping(self) -> bool:
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.conninfo, connect_timeout=self.connect_timeout, autocommit=True)
        except psycopg.OperationalError:
            return False
        async with conn:
            await conn.execute("SELECT 1")
        return True

    def _take(self) -> list[_Pending]:
        taken, rows = [], 0
        while self._queue and (not taken or rows + self._queue[0].size <= self.flush_max_rows):
            item = self._queue.popleft()
            taken.append(item)
            rows += item.size
        self._queued_rows -= rows
        self.metrics.queue_rows = self._queued_rows
        if not self._queue:
            self._wakeup.clear()
        return taken

    async def _flusher(self) -> None:
        conn: psycopg.AsyncConnection | None = None
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    await self._wakeup.wait()
                    continue
                if self._flushing and self._queued_rows < self.flush_max_rows and not self._closing:
                    # Another transaction is being committed: gather what arrives meanwhile
                    # into the next one. When nothing is in flight, write at once.
                    await asyncio.sleep(self.flush_interval)
                batch = self._take()
                if not batch:
                    continue
                self._flushing += 1
                try:
                    conn = await self._flush(conn, batch)
                finally:
                    self._flushing -= 1
        finally:
            if conn is not None:
                await conn.close()

    @staticmethod
    async def _copy(conn, events: list[tuple], rejects: list[tuple]) -> None:
        async with conn.cursor() as cur:
            if events:
                async with cur.copy(_COPY_EVENTS) as copy:
                    for row in events:
                        await copy.write_row(row)
            if rejects:
                async with cur.copy(_COPY_REJECTS) as copy:
                    for row in rejects:
                        await copy.write_row(row)

    async def _flush(self, conn, batch: list[_Pending]):
        started = time.perf_counter()
        events = [row for item in batch for row in item.events]
        rejects = [row for item in batch for row in item.rejects]
        try:
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(
                    self.conninfo, connect_timeout=self.connect_timeout, autocommit=True)
            if rejects:
                async with conn.transaction():
                    await self._copy(conn, events, rejects)
            else:
                # A lone COPY in autocommit is its own transaction: the same atomic commit,
                # without the BEGIN and COMMIT round trips.
                await self._copy(conn, events, rejects)
        except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as error:
            self.database_ok = False
            self.metrics.flush_failures += 1
            if conn is not None:
                await conn.close()
            for item in batch:
                if not item.done.done():
                    item.done.set_exception(Unavailable(str(error)))
            return None
        except psycopg.Error as error:
            # A row the database refused. Never ack it, and do not let it fail the other
            # requests that shared the transaction: retry each request on its own.
            self.metrics.flush_failures += 1
            if len(batch) > 1:
                for item in batch:
                    conn = await self._flush(conn, [item])
                return conn
            if not batch[0].done.done():
                batch[0].done.set_exception(error)
            return conn
        self.database_ok = True
        self.metrics.events_accepted += len(events)
        self.metrics.events_rejected += len(rejects)
        self.metrics.flush_rows.observe(len(events) + len(rejects))
        self.metrics.flush_seconds.observe(time.perf_counter() - started)
        for item in batch:
            if not item.done.done():
                item.done.set_result(None)
        return conn
