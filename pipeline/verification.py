"""Verification of exported hours, shared by the checks on hourly_export, an erasure and
`pixelpipe verify` (through pixelpipe/core/receipts.py): rows reconciled between PostgreSQL, the
ledger and both copies' Parquet footers; every object of a client's hour holding that client's
rows only; each site-hour against its receipt. Plain code: the Dagster checks
(pipeline/defs/export/checks.py) wrap these results for the UI."""

from datetime import datetime, timedelta

import pyarrow.parquet as pq

from pipeline.export_files import hour_prefix
from pipeline.ledger import (
    client_locations,
    hour_state,
    manifest_rows,
    mark_check,
    site_destinations,
)
from pipeline.object_store import list_keys
from pixelpipe.core.receipts import RECEIPT_NAME, verify_location
from pixelpipe.core.s3 import read_parquet_metadata


class Footers:
    """Each object's Parquet footer, fetched once per check run however many checks ask for it."""

    def __init__(self, client):
        self._client = client
        self._read: dict[tuple[str, str], pq.FileMetaData] = {}

    def __call__(self, bucket: str, key: str) -> pq.FileMetaData:
        if (bucket, key) not in self._read:
            self._read[bucket, key] = read_parquet_metadata(self._client, bucket, key)
        return self._read[bucket, key]


def _reconcile_hour(conn, footers: Footers, hour: datetime) -> tuple[dict, list[str]]:
    """Rows per site in PostgreSQL vs the manifest vs both copies' Parquet footers."""
    totals = {"postgres": 0, "manifest": 0, "client": 0, "backup": 0}
    state = hour_state(conn, hour)
    if state is None:
        return totals, [f"| {hour:%Y-%m-%d %H}:00 | (hour not exported) | | | | |"]
    # Re-sent copies the export left out (export_duplicates) are not expected in the files.
    in_postgres = dict(conn.execute(
        "SELECT site_id, count(*) FROM events_log e "
        "WHERE created_at >= %s AND created_at < %s AND NOT EXISTS "
        "(SELECT 1 FROM export_duplicates d WHERE d.ingest_hour = %s AND d.id = e.id) GROUP BY 1",
        (hour, hour + timedelta(hours=1), hour)).fetchall())
    mismatches = []
    manifest = manifest_rows(conn, hour)
    for site, rows, client_bucket, client_keys, backup_bucket, backup_keys in manifest:
        # After a purge the database has no rows left; the manifest is the reference then.
        expected = rows if state.purged_at else in_postgres.get(site, 0)
        in_client = sum(footers(client_bucket, k).num_rows for k in client_keys)
        in_backup = sum(footers(backup_bucket, k).num_rows for k in backup_keys)
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


def reconcile(conn, client, hours: list[datetime], footers: Footers | None = None) -> tuple[dict, list[str]]:
    """Reconcile each hour and record the verdict; returns (row totals, mismatch lines)."""
    footers = footers or Footers(client)
    totals = {"postgres": 0, "manifest": 0, "client": 0, "backup": 0}
    mismatches: list[str] = []
    for hour in hours:
        hour_totals, hour_mismatches = _reconcile_hour(conn, footers, hour)
        mark_check(conn, hour, "reconciled_at", not hour_mismatches)
        mismatches += hour_mismatches
        for name, value in hour_totals.items():
            totals[name] += value
    return totals, mismatches


def _foreign_rows(footers: Footers, bucket: str, key: str, site: str) -> list[str]:
    """Row groups of an object whose site_id statistics are not exactly `site`."""
    metadata = footers(bucket, key)
    column = metadata.schema.names.index("site_id")
    offenders = []
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(column).statistics
        if stats is None or not stats.has_min_max:
            offenders.append(f"s3://{bucket}/{key} row group {group}: no site_id statistics")
        elif stats.min != site or stats.max != site:
            offenders.append(f"s3://{bucket}/{key} row group {group}: site_id {stats.min}..{stats.max}")
    return offenders


def verify_tenants(conn, client, hours: list[datetime], default_bucket: str = "",
                   footers: Footers | None = None) -> tuple[int, list[str]]:
    """Check every object under each client's hour prefixes; record the verdict per hour.

    Lists the prefixes rather than trusting the manifest, so a stray object is caught too: every
    bucket and prefix the hour was ever written to (export_locations), the manifest's, and the
    site's current one. Returns (objects checked, offending row groups).
    """
    footers = footers or Footers(client)
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
                if key.endswith("/" + RECEIPT_NAME):
                    continue  # JSON, checked against the files by pixelpipe verify
                objects += 1
                hour_offenders += _foreign_rows(footers, bucket, key, site)
        mark_check(conn, hour, "tenants_verified_at", not hour_offenders)
        offenders += hour_offenders
    return objects, offenders


def verify_receipts(conn, client, hours: list[datetime], backup_bucket: str) -> tuple[int, list[str]]:
    """Each exported site-hour, in both buckets, against its receipt: the code `pixelpipe verify`
    runs for a client. Returns (site-hours checked, problems)."""
    checked, problems = 0, []
    for hour in hours:
        for site, _, client_bucket, client_keys, _, _ in manifest_rows(conn, hour):
            client_prefix = client_keys[0].split("site_id=", 1)[0] if client_keys else ""
            for bucket, prefix in ((client_bucket, client_prefix), (backup_bucket, "")):
                n, found = verify_location(client, bucket, prefix, site, hour, hour)
                checked += n
                problems += [str(p) for p in found]
    return checked, problems
