"""What a 30-day backfill of hourly_export costs as one-hour runs against runs of 24 hours.

A run launched by the daemon is a process of its own that loads the code location, and its
multiprocess executor starts one more process per step (the export, its checks). One-hour runs
pay that for every hour; runs over a range pay it once per PIXELPIPE_BACKFILL_HOURS_PER_RUN hours
and record each hour's own metadata and check results (pipeline/assets/export.py).

Measured here, on the same servers and the same (small) hours:
  run      `dagster asset materialize --partition H`: one run, as its own process, per hour
  in-run   the extra seconds one more hour adds inside a run over a range (in process)
Prints both, and the 30-day (720-hour) estimate of each plan with their ratio.
Usage: python bench/backfill_runs.py [--runs 3] [--hours 24] [--rows 200]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from bench.servers import bench_s3_client, benchmark_servers  # noqa: E402
from pixelpipe.core.events_log import ensure_partitions  # noqa: E402
from pixelpipe.core.s3 import ensure_buckets  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DAGSTER = Path(sys.executable).parent / "dagster"
DAYS = 30


def seed(url: str, first: datetime, hours: int, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_partitions(conn, hours_back=hours + 30)
        for n in range(hours):
            start = first + timedelta(hours=n)
            conn.execute(
                "INSERT INTO events_log (event_type, site_id, \"timestamp\", raw_event_data, created_at) "
                "SELECT 'pageview', 'site-' || (i %% 3), %(t)s, '{}'::jsonb, %(t)s + i * interval '1 second' "
                "FROM generate_series(1, %(rows)s) i", {"t": start, "rows": rows})


def key(hour: datetime) -> str:
    return f"{hour:%Y-%m-%d-%H:%M}"


def one_hour_runs(env: dict, hours: list[datetime]) -> float:
    """Seconds per run of one hour, each a `dagster asset materialize` process."""
    started = time.perf_counter()
    for hour in hours:
        done = subprocess.run([str(DAGSTER), "asset", "materialize", "-m", "pipeline.definitions",
                               "--select", "hourly_export", "--partition", key(hour)],
                              cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr[-3000:])
    return (time.perf_counter() - started) / len(hours)


def in_run_seconds(resources: dict, first: datetime, last: datetime) -> float:
    """Seconds of one in-process run over first..last, checks included."""
    import dagster as dg

    from pipeline.defs.export.assets import hourly_export
    from pipeline.defs.export.checks import hourly_export_checks
    from pipeline.defs.export.events_log import events_log

    started = time.perf_counter()
    result = dg.materialize(
        [events_log, hourly_export, hourly_export_checks], resources=resources,
        selection=[hourly_export.key],
        tags={"dagster/asset_partition_range_start": key(first), "dagster/asset_partition_range_end": key(last)})
    assert result.success
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3, help="one-hour runs to time")
    parser.add_argument("--hours", type=int, default=24, help="hours of the range run")
    parser.add_argument("--rows", type=int, default=200, help="rows per hour")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    first = now - timedelta(hours=args.runs + 2 * args.hours + 4)
    os.environ["PIXELPIPE_PARTITIONS_START"] = key(first - timedelta(hours=1))
    with benchmark_servers(s3=True) as servers:
        url, endpoint = servers["database_url"], servers["s3_endpoint"]
        ensure_buckets(bench_s3_client(endpoint), ["pixelpipe-clients", "pixelpipe-backup"])
        seed(url, first, args.runs + 2 * args.hours + 1, args.rows)
        env = {**os.environ, "DATABASE_URL": url, "PIXELPIPE_S3_ENDPOINT": endpoint}
        os.environ.update(env)
        per_run = one_hour_runs(env, [first + timedelta(hours=n) for n in range(args.runs)])

        from dagster_aws.s3 import S3Resource

        from pipeline.resources import PipelineSettings, PostgresResource

        resources = {"postgres": PostgresResource(database_url=url),
                     "s3": S3Resource(endpoint_url=endpoint, aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                                      aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                                      region_name="us-east-1"),
                     "settings": PipelineSettings()}
        one = first + timedelta(hours=args.runs)
        single = in_run_seconds(resources, one, one)
        range_start = one + timedelta(hours=1)
        ranged = in_run_seconds(resources, range_start, range_start + timedelta(hours=args.hours - 1))
        per_hour = max(ranged - single, 0.0) / (args.hours - 1)

    hours = DAYS * 24
    runs = -(-hours // args.hours)
    as_one_hour_runs = hours * per_run
    as_range_runs = runs * per_run + (hours - runs) * per_hour
    load = os.getloadavg()[0]
    print(f"rows per hour {args.rows}, load {load:.2f}")
    print(f"one-hour run (own process, as the daemon launches it): {per_run:.2f} s")
    print(f"one more hour inside a run over a range:               {per_hour:.3f} s")
    print(f"30 days as {hours} one-hour runs:        {as_one_hour_runs / 60:7.1f} min")
    print(f"30 days as {runs} runs of {args.hours} hours:       {as_range_runs / 60:7.1f} min")
    print(f"ratio one-hour runs / range runs: {as_one_hour_runs / as_range_runs:.1f}x")


if __name__ == "__main__":
    main()
