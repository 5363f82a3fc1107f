"""Assembles the Definitions; nothing else lives here."""

import dagster as dg

from pipeline.assets.analytics import daily_analytics
from pipeline.assets.billing import billing_matches_manifest, monthly_billing
from pipeline.assets.events_log import events_log
from pipeline.assets.export import hourly_export
from pipeline.assets.export_checks import hourly_export_checks
from pipeline.assets.maintenance import db_maintenance
from pipeline.assets.retention import retention_cleanup
from pipeline.automation import (
    billing_job,
    billing_schedule,
    hourly_export_job,
    hourly_export_schedule,
    maintenance_job,
    maintenance_schedule,
    retention_job,
    retention_schedule,
    run_failure_alert,
)
from pipeline.erasure import erase_visitor_job
from pipeline.resources import refuse_in_process_run_without_database, resources_from_env

refuse_in_process_run_without_database()

defs = dg.Definitions(
    assets=[events_log, hourly_export, retention_cleanup, db_maintenance, monthly_billing,
            daily_analytics],
    asset_checks=[hourly_export_checks, billing_matches_manifest],
    jobs=[hourly_export_job, retention_job, maintenance_job, billing_job, erase_visitor_job],
    schedules=[hourly_export_schedule, retention_schedule, maintenance_schedule, billing_schedule],
    sensors=[run_failure_alert],
    resources=resources_from_env(),
)
