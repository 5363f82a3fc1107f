"""t.js in Chromium against the real collector and database: what a visitor's browser sends,
and what ends up in events_log, in the dead letter and in the exported hour."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import httpx
import pyarrow.parquet as pq
import pytest

from pixelpipe.core.events_log import ensure_partitions
from tests.pipeline.conftest import materialize_export, partition_key
from tests.tracker.conftest import ARTIFACTS, DESKTOP_UA, wait_for

pytestmark = pytest.mark.browser

BUTTON = '<button id="buy" data-track="buy">Buy now</button><a id="next" href="/next?token=s3cret">next</a>'
TALL = '<div style="height: 4000px">long page</div>'


def rows(db, site: str, columns: str = "event_type, url, path, visitor_id, user_agent, created_at, raw_event_data"):
    return db.execute(f"SELECT {columns} FROM events_log WHERE site_id = %s ORDER BY id", (site,)).fetchall()


def visit(page, url: str):
    """Open the page and wait until t.js (loaded async) is listening."""
    page.goto(url)
    page.wait_for_function("window.__pixelpipe !== undefined")
    return page


def rows_arrive(db, site: str, count: int, message: str, page=None) -> list:
    return wait_for(lambda: (found := rows(db, site)) and len(found) >= count and found, message, page=page)


def test_pageview_clicks_scroll_and_spa_routes_arrive_as_one_beacon_batch_at_unload(browser, site, db,
                                                                                    live_collector):
    url = site.page("/shop", BUTTON + TALL, site_id="shop", batch_size="50", keep_query="ref")
    page = browser().new_page()
    visit(page, url + "?utm_source=news&ref=friend&token=s3cret&email=a%40b.c#section")
    page.click("#buy")
    page.evaluate("history.pushState({}, '', '/shop/cart?token=s3cret')")
    page.evaluate("history.replaceState({}, '', '/shop/cart?step=2')")  # same path: no pageview
    page.evaluate("history.replaceState({}, '', '/shop/checkout')")  # new path: a pageview
    page.go_back()  # popstate, back to /shop
    page.wait_for_function("location.pathname == '/shop'")
    page.mouse.wheel(0, 5000)
    page.wait_for_function("window.scrollY > 3000")
    assert rows(db, "shop") == []  # batch size 50: all still queued in the page
    page.close(run_before_unload=True)  # pagehide: one sendBeacon with everything queued

    found = rows_arrive(db, "shop", 9, "the queued events did not arrive at unload")
    kinds = [r[0] for r in found]
    assert kinds.count("pageview") == 4  # load, pushState, replaceState to a new path, popstate
    assert kinds.count("click") == 1 and kinds.count("scroll") == 4
    # The collector saw one request carrying all nine: the beacon, nothing before it.
    metrics = httpx.get(f"{live_collector.url}/metrics").text
    assert "pixelpipe_request_events_count 1\n" in metrics and "pixelpipe_request_events_sum 9.0\n" in metrics
    assert len({r[5] for r in found}) == 1  # one commit: one created_at
    first = found[0]
    assert first[1] == site.origin + "/shop?utm_source=news&ref=friend"  # no token, email, fragment
    assert first[2] == "/shop" and first[4] == DESKTOP_UA and first[3]
    assert [r[2] for r in found if r[0] == "pageview"] == ["/shop", "/shop/cart", "/shop/checkout", "/shop"]
    assert all("s3cret" not in (r[1] or "") and "s3cret" not in json.dumps(r[6]) for r in found)
    landing = next(r[6] for r in found if r[0] == "pageview")  # what the analytics' sessions read
    assert landing["language"] and "/" in landing["timezone"] or landing["timezone"] == "UTC"
    assert landing["screenWidth"] > 0 and landing["viewportWidth"] > 0 and landing["viewportHeight"] > 0
    assert "language" not in next(r[6] for r in found if r[0] == "scroll")  # pageviews only
    click = next(r[6] for r in found if r[0] == "click")
    assert click["trackId"] == "buy" and "text" not in click  # no element text without data-track-text
    assert sorted(r[6]["depth"] for r in found if r[0] == "scroll") == [25, 50, 75, 100]
    assert len({r[6]["eventId"] for r in found}) == 9


def test_spa_tracking_can_be_turned_off_and_element_text_turned_on(browser, site, db):
    url = site.page("/app", BUTTON, site_id="spa-off", batch_size="1", spa="false", track_text="")
    page = visit(browser().new_page(), url)
    rows_arrive(db, "spa-off", 1, "no pageview")
    page.evaluate("history.pushState({}, '', '/app/other')")
    page.click("#buy")
    found = rows_arrive(db, "spa-off", 2, "no click")
    assert [r[0] for r in found] == ["pageview", "click"]
    assert found[1][6]["text"] == "Buy now"


def test_the_visitor_id_survives_a_reload(browser, site, db):
    url = site.page("/", site_id="returning", batch_size="1")
    page = browser().new_page()
    page.goto(url)
    rows_arrive(db, "returning", 1, "no first pageview")
    page.reload()
    found = rows_arrive(db, "returning", 2, "no second pageview")
    assert found[0][3] == found[1][3] and found[0][3]
    assert page.evaluate("localStorage.getItem('pp_vid')") == found[0][3]


def test_cookieless_stores_nothing_and_its_visitor_id_ends_with_the_daily_salt(browser, site, db, live_collector):
    url = site.page("/", site_id="cookieless", batch_size="1", cookieless="")
    page = browser().new_page()
    page.goto(url)
    rows_arrive(db, "cookieless", 1, "no first pageview")
    page.reload()
    found = rows_arrive(db, "cookieless", 2, "no second pageview")
    assert found[0][3] == found[1][3] and found[0][3].startswith("cl-")
    assert page.evaluate("localStorage.length + document.cookie.length + sessionStorage.length") == 0
    assert db.execute("SELECT count(*) FROM events_log WHERE site_id = 'cookieless' "
                      "AND session_id IS NOT NULL").fetchone()[0] == 0

    # The salt rotates (as at midnight UTC: a new one, the old one deleted): a new visitor.
    db.execute("DELETE FROM visitor_salts")
    live_collector.collector.salts.forget()
    page.reload()
    found = rows_arrive(db, "cookieless", 3, "no pageview after the rotation")
    assert found[2][3].startswith("cl-") and found[2][3] != found[0][3]
    assert db.execute("SELECT count(*) FROM visitor_salts").fetchone()[0] == 1


def test_503s_then_recovery_delivers_every_event_once(browser, site, db):
    url = site.page("/", BUTTON, site_id="flaky", batch_size="1")
    context = browser()
    answers = []

    def first_two_fail(route):
        if len(answers) < 2:
            answers.append(503)
            route.fulfill(status=503, headers={"Retry-After": "1", "Access-Control-Allow-Origin": "*"},
                          body='{"error": "unavailable"}')
        else:
            answers.append("through")
            route.continue_()

    context.route("**/collect", first_two_fail)
    page = visit(context.new_page(), url)
    page.click("#buy")
    found = rows_arrive(db, "flaky", 2, "the events never arrived after the 503s", page)
    assert answers[:2] == [503, 503]
    assert sorted(r[0] for r in found) == ["click", "pageview"]
    assert len({r[6]["eventId"] for r in found}) == 2


def test_an_answer_lost_after_commit_is_retried_and_the_exported_hour_has_it_once(browser, site, db, resources, s3):
    url = site.page("/", site_id="lost-answer", batch_size="1")
    context = browser()
    lost = []

    def drop_first_answer(route):
        if not lost:
            lost.append(route.fetch().status)  # the collector commits ...
            route.abort()  # ... and the browser never hears back: the tracker sends it again
        else:
            route.continue_()

    context.route("**/collect", drop_first_answer)
    page = context.new_page()
    page.goto(url)
    found = wait_for(lambda: len(r := rows(db, "lost-answer", "id, raw_event_data")) >= 2 and r,
                     "the tracker did not re-send after the lost answer", page=page)
    assert lost == [200] and found[0][1]["eventId"] == found[1][1]["eventId"]  # twice in the database

    # The same rows three hours later: their hour is closed and can be exported.
    ensure_partitions(db, hours_back=5)
    db.execute("UPDATE events_log SET created_at = created_at - interval '3 hours' WHERE site_id = 'lost-answer'")
    (hour,) = db.execute("SELECT date_trunc('hour', min(created_at)) FROM events_log "
                         "WHERE site_id = 'lost-answer'").fetchone()
    for covered in (hour, hour + timedelta(hours=1)):  # the copies may straddle an hour
        result = materialize_export(resources, partition=partition_key(covered))
        assert result.success
    exported = []
    bucket = resources["settings"].client_bucket
    for item in s3.list_objects_v2(Bucket=bucket, Prefix="site_id=lost-answer/").get("Contents", []):
        if not item["Key"].endswith(".parquet"):
            continue  # the hour's receipt
        body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        exported += pq.read_table(io.BytesIO(body)).column("raw_event_data").to_pylist()
    assert [json.loads(raw)["eventId"] for raw in exported] == [found[0][1]["eventId"]]


@pytest.mark.parametrize("signal", ["navigator.doNotTrack", "navigator.globalPrivacyControl"])
def test_do_not_track_and_global_privacy_control_send_nothing_unless_the_site_overrides(browser, site, db, signal):
    context = browser()
    value = "'1'" if "doNotTrack" in signal else "true"
    name = signal.split(".")[1]
    context.add_init_script(f"Object.defineProperty(Navigator.prototype, '{name}', {{get: () => {value}}})")
    sent = []
    context.on("request", lambda request: sent.append(request.url) if "/collect" in request.url else None)
    page = context.new_page()
    visit(page, site.page("/private", BUTTON, site_id="private", batch_size="1"))
    page.click("#buy")
    page.evaluate("window.__pixelpipe.flush()")
    # The same browser on a site whose owner chose data-ignore-dnt: its events arrive, so the
    # first page had every chance to send.
    page.goto(site.page("/override", BUTTON, site_id="override", batch_size="1", ignore_dnt=""))
    rows_arrive(db, "override", 1, "the overriding site's pageview did not arrive")
    assert rows(db, "private") == []
    assert len(sent) == 1  # the override page's pageview only


def test_a_crawler_is_dead_lettered_as_bot_and_counted(browser, site, db, live_collector):
    page = browser(user_agent="Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)").new_page()
    page.goto(site.page("/", site_id="crawled", batch_size="1"))
    reason = wait_for(lambda: db.execute("SELECT reason FROM events_rejected WHERE reason LIKE 'bot:%'").fetchone(),
                      "the crawler's pageview was not dead-lettered")
    assert "PIXELPIPE_DROP_BOTS" in reason[0]
    assert rows(db, "crawled") == []
    assert "pixelpipe_bot_events_total 1" in httpx.get(f"{live_collector.url}/metrics").text


def test_the_demo_page_renders_and_tracks(browser, live_collector, db):
    page = browser().new_page()
    visit(page, f"{live_collector.url}/demo")
    page.click("text=Buy")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "tracker-demo.png"), full_page=True)
    page.close(run_before_unload=True)
    found = rows_arrive(db, "demo-shop", 2, "the demo page's events did not arrive")
    assert {"pageview", "click"} <= {r[0] for r in found}
    assert (ARTIFACTS / "tracker-demo.png").stat().st_size > 1000
