"""One ingest hour of events_log -> Parquet files per site, streamed with flat memory.

PostgreSQL sends the hour as binary COPY, ordered by site and id; the ADBC PostgreSQL driver
decodes it into Arrow record batches in C++ (no Python loop per row, no text parsing); each
site's rows go to its own files, a new file every `rows_per_file` rows. Nothing here knows
Dagster or S3: it yields finished local files. The same rows always produce the same bytes, so
a re-export replaces files exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pixelpipe.core.receipts import HourSummary

# The explicit Arrow schema of every exported file: the client's contract (names, order, types),
# tested in tests/pipeline/test_export_schema.py. A change to it is a new EXPORT_SCHEMA_VERSION,
# which every file carries in its key-value metadata.
# Version 2: raw_event_data has Parquet's JSON logical type (engines read it as JSON).
# Version 3: `source`, last: the protocol the event came in by (pixelpipe, segment, snowplow, posthog).
EXPORT_SCHEMA_VERSION = 3
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
    pa.field("raw_event_data", pa.json_(), nullable=False),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("source", pa.string(), nullable=False),
], metadata={"pixelpipe.schema_version": str(EXPORT_SCHEMA_VERSION)})
_RAW = EXPORT_SCHEMA.get_field_index("raw_event_data")
# Dictionary encoding pays off only where values repeat; on ids, URLs and raw JSON it is built
# and then abandoned. Statistics serve readers' predicate pushdown and the tenant check.
_DICTIONARY_COLUMNS = ["event_type", "session_id", "visitor_id", "site_id", "path", "user_agent",
                       "ip_address", "source"]
_STATISTICS_COLUMNS = ["id", "event_type", "site_id", "timestamp", "created_at"]
# The columns in EXPORT_SCHEMA order; the hour's bounds are formatted from datetimes, never
# from user input.
_HOUR_QUERY = """
SELECT id, event_id::text, event_type, session_id, visitor_id, site_id, "timestamp", url, path,
       user_agent, ip_address::text, raw_event_data::text, created_at, source::text
FROM events_log
WHERE created_at >= '{start}'::timestamptz AND created_at < '{end}'::timestamptz
ORDER BY site_id, id
"""

# Re-sent events: rows of the hour whose (site_id, event_id) was already ingested earlier in the
# hour or in the hour before it (a client retrying after a lost answer). The earliest copy is the
# one exported. Only ids clients sent can repeat; the collector's own are UUID version 8 and are
# skipped. The search runs beside the export's own sort (docs/benchmarks.md has its cost).
_RESENT_QUERY = """
WITH repeated AS (
    SELECT site_id, event_id FROM events_log
    WHERE created_at >= %(before)s AND created_at < %(end)s
      AND get_byte(uuid_send(event_id), 6) >> 4 <> 8  -- server-made ids (version 8) never repeat
    GROUP BY site_id, event_id HAVING count(*) > 1
), copies AS (
    SELECT e.id, e.created_at,
           row_number() OVER (PARTITION BY e.site_id, e.event_id ORDER BY e.created_at, e.id) AS n
    FROM events_log e JOIN repeated r USING (site_id, event_id)
    WHERE e.created_at >= %(before)s AND e.created_at < %(end)s
)
SELECT id FROM copies WHERE n > 1 AND created_at >= %(start)s
"""
# How far back a re-sent event is recognised: its ingest hour and the one before (60-120 min).
RESENT_WINDOW = timedelta(hours=1)


def resent_row_ids(database_url: str, hour: datetime) -> set[int]:
    """Ids of the hour's rows that repeat an event already ingested (see _RESENT_QUERY)."""
    bounds = {"before": hour - RESENT_WINDOW, "start": hour, "end": hour + timedelta(hours=1)}
    with psycopg.connect(database_url) as conn:
        # One process: a parallel plan would have each worker build the whole aggregate again.
        conn.execute("SET work_mem = '64MB'; SET max_parallel_workers_per_gather = 0")
        return {row_id for (row_id,) in conn.execute(_RESENT_QUERY, bounds)}


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


def _hour_batches(database_url: str, hour: datetime) -> Iterator[pa.RecordBatch]:
    """The hour's rows as record batches in EXPORT_SCHEMA (tens of thousands of rows each)."""
    if hour.utcoffset() is None:
        raise ValueError(f"{hour} has no time zone: ingest hours are UTC")
    query = _HOUR_QUERY.format(start=hour.isoformat(), end=(hour + timedelta(hours=1)).isoformat())
    with adbc.connect(database_url) as conn, conn.cursor() as cursor:
        cursor.execute(query)
        for batch in cursor.fetch_record_batch():
            # Same types, raw_event_data's text tagged as JSON (no copy); the driver's per-field
            # metadata dropped.
            columns = list(batch.columns)
            columns[_RAW] = pa.ExtensionArray.from_storage(pa.json_(), columns[_RAW])
            yield pa.RecordBatch.from_arrays(columns, schema=EXPORT_SCHEMA)


_EVENT_ID = EXPORT_SCHEMA.get_field_index("event_id")


def _summarize(summary: HourSummary, part: pa.RecordBatch, hour: datetime) -> None:
    """Fold a slice of one site's rows into its receipt figures (C++ kernels, no row loop)."""
    if not part.num_rows:
        return
    bounds = pc.min_max(part.column("id")).as_py()
    summary.min_id = bounds["min"] if summary.min_id is None else min(summary.min_id, bounds["min"])
    summary.max_id = bounds["max"] if summary.max_id is None else max(summary.max_id, bounds["max"])
    summary.rows += part.num_rows
    late = pc.sum(pc.less(part.column("timestamp"), pa.scalar(hour, pa.timestamp("us", tz="UTC"))))
    summary.late_events += late.as_py() or 0
    ids = part.column(_EVENT_ID)  # the ids' text, back to back, hashed straight from the buffer
    offsets = np.frombuffer(ids.buffers()[1], dtype=np.int32)[ids.offset: ids.offset + len(ids) + 1]
    summary.event_ids.update(memoryview(ids.buffers()[2])[offsets[0]:offsets[-1]])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_hour_files(
    database_url: str,
    hour: datetime,
    spool: Path,
    rows_per_file: int = 1_000_000,
    row_group_rows: int = 64 * 1024,
    left_out: Callable[[], set[int]] = set,
    summaries: dict[str, HourSummary] | None = None,
) -> Iterator[SiteFile]:
    """Stream the ingest hour starting at `hour` into per-site files under `spool`.

    Yields each file as soon as it is complete, so the caller can upload and delete it while
    the next one is written: memory and disk stay bounded however large the hour. `left_out`
    gives the row ids not to export (re-sent copies); it is called when the first rows arrive,
    so it can be computed meanwhile. `summaries` receives each site's HourSummary (receipts).
    """
    summaries = {} if summaries is None else summaries
    spool.mkdir(parents=True, exist_ok=True)
    current: _SiteFileWriter | None = None
    skipped: pa.Array | None = None
    for batch in _hour_batches(database_url, hour):
        if skipped is None:
            skipped = pa.array(sorted(left_out()), pa.int64())
        if len(skipped):
            batch = batch.filter(pc.invert(pc.is_in(batch.column("id"), value_set=skipped)))
            if not batch.num_rows:
                continue
        runs = pc.run_end_encode(batch.column("site_id"))
        start = 0
        for site, end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
            if current is None or current.site_id != site:
                if current is not None:
                    yield from current.finish()
                current = _SiteFileWriter(site, spool, rows_per_file, row_group_rows)
            part = batch.slice(start, end - start)
            _summarize(summaries.setdefault(site, HourSummary()), part, hour)
            yield from current.add(part)
            start = end
    if current is not None:
        yield from current.finish()


def _in_current_schema(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A batch of a file written under an earlier schema version, in the current one: version 1's
    raw_event_data tagged as JSON, version 2's missing source filled in (only our own protocol
    existed then)."""
    columns = dict(zip(batch.schema.names, batch.columns, strict=True))
    if columns["raw_event_data"].type != pa.json_():
        columns["raw_event_data"] = pa.ExtensionArray.from_storage(pa.json_(), columns["raw_event_data"])
    if "source" not in columns:
        columns["source"] = pa.array(["pixelpipe"] * batch.num_rows, pa.string())
    return pa.RecordBatch.from_arrays([columns[name] for name in EXPORT_SCHEMA.names], schema=EXPORT_SCHEMA)


def rewrite_site_files(
    sources: list[Path],
    site_id: str,
    hour: datetime,
    spool: Path,
    keep: Callable[[pa.RecordBatch], pa.Array],
    rows_per_file: int = 1_000_000,
    summary: HourSummary | None = None,
    row_group_rows: int = 64 * 1024,
) -> Iterator[SiteFile]:
    """A site-hour's exported files written again without the rows `keep` (a boolean mask per
    batch) rejects: an erasure's rewrite, also of an hour whose rows are no longer in PostgreSQL.
    The export's own writer, so the files are laid out as an export of the remaining rows."""
    summary = HourSummary() if summary is None else summary
    spool.mkdir(parents=True, exist_ok=True)
    writer = _SiteFileWriter(site_id, spool, rows_per_file, row_group_rows)
    for source in sources:
        for batch in pq.ParquetFile(source).iter_batches(batch_size=row_group_rows):
            batch = _in_current_schema(batch)
            batch = batch.filter(keep(batch))
            if batch.num_rows:
                _summarize(summary, batch, hour)
                yield from writer.add(batch)
    yield from writer.finish()
