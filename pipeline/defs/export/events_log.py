"""events_log is written by the collector, outside Dagster; it is the export's upstream."""

import dagster as dg

events_log = dg.AssetSpec(
    "events_log",
    kinds={"postgres"},
    description="Raw events the collector COPYs into PostgreSQL, range-partitioned by ingest hour "
    "(created_at). A short buffer: retention drops each hour once its export is verified.",
    group_name="ingest",
)
