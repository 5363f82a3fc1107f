"""Retention on 1,000,000 exported rows: the original design's DELETE against pixelpipe's partition drop.

  seed       events_log as the original design (docs/schema.md) built it (one table, processed_at column, its indexes):
             DELETE FROM events_log WHERE processed_at < NOW() - INTERVAL '24 hours'
  pixelpipe  hourly partitions with a verified export in export_hours: apply_retention()
             drops each qualifying partition

Prints seconds and the dead tuples each leaves behind, the VACUUM the original design then needs, and the
speed-up. Each hour was sealed by its export, so its verified row count is exact and the drop
needs no recount (an unsealed partition would be counted against the manifest first).
Usage: python bench/retention.py [--rows 1000000] [--hours 24]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from bench.servers import benchmark_servers  # noqa: E402
from pipeline.defs.retention.assets import apply_retention  # noqa: E402
from pixelpipe.core.events_log import ensure_partitions  # noqa: E402

SEED_TABLE = """
CREATE TABLE seed_events_log (
    id SERIAL PRIMARY KEY, event_id UUID DEFAULT gen_random_uuid(), event_type VARCHAR(50) NOT NULL,
    session_id VARCHAR(100), visitor_id VARCHAR(100), site_id VARCHAR(100), timestamp TIMESTAMPTZ NOT NULL,
    url TEXT, path VARCHAR(500), user_agent TEXT, ip_address INET, raw_event_data JSONB NOT NULL,
    created_at TIMESTAMPTZ DEFAULT NOW(), processed_at TIMESTAMPTZ);
CREATE INDEX ON seed_events_log(timestamp);
CREATE INDEX ON seed_events_log(site_id, created_at);
CREATE INDEX ON seed_events_log(session_id);
CREATE INDEX ON seed_events_log(event_type);
CREATE INDEX ON seed_events_log(processed_at);
CREATE INDEX ON seed_events_log USING gin(raw_event_data);
"""
ROWS_SQL = """
SELECT 'pageview', 'sess-' || (n %% 5000), 'vis-' || (n %% 20000), 'site-' || (n %% 20), {created},
       'https://example.com/p/' || (n %% 997), '/p/' || (n %% 997), 'Mozilla/5.0', '198.51.100.1'::inet,
       jsonb_build_object('eventType', 'pageview', 'n', n, 'url', 'https://example.com/p/' || (n %% 997)),
       {created}
FROM generate_series(1, %(rows)s) n"""
COLUMNS = 'event_type, session_id, visitor_id, site_id, "timestamp", url, path, user_agent, ip_address, raw_event_data, created_at'


def dead_tuples(conn, like: str) -> int:
    conn.execute("SELECT pg_stat_force_next_flush()")
    return conn.execute("SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables WHERE relname LIKE %s",
                        (like,)).fetchone()[0]


def filesystem_release_seconds(folder: Path, size: int) -> float:
    """What this filesystem takes to free `size` bytes of files, PostgreSQL aside: a drop frees
    its partitions' files at commit, and that, not SQL, is most of its cost (on this machine /
    is ext4 mounted with `discard`, which trims freed blocks as the journal commits)."""
    paths = []
    for index in range(max(1, size // (16 << 20))):
        path = folder / f"release-{index}"
        with open(path, "wb") as handle:
            handle.write(b"x" * min(16 << 20, size))
        paths.append(path)
    os.sync()
    started = time.perf_counter()
    for path in paths:
        os.truncate(path, 0)
    # PostgreSQL flushes its WAL at commit: one fsync, which commits the filesystem's journal.
    descriptor = os.open(paths[0], os.O_RDWR)
    os.fsync(descriptor)
    os.close(descriptor)
    seconds = time.perf_counter() - started
    for path in paths:
        path.unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--hours", type=int, default=24)
    args = parser.parse_args()
    now = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)
    first = now.replace(minute=0) - timedelta(hours=args.hours + 26)  # all older than 24 h
    created = f"%(first)s + (n %% {args.hours}) * interval '1 hour' + (n %% 3600) * interval '1 second'"
    with benchmark_servers() as servers, psycopg.connect(servers["database_url"], autocommit=True) as conn:
        params = {"rows": args.rows, "first": first}
        # The original design: every row exported (processed_at set) more than 24 hours ago.
        conn.execute(SEED_TABLE)
        conn.execute(f"INSERT INTO seed_events_log ({COLUMNS}, processed_at) "
                     f"{ROWS_SQL.format(created=created)[:-len(' FROM generate_series(1, %(rows)s) n')]}, "
                     f"%(first)s + interval '1 hour' FROM generate_series(1, %(rows)s) n", params)
        # pixelpipe: the same rows in hourly partitions, each hour exported and verified.
        ensure_partitions(conn, now=first, hours_back=0, hours_ahead=args.hours)
        conn.execute(f"INSERT INTO events_log ({COLUMNS}) {ROWS_SQL.format(created=created)}", params)
        # Each hour was sealed by its export (hourly_export seals an hour before reading it).
        conn.execute("SELECT events_log_seal_hour(h) FROM generate_series(%s::timestamptz, "
                     "%s::timestamptz, interval '1 hour') h", (first, first + timedelta(hours=args.hours - 1)))
        conn.execute("""INSERT INTO export_hours (ingest_hour, rows, sites, files, bytes, exported_at,
                            reconciled_at, tenants_verified_at)
                        SELECT date_trunc('hour', created_at, 'UTC'), count(*), 20, 20, 0, now(), now(), now()
                        FROM events_log GROUP BY 1""")
        conn.execute("VACUUM ANALYZE")

        started = time.perf_counter()
        deleted = conn.execute("DELETE FROM seed_events_log WHERE processed_at IS NOT NULL "
                               "AND processed_at < NOW() - INTERVAL '24 hours'").rowcount
        seed_seconds = time.perf_counter() - started
        seed_dead = dead_tuples(conn, "seed_events_log")
        started = time.perf_counter()
        conn.execute("VACUUM seed_events_log")  # what the seed must pay later to reclaim the space
        seed_vacuum = time.perf_counter() - started

        dropped_bytes = conn.execute(
            "SELECT sum(pg_total_relation_size(i.inhrelid))::bigint FROM pg_inherits i "
            "WHERE i.inhparent = 'events_log'::regclass").fetchone()[0]
        started = time.perf_counter()
        verdicts = apply_retention(conn, now, 24)
        ours_seconds = time.perf_counter() - started
        purged_rows = sum(v.rows for v in verdicts if v.purged)
        ours_dead = dead_tuples(conn, "events_log%")
        release_seconds = filesystem_release_seconds(servers["folder"], dropped_bytes)
    print(f"original DELETE    : {deleted:>9,} rows in {seed_seconds:7.3f} s, {seed_dead:>9,} dead tuples left")
    print(f"pixelpipe drop     : {purged_rows:>9,} rows in {ours_seconds:7.3f} s, {ours_dead:>9,} dead tuples left "
          f"({sum(v.purged for v in verdicts)} hourly partitions)")
    print(f"original VACUUM    : {seed_vacuum:7.3f} s to reclaim what the DELETE left")
    print(f"filesystem         : {release_seconds:7.3f} s to free {dropped_bytes / 2**20:,.0f} MB of plain files "
          "in the same directory (truncate, one fsync), no PostgreSQL involved")
    print(f"retention: partition drop is {seed_seconds / ours_seconds:.1f}x faster than the original design's DELETE "
          f"({(seed_seconds + seed_vacuum) / ours_seconds:.1f}x DELETE + VACUUM), "
          f"{ours_dead} dead tuples vs {seed_dead:,}")


if __name__ == "__main__":
    main()
