"""Export throughput and memory: one ingest hour of N rows to Parquet in S3.

Three ways over the same rows, each in its own process (so peak RSS is its own):
  ceiling   a bare COPY (SELECT ...) TO STDOUT, read and discarded: no Parquet, no upload
  baseline  pandas.read_sql of the hour, DataFrame.to_parquet, one put_object
  pixelpipe export_hour(): binary COPY via ADBC -> Arrow -> zstd Parquet per site -> backup upload
            + server-side copy to the client bucket

Usage: python bench/export.py [--rows 1000000] [--sites 20]
Prints absolute rows/s and peak RSS, and the ratios against baseline and ceiling.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.servers import bench_s3_client, benchmark_servers, measure_in_child, peak_rss_mb  # noqa: E402

HOUR = datetime(2026, 11, 20, 10, tzinfo=UTC)
SELECT = """SELECT id, event_id::text AS event_id, event_type, session_id, visitor_id, site_id,
                   "timestamp", url, path, user_agent, ip_address::text AS ip_address,
                   raw_event_data::text AS raw_event_data, created_at
            FROM events_log WHERE created_at >= %(start)s AND created_at < %(end)s ORDER BY site_id, id"""


def seed(database_url: str, rows: int, sites: int) -> None:
    import psycopg

    from pixelpipe.core.events_log import ensure_partitions

    with psycopg.connect(database_url, autocommit=True) as conn:
        ensure_partitions(conn, now=HOUR, hours_back=0, hours_ahead=1)
        conn.execute(
            """INSERT INTO events_log (event_type, session_id, visitor_id, site_id, "timestamp", url, path,
                   user_agent, ip_address, raw_event_data, created_at)
               SELECT (ARRAY['pageview','click','scroll'])[1 + n %% 3], 'sess-' || (n %% 5000),
                      'vis-' || (n %% 20000), 'site-' || (n %% %(sites)s), %(hour)s + (n %% 3600) * interval '1 second',
                      'https://site-' || (n %% %(sites)s) || '.example.com/products/item-' || (n %% 997),
                      '/products/item-' || (n %% 997),
                      'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36',
                      ('198.51.100.' || (n %% 250))::inet,
                      jsonb_build_object('eventType', 'pageview', 'n', n, 'siteId', 'site-' || (n %% %(sites)s),
                          'url', 'https://example.com/products/item-' || (n %% 997), 'referrer', 'https://search.example/',
                          'screen', jsonb_build_object('w', 1920, 'h', 1080), 'title', 'Product ' || (n %% 997)),
                      %(hour)s + (n %% 3600) * interval '1 second' + (n %% 1000) * interval '1 microsecond'
               FROM generate_series(1, %(rows)s) n""",
            {"rows": rows, "sites": sites, "hour": HOUR})
        conn.execute("VACUUM ANALYZE events_log")


def run_ceiling(database_url: str, endpoint: str, bucket: str) -> dict:
    import psycopg

    rows = 0
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY ({SELECT}) TO STDOUT",
                      {"start": HOUR, "end": HOUR + timedelta(hours=1)}) as copy:
            for _ in copy:
                rows += 1
    return {"rows": rows}


def run_baseline(database_url: str, endpoint: str, bucket: str) -> dict:
    import warnings

    import pandas as pd
    import psycopg

    warnings.simplefilter("ignore")
    with psycopg.connect(database_url) as conn:
        frame = pd.read_sql(SELECT, conn, params={"start": HOUR, "end": HOUR + timedelta(hours=1)})
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    bench_s3_client(endpoint).put_object(Bucket=bucket, Key="baseline/hour.parquet", Body=buffer.getvalue())
    return {"rows": len(frame)}


def run_pixelpipe(database_url: str, endpoint: str, bucket: str) -> dict:
    import psycopg

    from pipeline.defs.export.assets import export_hour
    from pipeline.resources import PipelineSettings

    settings = PipelineSettings(client_bucket=bucket, backup_bucket=bucket + "-backup")
    with psycopg.connect(database_url, autocommit=True) as conn:
        sites, _ = export_hour(conn, database_url, bench_s3_client(endpoint), settings, HOUR, 0)
    return {"rows": sum(s.rows for s in sites), "files": sum(len(s.client_keys) for s in sites)}


MODES = {"ceiling": run_ceiling, "baseline": run_baseline, "pixelpipe": run_pixelpipe}


def child(mode: str, database_url: str, endpoint: str, bucket: str) -> None:
    # Import first: the clock measures the export, not the interpreter loading libraries.
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import pipeline.defs.export.assets  # noqa: F401

    started = time.perf_counter()
    result = MODES[mode](database_url, endpoint, bucket)
    result["seconds"] = time.perf_counter() - started
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def measure(mode: str, servers: dict, bucket: str) -> dict:
    return measure_in_child(__file__, mode, servers["database_url"], servers["s3_endpoint"], bucket)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--skip-baseline", action="store_true", help="e.g. at 4M rows, where pandas needs ~11 GB")
    parser.add_argument("--child", nargs=4)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    from pixelpipe.core.s3 import ensure_buckets

    with benchmark_servers(s3=True) as servers:
        bucket = "bench-export"
        ensure_buckets(bench_s3_client(servers["s3_endpoint"]), [bucket, bucket + "-backup"])
        started = time.perf_counter()
        seed(servers["database_url"], args.rows, args.sites)
        print(f"seeded {args.rows:,} rows for {args.sites} sites in {time.perf_counter() - started:.1f} s")
        modes = ["ceiling", "pixelpipe"] + ([] if args.skip_baseline else ["baseline"])
        results = {mode: measure(mode, servers, bucket) for mode in modes}
    for mode, r in results.items():
        print(f"{mode:>10}: {r['rows']:>9,} rows in {r['seconds']:6.2f} s = {r['rows_per_s']:>9,.0f} rows/s, "
              f"peak RSS {r['peak_rss_mb']:7.0f} MB")
    ours = results["pixelpipe"]["rows_per_s"]
    line = f"pixelpipe export: {ours / results['ceiling']['rows_per_s']:.2f}x the COPY ceiling"
    if "baseline" in results:
        line += f", {ours / results['baseline']['rows_per_s']:.2f}x the pandas baseline"
    print(line + f"; peak RSS {results['pixelpipe']['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
