"""When the database's upkeep runs."""

import dagster as dg

maintenance_job = dg.define_asset_job("maintenance_job", selection=dg.AssetSelection.assets("db_maintenance"))

# Daily, off peak.
maintenance_schedule = dg.ScheduleDefinition(
    name="maintenance_schedule", job=maintenance_job, cron_schedule="15 3 * * *",
    execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING)
