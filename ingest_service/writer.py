"""The bulk writer: group commit with COPY, and acknowledgement only after commit.

Requests hand their rows to `EventWriter.write()` and wait. A few flusher tasks, each with its
own connection, take whatever is waiting, write it with one COPY per table in one transaction,
commit, and only then release the waiting requests. When nothing is being committed the rows go
at once; while a commit is in flight the next flusher gathers for up to `flush_interval` (or
`flush_max_rows`), so under load each transaction carries many requests. A request's rows
never straddle two transactions, so they share one created_at.

Should the database still refuse a row that validation let through, the group is written
again in one transaction with each request's rows bisected inside savepoints: the refused rows
go to the dead letter (through the request's `refuse` callback) and everything else commits.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import psycopg
from psycopg import sql

from ingest_service.metrics import CollectorMetrics
from pixelpipe.core.events_log import COPY_EVENTS, copy_statement
from pixelpipe.core.settings import Settings

_DEFAULTS = Settings()


class DeadLetter(NamedTuple):
    """One events_rejected row, in its column order: the intake core builds it, COPY writes it
    as it is (a tuple, built cheaply)."""

    reason: str
    endpoint: str | None = None
    content_type: str | None = None
    client_ip: str | None = None
    body_size: int | None = None
    raw_body: bytes | None = None  # capped, write keys removed
    body_sha256: str | None = None  # of the whole body as received


REJECT_COLUMNS = DeadLetter._fields


_COPY_REJECTS = copy_statement("events_rejected", REJECT_COLUMNS)
_CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, OSError)
# A refused row is dead-lettered by the request that sent it: (event index, database error) ->
# a row for events_rejected.
Refuse = Callable[[int, str], DeadLetter]


def refusal_text(error: Exception) -> str:
    """The database's complaint on one line, bounded."""
    return " ".join(str(error).split())[:300]


class Overloaded(Exception):
    """The queue is full: answer 503 with Retry-After instead of growing memory."""


class Unavailable(Exception):
    """The rows were not committed (database down, or shutting down): answer 503."""


@dataclass
class _Pending:
    events: list[tuple]
    rejects: list[DeadLetter]
    done: asyncio.Future = field(default=None)
    refuse: Refuse | None = None

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
        flush_interval: float = _DEFAULTS.flush_interval_ms / 1000,
        flush_max_rows: int = _DEFAULTS.flush_max_rows,
        queue_max_rows: int = _DEFAULTS.queue_max_rows,
        flushers: int = _DEFAULTS.flush_connections,
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

    async def write(self, events: list[tuple], rejects: list[DeadLetter],
                    refuse: Refuse | None = None) -> list[int]:
        """Return once these rows are committed; raise Overloaded or Unavailable otherwise.

        Returns the indexes of the events the database refused: they were dead-lettered through
        `refuse` in the same transaction, and the others committed.
        """
        if self._closing:
            raise Unavailable("the collector is shutting down")
        item = _Pending(events, rejects, asyncio.get_running_loop().create_future(), refuse)
        if self._queued_rows + item.size > self.queue_max_rows and self._queue:
            raise Overloaded(f"{self._queued_rows} rows are already waiting")
        self._queue.append(item)
        self._queued_rows += item.size
        self.metrics.queue_rows = self._queued_rows
        self._wakeup.set()
        return await item.done

    async def close(self) -> None:
        """Stop taking rows, flush what was accepted, close connections."""
        self._closing = True
        self._wakeup.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

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
    async def _copy_rows(conn, statement: sql.Composed, rows: list[tuple]) -> None:
        async with conn.cursor() as cur, cur.copy(statement) as copy:
            for row in rows:
                await copy.write_row(row)

    async def _copy(self, conn, events: list[tuple], rejects: list[DeadLetter]) -> None:
        if events:
            await self._copy_rows(conn, COPY_EVENTS, events)
        if rejects:
            await self._copy_rows(conn, _COPY_REJECTS, rejects)

    async def _refused_rows(self, conn, statement: sql.Composed, rows: list[tuple],
                            offset: int = 0) -> list[tuple[int, str]]:
        """Copy `rows` inside savepoints, halving around refusals; (index, error) of each row
        the database refused. Connection errors propagate."""
        try:
            async with conn.transaction():  # a savepoint inside the flush's transaction
                await self._copy_rows(conn, statement, rows)
            return []
        except _CONNECTION_ERRORS:
            raise
        except psycopg.Error as error:
            if len(rows) == 1:
                return [(offset, refusal_text(error))]
        middle = len(rows) // 2
        return (await self._refused_rows(conn, statement, rows[:middle], offset)
                + await self._refused_rows(conn, statement, rows[middle:], offset + middle))

    async def _flush_isolating(self, conn, batch: list[_Pending]) -> dict[int, list[int]]:
        """The group again, in one transaction, refused rows found and dead-lettered."""
        refused: dict[int, list[int]] = {}
        async with conn.transaction():
            for number, item in enumerate(batch):
                bad = await self._refused_rows(conn, COPY_EVENTS, item.events) if item.events else []
                refused[number] = [index for index, _ in bad]
                rejects = list(item.rejects)
                for index, reason in bad:
                    rejects.append(item.refuse(index, reason) if item.refuse else
                                   DeadLetter(f"database_refused: {reason}"))
                for index, reason in await self._refused_rows(conn, _COPY_REJECTS, rejects):
                    # Even the dead-letter row was refused: keep the fact and the reason.
                    row = rejects[index]
                    await self._copy_rows(conn, _COPY_REJECTS, [DeadLetter(
                        f"database_refused_dead_letter: {reason}", row.endpoint, body_size=row.body_size,
                        body_sha256=row.body_sha256)])
        return refused

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
            refused: dict[int, list[int]] = {}
        except _CONNECTION_ERRORS as error:
            return await self._fail(conn, batch, error)
        except psycopg.Error:
            # A row the database refused. Never ack it, and do not let it fail the other
            # requests that shared the transaction.
            self.metrics.flush_failures += 1
            try:
                refused = await self._flush_isolating(conn, batch)
            except _CONNECTION_ERRORS as error:
                return await self._fail(conn, batch, error)
            except psycopg.Error as error:  # not a row's fault after all: nothing is acked
                return await self._fail(conn, batch, error)
        self.database_ok = True
        refused_count = sum(len(indexes) for indexes in refused.values())
        self.metrics.events_accepted += len(events) - refused_count
        self.metrics.events_rejected += len(rejects) + refused_count
        self.metrics.flush_rows.observe(len(events) + len(rejects))
        self.metrics.flush_seconds.observe(time.perf_counter() - started)
        for number, item in enumerate(batch):
            if not item.done.done():
                item.done.set_result(refused.get(number, []))
        return conn

    async def _fail(self, conn, batch: list[_Pending], error: Exception) -> None:
        """Nothing of the batch committed: every request answers 503."""
        self.database_ok = False
        self.metrics.flush_failures += 1
        if conn is not None:
            await conn.close()
        for item in batch:
            if not item.done.done():
                item.done.set_exception(Unavailable(str(error)))
        return None
