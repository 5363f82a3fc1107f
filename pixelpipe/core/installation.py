"""Where this installation's data starts: the first hour Dagster's partitions offer.

Partitions that began on a fixed date showed a fresh install hundreds of "missing" hours, and
"backfill failed and missing" would have exported each of them empty. The start is recorded once
in PostgreSQL (sql/016_installation.sql) and only ever moves back, when rows are written on
purpose with older ingest times (the demo's history), so hours already shown never disappear.
PIXELPIPE_PARTITIONS_START overrides it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from pixelpipe.core.database import resolve_database_url
from pixelpipe.core.errors import PixelpipeError
from pixelpipe.core.settings import Settings

HOUR_FORMAT = "%Y-%m-%d-%H:%M"  # Dagster's hourly partition keys


def data_start(conn: psycopg.Connection) -> datetime | None:
    row = conn.execute("SELECT data_starts_at FROM installation").fetchone()
    return row[0].astimezone(UTC) if row else None


def lower_data_start(conn: psycopg.Connection, hour: datetime) -> None:
    """The data now starts at `hour` if that is earlier than what was recorded."""
    conn.execute(
        "INSERT INTO installation (data_starts_at) VALUES (date_trunc('hour', %(h)s, 'UTC')) "
        "ON CONFLICT (singleton) DO UPDATE SET data_starts_at = "
        "LEAST(installation.data_starts_at, EXCLUDED.data_starts_at)", {"h": hour})


def partitions_start(settings: Settings) -> str:
    """The first hourly partition key: PIXELPIPE_PARTITIONS_START, else where the data starts.

    With no database to ask (definitions loaded for validation, or before `pixelpipe migrate`),
    the start of the current UTC day, so the current hours are always there to export.
    """
    if settings.partitions_start:
        return settings.partitions_start
    try:
        with psycopg.connect(resolve_database_url(settings), connect_timeout=5) as conn:
            start = data_start(conn)
    except (PixelpipeError, psycopg.Error):
        start = None
    if start is None:
        start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start.strftime(HOUR_FORMAT)
