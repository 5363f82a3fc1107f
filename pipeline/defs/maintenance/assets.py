"""db_maintenance: partitions ahead, strays out of the default partition, fresh statistics,
and the original design's weekly REINDEX (docs/architecture.md) where an index is bloated. It logs to maintenance_log, never to
events_log (a row there would be exported to a client and billed)."""

from datetime import UTC, datetime

import dagster as dg
from psycopg import sql
from psycopg.types.json import Jsonb

from pipeline.resources import PostgresResource
from pixelpipe.core.events_log import (
    PARTITIONS_AHEAD_HOURS,
    ensure_partitions,
    hour_partitions,
    hours_in_default_partition,
)

# An index is rebuilt when it is this many times larger than its entries need, and big
# enough to matter.
BLOAT_FACTOR = 2.0
BLOAT_MIN_BYTES = 8 << 20
INDEX_ENTRY_BYTES = 32  # (bigint, timestamptz) key + tuple header + line pointer


def upkeep_partitions(conn, now: datetime) -> dict:
    """Create partitions ahead and move rows stranded in the default partition into theirs."""
    created = ensure_partitions(conn, now=now, hours_back=1, hours_ahead=PARTITIONS_AHEAD_HOURS)
    moved = []
    for hour in hours_in_default_partition(conn):
        moved += ensure_partitions(conn, now=hour, hours_back=0, hours_ahead=1)
    return {
        "partitions_created": len(created) + len(moved),
        "rows_moved_from_default": sum(rows for _, rows in created + moved),
        "moved": {name: rows for name, rows in created + moved if rows},
    }


def reindex_bloated(conn) -> list[str]:
    """REINDEX CONCURRENTLY the events_log indexes that are far larger than their entries."""
    rebuilt = []
    for index, size, tuples in conn.execute(
        """SELECT ic.relname, pg_relation_size(i.indexrelid), c.reltuples
           FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
           JOIN pg_class ic ON ic.oid = i.indexrelid
           JOIN pg_inherits h ON h.inhrelid = i.indrelid
           WHERE h.inhparent = 'events_log'::regclass"""
    ).fetchall():
        needed = max(tuples, 0) * INDEX_ENTRY_BYTES
        if size > BLOAT_MIN_BYTES and size > BLOAT_FACTOR * needed:
            conn.execute(sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(sql.Identifier(index)))
            rebuilt.append(index)
    return rebuilt


def database_health(conn) -> dict:
    sizes = conn.execute(
        """SELECT c.relname, pg_total_relation_size(c.oid), s.n_live_tup, s.n_dead_tup
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
           WHERE i.inhparent = 'events_log'::regclass ORDER BY 2 DESC"""
    ).fetchall()
    lag = conn.execute("SELECT events_pending_export, oldest_pending_hour FROM export_lag").fetchone()
    return {
        "partitions": len(sizes),
        "events_log_bytes": sum(size for _, size, _, _ in sizes),
        "dead_tuples": sum(dead or 0 for _, _, _, dead in sizes),
        "largest": sizes[:10],
        "events_pending_export": lag[0],
        "oldest_unexported_hour": lag[1].isoformat() if lag[1] else None,
    }


@dg.asset(
    pool="postgres",
    group_name="maintenance",
    kinds={"postgres"},
    description="Daily: hourly partitions 48 h ahead, rows stranded in the default partition "
    "moved to their hour, ANALYZE, REINDEX CONCURRENTLY of bloated indexes on Sundays, and "
    "sizes, dead tuples and the oldest unexported hour as metadata.",
)
def db_maintenance(context: dg.AssetExecutionContext, postgres: PostgresResource) -> dg.MaterializeResult:
    now = datetime.now(UTC)
    with postgres.get_connection(autocommit=True) as conn:
        partitions = upkeep_partitions(conn, now)
        conn.execute("ANALYZE events_log")
        rebuilt = reindex_bloated(conn) if now.weekday() == 6 else []
        health = database_health(conn)
        live = len([h for h in hour_partitions(conn) if h <= now])
        details = {**partitions, "reindexed": rebuilt, "analyzed_partitions": live,
                   **{k: v for k, v in health.items() if k != "largest"}}
        conn.execute("INSERT INTO maintenance_log (operation, details) VALUES ('db_maintenance', %s)",
                     (Jsonb(details),))
    table = ["| partition | bytes | live rows | dead rows |", "|---|---:|---:|---:|"]
    table += [f"| {name} | {size} | {live_rows} | {dead} |" for name, size, live_rows, dead in health["largest"]]
    return dg.MaterializeResult(metadata={
        "partitions_created": partitions["partitions_created"],
        "rows_moved_from_default": partitions["rows_moved_from_default"],
        "reindexed": ", ".join(rebuilt) or "none",
        "events_log_bytes": health["events_log_bytes"],
        "dead_tuples": health["dead_tuples"],
        "events_pending_export": health["events_pending_export"],
        "oldest_unexported_hour": health["oldest_unexported_hour"] or "none",
        "largest_partitions": dg.MetadataValue.md("\n".join(table)),
    })
