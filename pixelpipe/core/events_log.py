"""events_log: the raw-event buffer, its columns and the life of its hourly partitions.

One place for all of it (created ahead, listed, strays moved, sealed, dropped): migrations, the
collector, the export, retention and maintenance call these functions, and the SQL they rest on
is in sql/001_events_log.sql and sql/007_sealed_hours.sql.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

# The columns the collector writes, in COPY order.
EVENT_COLUMNS = (
    "event_id", "event_type", "session_id", "visitor_id", "site_id", "timestamp",
    "url", "path", "user_agent", "ip_address", "raw_event_data", "source",
)

# The collector should never write into the default partition: keep this many hours ready.
PARTITIONS_AHEAD_HOURS = 48


def copy_statement(table: str, columns: tuple[str, ...]) -> sql.Composed:
    """COPY <table> (<columns>) FROM STDIN, every identifier quoted."""
    return sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)))


COPY_EVENTS = copy_statement("events_log", EVENT_COLUMNS)


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


class PartitionBusy(Exception):
    """Another transaction holds a lock on events_log or the partition: nothing was changed."""

    def __init__(self, holders: list[int]):
        super().__init__(f"in use by {'pid ' + ', '.join(map(str, holders)) if holders else 'another transaction'}")
        self.holders = holders


def _lock_holders(conn: psycopg.Connection, tables: list[str]) -> list[int]:
    return [pid for (pid,) in conn.execute(
        """SELECT DISTINCT pid FROM pg_locks WHERE granted AND pid <> pg_backend_pid()
           AND relation = ANY(SELECT to_regclass(t)::oid FROM unnest(%s::text[]) t) ORDER BY 1""", (tables,))]


def drop_partition_if(conn: psycopg.Connection, partition: str, still_wanted, lock_wait: str = "20ms") -> bool:
    """Drop an hour's partition, waiting for its locks no longer than `lock_wait`. `conn` must be
    in autocommit mode.

    Dropping a partition needs an ACCESS EXCLUSIVE lock on events_log itself (and on its default
    partition). A request that waits for it, behind any open reader of events_log (an analyst's
    idle psql session), makes every insert of the collector queue behind the request. So the
    request waits at most `lock_wait` (long enough for the collector's own inserts in flight to
    finish, short enough that the inserts queued behind it barely notice), then gives up: this
    raises PartitionBusy, naming the pids holding the tables, and nothing changes. With the
    locks held, `still_wanted(conn)` decides (e.g. re-reads the ledger, marks the hour purged);
    the drop and the commit then go in one message, so the collector waits for milliseconds,
    never for a client round trip. (DETACH PARTITION CONCURRENTLY would not take the parent's
    lock, but PostgreSQL refuses it on a table with a default partition, which events_log has.)
    Returns whether the partition was dropped."""
    tables = ["events_log", "events_log_default", partition]
    conn.execute("BEGIN")
    try:
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_wait)))
        try:
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.SQL(", ").join(sql.SQL("ONLY {}").format(sql.Identifier(t)) for t in tables)))
        except psycopg.errors.LockNotAvailable:
            conn.execute("ROLLBACK")
            raise PartitionBusy(_lock_holders(conn, tables)) from None
        if not still_wanted(conn):
            conn.execute("ROLLBACK")
            return False
        conn.execute(sql.SQL("DROP TABLE {}; COMMIT").format(sql.Identifier(partition)))
        return True
    except BaseException:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
        raise


def seal_hour(conn: psycopg.Connection, hour: datetime, lock_timeout: str) -> None:
    """Seal the hour's partition before an export reads it: inserts in flight finish first,
    later ones fail loudly, so what the export reads is all the hour will ever hold. Raises
    psycopg.errors.LockNotAvailable when a long transaction holds the partition."""
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout)))
        conn.execute("SELECT events_log_seal_hour(%s)", (hour,))


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
    existing = set(hour_partitions(conn).values())
    created = []
    while hour < end:
        if f"events_log_{hour:%Y%m%d_%H}" not in existing:
            created += conn.execute(
                "SELECT partition_name, moved_rows FROM events_log_ensure_partitions(%s, %s)",
                (hour, hour + timedelta(hours=1))).fetchall()
        hour += timedelta(hours=1)
    return [(name, moved) for name, moved in created]
