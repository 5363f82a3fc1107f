"""Schedules and sensors: when each asset runs, and who hears about a failure."""

import json
import urllib.request

import dagster as dg

from pipeline.assets.billing import monthly_billing
from pipeline.assets.export import hourly_export
from pipeline.assets.maintenance import db_maintenance
from pipeline.assets.retention import retention_cleanup
from pipeline.resources import PipelineSettings

hourly_export_job = dg.define_asset_job(
    "hourly_export_job", selection=dg.AssetSelection.assets(hourly_export),
    description="Export one ingest hour (or a backfill range) and run its checks.")
retention_job = dg.define_asset_job("retention_job", selection=dg.AssetSelection.assets(retention_cleanup))
maintenance_job = dg.define_asset_job("maintenance_job", selection=dg.AssetSelection.assets(db_maintenance))
billing_job = dg.define_asset_job("billing_job", selection=dg.AssetSelection.assets(monthly_billing))

# HH:10 exports the hour that ended at HH:00 (after the default 5-minute grace period).
hourly_export_schedule = dg.build_schedule_from_partitioned_job(
    hourly_export_job, minute_of_hour=10, default_status=dg.DefaultScheduleStatus.RUNNING)

# Hourly, after the export of the previous hour has had time to run and verify.
retention_schedule = dg.ScheduleDefinition(
    name="retention_schedule", job=retention_job, cron_schedule="40 * * * *",
    execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING)

# Daily, off peak.
maintenance_schedule = dg.ScheduleDefinition(
    name="maintenance_schedule", job=maintenance_job, cron_schedule="15 3 * * *",
    execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING)

# On the 1st at 02:00 UTC, for the month that ended: its last hour was exported at 00:10.
billing_schedule = dg.build_schedule_from_partitioned_job(
    billing_job, day_of_month=1, hour_of_day=2, minute_of_hour=0,
    default_status=dg.DefaultScheduleStatus.RUNNING)


def alert_payload(context: dg.RunFailureSensorContext) -> dict:
    run = context.dagster_run
    return {
        "text": f"pixelpipe: run {run.run_id[:8]} of {run.job_name} failed",
        "run_id": run.run_id,
        "job": run.job_name,
        "partition": run.tags.get("dagster/partition")
        or run.tags.get("dagster/asset_partition_range_start"),
        "error": context.failure_event.message,
    }


@dg.run_failure_sensor(
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Logs every failed run and, when PIXELPIPE_ALERT_WEBHOOK_URL is set, POSTs a short "
    "JSON alert to it (Slack-compatible `text` field).",
)
def run_failure_alert(context: dg.RunFailureSensorContext, settings: PipelineSettings) -> None:
    payload = alert_payload(context)
    context.log.error(f"{payload['text']}: {payload['error']}")
    if not settings.alert_webhook_url:
        return
    request = urllib.request.Request(settings.alert_webhook_url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
