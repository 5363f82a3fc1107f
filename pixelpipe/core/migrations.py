"""Apply the numbered SQL files in sql/ in order, once each, and keep partitions ahead.

Each file runs in its own transaction and is recorded in schema_migrations, so running
`pixelpipe migrate` twice changes nothing. An advisory lock serialises concurrent runners.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
_LOCK_KEY = 0x706978656C  # "pixel"

# The collector should never write into the default partition: keep this many hours ready.
PARTITIONS_AHEAD_HOURS = 48


def migration_files(sql_dir: Path = SQL_DIR) -> list[Path]:
    return sorted(p for p in sql_dir.glob("[0-9][0-9][0-9]_*.sql"))


def apply_migrations(url: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply what is not applied yet; returns the versions applied by this call."""
    applied_now = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version    TEXT PRIMARY KEY,
                       applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for path in migration_files(sql_dir):
                if path.stem in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text())
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.stem,))
                applied_now.append(path.stem)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


def migrate(url: str) -> tuple[list[str], list[tuple[str, int]]]:
    """Migrations, then partitions ahead: what `pixelpipe migrate`, the collector and `up` run
    before anything writes. Returns (versions applied, partitions created)."""
    applied = apply_migrations(url)
    with psycopg.connect(url, autocommit=True) as conn:
        created = ensure_partitions(conn)
    return applied, created


def ensure_partitions(
    conn: psycopg.Connection,
    now: datetime | None = None,
    hours_back: int = 1,
    hours_ahead: int = PARTITIONS_AHEAD_HOURS,
) -> list[tuple[str, int]]:
    """Create the hourly partitions from `hours_back` before now to `hours_ahead` after it.

    One hour per statement: creating a partition locks events_log itself, and the collector's
    inserts wait for that lock, so it is held for one partition at a time, never for 72.
    Returns (partition, rows moved out of the default partition) for each partition created.
    """
    now = now or datetime.now(UTC)
    hour = (now - timedelta(hours=hours_back)).replace(minute=0, second=0, microsecond=0)
    end = now + timedelta(hours=hours_ahead)
    existing = {row[0] for row in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'events_log'::regclass")}
    created = []
    while hour < end:
        if f"events_log_{hour:%Y%m%d_%H}" not in existing:
            created += conn.execute(
                "SELECT partition_name, moved_rows FROM events_log_ensure_partitions(%s, %s)",
                (hour, hour + timedelta(hours=1))).fetchall()
        hour += timedelta(hours=1)
    return [(name, moved) for name, moved in created]
