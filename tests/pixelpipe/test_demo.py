"""The demo's history: rows as the collector would have stored them."""

import random
from datetime import UTC, datetime
from urllib.parse import urlsplit

from pixelpipe.demo import write_history


def test_demo_history_stores_each_pages_path_for_every_site(database_url, db):
    assert write_history(database_url, datetime.now(UTC), random.Random(7)) > 0
    rows = db.execute("SELECT DISTINCT site_id, url, path FROM events_log").fetchall()
    assert {site for site, _, _ in rows} == {"demo-shop", "blog-example-org", "news-example-net"}
    assert all(path == urlsplit(url).path and path.startswith("/") for _, url, path in rows)


def test_the_demo_page_says_what_the_demo_sends_and_counts_what_arrives(demo_stack):
    import time

    import httpx

    page = httpx.get(f"{demo_stack.collector}/demo").text
    assert "two malformed requests on purpose" in page and 'id="accepted"' in page
    since = datetime.now(UTC).isoformat()
    stats: dict = {}
    deadline = time.monotonic() + 60
    # The demo sends its malformed pair every 10 s: await both reasons in what the page reads.
    while time.monotonic() < deadline and not (
            stats.get("accepted") and {"malformed_json", "missing_event_type"} <= set(stats.get("rejected_by_reason", {}))):
        time.sleep(0.5)
        stats = httpx.get(f"{demo_stack.collector}/demo/stats", params={"since": since}).json()
    assert stats["accepted"] == sum(stats["accepted_by_site"].values()) > 0
    assert set(stats["accepted_by_site"]) <= {"demo-shop", "blog-example-org", "news-example-net"}
    assert {"malformed_json", "missing_event_type"} <= set(stats["rejected_by_reason"])
    assert stats["rejected"] == sum(stats["rejected_by_reason"].values())
    bad = httpx.get(f"{demo_stack.collector}/demo/stats", params={"since": "yesterday"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_since"
