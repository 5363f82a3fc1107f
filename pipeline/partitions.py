"""Partition definitions, imported by assets and schedules alike.

Hourly partitions are keyed by ingest hour (events_log.created_at) in UTC: a closed hour never
changes, so a backfill reproduces it. Tenants are a loop inside each run, not a partition
dimension (hour x site would be millions of partitions).
"""

import dagster as dg

from pixelpipe.core.settings import Settings

# A recent start keeps the partition count (and Dagster's UI) small.
PARTITIONS_START = Settings.from_env().partitions_start

# A long backfill (30 days from the UI, or `pixelpipe backfill`) runs as many runs of at most
# this many hours: each run is a process of its own, resumable on its own, and the `postgres`
# pool bounds how many run at once. Each hour's ledger commits as soon as that hour is up.
hourly_backfill_policy = dg.BackfillPolicy.multi_run(
    max_partitions_per_run=max(1, Settings.from_env().backfill_hours_per_run))

hourly_partitions = dg.HourlyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC")
monthly_partitions = dg.MonthlyPartitionsDefinition(
    start_date=PARTITIONS_START[:10], timezone="UTC", end_offset=0)


def run_hours(context) -> list:
    """The UTC ingest hours a run (one partition or a backfill range) covers, in order."""
    key_range = context.partition_key_range
    keys = hourly_partitions.get_partition_keys_in_range(key_range)
    return [hourly_partitions.time_window_for_partition_key(key).start for key in keys]

# UTC days of ingest hours: a day's analytics depend on its 24 hourly_export partitions.
daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START[:10], timezone="UTC")
