"""retention_cleanup: the database is a buffer; an exported, verified hour older than the
retention window is dropped as a whole partition, and nothing else is touched."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pipeline.assets.export import hourly_export
from pipeline.resources import PipelineSettings, PostgresResource
from pixelpipe.core.events_log import hour_partitions, sealed_partitions

# Dropping a partition needs a brief exclusive lock on events_log; never queue behind a long
# query (and block the collector meanwhile): give up and try again next hour.
LOCK_TIMEOUT = "5s"
# Hours that are kept are only counted for the report: a busy one (an export reading it) is
# reported as busy rather than waited for.
COUNT_LOCK_TIMEOUT = "200ms"


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
        with conn.transaction():  # a savepoint: a lock timeout here fails only this count
            return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(partition))).fetchone()[0]
    except psycopg.errors.LockNotAvailable:
        return None


def apply_retention(conn: psycopg.Connection, now: datetime, retention_hours: int) -> list[HourVerdict]:
    """Drop every qualifying past hour's partition and mark it purged; report every past hour.

    `conn` must be in autocommit mode. One transaction for the whole run. Only the hours that
    qualify by the ledger (old enough, exported, verified) are locked, together, so a backlog
    hour being exported meanwhile cannot fail the run; what is decided after the locks cannot
    change before the commit. They are marked purged and dropped in one message that also
    commits: dropping locks events_log itself, and the collector's inserts must not wait a
    client round trip (or a busy client) for that lock to go. All or nothing.
    """
    cutoff = now - timedelta(hours=retention_hours)
    current_hour = now.replace(minute=0, second=0, microsecond=0)
    verdicts = []
    conn.execute("BEGIN")  # by hand: the last message below commits as it drops
    try:
        past = sorted((hour, name) for hour, name in hour_partitions(conn).items() if hour < current_hour)
        ledger = _ledger(conn)
        droppable = {name for hour, name in past
                     if _verdict_reason(hour, None, ledger.get(hour), cutoff, retention_hours) is None}
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        if droppable:
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.SQL(", ").join(map(sql.Identifier, sorted(droppable)))))
            ledger = _ledger(conn)  # read again under the locks: a re-export may have un-verified
        sealed = sealed_partitions(conn)
        conn.execute(f"SET LOCAL lock_timeout = '{COUNT_LOCK_TIMEOUT}'")
        for hour, name in past:
            if name in droppable and name in sealed and hour in ledger:
                rows = ledger[hour][0]  # sealed: nothing was added after the export read it
            else:
                rows = _count(conn, name)
            reason = _verdict_reason(hour, rows, ledger.get(hour), cutoff, retention_hours)
            purge = reason is None and name in droppable and rows is not None
            verdicts.append(HourVerdict(hour, name, rows, purge, "exported and verified" if purge
                                        else reason or "busy: re-checked next run"))
        purged = [v for v in verdicts if v.purged]
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        if purged:
            # No parameters: psycopg sends the three statements as one simple-query message.
            conn.execute(sql.SQL("UPDATE export_hours SET purged_at = now() WHERE ingest_hour = ANY({}); "
                                 "DROP TABLE {}; COMMIT").format(
                sql.Literal([v.hour for v in purged]),
                sql.SQL(", ").join(sql.Identifier(v.partition) for v in purged)))
        else:
            conn.execute("COMMIT")
    except BaseException:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
        raise
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
        try:
            verdicts = apply_retention(conn, datetime.now(UTC), settings.retention_hours)
        except psycopg.errors.LockNotAvailable:
            raise dg.Failure(
                description="A partition could not be locked within "
                f"{LOCK_TIMEOUT}: a long query holds events_log. Nothing was lost; the next hourly "
                "run tries again. Look for long-running queries in pg_stat_activity.") from None
        purged = [v for v in verdicts if v.purged]
        kept = [v for v in verdicts if not v.purged]
        rejected_removed = expire_dead_letters(conn, settings.rejected_retention_days)
        conn.execute(
            "INSERT INTO maintenance_log (operation, details) VALUES ('retention_cleanup', %s)",
            (Jsonb({
                "purged": [v.hour.isoformat() for v in purged],
                "rows_purged": sum(v.rows for v in purged),
                "rejected_rows_removed": rejected_removed,
                "kept": {v.hour.isoformat(): v.reason for v in kept}}),),
        )
    table = ["| ingest hour (UTC) | rows | reason kept |", "|---|---:|---|"]
    table += [f"| {v.hour:%Y-%m-%d %H}:00 | {'busy' if v.rows is None else v.rows} | {v.reason} |"
              for v in kept[:100]]
    return dg.MaterializeResult(metadata={
        "hours_purged": len(purged),
        "rows_purged": sum(v.rows for v in purged),
        "hours_kept": len(kept),
        "rejected_rows_removed": rejected_removed,
        "purged": dg.MetadataValue.md("\n".join(f"- {v.hour:%Y-%m-%d %H}:00 ({v.rows} rows)"
                                                for v in purged) or "none"),
        "kept": dg.MetadataValue.md("\n".join(table)),
    })
