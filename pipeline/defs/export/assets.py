"""hourly_export: each closed ingest hour, as Parquet, into each client's bucket and the backup.

The export reads as its steps (export_hour): seal the hour (pixelpipe.core.events_log), read it
and write per-site files (export_files.py), publish them to both buckets and remove stale objects
(publish.py), record it in the ledger (ledger.py). Its checks are in export_checks.py.
"""


import contextlib
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import adbc_driver_manager.dbapi as adbc_errors
import dagster as dg
import psycopg
from botocore.exceptions import BotoCoreError, ClientError
from dagster_aws.s3 import S3Resource

from pipeline.defs.export.events_log import events_log
from pipeline.ledger import SiteExport, hour_lock, hour_state, record_export, unverify_hour
from pipeline.partitions import (
    hourly_backfill_policy,
    hourly_partitions,
    partition_key_of,
    run_hours,
)
from pipeline.publish import publish_hour, remove_stale_objects, write_receipts
from pipeline.resources import PipelineSettings, PostgresResource
from pixelpipe.core.events_log import seal_hour as events_log_seal_hour


def refuse_open_hour(hour: datetime, now: datetime, grace_minutes: int) -> None:
    ready_at = hour + timedelta(hours=1, minutes=grace_minutes)
    if now < ready_at:
        raise dg.Failure(
            description=f"Ingest hour {hour:%Y-%m-%d %H}:00 UTC is not closed yet: events can still "
            f"arrive in it. It can be exported from {ready_at:%Y-%m-%d %H:%M} UTC (the hour plus the "
            f"{grace_minutes}-minute grace period, PIXELPIPE_EXPORT_GRACE_MINUTES). Nothing was written.",
            metadata={"ingest_hour": hour.isoformat(), "ready_at": ready_at.isoformat()},
        )


def refuse_purged_hour(hour: datetime, purged_at: datetime | None, retention_hours: int) -> None:
    if purged_at is None:
        return
    raise dg.Failure(
        description=f"Ingest hour {hour:%Y-%m-%d %H}:00 UTC was exported, verified and purged from "
        f"PostgreSQL at {purged_at:%Y-%m-%d %H:%M} UTC by retention (PIXELPIPE_RETENTION_HOURS="
        f"{retention_hours}). Its files in the client and backup buckets are now the only copy; "
        "re-exporting would overwrite them with an empty export, so this run refuses and changes "
        "nothing. To recover a lost client copy, copy the objects from the backup bucket.",
        metadata={"ingest_hour": hour.isoformat(), "purged_at": purged_at.isoformat()},
    )


def _rows_per_site_table(sites: list[SiteExport], limit: int = 50) -> str:
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for site in sites:
        row = totals[site.site_id]
        row[0] += site.rows
        row[1] += len(site.client_keys)
        row[2] += site.bytes
    lines = ["| site_id | rows | files | bytes |", "|---|---:|---:|---:|"]
    for site_id, (rows, files, size) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:limit]:
        lines.append(f"| {site_id} | {rows} | {files} | {size} |")
    if len(totals) > limit:
        lines.append(f"| ... {len(totals) - limit} more sites | | | |")
    return "\n".join(lines)


SEAL_LOCK_TIMEOUT = "10s"


def seal_hour(conn, hour: datetime) -> None:
    """Seal the hour's partition before reading it: inserts in flight finish first, later ones
    fail loudly. What the export reads is then all the hour will ever hold."""
    try:
        events_log_seal_hour(conn, hour, SEAL_LOCK_TIMEOUT)
    except psycopg.errors.LockNotAvailable:
        raise dg.Failure(
            description=f"Could not seal ingest hour {hour:%Y-%m-%d %H}:00 UTC within "
            f"{SEAL_LOCK_TIMEOUT}: a long transaction holds its partition. Nothing was written; "
            "look for long-running queries in pg_stat_activity and re-run the hour.") from None


@contextlib.contextmanager
def explained_failures(hour: datetime, s3_endpoint: str | None):
    """An S3 or PostgreSQL failure half-way through an hour, as a Failure that says what
    happened and what to do. Nothing is lost either way: the hour was un-verified before any
    object was touched, and its ledger is written only after both copies are up."""
    label = f"{hour:%Y-%m-%d %H}:00 UTC"
    try:
        yield
    except (BotoCoreError, ClientError) as error:
        raise dg.Failure(
            description=f"S3 ({s3_endpoint or 'AWS'}) failed while exporting ingest hour {label}: "
            f"{' '.join(str(error).split())[:300]}. The hour is not recorded as exported and not verified; "
            "no acknowledged event is lost (they stay in PostgreSQL). Check that the S3 endpoint is up "
            "(PIXELPIPE_S3_ENDPOINT), the credentials and the buckets, then re-run the hour: the "
            "re-run replaces whatever this run uploaded.") from None
    except (psycopg.OperationalError, adbc_errors.OperationalError, adbc_errors.InternalError) as error:
        raise dg.Failure(
            description=f"PostgreSQL failed while exporting ingest hour {label}: "
            f"{' '.join(str(error).split())[:300]}. The hour is not recorded as exported and not "
            "verified. Check that the database is up (DATABASE_URL), then re-run the hour: the "
            "re-run replaces whatever this run uploaded.") from None


def export_hour(conn, database_url: str, client, settings: PipelineSettings, hour: datetime,
                previous_rows: int) -> tuple[list[SiteExport], int]:
    """Export one ingest hour, as its steps; returns the sites written and the stale objects
    removed. `conn` (autocommit) seals the hour and keeps the ledger; the rows are read on a
    connection of their own, opened from `database_url` after the seal committed."""
    seal_hour(conn, hour)  # nothing can be added to the hour from now on
    unverify_hour(conn, hour)  # nothing stays verified while its objects change
    exported = publish_hour(conn, database_url, client, settings, hour)  # read, write, upload both
    if previous_rows > 0 and not exported:
        raise dg.Failure(
            description=f"Ingest hour {hour:%Y-%m-%d %H}:00 UTC has no rows in PostgreSQL any more, "
            f"but an earlier export wrote {previous_rows} rows for it. The rows were removed outside "
            "retention; this run refuses to replace the existing files with an empty export.",
        )
    stale = remove_stale_objects(conn, client, settings.backup_bucket, hour, exported)
    write_receipts(conn, client, settings, hour, exported)  # every file is in place now
    # Only now, with both copies uploaded, does the ledger say the hour is exported.
    record_export(conn, hour, exported, settings.backup_bucket)
    return exported, stale


@dg.asset(
    partitions_def=hourly_partitions,
    backfill_policy=hourly_backfill_policy,
    deps=[events_log],
    pool="postgres",
    kinds={"parquet", "s3"},
    group_name="export",
    # An hour is exported about 10 minutes after it closes; two hours behind is worth a look.
    freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=3),
                                                    warn_window=timedelta(hours=2)),
    description="Each closed ingest hour of events_log as zstd Parquet, per site, in the site's "
    "client bucket and in the backup bucket, at deterministic hive-style keys. Re-running an "
    "hour replaces its files; an hour already purged from PostgreSQL is refused.",
)
def hourly_export(
    context: dg.AssetExecutionContext,
    postgres: PostgresResource,
    s3: S3Resource,
    settings: PipelineSettings,
) -> dg.MaterializeResult:
    hours = run_hours(context)
    # Refuse the whole run before anything is written: an open or a purged hour in the range.
    refuse_open_hour(hours[-1], datetime.now(UTC), settings.export_grace_minutes)
    client = s3.get_client()
    run_rows = 0
    # Autocommit: each hour's ledger rows commit as soon as that hour's copies are uploaded.
    with postgres.get_connection(autocommit=True) as conn:
        states = {hour: hour_state(conn, hour) for hour in hours}
        for hour, state in states.items():
            refuse_purged_hour(hour, state.purged_at if state else None, settings.retention_hours)
        for hour in hours:
            state = states[hour]
            started = time.perf_counter()
            with explained_failures(hour, s3.endpoint_url), hour_lock(conn, hour):
                sites, stale = export_hour(conn, postgres.url(), client, settings, hour,
                                           state.rows if state else 0)
            metadata = hour_metadata(sites, stale, time.perf_counter() - started)
            # Each hour's page in the UI shows its own figures, also in a run over a range.
            context.add_asset_metadata(metadata, partition_key=partition_key_of(hour))
            run_rows += metadata["rows"]
            context.log.info(f"exported {metadata['rows']} rows of {hour:%Y-%m-%d %H}:00 UTC for "
                             f"{metadata['sites']} sites")
    if len(hours) > 1:
        context.log.info(f"exported {run_rows} rows in {len(hours)} hours "
                         f"({hours[0]:%Y-%m-%d %H}:00 to {hours[-1]:%Y-%m-%d %H}:00 UTC)")
    return dg.MaterializeResult()


def hour_metadata(sites: list[SiteExport], stale_removed: int, seconds: float) -> dict:
    """One hour's materialization metadata: what the UI shows on that hour's page."""
    rows = sum(s.rows for s in sites)
    return {
        "rows": rows,
        "sites": len({s.site_id for s in sites}),
        "files": sum(len(s.client_keys) for s in sites),
        "bytes": sum(s.bytes for s in sites),
        "stale_objects_removed": stale_removed,
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows / seconds) if seconds > 0 else 0,
        "rows_per_site": dg.MetadataValue.md(_rows_per_site_table(sites)),
    }
