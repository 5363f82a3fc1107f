"""Does the pipeline stall ingestion? Pixel latency with and without export, retention and
maintenance running beside it, in one run on one embedded PostgreSQL and S3.

  alone      valid pixel GETs at a fixed rate (default 2,000 req/s) from 256 loopback addresses
  pipeline   the same, while a backfill exports closed hours one after another (each sealed,
             read, uploaded to both buckets), retention drops verified old hours, maintenance
             creates partitions ahead and ANALYZEs, and a slow reader holds one old hour open
             for the whole phase (as a long export would)

Targets (docs/benchmarks.md): pixel p99 < 50 ms and 0 non-2xx with the pipeline running, and no
insert waiting on a lock for more than 100 ms: PostgreSQL itself logs every lock wait past
deadlock_timeout (100 ms here, log_lock_waits on), and the script counts those that are inserts.
Usage: python bench/concurrency.py [--seconds 15] [--rate 2000] [--hours 6] [--rows-per-hour 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402
import psycopg  # noqa: E402

from bench.abuse import _valid_traffic, cpu_seconds, postgres_processes, tree  # noqa: E402
from bench.ingest import serve  # noqa: E402
from bench.servers import bench_s3_client  # noqa: E402
from pipeline.defs.export.assets import export_hour  # noqa: E402
from pipeline.defs.retention.assets import apply_retention  # noqa: E402
from pipeline.resources import PipelineSettings  # noqa: E402
from pipeline.verification import reconcile, verify_tenants  # noqa: E402
from pixelpipe.core.events_log import ensure_partitions
from pixelpipe.core.migrations import apply_migrations  # noqa: E402
from pixelpipe.core.s3 import ensure_buckets  # noqa: E402
from pixelpipe.embedded_postgres import EmbeddedPostgres  # noqa: E402
from pixelpipe.embedded_s3 import EmbeddedS3  # noqa: E402
from pixelpipe.process import free_port  # noqa: E402


def seed_hours(url: str, hours: list[datetime], rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for hour in hours:
            conn.execute(
                """INSERT INTO events_log (event_type, site_id, "timestamp", url, path, user_agent,
                       raw_event_data, created_at)
                   SELECT 'pageview', 'site-' || (n %% 20), %(hour)s, 'https://shop.example.com/p/' || n,
                          '/p/' || n, 'Mozilla/5.0 (bench)', jsonb_build_object('n', n),
                          %(hour)s + (n %% 3600) * interval '1 second'
                   FROM generate_series(1, %(rows)s) n""", {"hour": hour, "rows": rows})
        conn.execute("VACUUM ANALYZE events_log")


def pipeline_work(url: str, endpoint: str, settings: PipelineSettings, backfill: list[datetime],
                  old: list[datetime], held: datetime, niceness: int, stop, results) -> None:
    """What the Dagster runs do, called directly in a process of their own (as a run worker
    is): export, checks, retention, maintenance."""
    os.nice(niceness)
    report: dict = {}
    client = bench_s3_client(endpoint)
    with psycopg.connect(url, autocommit=True) as conn, psycopg.connect(url) as slow_reader:
        # A slow export holding an hour open: its partition stays locked (ACCESS SHARE) throughout.
        slow_reader.execute(f"SELECT count(*) FROM events_log_{held:%Y%m%d_%H}")
        started = time.perf_counter()
        for hour in old + backfill:
            export_hour(conn, url, client, settings, hour, 0)
            reconcile(conn, client, [hour])
            verify_tenants(conn, client, [hour], settings.client_bucket)
            report["hours_exported"] = report.get("hours_exported", 0) + 1
        report["export_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        verdicts = apply_retention(conn, datetime.now(UTC), 24)
        report["hours_dropped"] = sum(v.purged for v in verdicts)
        ensure_partitions(conn, hours_ahead=72)
        conn.execute("ANALYZE events_log")
        report["retention_maintenance_seconds"] = time.perf_counter() - started
        results.put(report)
        stop.wait()  # hold the slow reader until the measurement ends
        slow_reader.rollback()


def insert_lock_waits(log: Path) -> list[str]:
    """PostgreSQL's own lines for a lock waited on past deadlock_timeout by an insert."""
    lines = log.read_text(errors="replace").splitlines()
    waits = [i for i, line in enumerate(lines) if "still waiting for" in line]
    return [lines[i] + " | " + " ".join(lines[i + 1:i + 3]) for i in waits
            if any("COPY" in line or "INSERT" in line for line in lines[i:i + 3])]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--hours", type=int, default=6, help="closed hours the backfill exports")
    parser.add_argument("--rows-per-hour", type=int, default=100_000)
    parser.add_argument("--pipeline-nice", type=int, default=0,
                        help="CPU priority of the pipeline process (its PostgreSQL backends keep theirs)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pixelpipe-bench-") as folder:
        Path(folder).chmod(0o755)
        postgres = EmbeddedPostgres(Path(folder) / "pg" / "data", free_port(), settings={
            "log_lock_waits": "on", "deadlock_timeout": "100ms"})
        store = EmbeddedS3(Path(folder) / "s3" / "data", free_port())
        try:
            url = postgres.start()
            apply_migrations(url)
            endpoint = store.start()
            os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = \
                store.admin_access_key, store.admin_secret_key
            settings = PipelineSettings(client_bucket="bench-clients", backup_bucket="bench-backup")
            ensure_buckets(bench_s3_client(endpoint), [settings.client_bucket, settings.backup_bucket])
            now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
            old = [now - timedelta(hours=30 + n) for n in range(2)]  # exported, then dropped by retention
            held = now - timedelta(hours=40)  # an old hour a slow reader keeps open
            backfill = [now - timedelta(hours=2 + n) for n in range(args.hours)]
            with psycopg.connect(url, autocommit=True) as conn:
                ensure_partitions(conn, now=now, hours_back=41)
                conn.execute("INSERT INTO sites (site_id) VALUES ('shop')")
            seed_hours(url, [*old, held, *backfill], args.rows_per_hour)

            env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
            port = free_port()
            collector = serve([sys.executable, "-m", "pixelpipe.cli", "collector", "--port", str(port),
                               "--workers", str(args.workers)], env, port)
            try:
                asyncio.run(_valid_traffic(port, 500, 1))  # warm up
                alone = asyncio.run(_valid_traffic(port, args.rate, args.seconds))
                waits_before = len(insert_lock_waits(postgres.server.log_path))
                stop, results = multiprocessing.Event(), multiprocessing.Queue()
                worker = multiprocessing.Process(target=pipeline_work, args=(
                    url, endpoint, settings, backfill, old, held, args.pipeline_nice, stop, results))
                worker.start()
                watched = {"collector": tree(psutil.Process(collector.pid)), "postgres": postgres_processes(),
                           "pipeline": [psutil.Process(worker.pid)], "load client": [psutil.Process()]}
                cpu_before = {name: cpu_seconds(procs) for name, procs in watched.items()}
                together = asyncio.run(_valid_traffic(port, args.rate, args.seconds))
                cpu = {name: cpu_seconds(procs) - cpu_before[name] for name, procs in watched.items()}
                report = results.get(timeout=600)
                stop.set()
                worker.join(60)
                waits = insert_lock_waits(postgres.server.log_path)[waits_before:]
            finally:
                collector.terminate()
                collector.wait(30)
        finally:
            store.stop()
            postgres.stop()

    print(f"pixel alone          : {alone['rps']:>7,.0f} req/s  p50 {alone['p50']:.1f} ms  p99 {alone['p99']:.1f} ms  "
          f"non-2xx {alone['non2xx']}")
    print(f"pixel with pipeline  : {together['rps']:>7,.0f} req/s  p50 {together['p50']:.1f} ms  "
          f"p99 {together['p99']:.1f} ms  non-2xx {together['non2xx']}")
    print(f"pipeline meanwhile   : {report.get('hours_exported', 0)} hours exported and checked "
          f"({args.rows_per_hour:,} rows each) in {report.get('export_seconds', 0):.1f} s; "
          f"{report.get('hours_dropped', 0)} hours dropped by retention and maintenance in "
          f"{report.get('retention_maintenance_seconds', 0):.2f} s; one old hour held open by a slow reader")
    print(f"CPU seconds while measured ({args.seconds:.0f} s on 2 cores = {2 * args.seconds:.0f}): "
          + ", ".join(f"{name} {value:.1f}" for name, value in cpu.items()))
    print(f"inserts waiting > 100 ms on a lock (PostgreSQL's log_lock_waits): {len(waits)}")
    for line in waits[:5]:
        print("  " + line[:300])
    print(f"pixel with the pipeline running: p99 {together['p99']:.1f} ms (target < 50; alone {alone['p99']:.1f}), "
          f"{together['rps'] / alone['rps']:.2f}x its rate alone, non-2xx {together['non2xx']} (target 0), "
          f"insert lock waits > 100 ms: {len(waits)} (target 0)")


if __name__ == "__main__":
    main()
