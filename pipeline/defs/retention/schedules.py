"""When retention runs."""

import dagster as dg

retention_job = dg.define_asset_job("retention_job", selection=dg.AssetSelection.assets("retention_cleanup"))

# Hourly, after the export of the previous hour has had time to run and verify.
retention_schedule = dg.ScheduleDefinition(
    name="retention_schedule", job=retention_job, cron_schedule="40 * * * *",
    execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING)
