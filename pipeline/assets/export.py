"""hourly_export: each closed ingest hour, as Parquet, into each client's bucket and the backup.

The export reads as its steps (export_hour): seal the hour (pixelpipe.core.events_log), read it
and write per-site files (export_files.py), publish them to both buckets and remove stale objects
(publish.py), record it in the ledger (ledger.py). Also its two checks: retention trusts an hour
only when both passed.
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

from pipeline.assets.events_log import events_log
from pipeline.export_files import hour_prefix
from pipeline.ledger import (
    SiteExport,
    client_locations,
    hour_state,
    manifest_rows,
    mark_check,
    record_export,
    site_destinations,
    unverify_hour,
)
from pipeline.object_store import (
    list_keys,
    read_parquet_metadata,
)
from pipeline.partitions import hourly_backfill_policy, hourly_partitions, run_hours
from pipeline.publish import publish_hour, remove_stale_objects
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
    started = time.perf_counter()
    all_sites: list[SiteExport] = []
    per_hour, stale_removed = [], 0
    # Autocommit: each hour's ledger rows commit as soon as that hour's copies are uploaded.
    with postgres.get_connection(autocommit=True) as conn:
        states = {hour: hour_state(conn, hour) for hour in hours}
        for hour, state in states.items():
            refuse_purged_hour(hour, state.purged_at if state else None, settings.retention_hours)
        for hour in hours:
            state = states[hour]
            with explained_failures(hour, s3.endpoint_url):
                sites, stale = export_hour(conn, postgres.url(), client, settings, hour,
                                           state.rows if state else 0)
            all_sites.extend(sites)
            stale_removed += stale
            rows = sum(s.rows for s in sites)
            per_hour.append(f"| {hour:%Y-%m-%d %H}:00 | {rows} | {len(sites)} |")
            context.log.info(f"exported {rows} rows of {hour:%Y-%m-%d %H}:00 UTC for {len(sites)} sites")
    seconds = time.perf_counter() - started
    total_rows = sum(s.rows for s in all_sites)
    metadata = {
        "hours": len(hours),
        "rows": total_rows,
        "sites": len({s.site_id for s in all_sites}),
        "files": sum(len(s.client_keys) for s in all_sites),
        "bytes": sum(s.bytes for s in all_sites),
        "stale_objects_removed": stale_removed,
        "seconds": round(seconds, 3),
        "rows_per_second": round(total_rows / seconds) if seconds > 0 else 0,
        "rows_per_site": dg.MetadataValue.md(_rows_per_site_table(all_sites)),
    }
    if len(hours) > 1:
        metadata["rows_per_hour"] = dg.MetadataValue.md(
            "| ingest hour (UTC) | rows | sites |\n|---|---:|---:|\n" + "\n".join(per_hour))
    return dg.MaterializeResult(metadata=metadata)


def _reconcile_hour(conn, client, hour: datetime) -> tuple[dict, list[str]]:
    """Rows per site in PostgreSQL vs the manifest vs both copies' Parquet footers."""
    totals = {"postgres": 0, "manifest": 0, "client": 0, "backup": 0}
    state = hour_state(conn, hour)
    if state is None:
        return totals, [f"| {hour:%Y-%m-%d %H}:00 | (hour not exported) | | | | |"]
    in_postgres = dict(conn.execute(
        "SELECT site_id, count(*) FROM events_log "
        "WHERE created_at >= %s AND created_at < %s GROUP BY 1",
        (hour, hour + timedelta(hours=1))).fetchall())
    mismatches = []
    manifest = manifest_rows(conn, hour)
    for site, rows, client_bucket, client_keys, backup_bucket, backup_keys in manifest:
        # After a purge the database has no rows left; the manifest is the reference then.
        expected = rows if state.purged_at else in_postgres.get(site, 0)
        in_client = sum(read_parquet_metadata(client, client_bucket, k).num_rows for k in client_keys)
        in_backup = sum(read_parquet_metadata(client, backup_bucket, k).num_rows for k in backup_keys)
        for name, value in (("postgres", expected), ("manifest", rows), ("client", in_client),
                            ("backup", in_backup)):
            totals[name] += value
        if not expected == rows == in_client == in_backup:
            mismatches.append(
                f"| {hour:%Y-%m-%d %H}:00 | {site} | {expected} | {rows} | {in_client} | {in_backup} |")
    for site in sorted(set(in_postgres) - {m[0] for m in manifest}):
        totals["postgres"] += in_postgres[site]
        mismatches.append(f"| {hour:%Y-%m-%d %H}:00 | {site} | {in_postgres[site]} | (not exported) | 0 | 0 |")
    return totals, mismatches


def reconcile(conn, client, hours: list[datetime]) -> tuple[dict, list[str]]:
    """Reconcile each hour and record the verdict; returns (row totals, mismatch lines)."""
    totals = {"postgres": 0, "manifest": 0, "client": 0, "backup": 0}
    mismatches: list[str] = []
    for hour in hours:
        hour_totals, hour_mismatches = _reconcile_hour(conn, client, hour)
        mark_check(conn, hour, "reconciled_at", not hour_mismatches)
        mismatches += hour_mismatches
        for name, value in hour_totals.items():
            totals[name] += value
    return totals, mismatches


@dg.asset_check(
    asset=hourly_export,
    partitions_def=hourly_partitions,
    blocking=True,
    description="Rows in PostgreSQL for the hour equal the rows in the Parquet footers of the "
    "uploaded objects, per site, in both the client and the backup copy.",
)
def export_reconciles(context, postgres: PostgresResource, s3: S3Resource) -> dg.AssetCheckResult:
    with postgres.get_connection(autocommit=True) as conn:
        totals, mismatches = reconcile(conn, s3.get_client(), run_hours(context))
    metadata = {f"rows_{name}": value for name, value in totals.items()}
    if mismatches:
        metadata["mismatches"] = dg.MetadataValue.md(
            "| ingest hour | site_id | postgres | manifest | client | backup |\n"
            "|---|---|---:|---:|---:|---:|\n" + "\n".join(mismatches[:50]))
    return dg.AssetCheckResult(
        passed=not mismatches, metadata=metadata,
        description=None if not mismatches else "Re-run hourly_export for the listed hours; if it "
        "still fails, compare the objects with events_log. Retention keeps these hours meanwhile.")


def _foreign_rows(client, bucket: str, key: str, site: str) -> list[str]:
    """Row groups of an object whose site_id statistics are not exactly `site`."""
    metadata = read_parquet_metadata(client, bucket, key)
    column = metadata.schema.names.index("site_id")
    offenders = []
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(column).statistics
        if stats is None or not stats.has_min_max:
            offenders.append(f"s3://{bucket}/{key} row group {group}: no site_id statistics")
        elif stats.min != site or stats.max != site:
            offenders.append(f"s3://{bucket}/{key} row group {group}: site_id {stats.min}..{stats.max}")
    return offenders


def verify_tenants(conn, client, hours: list[datetime], default_bucket: str = "") -> tuple[int, list[str]]:
    """Check every object under each client's hour prefixes; record the verdict per hour.

    Lists the prefixes rather than trusting the manifest, so a stray object is caught too: every
    bucket and prefix the hour was ever written to (export_locations), the manifest's, and the
    site's current one. Returns (objects checked, offending row groups).
    """
    offenders: list[str] = []
    objects = 0
    destinations = site_destinations(conn, default_bucket)
    for hour in hours:
        hour_offenders = []
        places = client_locations(conn, hour)
        for site, _, client_bucket, client_keys, _, _ in manifest_rows(conn, hour):
            places.update((site, client_bucket, key.rsplit("/", 1)[0] + "/") for key in client_keys)
            bucket, prefix = destinations.get(site, (client_bucket, ""))
            places.add((site, bucket or client_bucket, hour_prefix(site, hour, prefix)))
        for site, bucket, prefix in sorted(places):
            for key in list_keys(client, bucket, prefix):
                objects += 1
                hour_offenders += _foreign_rows(client, bucket, key, site)
        mark_check(conn, hour, "tenants_verified_at", not hour_offenders)
        offenders += hour_offenders
    return objects, offenders


@dg.asset_check(
    asset=hourly_export,
    partitions_def=hourly_partitions,
    blocking=True,
    description="Every object under a client's prefix for the hour holds only that client's "
    "site_id (Parquet statistics of the site_id column, per row group).",
)
def no_cross_tenant_rows(context, postgres: PostgresResource, s3: S3Resource,
                         settings: PipelineSettings) -> dg.AssetCheckResult:
    with postgres.get_connection(autocommit=True) as conn:
        objects, offenders = verify_tenants(conn, s3.get_client(), run_hours(context), settings.client_bucket)
    return dg.AssetCheckResult(
        passed=not offenders,
        metadata={"objects_checked": objects,
                  "offenders": dg.MetadataValue.md("\n".join(f"- {o}" for o in offenders[:50]) or "none")},
        description=None if not offenders else "An object under a client's prefix holds another "
        "site's rows: remove it from the client bucket now and re-run hourly_export for the hour.",
    )
