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
