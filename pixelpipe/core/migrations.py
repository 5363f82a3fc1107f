"""Apply the numbered SQL files in sql/ in order, once each, then keep partitions ahead.

Each file runs in its own transaction and is recorded in schema_migrations, so running
`pixelpipe migrate` twice changes nothing. An advisory lock serialises concurrent runners.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from pixelpipe.core.events_log import ensure_partitions

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
_LOCK_KEY = 0x706978656C  # "pixel"


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
