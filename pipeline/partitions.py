"""Partition definitions, imported by assets and schedules alike.

Hourly partitions are keyed by ingest hour (events_log.created_at) in UTC: a closed hour never
changes, so a backfill reproduces it. Tenants are a loop inside each run, not a partition
dimension (hour x site would be millions of partitions).
"""

import dagster as dg

from pixelpipe.core.installation import partitions_start
from pixelpipe.core.settings import Settings

# Where this installation's data starts (or PIXELPIPE_PARTITIONS_START): no partition shows
# "missing" for an hour that never had data, and the count (and Dagster's UI) stays small.
PARTITIONS_START = partitions_start(Settings.from_env())

# A long backfill (30 days from the UI, or `pixelpipe backfill`) runs as many runs of at most
# this many hours: each run is a process of its own, resumable on its own, and the `postgres`
# pool bounds how many run at once. Each hour's ledger commits as soon as that hour is up.
hourly_backfill_policy = dg.BackfillPolicy.multi_run(
    max_partitions_per_run=max(1, Settings.from_env().backfill_hours_per_run))

hourly_partitions = dg.HourlyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC")
# From the first of the start's month: billing bills a month from the first hour there is.
monthly_partitions = dg.MonthlyPartitionsDefinition(
    start_date=PARTITIONS_START[:8] + "01", timezone="UTC", end_offset=0)


def run_hours(context) -> list:
    """The UTC ingest hours a run (one partition or a backfill range) covers, in order."""
    key_range = context.partition_key_range
    keys = hourly_partitions.get_partition_keys_in_range(key_range)
    return [hourly_partitions.time_window_for_partition_key(key).start for key in keys]


def partition_key_of(hour) -> str:
    """The partition key of a UTC ingest hour (a run over a range records each hour under it)."""
    return f"{hour:%Y-%m-%d-%H:%M}"


# UTC days of ingest hours: a day's analytics depend on its 24 hourly_export partitions.
daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START[:10], timezone="UTC")
