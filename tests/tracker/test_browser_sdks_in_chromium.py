"""Snowplow's, Segment's and RudderStack's browser SDKs, as published on npm, in Chromium with
real CORS: each delivers every event once, with its default settings but the collector's host.

The pages come from a second origin (as on the web) and host the SDKs' files themselves, and no
Playwright route is active while the SDKs talk to the collector, except the one network failure
injected for Segment: an active route makes Playwright answer every CORS preflight itself, which
would hide exactly what these tests are about (credentialed answers, the SDKs' own headers).
"""

from __future__ import annotations

import json

import pytest

from ingest_service.events import event_id
from pixelpipe.core import sites
from tests.tracker.conftest import npm_package, wait_for

pytestmark = pytest.mark.browser

# Fetched from the npm registry at set-up and checked against its SHA-512. All three ship a
# browser bundle (UMD) with their dependencies, so nothing needs bundling here.
SNOWPLOW = ("@snowplow/browser-tracker", "4.10.1",
            "sha512-1Kmi6Mtyxwn5BN7BPD63CCb8diNr/cD/ihxHVbnTVc9UQRK9xJALpkpOu90PomVH/GJN2VxVKyeNmPJhGnv9og==")
SEGMENT = ("@segment/analytics-next", "1.84.3",
           "sha512-5l7cPBzScxhfJ0zdcKQI4daDvMIWWUk7hClT1xGRelnHUltIEoQ9w8+ZpFPoWJMpX8D7IA1nVAfJbpiKi3XaKw==")
RUDDERSTACK = ("@rudderstack/analytics-js", "3.34.1",
               "sha512-cci768CvaM64Wr/MDDtLF8K49aPy7TwwfwL9G1a2SSfgwL4XfVfGNVT//Mv8yph0a14pPc/Nf5HDWhVjAD5vQg==")


class CollectorTraffic:
    """The page's requests to the collector as the browser saw them end: a response the page
    could not read (a CORS refusal) ends as a failure, like a network error."""

    def __init__(self, page, collector_url: str):
        self.started: list = []
        self.finished: list = []
        self.failed: list = []

        def mine(request) -> bool:
            return request.url.startswith(collector_url) and request.method != "OPTIONS"

        page.on("request", lambda request: mine(request) and self.started.append(request))
        page.on("requestfinished", lambda request: mine(request) and self.finished.append(request))
        page.on("requestfailed", lambda request: mine(request) and self.failed.append(request))

    def settled(self) -> bool:
        return len(self.finished) + len(self.failed) == len(self.started)


def stored(db, source: str) -> list[tuple]:
    return db.execute("SELECT site_id, event_type, visitor_id, event_id::text, raw_event_data "
                      "FROM events_log WHERE source = %s ORDER BY id", (source,)).fetchall()


def open_page(browser, site, path: str, html: str):
    site.pages[path] = f"<!doctype html><html><head><title>{path}</title></head><body>{html}</body></html>"
    page = browser().new_page()
    return page


@pytest.mark.parametrize("method", ["post", "get"])
def test_snowplow_browser_tracker_with_its_default_credentials(method, browser, site, db, live_collector):
    """v4 sends with `credentials: "include"` by default: a `*` answer would be refused, and
    the tracker would re-send its first event again and again (GET goes to the pixel's /i)."""
    package = npm_package(*SNOWPLOW)
    site.pages["/sp.js"] = package / "dist" / "index.umd.min.js"
    page = open_page(browser, site, "/shop", (
        '<script src="/sp.js"></script><script>'
        "window.delivered = 0; window.failures = [];"
        f'snowplowBrowserTracking.newTracker("sp", "{live_collector.url}", {{appId: "shop", eventMethod: "{method}",'
        " onRequestSuccess: (payloads) => { window.delivered += payloads.length; },"
        " onRequestFailure: (failure) => { window.failures.push(failure.status || 0); }});"
        'snowplowBrowserTracking.setUserId("user-1");'
        "snowplowBrowserTracking.trackPageView();"
        'snowplowBrowserTracking.trackStructEvent({category: "checkout", action: "pay"});'
        "</script>"))
    traffic = CollectorTraffic(page, live_collector.url)
    page.goto(site.origin + "/shop")
    wait_for(lambda: page.evaluate("window.delivered + window.failures.length") >= 2,
             "the Snowplow tracker did not hear back from the collector", page=page)
    wait_for(traffic.settled, "a request to the collector did not end", page=page)
    assert page.evaluate("window.failures") == [] and traffic.failed == []
    assert {request.method for request in traffic.finished} == {method.upper()}
    rows = stored(db, "snowplow")
    assert sorted(row[1] for row in rows) == ["event", "page_view"]
    for site_id, _, visitor, stored_id, raw in rows:
        assert (site_id, visitor, stored_id) == ("shop", "user-1", raw["eid"])
    page.close()


def test_segment_analytics_next_retries_a_network_failure_once(browser, site, db, live_collector):
    """The track's first attempt fails at the network level; its retry carries X-Retry-Count,
    which the preflight must allow."""
    package = npm_package(*SEGMENT)
    bundles = package / "dist" / "umd"
    site.pages["/analytics-next.js"] = bundles / "index.js"
    for chunk in bundles.glob("*.js"):  # its lazily loaded parts, under the cdnURL given below
        site.pages[f"/analytics-next/bundles/{chunk.name}"] = chunk
    sites.save_site(db, "shop", create=True)
    key = sites.new_write_key(db, "shop")
    api_host = live_collector.url.removeprefix("http://") + "/v1"
    settings = {"integrations": {"Segment.io": {"apiKey": key, "apiHost": api_host, "protocol": "http"}},
                "metrics": {"sampleRate": 0}}
    page = open_page(browser, site, "/checkout", (
        '<script src="/analytics-next.js"></script><script>'
        f"window.analytics = AnalyticsNext.AnalyticsBrowser.load({{writeKey: {json.dumps(key)},"
        f" cdnURL: {json.dumps(site.origin)}, cdnSettings: {json.dumps(settings)}}});"
        'analytics.track("Order Completed", {total: 9.5});'
        "</script>"))
    traffic = CollectorTraffic(page, live_collector.url)
    aborted = []

    def fail_at_the_network(route):
        aborted.append(route.request.url)
        route.abort("connectionreset")

    page.route(f"{live_collector.url}/v1/t", fail_at_the_network, times=1)
    page.goto(site.origin + "/checkout")
    wait_for(lambda: aborted, "analytics-next did not send the track", page=page)
    # The route is gone: from here on every request, preflights included, meets the collector.
    page.evaluate('analytics.identify("user-1"); analytics.page()')
    wait_for(lambda: len(stored(db, "segment")) >= 3, "analytics-next's events did not all arrive", page=page)
    wait_for(traffic.settled, "a request to the collector did not end", page=page)
    anonymous = page.evaluate("analytics.instance.user().anonymousId()")
    assert [request.url for request in traffic.failed] == aborted
    retries = [r for r in traffic.finished if r.url.endswith("/v1/t")]
    assert [r.headers.get("x-retry-count") for r in retries] == ["1"]
    rows = {row[1]: row for row in stored(db, "segment")}
    assert len(stored(db, "segment")) == 3 and set(rows) == {"Order Completed", "identify", "page"}
    assert rows["identify"][2] == rows["page"][2] == "user-1"
    for site_id, _, visitor, stored_id, raw in rows.values():
        assert site_id == "shop" and stored_id == str(event_id(raw["messageId"]))
        # The retry is normalised again when sent: after identify(), it carries the userId too.
        assert raw["anonymousId"] == anonymous and visitor == raw.get("userId", anonymous)
    page.close()


def test_rudderstack_analytics_js_with_its_configuration_inline(browser, site, db, live_collector):
    """v3 without its control plane (getSourceConfig); every request carries AnonymousId and
    SentAt, which the preflight must allow."""
    package = npm_package(*RUDDERSTACK)
    site.pages["/rsa.js"] = package / "dist" / "npm" / "modern" / "bundled" / "umd" / "index.js"
    sites.save_site(db, "shop", create=True)
    key = sites.new_write_key(db, "shop")
    source = {"source": {"id": "pixelpipe", "name": "shop", "workspaceId": "pixelpipe", "enabled": True,
                         "config": {}, "destinations": []}}
    page = open_page(browser, site, "/basket", (
        '<script src="/rsa.js"></script><script>'
        "window.ra = new rudderanalytics.RudderAnalytics();"
        f"ra.load({json.dumps(key)}, {json.dumps(live_collector.url)},"
        f" {{getSourceConfig: () => ({json.dumps(source)}), logLevel: 'ERROR'}});"
        'ra.page(); ra.identify("user-1"); ra.track("Order Completed", {total: 9.5});'
        "</script>"))
    traffic = CollectorTraffic(page, live_collector.url)
    page.goto(site.origin + "/basket")
    wait_for(lambda: len(stored(db, "segment")) >= 3, "RudderStack's events did not all arrive", page=page)
    wait_for(traffic.settled, "a request to the collector did not end", page=page)
    assert traffic.failed == []
    assert all("anonymousid" in request.headers for request in traffic.finished)
    assert not any("rsa-retry-attempt" in request.headers for request in traffic.finished)
    rows = {row[1]: row for row in stored(db, "segment")}
    assert len(stored(db, "segment")) == 3 and set(rows) == {"page", "identify", "Order Completed"}
    assert rows["identify"][2] == rows["Order Completed"][2] == "user-1"
    assert rows["page"][2] == rows["page"][4]["anonymousId"]
    for site_id, _, _, stored_id, raw in rows.values():
        assert site_id == "shop" and stored_id == str(event_id(raw["messageId"]))
    page.close()
