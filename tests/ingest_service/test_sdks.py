"""The SDKs sites already use, as published on PyPI, sending to the real collector and database:
Segment's and RudderStack's (Segment's HTTP API), Snowplow's tracker and PostHog's.

Each goes through a proxy that loses the collector's answer to the first POST (the SDK sees a
503 for a batch that was committed), so the SDK's own retry re-sends it; the export's duplicate
search must then leave out exactly the re-sent copies."""

from __future__ import annotations

import json
import threading
from datetime import UTC, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from pipeline.export_files import resent_row_ids
from pixelpipe.core import sites


class AnswerLostProxy:
    """Forwards each request to the collector; the answer to the first POST is replaced by a 503."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.posts = 0
        self.answered = threading.Condition()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.forward()

            def do_POST(self):
                self.forward()

            def forward(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length", "connection")}
                answer = httpx.request(self.command, proxy.upstream + self.path, content=body,
                                       headers=headers, timeout=30)
                status, content = answer.status_code, answer.content
                if self.command == "POST":
                    proxy.posts += 1
                    if proxy.posts == 1:  # committed, but the SDK never hears so
                        status, content = 503, b'{"error": "answer lost on the way"}'
                self.send_response(status)
                self.send_header("Content-Type", answer.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)
                with proxy.answered:
                    proxy.answered.notify_all()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for_posts(self, count: int, timeout: float = 30) -> None:
        with self.answered:
            assert self.answered.wait_for(lambda: self.posts >= count, timeout), f"{self.posts} POSTs"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sdk_collector(collector_process, db):
    """A collector that drops crawler traffic (the default), behind an answer-losing proxy, and
    a site `shop` with a write key."""
    sites.save_site(db, "shop", create=True)
    key = sites.new_write_key(db, "shop")
    collector = collector_process(env={"PIXELPIPE_DROP_BOTS": "true"})
    proxy = AnswerLostProxy(collector.url)
    yield proxy, key, collector
    proxy.close()


def stored(db, source):
    return db.execute(
        "SELECT id, site_id, event_type, visitor_id, url, event_id::text, session_id, raw_event_data, created_at "
        "FROM events_log WHERE source = %s ORDER BY id", (source,)).fetchall()


def assert_retry_exported_once(db, database_url, rows, proxy):
    """The SDK retried the lost batch; the export leaves out exactly the re-sent copies."""
    assert proxy.posts >= 2
    hours = {row[8].astimezone(UTC).replace(minute=0, second=0, microsecond=0) for row in rows}
    left_out = set().union(*(resent_row_ids(database_url, hour) for hour in hours | {h + timedelta(hours=1) for h in hours}))
    first_copies = {}
    for row in rows:
        first_copies.setdefault(row[5], row[0])
    assert len(rows) > len(first_copies)  # the retry did re-send
    assert left_out == {row[0] for row in rows} - set(first_copies.values())


def by_type(rows):
    """event_type -> (site, visitor, url, event_id) of its first copy."""
    found = {}
    for _, site, event_type, visitor, url, event_id, *_ in rows:
        found.setdefault(event_type, (site, visitor, url, event_id))
    return found


@pytest.mark.parametrize("package", ["segment", "rudderstack"])
def test_segment_and_rudderstack_sdks(package, sdk_collector, db, database_url):
    proxy, key, _ = sdk_collector
    if package == "segment":
        from segment.analytics import Client
    else:
        from rudderstack.analytics import Client
    client = Client(write_key=key, host=proxy.url, max_retries=5, upload_interval=0.05)
    client.track(user_id="user-1", event="Order Completed", properties={"total": 9.5},
                 context={"page": {"url": "https://shop.example.com/checkout"}})
    client.page(anonymous_id="anon-1", name="Home", properties={"url": "https://shop.example.com/"})
    client.identify(user_id="user-1", traits={"plan": "pro"})
    client.flush()
    client.shutdown()

    rows = stored(db, "segment")
    found = by_type(rows)
    assert set(found) == {"Order Completed", "page", "identify"}
    assert found["Order Completed"][:3] == ("shop", "user-1", "https://shop.example.com/checkout")
    assert found["page"][:3] == ("shop", "anon-1", "https://shop.example.com/")
    assert found["identify"][:3] == ("shop", "user-1", None)
    for row in rows:  # the messageId is the event id; the message is kept as sent
        assert row[7]["messageId"] == row[5]
    assert {row[7]["type"] for row in rows} == {"track", "page", "identify"}
    assert_retry_exported_once(db, database_url, rows, proxy)


def test_segment_single_calls_and_an_unknown_key(sdk_collector, db):
    proxy, key, collector = sdk_collector
    single = httpx.post(f"{collector.url}/v1/track", auth=(key, ""), json={
        "userId": "user-2", "event": "Signed Up", "messageId": "msg-1"})
    assert single.status_code == 200 and single.json()["success"] is True
    short = httpx.post(f"{collector.url}/v1/p", content=json.dumps({  # analytics.js: key in the body
        "type": "page", "writeKey": key, "anonymousId": "anon-2", "context": {"page": {"url": "https://shop.example.com/a"}}}),
        headers={"Content-Type": "text/plain"})
    assert short.status_code == 200
    unknown = httpx.post(f"{collector.url}/v1/nope", auth=(key, ""), json={})
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    refused = httpx.post(f"{collector.url}/v1/batch", auth=("not-a-key", ""), json={"batch": [{"type": "track"}]})
    assert refused.status_code == 401 and refused.json()["code"] == "invalid_write_key"
    assert "pixelpipe site key" in refused.json()["message"]
    bad = httpx.post(f"{collector.url}/v1/batch", auth=(key, ""), json={"batch": [{"type": "track"}]})
    assert bad.status_code == 400 and bad.json()["code"] == "missing_event_type"
    assert [row[2:5] for row in stored(db, "segment")] == [
        ("Signed Up", "user-2", None), ("page", "anon-2", "https://shop.example.com/a")]
    reasons = [r for (r,) in db.execute("SELECT reason FROM events_rejected ORDER BY id")]
    assert reasons[0].startswith("invalid_write_key") and reasons[1].startswith("missing_event_type")


def test_posthog_sdk(sdk_collector, db, database_url):
    from posthog import Posthog

    proxy, key, _ = sdk_collector
    client = Posthog(key, host=proxy.url, max_retries=5, flush_interval=0.05, enable_exception_autocapture=False)
    client.capture("$pageview", distinct_id="user-1",
                   properties={"$current_url": "https://shop.example.com/", "$session_id": "s-1"})
    client.capture("Order Completed", distinct_id="user-1", properties={"total": 9.5})
    client.set(distinct_id="user-1", properties={"plan": "pro"})
    client.flush()
    client.shutdown()

    rows = stored(db, "posthog")
    found = by_type(rows)
    assert set(found) == {"$pageview", "Order Completed", "$set"}
    assert found["$pageview"][:3] == ("shop", "user-1", "https://shop.example.com/")
    assert found["Order Completed"][:2] == ("shop", "user-1")
    assert {row[6] for row in rows if row[2] == "$pageview"} == {"s-1"}
    for row in rows:
        assert row[7]["uuid"] == row[5]
    assert_retry_exported_once(db, database_url, rows, proxy)


@pytest.mark.parametrize("method", ["post", "get"])
def test_snowplow_tracker(method, sdk_collector, db, database_url):
    from snowplow_tracker import (
        Emitter,
        PageView,
        SelfDescribing,
        SelfDescribingJson,
        StructuredEvent,
        Subject,
        Tracker,
    )

    proxy, _, _ = sdk_collector
    emitter = Emitter(proxy.url, protocol="http", method=method, batch_size=10)
    tracker = Tracker("test", emitter, subject=Subject().set_user_id("user-1"), app_id="shop")
    tracker.track(PageView(page_url="https://shop.example.com/", page_title="Home"))
    tracker.track(StructuredEvent(category="shop", action="add-to-basket", label="sku-1"))
    tracker.track(SelfDescribing(SelfDescribingJson(
        "iglu:com.example/identify/jsonschema/1-0-0", {"plan": "pro"})))
    tracker.flush()
    if method == "post":
        proxy.wait_for_posts(2)  # the emitter retries the lost batch on its own timer

    rows = stored(db, "snowplow")
    found = by_type(rows)
    assert set(found) == {"page_view", "event", "identify"}
    assert found["page_view"][:3] == ("shop", "user-1", "https://shop.example.com/")
    assert all(row[1] == "shop" and row[3] == "user-1" for row in rows)
    self_describing = next(row[7] for row in rows if row[2] == "identify")
    assert self_describing["ue_pr"]["data"]["data"] == {"plan": "pro"}  # decoded, not base64
    for row in rows:
        assert row[7]["eid"] == row[5]
    if method == "post":
        assert_retry_exported_once(db, database_url, rows, proxy)


def test_posthog_js_compressions_and_an_lz64_bomb(sdk_collector, db):
    import base64
    import gzip
    import json
    from urllib.parse import urlencode

    import lzstring

    _, key, collector = sdk_collector

    def event(n):
        return {"event": "$pageview", "uuid": f"0190c3a0-0000-7000-8000-00000000000{n}",
                "properties": {"token": key, "distinct_id": f"d-{n}", "$current_url": f"https://shop.example.com/{n}"}}

    form = {"content-type": "application/x-www-form-urlencoded"}
    lz = lzstring.LZString().compressToBase64(json.dumps([event(1)]))
    answers = [
        httpx.post(f"{collector.url}/e/?compression=lz64", headers=form, content=urlencode({"data": lz})),
        httpx.post(f"{collector.url}/e/?compression=gzip-js", headers={"content-type": "text/plain"},
                   content=gzip.compress(json.dumps([event(2)]).encode())),
        httpx.post(f"{collector.url}/e/", headers=form,
                   content=urlencode({"data": base64.b64encode(json.dumps(event(3)).encode())})),
    ]
    answers += [httpx.post(f"{collector.url}{path}", json={"api_key": key, **event(n)})  # the other paths
                for n, path in ((4, "/capture/"), (5, "/i/v0/e/"))]
    assert [(a.status_code, a.json()["status"]) for a in answers] == [(200, 1)] * 5
    assert [(row[3], row[4]) for row in stored(db, "posthog")] == [
        (f"d-{n}", f"https://shop.example.com/{n}") for n in (1, 2, 3, 4, 5)]

    # lz-string carries JavaScript's UTF-16 code units: an emoji is two surrogate halves, joined
    # again; a lone half is not text (400, dead-lettered), never a 500.
    emoji = lzstring.LZString().compressToBase64(json.dumps([event(6)]).replace("$pageview", "\ud83d\ude00"))
    joined = httpx.post(f"{collector.url}/e/?compression=lz64", headers=form, content=urlencode({"data": emoji}))
    lone = httpx.post(f"{collector.url}/e/?compression=lz64", headers=form,
                      content=urlencode({"data": lzstring.LZString().compressToBase64('[{"event": "\ud83d"}]')}))
    assert joined.status_code == 200 and (lone.status_code, lone.json()["error"]) == (400, "bad_lz64")
    assert db.execute("SELECT event_type FROM events_log WHERE visitor_id = 'd-6'").fetchone() == ("\U0001F600",)

    # lz-string output can grow with the square of its input: refused at the body cap, kept in the dead letter.
    bomb = lzstring.LZString().compressToBase64("a" * 2_000_000)
    refused = httpx.post(f"{collector.url}/e/?compression=lz64", headers=form, content=urlencode({"data": bomb}))
    assert refused.status_code == 413 and refused.json()["error"] == "body_too_large"
    assert db.execute("SELECT count(*) FROM events_rejected WHERE reason LIKE 'body_too_large%'").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM events_rejected WHERE reason LIKE 'bad_lz64%'").fetchone()[0] == 1


def test_sdk_endpoints_keep_the_collectors_bounds(database_url, db):
    import base64
    import gzip
    import json

    from tests.ingest_service.conftest import make_client

    sites.save_site(db, "shop", create=True)
    key = sites.new_write_key(db, "shop")
    with make_client(database_url) as client:
        auth = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
        bomb = gzip.compress(b'{"batch": [' + b" " * 5_000_000 + b"]}")
        refused = client.post("/v1/batch", content=bomb, headers={**auth, "Content-Encoding": "gzip",
                                                                    "Content-Type": "application/json"})
        assert refused.status_code == 413 and refused.json()["code"] == "gzip_ratio"
        many = client.post("/v1/batch", headers=auth, json={"batch": [{"type": "track", "event": "e"}] * 1001})
        assert many.status_code == 413 and many.json()["code"] == "too_many_events"
        not_json = client.post("/batch/", content=b"{nope", headers={"Content-Type": "application/json"})
        assert not_json.status_code == 400 and not_json.json()["error"] == "malformed_json"
        # One bad tracker payload among good ones: it is dead-lettered, the others are kept.
        partial = client.post("/com.snowplowanalytics.snowplow/tp2", json={"data": [
            {"e": "pv", "aid": "shop", "url": "https://shop.example.com/", "tv": "py-1"},
            {"e": "ue", "aid": "shop", "ue_px": "not base64 json!", "tv": "py-1"}]})
        assert partial.status_code == 200 and (partial.json()["accepted"], partial.json()["rejected"]) == (1, 1)
        assert partial.json()["errors"][0]["error"] == "bad_base64"
    reasons = [r for (r,) in db.execute("SELECT reason FROM events_rejected ORDER BY id")]
    assert [r.split(":")[0] for r in reasons] == ["gzip_ratio", "too_many_events", "malformed_json", "bad_base64"]
    stored_bad = db.execute("SELECT convert_from(raw_body, 'UTF8') FROM events_rejected WHERE reason LIKE 'bad_base64%'").fetchone()[0]
    assert json.loads(stored_bad)["ue_px"] == "not base64 json!"  # the payload as the tracker sent it


def test_tracker_payloads_of_any_json_shape_are_answered_never_500(database_url, db):
    from tests.ingest_service.conftest import make_client

    with make_client(database_url) as client:
        answer = client.post("/com.snowplowanalytics.snowplow/tp2", json={"data": [
            {"e": [1], "aid": "shop", "tv": "py-1"},
            {"e": "ue", "aid": "shop", "ue_pr": '{"data": [1]}', "tv": "py-1"},
            {"e": "ue", "aid": "shop", "ue_pr": '{"data": {"schema": ["x"]}}', "tv": "py-1"}]})
    assert answer.status_code == 200 and (answer.json()["accepted"], answer.json()["rejected"]) == (2, 1)
    assert answer.json()["errors"][0]["error"] == "missing_event_type"
    assert [row[2] for row in stored(db, "snowplow")] == ["unstruct", "unstruct"]


def test_rudderstack_beacon_and_jitsu_routes(database_url, db):
    """RudderStack's useBeacon batch (key in the query string, text/plain) and Jitsu's
    /api/s/{type} (key in X-Write-Key) land as Segment-shaped events of the key's site."""
    from tests.ingest_service.conftest import make_client

    sites.save_site(db, "shop", create=True)
    key = sites.new_write_key(db, "shop")
    page = {"page": {"url": "https://shop.example.com/a", "path": "/a"}}
    beacon = json.dumps({"batch": [
        {"type": "page", "messageId": "rs-1", "anonymousId": "anon-1", "context": page},
        {"type": "track", "event": "Added", "messageId": "rs-2", "anonymousId": "anon-1", "context": page}],
        "sentAt": "2026-12-05T08:00:00.000Z"})
    jitsu = {"type": "page", "messageId": "js-1", "anonymousId": "anon-2", "context": page}
    with make_client(database_url) as client:
        sent = client.post(f"/beacon/v1/batch?writeKey={key}", content=beacon,
                           headers={"Content-Type": "text/plain;charset=UTF-8"})
        unkeyed = client.post("/beacon/v1/batch", content=beacon, headers={"Content-Type": "text/plain"})
        posted = client.post("/api/s/page", json=jitsu, headers={"X-Write-Key": key})
        server = client.post("/api/s/s2s/track", json={**jitsu, "type": "track", "event": "Paid",
                                                       "messageId": "js-2"}, headers={"X-Write-Key": key})
        wrong_type = client.post("/api/s/nope", json=jitsu, headers={"X-Write-Key": key})
        wrong_key = client.post("/api/s/page", json=jitsu, headers={"X-Write-Key": "nope"})
    assert sent.status_code == 200 and sent.json()["accepted"] == 2
    assert unkeyed.status_code == 401 and unkeyed.json()["code"] == "invalid_write_key"
    assert posted.status_code == 200 and server.status_code == 200
    assert wrong_type.status_code == 404 and wrong_key.status_code == 401
    assert [row[1:5] for row in stored(db, "segment")] == [
        ("shop", "page", "anon-1", "https://shop.example.com/a"),
        ("shop", "Added", "anon-1", "https://shop.example.com/a")]
    assert [(row[1], row[2], row[3]) for row in stored(db, "jitsu")] == [
        ("shop", "page", "anon-2"), ("shop", "Paid", "anon-2")]
