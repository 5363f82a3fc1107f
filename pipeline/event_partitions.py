"""events_log's hourly partitions as the pipeline sees them: which hour each one holds."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

_PREFIX = "events_log_"


def hour_partitions(conn: psycopg.Connection) -> dict[datetime, str]:
    """ingest hour -> partition name, for every hourly partition (not the default one)."""
    partitions = {}
    for (name,) in conn.execute(
        """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = 'events_log'::regclass"""
    ):
        suffix = name.removeprefix(_PREFIX)
        try:
            hour = datetime.strptime(suffix, "%Y%m%d_%H").replace(tzinfo=UTC)
        except ValueError:
            continue  # events_log_default
        partitions[hour] = name
    return partitions


def hours_in_default_partition(conn: psycopg.Connection) -> list[datetime]:
    """Hours that have rows in the default partition (they had no partition when written)."""
    return [row[0] for row in conn.execute(
        "SELECT DISTINCT date_trunc('hour', created_at, 'UTC') FROM events_log_default ORDER BY 1")]


def sealed_partitions(conn: psycopg.Connection) -> set[str]:
    """Partitions sealed by an export: no row can have been added since it read them."""
    return {row[0] for row in conn.execute("SELECT partition_name FROM events_log_sealed_partitions")}
