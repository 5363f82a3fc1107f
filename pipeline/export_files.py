"""One ingest hour of events_log -> Parquet files per site, streamed with flat memory.

PostgreSQL writes the hour as CSV (`COPY ... TO STDOUT`, ordered by site and id); Arrow's CSV
reader parses it in C++; each site's rows go to its own files, a new file every
`rows_per_file` rows. Nothing here knows Dagster or S3: it yields finished local files.
The same rows always produce the same bytes, so a re-export replaces files exactly.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

# The explicit Arrow schema of every exported file (the client's contract).
EXPORT_SCHEMA = pa.schema([
    pa.field("id", pa.int64(), nullable=False),
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("event_type", pa.string(), nullable=False),
    pa.field("session_id", pa.string()),
    pa.field("visitor_id", pa.string()),
    pa.field("site_id", pa.string(), nullable=False),
    pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("url", pa.string()),
    pa.field("path", pa.string()),
    pa.field("user_agent", pa.string()),
    pa.field("ip_address", pa.string()),
    pa.field("raw_event_data", pa.string(), nullable=False,
             metadata={"format": "json"}),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
])
_TIMESTAMPS = {"timestamp", "created_at"}
# Dictionary encoding pays off only where values repeat; on ids, URLs and raw JSON it is built
# and then abandoned. Statistics serve readers' predicate pushdown and the tenant check.
_DICTIONARY_COLUMNS = ["event_type", "session_id", "visitor_id", "site_id", "path", "user_agent",
                       "ip_address"]
_STATISTICS_COLUMNS = ["id", "event_type", "site_id", "timestamp", "created_at"]
# Timestamps leave PostgreSQL as naive UTC text; the cast to EXPORT_SCHEMA attaches the zone.
_CSV_TYPES = {
    f.name: (pa.timestamp("us") if f.name in _TIMESTAMPS else f.type) for f in EXPORT_SCHEMA
}

_HOUR_COPY = """
COPY (
    SELECT id, event_id::text, event_type, session_id, visitor_id, site_id,
           "timestamp" AT TIME ZONE 'UTC', url, path, user_agent, ip_address::text,
           raw_event_data::text, created_at AT TIME ZONE 'UTC'
    FROM events_log
    WHERE created_at >= %(start)s AND created_at < %(end)s
    ORDER BY site_id, id
) TO STDOUT WITH (FORMAT csv)
"""


@dataclass(frozen=True)
class SiteFile:
    """One finished Parquet file of one site's rows for the hour."""

    site_id: str
    part: int
    path: Path
    rows: int
    bytes: int
    sha256: str


def object_key(site_id: str, hour: datetime, part: int, prefix: str = "") -> str:
    """Deterministic hive-style key: <prefix>site_id=<site>/date=<YYYY-MM-DD>/hour=<HH>/part-<NNNNN>.parquet"""
    return f"{hour_prefix(site_id, hour, prefix)}part-{part:05d}.parquet"


def hour_prefix(site_id: str, hour: datetime, prefix: str = "") -> str:
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return f"{prefix}site_id={site_id}/date={hour:%Y-%m-%d}/hour={hour:%H}/"


class _CopyStream:
    """A read-only file over a COPY TO STDOUT, for Arrow's streaming CSV reader.

    A thread drains the COPY into a bounded queue of ~1 MiB blocks, so PostgreSQL keeps
    streaming while Arrow parses and Parquet encodes (instead of stalling on a full socket).
    """

    _BLOCK = 1 << 20
    _DEPTH = 16  # blocks in flight: memory bound ~16 MiB

    def __init__(self, copy: psycopg.Copy):
        self._blocks: queue.Queue = queue.Queue(self._DEPTH)
        self._rest = b""
        self._done = False
        self.closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, args=(copy,), daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._blocks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _drain(self, copy: psycopg.Copy) -> None:
        parts, have = [], 0
        try:
            for chunk in copy:
                parts.append(chunk)
                have += len(chunk)
                if have >= self._BLOCK:
                    if not self._put(b"".join(parts)):
                        return  # the reader gave up (an error downstream)
                    parts, have = [], 0
            if parts:
                self._put(b"".join(parts))
            self._put(None)
        except BaseException as error:  # re-raised in the reading thread
            self._put(error)

    def _next_block(self) -> bytes | None:
        block = self._blocks.get()
        if isinstance(block, BaseException):
            raise block
        return block

    def read(self, size: int = -1) -> bytes:
        parts, have = [self._rest], len(self._rest)
        while not self._done and (size < 0 or have < size):
            block = self._next_block()
            if block is None:
                self._done = True
            else:
                parts.append(block)
                have += len(block)
        data = b"".join(parts)
        if 0 <= size < len(data):
            data, self._rest = data[:size], data[size:]
        else:
            self._rest = b""
        return data

    def is_empty(self) -> bool:
        """True when the COPY produced no data at all (an hour with no rows)."""
        if not self._rest and not self._done:
            block = self._next_block()
            if block is None:
                self._done = True
            else:
                self._rest = block
        return not self._rest

    def finish(self) -> None:
        """Wait for the drain thread (the COPY must end before the connection is reused)."""
        while not self._done:
            if self._next_block() is None:
                self._done = True
        self._thread.join()

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Stop the drain thread, e.g. when an error downstream abandons the COPY."""
        self.closed = True
        self._stop.set()
        self._thread.join()


class _SiteFileWriter:
    """Writes one site's rows into numbered files, row groups of `row_group_rows`."""

    def __init__(self, site_id: str, spool: Path, rows_per_file: int, row_group_rows: int):
        self.site_id = site_id
        self.spool = spool
        self.rows_per_file = rows_per_file
        self.row_group_rows = row_group_rows
        self.part = 0
        self._writer: pq.ParquetWriter | None = None
        self._path: Path | None = None
        self._file_rows = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0

    def add(self, batch: pa.RecordBatch) -> Iterator[SiteFile]:
        while batch.num_rows:
            room = self.rows_per_file - self._file_rows - self._pending_rows
            head, batch = batch.slice(0, room), batch.slice(room)
            self._pending.append(head)
            self._pending_rows += head.num_rows
            if self._pending_rows >= self.row_group_rows:
                self._flush_row_group()
            if self._file_rows + self._pending_rows >= self.rows_per_file:
                yield self._close_file()

    def finish(self) -> Iterator[SiteFile]:
        if self._pending_rows or self._writer is not None:
            yield self._close_file()

    def _flush_row_group(self) -> None:
        if not self._pending_rows:
            return
        if self._writer is None:
            site_hash = hashlib.sha1(self.site_id.encode()).hexdigest()[:16]
            self._path = self.spool / f"{site_hash}-{self.part:05d}.parquet"
            self._writer = pq.ParquetWriter(
                self._path, EXPORT_SCHEMA, compression="zstd",
                use_dictionary=_DICTIONARY_COLUMNS, write_statistics=_STATISTICS_COLUMNS,
            )
        self._writer.write_table(pa.Table.from_batches(self._pending, EXPORT_SCHEMA),
                                 row_group_size=self.row_group_rows)
        self._file_rows += self._pending_rows
        self._pending, self._pending_rows = [], 0

    def _close_file(self) -> SiteFile:
        self._flush_row_group()
        assert self._writer is not None and self._path is not None
        self._writer.close()
        finished = SiteFile(self.site_id, self.part, self._path, self._file_rows,
                            self._path.stat().st_size, _sha256(self._path))
        self.part += 1
        self._writer, self._path, self._file_rows = None, None, 0
        return finished


def _with_utc_timestamps(raw: pa.RecordBatch) -> pa.RecordBatch:
    """The parsed batch in EXPORT_SCHEMA: only the timestamp columns need a (zero-copy) cast."""
    columns = [
        column.cast(EXPORT_SCHEMA.field(name).type) if name in _TIMESTAMPS else column
        for name, column in zip(raw.schema.names, raw.columns, strict=True)
    ]
    return pa.RecordBatch.from_arrays(columns, schema=EXPORT_SCHEMA)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_hour_files(
    conn: psycopg.Connection,
    hour: datetime,
    spool: Path,
    rows_per_file: int = 1_000_000,
    row_group_rows: int = 64 * 1024,
) -> Iterator[SiteFile]:
    """Stream the ingest hour starting at `hour` into per-site files under `spool`.

    Yields each file as soon as it is complete, so the caller can upload and delete it while
    the next one is written: memory and disk stay bounded however large the hour.
    """
    spool.mkdir(parents=True, exist_ok=True)
    params = {"start": hour, "end": hour + timedelta(hours=1)}
    with conn.cursor() as cur:
        with cur.copy(_HOUR_COPY, params) as copy:
            stream = _CopyStream(copy)
            try:
                if stream.is_empty():
                    stream.finish()
                    return  # Arrow refuses an empty CSV; an empty hour simply has no files
                reader = pacsv.open_csv(
                    stream,
                    read_options=pacsv.ReadOptions(column_names=EXPORT_SCHEMA.names,
                                                   block_size=1 << 20),
                    parse_options=pacsv.ParseOptions(newlines_in_values=True),
                    convert_options=pacsv.ConvertOptions(
                        column_types=_CSV_TYPES, strings_can_be_null=True,
                        quoted_strings_can_be_null=False),
                )
                current: _SiteFileWriter | None = None
                for raw in reader:
                    batch = _with_utc_timestamps(raw)
                    runs = pc.run_end_encode(batch.column("site_id"))
                    start = 0
                    for site, end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
                        if current is None or current.site_id != site:
                            if current is not None:
                                yield from current.finish()
                            current = _SiteFileWriter(site, spool, rows_per_file, row_group_rows)
                        yield from current.add(batch.slice(start, end - start))
                        start = end
                if current is not None:
                    yield from current.finish()
                stream.finish()
            finally:
                stream.close()  # the COPY is not touched by another thread past here
