"""Demo traffic for `pixelpipe up --demo`: live events through the collector, a few malformed
requests for the dead letter, and the past few hours written directly with past ingest times so
the export schedule and a backfill have closed hours to work on at once."""

from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx
import orjson
import psycopg

from pixelpipe.core.events_log import EVENT_COLUMNS, copy_statement, ensure_partitions
from pixelpipe.core.installation import lower_data_start

SITES = {"demo-shop": "https://shop.example.com", "blog-example-org": "https://blog.example.org",
         "news-example-net": "https://news.example.net"}
PAGES = ["/", "/pricing", "/blog/launch", "/cart", "/checkout", "/about"]
HISTORY_HOURS = 6


def _event(site: str, origin: str, rng: random.Random, when: datetime) -> dict:
    kind = rng.choices(["pageview", "click", "scroll"], weights=[5, 3, 2])[0]
    event = {"eventType": kind, "siteId": site, "url": origin + rng.choice(PAGES),
             "sessionId": f"s{rng.randrange(50)}", "visitorId": f"v{rng.randrange(200)}",
             "timestamp": when.isoformat()}
    if kind == "scroll":
        event["depth"] = rng.choice([25, 50, 75, 100])
    if kind == "click":
        event["text"] = rng.choice(["Buy", "Sign up", "Read more"])
    return event


def history_hours(now: datetime, grace_minutes: int) -> tuple[datetime, datetime]:
    """The first and last of the HISTORY_HOURS hours before `now` that can be exported at once
    (each closed, grace period included)."""
    last = (now - timedelta(hours=1, minutes=grace_minutes)).replace(minute=0, second=0, microsecond=0)
    return last - timedelta(hours=HISTORY_HOURS - 1), last


def write_history(database_url: str, now: datetime, rng: random.Random, grace_minutes: int = 5) -> int:
    """Events ingested in the past HISTORY_HOURS closed hours (skipped if already there). The
    installation's data then starts at the first of them, so Dagster offers those hours."""
    first, _ = history_hours(now, grace_minutes)
    with psycopg.connect(database_url, autocommit=True) as conn:
        ensure_partitions(conn, now=now, hours_back=HISTORY_HOURS + 2)
        lower_data_start(conn, first)
        if conn.execute("SELECT 1 FROM events_log WHERE created_at >= %s AND created_at < %s LIMIT 1",
                        (first, first + timedelta(hours=HISTORY_HOURS))).fetchone():
            return 0
        written = 0
        with conn.transaction(), conn.cursor() as cur, cur.copy(copy_statement("events_log", (*EVENT_COLUMNS, "created_at"))) as copy:
            for hour in range(HISTORY_HOURS):
                for site, origin in SITES.items():
                    for _ in range(rng.randint(150, 400)):
                        created = first + timedelta(hours=hour, seconds=rng.uniform(0, 3599))
                        event = _event(site, origin, rng, created - timedelta(seconds=rng.uniform(0, 90)))
                        copy.write_row((uuid.uuid4(), event["eventType"], event["sessionId"], event["visitorId"], site,
                                        event["timestamp"], event["url"], urlsplit(event["url"]).path,
                                        "Mozilla/5.0 (demo)", f"203.0.113.{rng.randrange(1, 255)}",
                                        orjson.dumps(event).decode(), "pixelpipe", created))
                        written += 1
        return written


def seed_history(database_url: str, grace_minutes: int) -> str:
    """Write the demo's history before Dagster starts (its partitions begin where the data does);
    returns the lines `pixelpipe up --demo` prints about it: what, and the command to export it."""
    now = datetime.now(UTC)
    written = write_history(database_url, now, random.Random(7), grace_minutes)
    first, last = history_hours(now, grace_minutes)
    what = (f"{written} events in" if written else "events (written earlier) in")
    return (f"  demo history     {what} the {HISTORY_HOURS} closed hours {first:%Y-%m-%d %H}:00 to "
            f"{last:%H}:00 UTC; export them with\n"
            f"                   pixelpipe backfill --from {first:%Y-%m-%d-%H:%M} --to {last:%Y-%m-%d-%H:%M}")


def live_traffic(collector_url: str, stopping: threading.Event, rng: random.Random) -> None:
    """Twice a second a batch to /collect and a pixel; every 10 s two malformed requests on
    purpose, for the dead letter. The demo page (ingest_service/static/demo.html) says so."""
    # A browser's user agent: the collector drops crawlers' (and HTTP libraries') as bots.
    browser = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
    with httpx.Client(base_url=collector_url, timeout=10, headers={"User-Agent": browser}) as client:
        tick = 0
        while not stopping.wait(0.5):
            tick += 1
            site, origin = rng.choice(list(SITES.items()))
            now = datetime.now(UTC)
            try:
                batch = [_event(site, origin, rng, now) for _ in range(rng.randint(1, 8))]
                client.post("/collect", content=orjson.dumps(
                    {"eventType": "batch", "siteId": site, "events": batch}),
                    headers={"content-type": "text/plain"})
                client.get("/i", params={"eventType": "pageview", "siteId": site, "url": origin + rng.choice(PAGES)})
                if tick % 20 == 0:  # something for the dead letter
                    client.post("/collect", content=b'{"eventType": "click", "oops"',
                                headers={"content-type": "application/json"})
                    client.post("/collect", json={"siteId": site, "note": "no eventType"})
            except httpx.HTTPError:
                time.sleep(1)


def start_demo_traffic(collector_url: str, stopping: threading.Event) -> None:
    threading.Thread(target=live_traffic, args=(collector_url, stopping, random.Random(11)),
                     daemon=True).start()
