"""Partition definitions, imported by assets and schedules alike.

Hourly partitions are keyed by ingest hour (events_log.created_at) in UTC: a closed hour never
changes, so a backfill reproduces it. Tenants are a loop inside each run, not a partition
dimension (hour x site would be millions of partitions).
"""

import os

import dagster as dg

# A recent start keeps the partition count (and Dagster's UI) small.
PARTITIONS_START = os.environ.get("PIXELPIPE_PARTITIONS_START", "2026-11-01-00:00")

hourly_partitions = dg.HourlyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC")
monthly_partitions = dg.MonthlyPartitionsDefinition(
    start_date=PARTITIONS_START[:10], timezone="UTC", end_offset=0)


def run_hours(context) -> list:
    """The UTC ingest hours a run (one partition or a backfill range) covers, in order."""
    key_range = context.partition_key_range
    keys = hourly_partitions.get_partition_keys_in_range(key_range)
    return [hourly_partitions.time_window_for_partition_key(key).start for key in keys]
