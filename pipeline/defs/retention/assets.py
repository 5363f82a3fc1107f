"""retention_cleanup: the database is a buffer; an exported, verified hour older than the
retention window is dropped as a whole partition, and nothing else is touched."""

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pipeline.defs.export.assets import hourly_export
from pipeline.resources import PipelineSettings, PostgresResource
from pixelpipe.core.events_log import (
    PartitionBusy,
    drop_partition_if,
    hour_partitions,
    sealed_partitions,
)

# Hours that are kept are only counted for the report, and an unsealed hour is sealed before it
# is counted and dropped: a busy one (an export reading it) is reported rather than waited for.
COUNT_LOCK_TIMEOUT = "200ms"
# Dropping a partition waits at most 20 ms for events_log (drop_partition_if), then tries again
# for up to this long per hour; once two hours in a row stayed busy (a long reader of events_log
# itself holds them all), the rest get one try each and are left for the next run.
BUSY_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class HourVerdict:
    hour: datetime
    partition: str
    rows: int | None  # None: kept, and busy when counted
    purged: bool
    reason: str


def _verdict_reason(hour, rows_in_db, ledger, cutoff, retention_hours) -> str | None:
    """Why this hour must stay; None when it may be purged (rows_in_db None: not yet counted)."""
    if hour + timedelta(hours=1) > cutoff:
        return f"too young: inside the {retention_hours} h retention window"
    if ledger is None:
        return "not exported"
    exported_rows, verified_at = ledger
    if verified_at is None:
        return "export not verified: export_reconciles or no_cross_tenant_rows failed or has not run"
    if rows_in_db is not None and rows_in_db != exported_rows:
        return f"{rows_in_db} rows in PostgreSQL but {exported_rows} exported: re-export the hour"
    return None


def _ledger(conn) -> dict:
    return {hour: (rows, verified_at) for hour, rows, verified_at in conn.execute(
        "SELECT ingest_hour, rows, verified_at FROM export_hours WHERE purged_at IS NULL")}


def _count(conn, partition: str) -> int | None:
    """Rows of a kept hour, or None when its partition is busy (e.g. being sealed or read)."""
    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{COUNT_LOCK_TIMEOUT}'")
            return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(partition))).fetchone()[0]
    except psycopg.errors.LockNotAvailable:
        return None


def _seal(conn, partition: str) -> bool:
    """Seal a partition the export did not (hours exported before sealing existed), so its count
    cannot change before the drop; False when it is busy. Locks the partition only."""
    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{COUNT_LOCK_TIMEOUT}'")
            conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK (false) NOT VALID").format(
                sql.Identifier(partition), sql.Identifier(f"{partition}_sealed")))
        return True
    except psycopg.errors.LockNotAvailable:
        return False


def _purge(conn, hour: datetime, partition: str, rows: int, retry_seconds: float) -> str | None:
    """Mark the hour purged and drop its partition; None when done, else why it stays."""
    def still_wanted(conn) -> bool:  # under the locks: a re-export may have un-verified it
        return conn.execute("UPDATE export_hours SET purged_at = now() WHERE ingest_hour = %s AND purged_at IS NULL "
                            "AND verified_at IS NOT NULL AND rows = %s", (hour, rows)).rowcount == 1

    retry_until, pause = time.monotonic() + retry_seconds, 0.01
    while True:
        try:
            dropped = drop_partition_if(conn, partition, still_wanted)
        except PartitionBusy as busy:
            if time.monotonic() + pause > retry_until:
                return f"busy: {busy}; re-checked next run"
            time.sleep(pause)
            pause = min(pause * 2, 0.2)
            continue
        return None if dropped else "the ledger changed meanwhile (re-exported?): re-checked next run"


def apply_retention(conn: psycopg.Connection, now: datetime, retention_hours: int) -> list[HourVerdict]:
    """Drop every qualifying past hour's partition and mark it purged; report every past hour.

    `conn` must be in autocommit mode. Each hour on its own: the ones that qualify by the
    ledger (old enough, exported, verified, rows as exported) are dropped one at a time, never
    waiting more than a few milliseconds for a lock (pixelpipe.core.events_log.drop_partition_if),
    so an open reader of events_log can neither stall the collector's inserts nor fail the run:
    the hours it keeps busy are reported with the pids holding them and left for the next run.
    """
    cutoff = now - timedelta(hours=retention_hours)
    current_hour = now.replace(minute=0, second=0, microsecond=0)
    busy_in_a_row = 0
    past = sorted((hour, name) for hour, name in hour_partitions(conn).items() if hour < current_hour)
    ledger = _ledger(conn)
    sealed = sealed_partitions(conn)
    verdicts = []
    for hour, name in past:
        entry = ledger.get(hour)
        reason = _verdict_reason(hour, None, entry, cutoff, retention_hours)
        if reason is None and name not in sealed and not _seal(conn, name):
            reason = "busy: being read or sealed; re-checked next run"
        # Sealed: nothing was added after the export read it, so its count is the ledger's.
        rows = entry[0] if reason is None and name in sealed else _count(conn, name)
        if reason is None:
            reason = _verdict_reason(hour, rows, entry, cutoff, retention_hours) if rows is not None \
                else "busy: being read; re-checked next run"
        if reason is None:
            reason = _purge(conn, hour, name, rows, BUSY_RETRY_SECONDS if busy_in_a_row < 2 else 0)
            busy_in_a_row = busy_in_a_row + 1 if reason else 0
        verdicts.append(HourVerdict(hour, name, rows, reason is None, reason or "exported and verified"))
    return verdicts


def expire_dead_letters(conn: psycopg.Connection, days: int) -> int:
    """Remove dead-letter rows older than PIXELPIPE_REJECTED_RETENTION_DAYS; how many went.

    The dead letter is for looking into what clients sent wrong, not an archive: without this
    it grows forever."""
    return conn.execute("DELETE FROM events_rejected WHERE received_at < now() - make_interval(days => %s)",
                        (days,)).rowcount


@dg.asset(
    deps=[hourly_export],
    pool="postgres",
    group_name="retention",
    kinds={"postgres"},
    description="Drops each events_log hour older than the retention window whose export to both "
    "buckets is recorded and verified by both checks, and marks it purged in export_hours. "
    "Every other past hour stays and is listed with the reason. Also removes dead-letter rows "
    "older than PIXELPIPE_REJECTED_RETENTION_DAYS.",
)
def retention_cleanup(context: dg.AssetExecutionContext, postgres: PostgresResource,
                      settings: PipelineSettings) -> dg.MaterializeResult:
    with postgres.get_connection(autocommit=True) as conn:
        verdicts = apply_retention(conn, datetime.now(UTC), settings.retention_hours)
        purged = [v for v in verdicts if v.purged]
        kept = [v for v in verdicts if not v.purged]
        busy = [v for v in kept if v.reason.startswith("busy")]
        rejected_removed = expire_dead_letters(conn, settings.rejected_retention_days)
        conn.execute(
            "INSERT INTO maintenance_log (operation, details) VALUES ('retention_cleanup', %s)",
            (Jsonb({
                "purged": [v.hour.isoformat() for v in purged],
                "rows_purged": sum(v.rows for v in purged),
                "rejected_rows_removed": rejected_removed,
                "busy": [v.hour.isoformat() for v in busy],
                "kept": {v.hour.isoformat(): v.reason for v in kept}}),),
        )
    table = ["| ingest hour (UTC) | rows | reason kept |", "|---|---:|---|"]
    table += [f"| {v.hour:%Y-%m-%d %H}:00 | {'busy' if v.rows is None else v.rows} | {v.reason} |"
              for v in kept[:100]]
    return dg.MaterializeResult(metadata={
        "hours_purged": len(purged),
        "rows_purged": sum(v.rows for v in purged),
        "hours_kept": len(kept),
        "hours_busy": len(busy),
        "rejected_rows_removed": rejected_removed,
        "purged": dg.MetadataValue.md("\n".join(f"- {v.hour:%Y-%m-%d %H}:00 ({v.rows} rows)"
                                                for v in purged) or "none"),
        "kept": dg.MetadataValue.md("\n".join(table)),
    })
