"""The daily analytics (sessions, pageviews, daily_site_metrics, page_performance): each UTC day,
from its 24 exported hours in the backup bucket, into each site's client bucket. Wiring only:
the definitions and the SQL are plain code in pipeline/analytics/ (docs/analytics.md)."""

from datetime import UTC, datetime

import dagster as dg
from dagster_aws.s3 import S3Resource

from pipeline.analytics.bucket import compute_day, read_receipts
from pipeline.analytics.daily import DATASETS, MEMORY_LIMIT, SiteDay
from pipeline.defs.export.assets import hourly_export
from pipeline.ledger import site_destinations
from pipeline.partitions import daily_partitions
from pipeline.resources import PipelineSettings, PostgresResource

# A day runs once its hours are exported, and again when one of them is re-exported or erased
# (hourly_export materializes again): eager, for every day, not only the latest.
_AUTOMATION = dg.AutomationCondition.eager().without(dg.AutomationCondition.in_latest_time_window())
# An installation's first day starts at its first hour (pipeline/partitions.py), not at midnight:
# the hours before it never existed, and the day is computed from those that do.
_DEPENDS_ON_HOURS = dg.AssetDep(hourly_export, partition_mapping=dg.TimeWindowPartitionMapping(
    allow_nonexistent_upstream_partitions=True))
_DESCRIPTIONS = {
    "sessions": "One row per session: a visitor's events on one site, split after 30 minutes "
                "without one and at the UTC day boundary.",
    "pageviews": "One row per pageview (any protocol), with time on page and attribution.",
    "daily_site_metrics": "One row per site and day: visitors, sessions, pageviews, bounce rate, "
                          "duration, traffic sources.",
    "page_performance": "One row per site, day and path: views, visitors, entries, exits, bounce rate.",
}


def _site_table(days: list[SiteDay], limit: int = 50) -> str:
    lines = ["| site_id | visitors | sessions | pageviews | bounce rate |", "|---|---:|---:|---:|---:|"]
    for day in sorted(days, key=lambda s: -s.metrics.get("total_pageviews", 0))[:limit]:
        m = day.metrics
        rate = "" if m["bounce_rate"] is None else f"{m['bounce_rate']:.2%}"
        lines.append(f"| {day.site_id} | {m['unique_visitors']} | {m['total_sessions']} | "
                     f"{m['total_pageviews']} | {rate} |")
    if len(days) > limit:
        lines.append(f"| ... {len(days) - limit} more sites | | | | |")
    return "\n".join(lines)


def _reconcile(client, destinations: dict, default_bucket: str, computed: list[SiteDay],
               inputs: dict) -> tuple[bool, list[str]]:
    """Each site-day's metrics against its raw hours (events from their receipts, pageviews
    counted again straight from the files) and against its own datasets in the client's bucket
    (rows per receipt)."""
    problems = []
    for site_day in computed:
        bucket, prefix = destinations.get(site_day.site_id, (default_bucket, ""))
        receipts = read_receipts(client, bucket, prefix, site_day.site_id, site_day.day)
        m = site_day.metrics
        if set(receipts) != set(DATASETS):
            problems.append(f"{site_day.site_id}: receipts missing for {sorted(set(DATASETS) - set(receipts))}")
            continue
        raw_rows = inputs[site_day.site_id].rows
        if m["total_events"] + site_day.duplicates != raw_rows:
            problems.append(f"{site_day.site_id}: total_events {m['total_events']} + {site_day.duplicates} "
                            f"re-sent copies != {raw_rows} rows in the day's hour receipts")
        if m["total_pageviews"] != site_day.input_pageviews:
            problems.append(f"{site_day.site_id}: total_pageviews {m['total_pageviews']} != "
                            f"{site_day.input_pageviews} pageviews in the day's raw files")
        if receipts["pageviews"]["rows"] != m["total_pageviews"]:
            problems.append(f"{site_day.site_id}: pageviews has {receipts['pageviews']['rows']} rows, "
                            f"total_pageviews says {m['total_pageviews']}")
        if receipts["sessions"]["rows"] != m["total_sessions"]:
            problems.append(f"{site_day.site_id}: sessions has {receipts['sessions']['rows']} rows, "
                            f"total_sessions says {m['total_sessions']}")
    return not problems, problems


@dg.multi_asset(
    specs=[dg.AssetSpec(name, deps=[_DEPENDS_ON_HOURS], group_name="analytics", description=text,
                        kinds={"duckdb", "parquet", "s3"}, automation_condition=_AUTOMATION)
           for name, text in _DESCRIPTIONS.items()],
    check_specs=[dg.AssetCheckSpec("daily_metrics_reconcile", asset="daily_site_metrics",
                                   description="The day's events and pageviews equal those in its raw "
                                   "hours, and sessions has exactly total_sessions rows.")],
    partitions_def=daily_partitions,
    pool="analytics",
)
def daily_analytics(context: dg.AssetExecutionContext, postgres: PostgresResource, s3: S3Resource,
                    settings: PipelineSettings):
    """Sites loop inside the run; one site's bad day is reported and does not stop the others."""
    day = daily_partitions.time_window_for_partition_key(context.partition_key).start.date()
    client = s3.get_client()
    with postgres.get_connection() as conn:
        destinations = site_destinations(conn, settings.client_bucket)
    run = compute_day(client, settings.backup_bucket,
                      lambda site: destinations.get(site, (settings.client_bucket, "")), day,
                      MEMORY_LIMIT, context.log.info)
    if not run.inputs:
        raise dg.Failure(
            description=f"No exported hour of {day} in the backup bucket s3://{settings.backup_bucket}: "
            "materialize hourly_export for that day's hours first (the analytics read only the exports).")
    computed, failed, inputs = run.computed, run.failed, run.inputs
    table = dg.MetadataValue.md(_site_table(computed))
    common = {"date": day.isoformat(), "sites": len(computed), "per_site": table,
              "clamped_timestamps": sum(s.clamped_timestamps for s in computed),
              "bad_values": sum(s.bad_values for s in computed),
              "shared_visitor_ids": sum(s.shared_visitors for s in computed),
              "duplicates_left_out": sum(s.duplicates for s in computed)}
    for dataset in DATASETS:
        yield dg.MaterializeResult(asset_key=dataset, metadata={
            **common, "rows": sum(s.rows[dataset] for s in computed)})
    passed, problems = _reconcile(client, destinations, settings.client_bucket, computed, inputs)
    yield dg.AssetCheckResult(check_name="daily_metrics_reconcile", asset_key="daily_site_metrics",
                              passed=passed, metadata={"problems": "\n".join(problems) or "none",
                                                       "sites": len(computed)})
    if failed:
        raise dg.Failure(
            description=f"{len(failed)} site(s) of {day} were not computed (the others were written): "
            + "; ".join(f"{s}: {why}" for s, why in sorted(failed.items()))[:2000]
            + ". Re-export or restore those hours from the backup bucket, then re-run the day.",
            metadata={"computed_at": datetime.now(UTC).isoformat()})
