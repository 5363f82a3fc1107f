"""posthog-js, as published on npm, in Chromium: a page instrumented for PostHog sends to
pixelpipe by changing `api_host`, and a batch whose answer was lost is retried by posthog-js and
exported once."""

from __future__ import annotations

import pytest

from pipeline.export_files import resent_row_ids
from pixelpipe.core import sites
from tests.tracker.conftest import npm_package, wait_for

pytestmark = pytest.mark.browser

# The published file, fetched from the npm registry at set-up (checked against the registry's
# SHA-512), cached per version. It is Apache-2.0 licensed (its LICENSE is in the cached package).
POSTHOG_JS = ("posthog-js", "1.449.2",
              "sha512-vji+h92IHaLlFSEnRH1hwe8uLWGOdDUImmPXexj/+V7Xm7HTxIQisYE/Kom7Aaw4DRpzfdhQxiyAN1YVYR4G8Q==")


def test_posthog_js_sends_to_pixelpipe_and_its_retry_is_exported_once(browser, site, db, live_collector,
                                                                       database_url):
    library = npm_package(*POSTHOG_JS) / "dist" / "array.js"
    sites.save_site(db, "shop", create=True)
    key = sites.new_write_key(db, "shop")
    site.pages["/home"] = (
        '<!doctype html><html><head><title>home</title><script src="/posthog.js"></script></head><body><script>'
        f'posthog.init("{key}", {{api_host: "{live_collector.url}", autocapture: false, persistence: "memory",'
        ' disable_session_recording: true, advanced_disable_flags: true, advanced_disable_decide: true,'
        ' request_batching: false, capture_pageleave: false,'
        # Playwright's Chromium sets navigator.webdriver, which posthog-js takes for a bot.
        ' opt_out_useragent_filter: true});'
        'posthog.identify("user-1");'
        'posthog.capture("Order Completed", {total: 9.5});'
        "</script></body></html>")
    page = browser().new_page()
    page.route("**/posthog.js", lambda route: route.fulfill(path=library, content_type="application/javascript"))
    lost = []

    def lose_first_answer(route):
        response = route.fetch()  # the collector commits the batch...
        if not lost:  # ...but posthog-js never hears so, the first time
            lost.append(response.status)
            route.fulfill(status=503, body='{"error": "answer lost"}', content_type="application/json")
        else:
            route.fulfill(response=response)

    page.route(f"{live_collector.url}/**", lose_first_answer)
    page.goto(site.origin + "/home")

    def stored():
        return db.execute("SELECT id, site_id, event_type, visitor_id, url, event_id::text, raw_event_data, "
                          "created_at FROM events_log WHERE source = 'posthog' ORDER BY id").fetchall()

    # posthog-js re-sends the lost request on its retry queue (a few seconds' backoff).
    try:
        found = wait_for(lambda: (rows := stored()) and len({r[5] for r in rows}) >= 3
                         and len(rows) > len({r[5] for r in rows}) and rows,
                         "posthog-js's events and its retry did not arrive", timeout=60, page=page)
    finally:  # no handler may outlive the page (posthog-js keeps sending)
        page.unroute_all(behavior="ignoreErrors")
        page.close()
    assert lost == [200], lost
    first = {}
    for row in found:
        first.setdefault(row[5], row)
    kinds = {row[2]: row for row in first.values()}
    assert {"$pageview", "$identify", "Order Completed"} <= set(kinds)
    assert all(row[1] == "shop" for row in found)
    assert kinds["$pageview"][4] == site.origin + "/home"
    assert kinds["Order Completed"][3] == "user-1"
    assert all(row[6]["uuid"] == row[5] for row in found)
    hours = {row[7].replace(minute=0, second=0, microsecond=0) for row in found}
    left_out = set().union(*(resent_row_ids(database_url, hour) for hour in hours))
    assert left_out == {row[0] for row in found} - {row[0] for row in first.values()}
