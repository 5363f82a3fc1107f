"""The checks on hourly_export: retention and billing trust an hour only when both passed.

Both read the same Parquet footers (row counts for one, site_id statistics for the other), so they
run as one multi-asset check that reads each footer once and reports two results.
"""

from datetime import datetime, timedelta

import dagster as dg
import pyarrow.parquet as pq

# Not exported at dagster's top level in 1.13; AssetCheckEvaluation's own field type.
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)
from dagster_aws.s3 import S3Resource

from pipeline.assets.export import hourly_export
from pipeline.export_files import hour_prefix
from pipeline.ledger import (
    client_locations,
    hour_state,
    manifest_rows,
    mark_check,
    site_destinations,
)
from pipeline.object_store import list_keys
from pipeline.partitions import hourly_partitions, partition_key_of, run_hours
from pipeline.resources import PipelineSettings, PostgresResource
from pixelpipe.core.receipts import RECEIPT_NAME, verify_location
from pixelpipe.core.s3 import read_parquet_metadata

RECONCILES = "export_reconciles"
NO_CROSS_TENANT_ROWS = "no_cross_tenant_rows"
RECEIPTS_MATCH = "receipts_match"
# Retention and billing trust an hour only when these passed; a failure stops the run.
BLOCKING = {RECONCILES, NO_CROSS_TENANT_ROWS}


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


def _listed_result(check_name: str, counted: tuple[str, int], found: tuple[str, list[str]],
                  what_to_do: str) -> dict:
    """A check that counts what it looked at and lists what it found wrong (the first 50)."""
    (count_name, count), (list_name, items) = counted, found
    return dict(
        check_name=check_name, passed=not items,
        metadata={count_name: count,
                  list_name: dg.MetadataValue.md("\n".join(f"- {item}" for item in items[:50]) or "none")},
        description=what_to_do if items else None)


def _receipts_result(checked: int, problems: list[str]) -> dict:
    return _listed_result(
        RECEIPTS_MATCH, ("site_hours_checked", checked), ("problems", problems),
        "The objects do not match the receipts written beside them (the client's `pixelpipe "
        "verify` sees the same): re-run hourly_export for the hour.")


def _reconciles_result(totals: dict, mismatches: list[str]) -> dict:
    metadata = {f"rows_{name}": value for name, value in totals.items()}
    if mismatches:
        metadata["mismatches"] = dg.MetadataValue.md(
            "| ingest hour | site_id | postgres | manifest | client | backup |\n"
            "|---|---|---:|---:|---:|---:|\n" + "\n".join(mismatches[:50]))
    return dict(
        check_name=RECONCILES, passed=not mismatches, metadata=metadata,
        description=None if not mismatches else "Re-run hourly_export for the listed hours; if it "
        "still fails, compare the objects with events_log. Retention keeps these hours meanwhile.")


def _tenants_result(objects: int, offenders: list[str]) -> dict:
    return _listed_result(
        NO_CROSS_TENANT_ROWS, ("objects_checked", objects), ("offenders", offenders),
        "An object under a client's prefix holds another site's rows: remove it from the client "
        "bucket now and re-run hourly_export for the hour.")


def checked_materialization(instance, hour: datetime) -> AssetCheckEvaluationTargetMaterializationData | None:
    """The hour's latest materialization: the UI shows a check's status per hour only while it
    targets the hour's current materialization (a re-export clears it)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=hourly_export.key, asset_partitions=[partition_key_of(hour)]),
        limit=1).records
    if not records:
        return None
    return AssetCheckEvaluationTargetMaterializationData(
        run_id=records[0].run_id, storage_id=records[0].storage_id, timestamp=records[0].timestamp)


def hour_evaluations(conn, client, hour: datetime, settings: PipelineSettings, footers: Footers,
                     instance=None) -> list[dg.AssetCheckEvaluation]:
    """The three checks of one hour, each recorded under the hour's partition.

    An AssetCheckResult carries no partition, and a run over a range has no single partition
    key, so its results would belong to no hour (the UI shows every hour "skipped"). Evaluations
    that name their partition make the check's partition bar green or red hour by hour.
    """
    results = (
        _reconciles_result(*reconcile(conn, client, [hour], footers)),
        _tenants_result(*verify_tenants(conn, client, [hour], settings.client_bucket, footers)),
        _receipts_result(*verify_receipts(conn, client, [hour], settings.backup_bucket)),
    )
    target = checked_materialization(instance, hour) if instance else None
    return [dg.AssetCheckEvaluation(asset_key=hourly_export.key, partition=partition_key_of(hour),
                                    blocking=result["check_name"] in BLOCKING,
                                    target_materialization_data=target, **result)
            for result in results]


CHECK_SPECS = [
    dg.AssetCheckSpec(
        RECONCILES, asset=hourly_export, blocking=RECONCILES in BLOCKING, partitions_def=hourly_partitions,
        description="Rows in PostgreSQL for the hour equal the rows in the Parquet footers of "
        "the uploaded objects, per site, in both the client and the backup copy."),
    dg.AssetCheckSpec(
        NO_CROSS_TENANT_ROWS, asset=hourly_export, blocking=NO_CROSS_TENANT_ROWS in BLOCKING,
        partitions_def=hourly_partitions,
        description="Every object under a client's prefix for the hour holds only that client's "
        "site_id (Parquet statistics of the site_id column, per row group)."),
    dg.AssetCheckSpec(
        RECEIPTS_MATCH, asset=hourly_export, blocking=RECEIPTS_MATCH in BLOCKING,
        partitions_def=hourly_partitions,
        description="Each site-hour's files, in both buckets, match the _receipt.json beside them "
        "(names, sizes, SHA-256, footer row counts): what `pixelpipe verify` checks for a client."),
]


@dg.multi_asset_check(specs=CHECK_SPECS)
def hourly_export_checks(context, postgres: PostgresResource, s3: S3Resource, settings: PipelineSettings):
    client = s3.get_client()
    footers = Footers(client)
    with postgres.get_connection(autocommit=True) as conn:
        for hour in run_hours(context):
            yield from hour_evaluations(conn, client, hour, settings, footers, context.instance)
    # The step's outputs: the results themselves were the evaluations above, one per hour.
    for spec in CHECK_SPECS:
        yield dg.Output(None, output_name=spec.get_python_identifier())
