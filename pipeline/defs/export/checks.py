"""The checks on hourly_export: retention and billing trust an hour only when both passed.

Both read the same Parquet footers (row counts for one, site_id statistics for the other), so they
run as one multi-asset check that reads each footer once and reports two results.
"""

from datetime import datetime

import dagster as dg

# Not exported at dagster's top level in 1.13; AssetCheckEvaluation's own field type.
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)
from dagster_aws.s3 import S3Resource

from pipeline.defs.export.assets import hourly_export
from pipeline.partitions import hourly_partitions, partition_key_of, run_hours
from pipeline.resources import PipelineSettings, PostgresResource
from pipeline.verification import Footers, reconcile, verify_receipts, verify_tenants

RECONCILES = "export_reconciles"
NO_CROSS_TENANT_ROWS = "no_cross_tenant_rows"
RECEIPTS_MATCH = "receipts_match"
# Retention and billing trust an hour only when these passed; a failure stops the run.
BLOCKING = {RECONCILES, NO_CROSS_TENANT_ROWS}


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
