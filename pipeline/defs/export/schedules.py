"""When an hour is exported."""

import dagster as dg

hourly_export_job = dg.define_asset_job(
    "hourly_export_job", selection=dg.AssetSelection.assets("hourly_export"),
    description="Export one ingest hour (or a backfill range) and run its checks.")

# HH:10 exports the hour that ended at HH:00 (after the default 5-minute grace period).
hourly_export_schedule = dg.build_schedule_from_partitioned_job(
    hourly_export_job, minute_of_hour=10, default_status=dg.DefaultScheduleStatus.RUNNING)
