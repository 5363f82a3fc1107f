"""retention_cleanup: the database is a buffer; an exported, verified hour older than the
retention window is dropped as a whole partition, and nothing else is touched."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg
import psycopg
from psycopg.types.json import Jsonb

from pipeline.assets.export import hourly_export
from pipeline.event_partitions import hour_partitions, sealed_partitions
from pipeline.resources import PipelineSettings, PostgresResource

# Dropping a partition needs a brief exclusive lock on events_log; never queue behind a long
# query (and block the collector meanwhile): give up and try again next hour.
LOCK_TIMEOUT = "5s"


@dataclass(frozen=True)
class HourVerdict:
    hour: datetime
    partition: str
    rows: int
    purged: bool
    reason: str


def _verdict_reason(hour, rows_in_db, ledger, cutoff, retention_hours) -> str | None:
    """Why this hour must stay; None when it may be purged."""
    if hour + timedelta(hours=1) > cutoff:
        return f"too young: inside the {retention_hours} h retention window"
    if ledger is None:
        return "not exported"
    exported_rows, verified_at = ledger
    if verified_at is None:
        return "export not verified: export_reconciles or no_cross_tenant_rows failed or has not run"
    if rows_in_db != exported_rows:
        return f"{rows_in_db} rows in PostgreSQL but {exported_rows} exported: re-export the hour"
    return None


def apply_retention(conn: psycopg.Connection, now: datetime, retention_hours: int) -> list[HourVerdict]:
    """Drop every qualifying past hour's partition and mark it purged; report every past hour.

    `conn` must be in autocommit mode. One transaction for the whole run: the old-enough
    partitions are locked together (no row can slip in between the decision and the drop),
    dropped with one statement and marked purged with one update: one commit, one WAL flush,
    however many hours go, and all or nothing if a lock cannot be had.
    """
    cutoff = now - timedelta(hours=retention_hours)
    current_hour = now.replace(minute=0, second=0, microsecond=0)
    verdicts = []
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        past = sorted((hour, name) for hour, name in hour_partitions(conn).items() if hour < current_hour)
        old_enough = [name for hour, name in past if hour + timedelta(hours=1) <= cutoff]
        if old_enough:
            conn.execute("LOCK TABLE " + ", ".join(f'"{name}"' for name in old_enough)
                         + " IN ACCESS EXCLUSIVE MODE")
        # Read after the locks: what is decided below cannot change before the commit.
        ledger = {hour: (rows, verified_at) for hour, rows, verified_at in conn.execute(
            "SELECT ingest_hour, rows, verified_at FROM export_hours WHERE purged_at IS NULL")}
        sealed = sealed_partitions(conn)
        for hour, name in past:
            if name in sealed and hour in ledger:
                rows = ledger[hour][0]  # sealed: nothing was added after the export read it
            else:
                rows = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
            reason = _verdict_reason(hour, rows, ledger.get(hour), cutoff, retention_hours)
            verdicts.append(HourVerdict(hour, name, rows, reason is None, reason or "exported and verified"))
        purged = [v for v in verdicts if v.purged]
        if purged:
            conn.execute("DROP TABLE " + ", ".join(f'"{v.partition}"' for v in purged))
            conn.execute("UPDATE export_hours SET purged_at = now() WHERE ingest_hour = ANY(%s)",
                         ([v.hour for v in purged],))
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
    table += [f"| {v.hour:%Y-%m-%d %H}:00 | {v.rows} | {v.reason} |" for v in kept[:100]]
    return dg.MaterializeResult(metadata={
        "hours_purged": len(purged),
        "rows_purged": sum(v.rows for v in purged),
        "hours_kept": len(kept),
        "rejected_rows_removed": rejected_removed,
        "purged": dg.MetadataValue.md("\n".join(f"- {v.hour:%Y-%m-%d %H}:00 ({v.rows} rows)"
                                                for v in purged) or "none"),
        "kept": dg.MetadataValue.md("\n".join(table)),
    })
