"""Daily analytics: one UTC day of N events over S sites, two ways, same run, same rows.

  pixelpipe   the assets' code (pipeline/analytics/bucket.compute_day): the day's exported hour
              files from the backup bucket -> DuckDB in process (256 MB limit, spilling) -> four
              datasets as zstd Parquet with receipts in the client bucket
  postgres    the original design's way: the same sessions, pageviews, daily_site_metrics and
              page_performance in SQL inside PostgreSQL over events_log, into tables, as its
              planned procedures (calculate_daily_metrics) would

The day is seeded into events_log and exported hour by hour first (not timed). Each way runs in a
process of its own; peak RSS is that process's, and for the PostgreSQL way also the server
backend's high-water mark (VmHWM, which counts the shared buffers it touched).

Usage: python bench/analytics.py [--rows 1000000] [--sites 20]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.servers import bench_s3_client, benchmark_servers, measure_in_child, peak_rss_mb  # noqa: E402

DAY = datetime(2026, 11, 20, tzinfo=UTC)
BUCKET = "bench-analytics"


def seed(database_url: str, rows: int, sites: int) -> None:
    """Blocks of 8 events share a visitor; a visitor comes back a few times a day (new sessions).
    60 % pageviews, over 500 paths, five referrers, three user agents."""
    import psycopg

    from pixelpipe.core.events_log import ensure_partitions

    with psycopg.connect(database_url, autocommit=True) as conn:
        ensure_partitions(conn, now=DAY, hours_back=0, hours_ahead=24)
        conn.execute(
            """INSERT INTO events_log (event_type, visitor_id, site_id, "timestamp", url, path, user_agent,
                   raw_event_data, created_at, source)
               SELECT CASE WHEN n %% 5 < 3 THEN 'pageview' WHEN n %% 5 = 3 THEN 'click' ELSE 'scroll' END,
                      'v' || ((n / 8) %% %(visitors)s), 'site-' || ((n / 8) %% %(sites)s), t - interval '2 seconds',
                      'https://site-' || ((n / 8) %% %(sites)s) || '.example/p/' || (n %% 500)
                          || CASE WHEN n %% 97 = 0 THEN '?utm_source=news&utm_medium=email' ELSE '' END,
                      '/p/' || (n %% 500),
                      (ARRAY['Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36',
                             'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1',
                             'Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0'])[1 + n %% 3],
                      jsonb_build_object('title', 'Page ' || (n %% 500), 'language', 'en-US', 'timezone', 'Europe/Paris',
                          'screenWidth', 1920, 'screenHeight', 1080,
                          'referrer', (ARRAY['https://www.google.com/', 'https://t.co/x', 'https://blog.example.org/a',
                                             NULL, 'https://site-1.example/'])[1 + (n / 8) %% 5]),
                      t, 'pixelpipe'
               FROM generate_series(0, %(rows)s - 1) n,
                    LATERAL (SELECT %(day)s + (n::float8 / %(rows)s) * interval '24 hours' AS t) at""",
            {"rows": rows, "sites": sites, "day": DAY, "visitors": max(rows // 25, 1)})
        conn.execute("VACUUM ANALYZE events_log")


def export_day(database_url: str, endpoint: str) -> None:
    import psycopg

    from pipeline.defs.export.assets import export_hour
    from pipeline.resources import PipelineSettings

    settings = PipelineSettings(client_bucket=BUCKET, backup_bucket=BUCKET + "-backup")
    with psycopg.connect(database_url, autocommit=True) as conn:
        for hour in range(24):
            export_hour(conn, database_url, bench_s3_client(endpoint), settings, DAY + timedelta(hours=hour), 0)


def run_pixelpipe(database_url: str, endpoint: str) -> dict:
    from pipeline.analytics.bucket import compute_day

    run = compute_day(bench_s3_client(endpoint), BUCKET + "-backup", lambda site: (BUCKET, ""), DAY.date())
    assert not run.failed, run.failed
    return {"phases": {k: round(v, 1) for k, v in run.phases.items()},
            "rows": sum(s.input_rows for s in run.computed),
            "sessions": sum(s.metrics["total_sessions"] for s in run.computed),
            "pageviews": sum(s.metrics["total_pageviews"] for s in run.computed),
            "visitors": sum(s.metrics["unique_visitors"] for s in run.computed)}


# The original design's tables, filled from events_log in SQL: the same definitions (30-minute
# gap, day split, pageview types, bounce, referrer type by host list), all sites at once.
POSTGRES_SQL = """
CREATE TEMP TABLE day_events AS
SELECT DISTINCT ON (site_id, event_id) id, event_id, event_type, site_id, nullif(visitor_id, '') AS visitor_id,
       url, path, user_agent,
       least(greatest("timestamp", created_at - interval '24 hours'), created_at) AS ts,
       event_type IN ('pageview', 'page', 'page_view', '$pageview') AS is_pageview,
       event_type NOT IN ('pageview', 'page', 'page_view', '$pageview', 'scroll', 'scroll_depth',
                          'page_ping', '$pageleave') AS is_interaction,
       CASE WHEN jsonb_typeof(raw_event_data -> 'referrer') = 'string' THEN raw_event_data ->> 'referrer' END AS referrer,
       CASE WHEN jsonb_typeof(raw_event_data -> 'title') = 'string' THEN left(raw_event_data ->> 'title', 1000) END AS title,
       substring(url from '[?&]utm_source=([^&#]*)') AS utm_source,
       substring(url from '[?&]utm_medium=([^&#]*)') AS utm_medium,
       substring(url from '[?&]utm_campaign=([^&#]*)') AS utm_campaign,
       lower(substring(url from '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?([^/?#:]*)')) AS page_host
FROM events_log WHERE created_at >= %(start)s AND created_at < %(end)s
ORDER BY site_id, event_id, created_at, id;

CREATE TEMP TABLE session_events AS
WITH starts AS (
    SELECT *, CASE WHEN lag(ts) OVER w IS NULL OR ts - lag(ts) OVER w > interval '30 minutes'
                     OR (lag(ts) OVER w)::date <> ts::date THEN 1 ELSE 0 END AS starts
    FROM day_events WHERE visitor_id IS NOT NULL
    WINDOW w AS (PARTITION BY site_id, visitor_id ORDER BY ts, id)
), numbered AS (
    SELECT *, sum(starts) OVER (PARTITION BY site_id, visitor_id ORDER BY ts, id) AS session_no FROM starts
)
SELECT *, md5(site_id || visitor_id || first_value(event_id::text) OVER (
              PARTITION BY site_id, visitor_id, session_no ORDER BY ts, id)) AS session_id
FROM numbered;

CREATE TEMP TABLE user_sessions AS
SELECT site_id, session_id, visitor_id, min(ts) AS session_start, max(ts) AS session_end,
       extract(epoch FROM max(ts) - min(ts))::int AS duration_seconds,
       count(*) FILTER (WHERE is_pageview) AS pageview_count, count(*) AS event_count,
       count(*) FILTER (WHERE is_pageview) <= 1 AND count(*) FILTER (WHERE is_interaction) = 0 AS bounce,
       (array_agg(path ORDER BY NOT is_pageview, ts, id))[1] AS entry_path,
       (array_agg(title ORDER BY NOT is_pageview, ts, id))[1] AS entry_title,
       (array_agg(page_host ORDER BY NOT is_pageview, ts, id))[1] AS entry_host,
       (array_agg(path ORDER BY is_pageview DESC, ts DESC, id DESC))[1] AS exit_path,
       (array_agg(utm_source ORDER BY ts, id))[1] AS utm_source,
       (array_agg(referrer ORDER BY ts, id))[1] AS original_referrer,
       (array_agg(user_agent ORDER BY ts, id))[1] AS user_agent
FROM session_events GROUP BY site_id, session_id, visitor_id;

ALTER TABLE user_sessions ADD COLUMN referrer_type text, ADD COLUMN referrer_platform text;
UPDATE user_sessions s SET referrer_type = CASE
        WHEN original_referrer IS NULL OR h.host IS NULL OR h.host = '' OR h.host = s.entry_host THEN 'direct'
        ELSE coalesce(r.referrer_type, 'referral') END,
    referrer_platform = r.referrer_platform
FROM (SELECT session_id AS sid, regexp_replace(lower(substring(original_referrer
          from '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?([^/?#:]*)')), '^www\\.', '') AS host
      FROM user_sessions) h
LEFT JOIN referrer_hosts r ON r.host = h.host
WHERE h.sid = s.session_id;

CREATE TEMP TABLE pageviews AS
SELECT e.site_id, s.session_id, s.visitor_id, e.event_id, e.url, e.path, e.title, e.ts AS view_timestamp,
       extract(epoch FROM lead(e.ts) OVER (PARTITION BY s.session_id ORDER BY e.ts, e.id) - e.ts)::int
           AS time_on_page_seconds, e.referrer
FROM day_events e LEFT JOIN session_events s ON s.id = e.id WHERE e.is_pageview;

CREATE TEMP TABLE daily_site_metrics AS
SELECT e.site_id, %(start)s::date AS metric_date, s.unique_visitors, s.total_sessions, e.total_pageviews,
       s.bounce_rate, s.avg_session_duration_seconds, s.avg_pages_per_session, e.total_events,
       s.direct_sessions, s.search_sessions, s.social_sessions, s.referral_sessions
FROM (SELECT site_id, count(*) AS total_events, count(*) FILTER (WHERE is_pageview) AS total_pageviews
      FROM day_events GROUP BY site_id) e
LEFT JOIN (SELECT site_id, count(DISTINCT visitor_id) AS unique_visitors, count(*) AS total_sessions,
                  round(avg(bounce::int), 4) AS bounce_rate, round(avg(duration_seconds))::int AS avg_session_duration_seconds,
                  round(avg(pageview_count), 2) AS avg_pages_per_session,
                  count(*) FILTER (WHERE referrer_type = 'direct') AS direct_sessions,
                  count(*) FILTER (WHERE referrer_type = 'search') AS search_sessions,
                  count(*) FILTER (WHERE referrer_type = 'social') AS social_sessions,
                  count(*) FILTER (WHERE referrer_type = 'referral') AS referral_sessions
           FROM user_sessions GROUP BY site_id) s USING (site_id);

CREATE TEMP TABLE page_performance AS
SELECT v.site_id, v.path, v.total_views, v.unique_visitors, v.unique_sessions, v.avg_time_on_page_seconds,
       coalesce(n.entries, 0) AS entries, coalesce(x.exits, 0) AS exits, n.bounce_rate
FROM (SELECT site_id, path, count(*) AS total_views, count(DISTINCT visitor_id) AS unique_visitors,
             count(DISTINCT session_id) AS unique_sessions, round(avg(time_on_page_seconds), 2) AS avg_time_on_page_seconds
      FROM pageviews GROUP BY site_id, path) v
LEFT JOIN (SELECT site_id, entry_path AS path, count(*) AS entries, round(avg(bounce::int), 4) AS bounce_rate
           FROM user_sessions WHERE pageview_count > 0 GROUP BY site_id, entry_path) n USING (site_id, path)
LEFT JOIN (SELECT site_id, exit_path AS path, count(*) AS exits
           FROM user_sessions WHERE pageview_count > 0 GROUP BY site_id, exit_path) x USING (site_id, path);
"""


def run_postgres(database_url: str, endpoint: str) -> dict:
    import psycopg

    from pipeline.analytics.definitions import _REFERRER_LIST

    hosts = [line.split("\t") for line in _REFERRER_LIST.read_text().splitlines()
             if line and not line.startswith("#") and "{}" not in line]
    with psycopg.connect(database_url) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.execute("SET work_mem = '64MB'")
        conn.execute("CREATE TEMP TABLE referrer_hosts (host text PRIMARY KEY, referrer_type text, referrer_platform text)")
        with conn.cursor().copy("COPY referrer_hosts FROM STDIN") as copy:
            for row in {h[0]: h for h in hosts}.values():
                copy.write_row(row)
        # Several statements in one simple query: the day's bounds are written in (our own datetimes).
        conn.execute(POSTGRES_SQL.replace("%(start)s", f"'{DAY.isoformat()}'::timestamptz")
                     .replace("%(end)s", f"'{(DAY + timedelta(days=1)).isoformat()}'::timestamptz"))
        totals = conn.execute("""SELECT sum(total_events), sum(total_sessions), sum(total_pageviews), sum(unique_visitors)
                                 FROM daily_site_metrics""").fetchone()
        conn.execute("SELECT count(*) FROM page_performance").fetchone()
        hwm = next(int(line.split()[1]) for line in Path(f"/proc/{backend}/status").read_text().splitlines()
                   if line.startswith("VmHWM"))
        ticks = os.sysconf("SC_CLK_TCK")
        stat = Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()
        backend_cpu = (int(stat[11]) + int(stat[12])) / ticks  # utime + stime of the server backend
    return {"rows": int(totals[0]), "sessions": int(totals[1]), "pageviews": int(totals[2]),
            "visitors": int(totals[3]), "backend_peak_rss_mb": hwm / 1024,
            "backend_cpu_seconds": backend_cpu}


MODES = {"pixelpipe": run_pixelpipe, "postgres": run_postgres}


def child(mode: str, database_url: str, endpoint: str) -> None:
    import duckdb  # noqa: F401  (the clock measures the day, not the interpreter loading libraries)
    import psycopg  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import pipeline.analytics.bucket  # noqa: F401

    started = time.perf_counter()
    if os.environ.get("BENCH_PROFILE"):  # where the Python side's CPU goes, to stderr
        import cProfile
        import pstats

        profile = cProfile.Profile()
        result = profile.runcall(MODES[mode], database_url, endpoint)
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    else:
        result = MODES[mode](database_url, endpoint)
    result["seconds"] = time.perf_counter() - started
    result["peak_rss_mb"] = peak_rss_mb()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime + result.get("backend_cpu_seconds", 0)
    print(json.dumps(result))


def measure(mode: str, servers: dict) -> dict:
    return measure_in_child(__file__, mode, servers["database_url"], servers["s3_endpoint"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--skip-postgres", action="store_true", help="only the assets' way (e.g. at 10M)")
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    from pixelpipe.core.s3 import ensure_buckets

    with benchmark_servers(s3=True) as servers:
        ensure_buckets(bench_s3_client(servers["s3_endpoint"]), [BUCKET, BUCKET + "-backup"])
        started = time.perf_counter()
        seed(servers["database_url"], args.rows, args.sites)
        print(f"seeded {args.rows:,} events of {DAY:%Y-%m-%d} for {args.sites} sites in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        started = time.perf_counter()
        export_day(servers["database_url"], servers["s3_endpoint"])
        print(f"exported its 24 hours in {time.perf_counter() - started:.1f} s", flush=True)
        modes = ["pixelpipe"] + ([] if args.skip_postgres else ["postgres"])
        results = {mode: measure(mode, servers) for mode in modes}
    for mode, r in results.items():
        extra = f", server backend peak {r['backend_peak_rss_mb']:.0f} MB" if "backend_peak_rss_mb" in r else ""
        print(f"{mode:>10}: {r['rows']:>10,} events in {r['seconds']:7.2f} s = {r['rows_per_s']:>9,.0f} rows/s, "
              f"peak RSS {r['peak_rss_mb']:6.0f} MB{extra}, CPU {r['cpu_seconds']:.1f} s; {r['sessions']:,} sessions, "
              f"{r['pageviews']:,} pageviews, {r['visitors']:,} visitors" + (
                  f"; seconds by phase {r['phases']}" if "phases" in r else ""))
    if "postgres" in results:
        same = all(results["pixelpipe"][k] == results["postgres"][k] for k in ("rows", "sessions", "pageviews", "visitors"))
        print(f"pixelpipe analytics: {results['pixelpipe']['rows_per_s'] / results['postgres']['rows_per_s']:.2f}x "
              f"the PostgreSQL way; same figures: {same}")


if __name__ == "__main__":
    main()
