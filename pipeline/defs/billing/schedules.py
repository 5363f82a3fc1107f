"""When a month is billed."""

import dagster as dg

billing_job = dg.define_asset_job("billing_job", selection=dg.AssetSelection.assets("monthly_billing"))

# On the 1st at 02:00 UTC, for the month that ended: its last hour was exported at 00:10.
billing_schedule = dg.build_schedule_from_partitioned_job(
    billing_job, day_of_month=1, hour_of_day=2, minute_of_hour=0,
    default_status=dg.DefaultScheduleStatus.RUNNING)
