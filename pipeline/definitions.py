"""Assembles the Definitions; nothing else lives here."""

import dagster as dg

from pipeline.assets.events_log import events_log
from pipeline.assets.export import export_reconciles, hourly_export, no_cross_tenant_rows
from pipeline.resources import resources_from_env

defs = dg.Definitions(
    assets=[events_log, hourly_export],
    asset_checks=[export_reconciles, no_cross_tenant_rows],
    resources=resources_from_env(),
)
