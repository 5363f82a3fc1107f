"""What each index costs the collector: COPY throughput of the same rows under three index sets.

  pixelpipe  the primary key (id, created_at) only
  + GIN      the primary key and the original design's GIN index on raw_event_data
  seed       the primary key and every index of the original design that still applies (timestamp,
             (site_id, created_at), session_id, event_type, GIN on raw_event_data)

Usage: python bench/schema_indexes.py [--rows 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from bench.ingest import rows  # noqa: E402
from bench.servers import benchmark_servers  # noqa: E402
from pixelpipe.core.events_log import COPY_EVENTS, ensure_partitions  # noqa: E402

GIN = ["CREATE INDEX bench_gin ON events_log USING gin (raw_event_data)"]
SEED = GIN + [
    'CREATE INDEX bench_timestamp ON events_log ("timestamp")',
    "CREATE INDEX bench_site_created ON events_log (site_id, created_at)",
    "CREATE INDEX bench_session ON events_log (session_id)",
    "CREATE INDEX bench_event_type ON events_log (event_type)",
]
VARIANTS = {"pixelpipe (PK only)": [], "PK + GIN": GIN, "original design's index set": SEED}


def copy_rate(conn, data: list[tuple]) -> float:
    conn.execute("TRUNCATE events_log")
    conn.execute("CHECKPOINT")
    started = time.perf_counter()
    with conn.transaction(), conn.cursor() as cur, cur.copy(COPY_EVENTS) as copy:
        for row in data:
            copy.write_row(row)
    return len(data) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = rows(args.rows)
    results = {}
    with benchmark_servers() as servers, psycopg.connect(servers["database_url"], autocommit=True) as conn:
        ensure_partitions(conn, now=datetime.now(UTC))
        for name, statements in VARIANTS.items():
            for statement in statements:
                conn.execute(statement)
            results[name] = max(copy_rate(conn, data) for _ in range(args.rounds))
            for statement in statements:
                conn.execute(f"DROP INDEX {statement.split()[2]}")
    base = results["pixelpipe (PK only)"]
    for name, rate in results.items():
        print(f"{name:>20}: {rate:>9,.0f} rows/s  ({rate / base:.2f}x)")
    print(f"indexes: the original design's set runs COPY at {results['seed index set'] / base:.2f}x of pixelpipe's; "
          f"the GIN index alone at {results['PK + GIN'] / base:.2f}x")


if __name__ == "__main__":
    main()
