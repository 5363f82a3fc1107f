"""The daily analytics against the real PostgreSQL and SeaweedFS: hours exported by hourly_export,
days computed from the backup bucket, datasets read back from the client buckets."""

import io
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import dagster as dg
import orjson
import pyarrow.parquet as pq

from pipeline.analytics.daily import SCHEMAS
from pipeline.erasure import erase_visitor
from pixelpipe.core.events_log import EVENT_COLUMNS, copy_statement, ensure_partitions
from tests.pipeline.conftest import materialize_export, partition_key, verify

TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
DAY1, DAY2 = TODAY - timedelta(days=2), TODAY - timedelta(days=1)
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/120.0.0.0 Safari/537.36")
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/17.0 Mobile/15E148 Safari/604.1")
PAGEVIEW_TYPES = {"pageview", "page", "page_view", "$pageview"}


class Events:
    """Rows as the collector writes them, each with its own ingest time."""

    def __init__(self):
        self.rows = []

    def add(self, site, event_type, visitor, at, url, raw=None, *, source="pixelpipe", agent=CHROME,
            ingested=None, event_id=None, session=None):
        event_id = event_id or str(uuid.uuid4())
        path = "/" + url.split("/", 3)[3].split("?")[0] if url.count("/") >= 3 else None
        self.rows.append((event_id, event_type, session, visitor, site, at, url, path, agent, None,
                          orjson.dumps(raw or {}).decode(), source, ingested or at + timedelta(seconds=2)))
        return event_id

    def write(self, db):
        columns = (*EVENT_COLUMNS, "created_at")
        with db.cursor() as cur, cur.copy(copy_statement("events_log", columns)) as copy:
            for row in self.rows:
                copy.write_row(row)


def scenario() -> Events:
    e = Events()
    h9, m = DAY2 + timedelta(hours=9), timedelta(minutes=1)
    # alpha: a session over two pages from a search, with UTM; 40 minutes later a second one from social
    first = e.add("alpha", "pageview", "v1", h9, "https://alpha.example/?utm_source=news&utm_medium=email"
                  "&utm_campaign=winter%20sale", {"referrer": "https://www.google.co.uk/", "title": "Home",
                  "language": "en-GB", "timezone": "Europe/London", "screenWidth": 1920, "screenHeight": 1080,
                  "viewportWidth": 1200, "viewportHeight": 800})
    e.add("alpha", "click", "v1", h9 + 2 * m, "https://alpha.example/")
    e.add("alpha", "pageview", "v1", h9 + 5 * m, "https://alpha.example/pricing",
          {"referrer": "https://alpha.example/", "title": "Pricing"})
    e.add("alpha", "pageview", "v1", h9 + 45 * m, "https://alpha.example/blog", {"referrer": "https://t.co/abc"})
    # the same first pageview re-sent hours later (its answer was lost): counted once
    e.add("alpha", "pageview", "v1", h9, "https://alpha.example/?utm_source=news&utm_medium=email"
          "&utm_campaign=winter%20sale", {"referrer": "https://www.google.co.uk/", "title": "Home"},
          ingested=h9 + timedelta(hours=3), event_id=first)
    # a bounce: one pageview and a scroll milestone, from another site (referral)
    e.add("alpha", "pageview", "v2", h9 + 10 * m, "https://alpha.example/docs",
          {"referrer": "https://blog.example.org/post", "title": 12345}, agent=IPHONE)
    e.add("alpha", "scroll", "v2", h9 + 11 * m, "https://alpha.example/docs", {"depth": 50}, agent=IPHONE)
    # a cookieless visitor (the collector's daily hash as visitor id) and an event without visitor
    e.add("alpha", "pageview", "cl-5f1e2d", h9 + 20 * m, "https://alpha.example/", {"cookieless": True})
    e.add("alpha", "pageview", None, h9 + 21 * m, "https://alpha.example/docs")
    # a session over midnight, and a late beacon: ingested after midnight, stamped before it
    e.add("alpha", "pageview", "v9", DAY1 + timedelta(hours=23, minutes=50), "https://alpha.example/")
    e.add("alpha", "pageview", "v9", DAY1 + timedelta(hours=23, minutes=58), "https://alpha.example/late",
          ingested=DAY2 + timedelta(minutes=10))
    e.add("alpha", "pageview", "v9", DAY2 + timedelta(minutes=5), "https://alpha.example/after")
    # beta: Segment (and RudderStack) page calls
    e.add("beta", "page", "anon-1", h9, "https://beta.example/shop",
          {"context": {"page": {"referrer": "https://www.bing.com/search?q=x", "title": "Shop"},
                       "locale": "de-DE", "timezone": "Europe/Berlin", "screen": {"width": 390, "height": 844}}},
          source="segment", agent=IPHONE)
    e.add("beta", "Order Completed", "anon-1", h9 + 3 * m, "https://beta.example/shop", {}, source="segment")
    # an integration that sends one visitor id for everyone: 501 client sessions, so no visitor
    for n in range(501):
        e.add("beta", "Product Viewed", "undefined", h9 + timedelta(seconds=n), "https://beta.example/p",
              {}, source="segment", session=f"s-{n}")
    # gamma: a Snowplow page view from Facebook and a PostHog $pageview without referrer
    e.add("gamma", "page_view", "sp-1", h9, "https://gamma.example/a",
          {"refr": "https://l.facebook.com/", "page": "A", "lang": "fr-FR", "res": "1280x720", "vp": "1000x600"},
          source="snowplow")
    e.add("gamma", "$pageview", "ph-1", h9 + m, "https://gamma.example/b",
          {"properties": {"$referrer": "$direct", "title": "B", "$screen_width": 1440, "$screen_height": 900,
                          "$viewport_width": 1400, "$viewport_height": 780, "$browser_language": "nl"}},
          source="posthog")
    return e


HOURS = [DAY1 + timedelta(hours=23), DAY2, DAY2 + timedelta(hours=9), DAY2 + timedelta(hours=12)]


def export(resources):
    for hour in HOURS:
        assert materialize_export(resources, partition=partition_key(hour)).success


def materialize_day(resources, day):
    from pipeline.defs.analytics.assets import daily_analytics
    from pipeline.defs.export.assets import hourly_export

    return dg.materialize([hourly_export, daily_analytics], partition_key=f"{day:%Y-%m-%d}",
                          resources=resources, selection=[daily_analytics], raise_on_error=False)


def dataset(s3, bucket, name, site, day, prefix=""):
    base = f"{prefix}analytics/{name}/site_id={site}/date={day:%Y-%m-%d}/"
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=base).get("Contents", []))
    rows = []
    for key in keys:
        if key.endswith(".parquet"):
            table = pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
            assert table.schema.equals(SCHEMAS[name], check_metadata=False)
            assert table.schema.metadata[b"pixelpipe.schema_version"] == b"1"
            rows += table.to_pylist()
    assert base + "_receipt.json" in keys
    return rows


def objects(s3, bucket, prefix):
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
            if o["Key"].endswith(".parquet")}


def straightforward_metrics(events: Events, site: str, day: datetime) -> dict:
    """daily_site_metrics recomputed plainly from the seeded rows."""
    seen, rows = set(), []
    for row in sorted(events.rows, key=lambda r: r[12]):
        if row[4] == site and day <= row[12] < day + timedelta(days=1) and row[0] not in seen:
            seen.add(row[0])
            rows.append(row)
    by_visitor = defaultdict(list)
    for row in rows:
        if row[3]:
            by_visitor[row[3]].append(row)
    for visitor, visitor_rows in list(by_visitor.items()):  # shared by everyone: no visitor
        if len({r[2] for r in visitor_rows}) > 500 or len(visitor_rows) > 20_000:
            del by_visitor[visitor]
    sessions = []
    for visitor_rows in by_visitor.values():
        visitor_rows.sort(key=lambda r: r[5])
        for row in visitor_rows:
            if (not sessions or sessions[-1][0][3] != row[3] or row[5] - sessions[-1][-1][5] > timedelta(minutes=30)
                    or row[5].date() != sessions[-1][-1][5].date()):
                sessions.append([row])
            else:
                sessions[-1].append(row)
    pageviews = [s for s in sessions]
    bounces = [s for s in pageviews if sum(r[1] in PAGEVIEW_TYPES for r in s) <= 1
               and all(r[1] in PAGEVIEW_TYPES | {"scroll"} for r in s)]
    durations = [(s[-1][5] - s[0][5]).total_seconds() for s in sessions]
    return {
        "unique_visitors": len(by_visitor), "total_sessions": len(sessions),
        "total_pageviews": sum(r[1] in PAGEVIEW_TYPES for r in rows), "total_events": len(rows),
        "bounce_rate": round(len(bounces) / len(sessions), 4),
        "avg_session_duration_seconds": round(sum(durations) / len(sessions)),
        "avg_pages_per_session": round(sum(sum(r[1] in PAGEVIEW_TYPES for r in s) for s in sessions) / len(sessions), 2),
    }


def test_two_days_of_three_sites_compute_the_four_datasets(resources, db, s3, buckets, s3_server):
    own = f"{buckets['client']}-own"
    s3.create_bucket(Bucket=own)
    db.execute("INSERT INTO sites (site_id, client_bucket, client_prefix) VALUES ('alpha', %s, 'exports/')", (own,))
    ensure_partitions(db, hours_back=60)
    events = scenario()
    events.write(db)
    export(resources)

    for day in (DAY1, DAY2):
        result = materialize_day(resources, day)
        assert result.success
        [check] = result.get_asset_check_evaluations()
        assert check.check_name == "daily_metrics_reconcile" and check.passed, check.metadata
    [materialization] = [m for m in result.asset_materializations_for_node("daily_analytics")
                         if m.asset_key.to_user_string() == "daily_site_metrics"]
    assert "| alpha | 4 | 6 | 8 |" in materialization.metadata["per_site"].value
    assert materialization.metadata["duplicates_left_out"].value == 1
    assert materialization.metadata["bad_values"].value == 1  # alpha's title that is a number
    assert materialization.metadata["shared_visitor_ids"].value == 1  # beta's "undefined"
    assert materialization.metadata["clamped_timestamps"].value == 0

    sessions = dataset(s3, own, "sessions", "alpha", DAY2, "exports/")
    by_entry = {(s["visitor_id"], s["entry_path"]): s for s in sessions}
    search = by_entry["v1", "/"]
    assert search == {
        "site_id": "alpha", "session_id": search["session_id"], "visitor_id": "v1",
        "session_start": DAY2 + timedelta(hours=9), "session_end": DAY2 + timedelta(hours=9, minutes=5),
        "duration_seconds": 300, "pageview_count": 2, "event_count": 3, "bounce": False,
        "entry_url": "https://alpha.example/?utm_source=news&utm_medium=email&utm_campaign=winter%20sale",
        "entry_path": "/", "entry_title": "Home", "exit_url": "https://alpha.example/pricing",
        "exit_path": "/pricing", "utm_source": "news", "utm_medium": "email", "utm_campaign": "winter sale",
        "utm_content": None, "utm_term": None, "referrer_type": "search", "referrer_platform": "Google",
        "original_referrer": "https://www.google.co.uk/", "user_agent": CHROME, "browser": "Chrome",
        "os": "Windows", "device_type": "desktop", "browser_language": "en-GB", "timezone": "Europe/London",
        "screen_width": 1920, "screen_height": 1080, "viewport_width": 1200, "viewport_height": 800,
        "source": "pixelpipe"}
    assert len(search["session_id"]) == 32
    assert by_entry["v1", "/blog"]["referrer_type"] == "social"  # after the 30-minute gap
    assert by_entry["v1", "/blog"]["referrer_platform"] == "Twitter"
    bounce = by_entry["v2", "/docs"]
    assert (bounce["bounce"], bounce["referrer_type"], bounce["device_type"], bounce["os"]) == (
        True, "referral", "mobile", "iOS")
    assert bounce["entry_title"] is None  # a title that is not a string counts as absent
    assert by_entry["cl-5f1e2d", "/"]["referrer_type"] == "direct"
    # the late beacon is in the day it was ingested, in a session of its own before midnight
    assert by_entry["v9", "/late"]["session_end"] == DAY1 + timedelta(hours=23, minutes=58)
    assert by_entry["v9", "/after"]["session_start"] == DAY2 + timedelta(minutes=5)
    assert [s["entry_path"] for s in dataset(s3, own, "sessions", "alpha", DAY1, "exports/")] == ["/"]

    pageviews = {p["event_id"]: p for p in dataset(s3, own, "pageviews", "alpha", DAY2, "exports/")}
    home = next(p for p in pageviews.values() if p["path"] == "/" and p["visitor_id"] == "v1")
    assert home == {
        "site_id": "alpha", "session_id": search["session_id"], "visitor_id": "v1", "event_id": home["event_id"],
        "url": search["entry_url"], "path": "/", "title": "Home", "view_timestamp": DAY2 + timedelta(hours=9),
        "time_on_page_seconds": 300, "referrer": "https://www.google.co.uk/", "internal_referrer": False,
        "utm_source": "news", "utm_medium": "email", "utm_campaign": "winter sale", "utm_content": None,
        "utm_term": None}
    pricing = next(p for p in pageviews.values() if p["path"] == "/pricing")
    assert (pricing["internal_referrer"], pricing["time_on_page_seconds"]) == (True, None)
    anonymous = [p for p in pageviews.values() if p["visitor_id"] is None]
    assert len(anonymous) == 1 and anonymous[0]["session_id"] is None

    [metrics] = dataset(s3, own, "daily_site_metrics", "alpha", DAY2, "exports/")
    expected = straightforward_metrics(events, "alpha", DAY2)
    assert {k: metrics[k] for k in expected} == expected
    assert metrics["metric_date"] == DAY2.date()
    assert (metrics["direct_sessions"], metrics["search_sessions"], metrics["social_sessions"],
            metrics["referral_sessions"]) == (3, 1, 1, 1)
    for site in ("beta", "gamma"):
        [row] = dataset(s3, buckets["client"], "daily_site_metrics", site, DAY2)
        assert {k: row[k] for k in expected} == straightforward_metrics(events, site, DAY2)

    pages = {p["path"]: p for p in dataset(s3, own, "page_performance", "alpha", DAY2, "exports/")}
    assert pages["/docs"] == {
        "site_id": "alpha", "metric_date": DAY2.date(), "path": "/docs", "total_views": 2, "unique_visitors": 1,
        "unique_sessions": 1, "avg_time_on_page_seconds": None, "entries": 1, "exits": 1, "bounce_rate": 1.0}
    assert (pages["/"]["entries"], pages["/"]["bounce_rate"]) == (2, 0.5)

    [beta] = dataset(s3, buckets["client"], "sessions", "beta", DAY2)
    assert (beta["source"], beta["referrer_type"], beta["referrer_platform"], beta["browser_language"],
            beta["screen_width"], beta["bounce"]) == ("segment", "search", "Bing", "de-DE", 390, False)
    gamma = {s["source"]: s for s in dataset(s3, buckets["client"], "sessions", "gamma", DAY2)}
    assert (gamma["snowplow"]["referrer_platform"], gamma["snowplow"]["viewport_height"],
            gamma["snowplow"]["entry_title"]) == ("Facebook", 600, "A")
    assert (gamma["posthog"]["referrer_type"], gamma["posthog"]["viewport_width"],
            gamma["posthog"]["browser_language"]) == ("direct", 1400, "nl")

    # Recomputed, byte for byte.
    before = objects(s3, own, "exports/analytics/") | objects(s3, buckets["client"], "analytics/")
    assert materialize_day(resources, DAY2).success
    assert objects(s3, own, "exports/analytics/") | objects(s3, buckets["client"], "analytics/") == before

    # `pixelpipe verify` checks them; a changed file fails it.
    checked = verify(s3_server, f"s3://{own}/exports", "--dataset", "sessions")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "2 site-days" in checked.stderr
    everything = verify(s3_server, f"s3://{own}/exports")
    assert everything.returncode == 0 and "8 site-days" in everything.stderr, everything.stderr
    assert "site-hours checked" in everything.stderr  # the raw hours too
    key = f"exports/analytics/pageviews/site_id=alpha/date={DAY2:%Y-%m-%d}/part-00000.parquet"
    s3.put_object(Bucket=own, Key=key, Body=before[key][:-1] + b"X")
    broken = verify(s3_server, f"s3://{own}/exports", "--dataset", "pageviews")
    assert broken.returncode == 1 and "SHA-256 differs" in broken.stdout
    assert verify(s3_server, f"s3://{own}/exports", "--dataset", "sessions").returncode == 0

    # An erasure reaches the derived days: v1 is gone from sessions and pageviews, the metrics follow.
    erasure = erase_visitor(db, s3, resources["settings"], "alpha", "v1", "request 24")
    assert erasure.derived == {"analytics": "1 day(s) of alpha recomputed"}
    assert "v1" not in {s["visitor_id"] for s in dataset(s3, own, "sessions", "alpha", DAY2, "exports/")}
    assert "v1" not in {p["visitor_id"] for p in dataset(s3, own, "pageviews", "alpha", DAY2, "exports/")}
    [after] = dataset(s3, own, "daily_site_metrics", "alpha", DAY2, "exports/")
    remaining = Events()
    remaining.rows = [r for r in events.rows if not (r[4] == "alpha" and r[3] == "v1")]
    assert {k: after[k] for k in expected} == straightforward_metrics(remaining, "alpha", DAY2) != expected
    assert verify(s3_server, f"s3://{own}/exports").returncode == 0  # the broken file was rewritten too

    # A backfill of the derived days once retention purged the database gives the same bytes.
    erased = objects(s3, own, "exports/analytics/") | objects(s3, buckets["client"], "analytics/")
    db.execute("DELETE FROM events_log")
    for day in (DAY1, DAY2):
        assert materialize_day(resources, day).success
    assert objects(s3, own, "exports/analytics/") | objects(s3, buckets["client"], "analytics/") == erased

    # A site whose hour file no longer matches its receipt fails alone; the other sites are written.
    [gamma_file] = [o["Key"] for o in s3.list_objects_v2(
        Bucket=buckets["backup"], Prefix=f"site_id=gamma/date={DAY2:%Y-%m-%d}/").get("Contents", [])
        if o["Key"].endswith(".parquet")]
    s3.put_object(Bucket=buckets["backup"], Key=gamma_file, Body=b"not the exported file")
    result = materialize_day(resources, DAY2)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    description = failure.step_failure_data.user_failure_data.description
    assert "1 site(s)" in description and "gamma" in description and "SHA-256 differs" in description
    [metrics] = [m for m in result.asset_materializations_for_node("daily_analytics")
                 if m.asset_key.to_user_string() == "daily_site_metrics"]
    assert metrics.metadata["sites"].value == 2  # alpha and beta


def test_a_day_runs_once_its_24_hours_are_exported_and_again_when_one_is_re_exported():
    from pipeline.defs.analytics.assets import daily_analytics
    from pipeline.defs.export.assets import hourly_export
    from pipeline.defs.export.events_log import events_log
    from pipeline.resources import resources_from_env

    defs = dg.Definitions(assets=[events_log, hourly_export, daily_analytics], resources=resources_from_env())
    instance = dg.DagsterInstance.ephemeral()
    day, now = datetime(2026, 11, 3, tzinfo=UTC), datetime(2026, 11, 5, 3, tzinfo=UTC)

    def hour_exported(hour):
        instance.report_runless_asset_event(dg.AssetMaterialization(
            "hourly_export", partition=f"{day + timedelta(hours=hour):%Y-%m-%d-%H:%M}"))

    def tick(cursor=None):
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=now, cursor=cursor)
        requested = {key.to_user_string(): result.get_requested_partitions(key)
                     for key in map(dg.AssetKey, ("sessions", "pageviews", "daily_site_metrics", "page_performance"))}
        return result.cursor, requested

    for hour in range(23):
        hour_exported(hour)
    cursor, requested = tick()
    assert all(not days for days in requested.values())  # 23 of 24 hours: the day waits
    hour_exported(23)
    cursor, requested = tick(cursor)
    assert all(days == {"2026-11-03"} for days in requested.values())
    cursor, requested = tick(cursor)
    assert all(not days for days in requested.values())  # requested once
    hour_exported(5)  # a re-export (or an erasure's rewrite) of one hour
    cursor, requested = tick(cursor)
    assert all(days == {"2026-11-03"} for days in requested.values())


def test_everything_downstream_of_the_exported_hours_says_how_it_is_rebuilt():
    from pipeline.definitions import defs
    from pipeline.derived import NOT_DERIVED, registered

    graph = defs.resolve_asset_graph()
    downstream = dg.AssetSelection.assets("hourly_export").downstream(include_self=False).resolve(graph)
    covered = {key for d in registered().values() for key in d.asset_keys} | set(NOT_DERIVED)
    assert {key.to_user_string() for key in downstream} <= covered
    assert set(registered()["analytics"].asset_keys) == set(SCHEMAS)
