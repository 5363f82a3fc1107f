"""Each endpoint and each bad input: the HTTP answer and the rows (or dead-letter rows) it leaves."""

import gzip

import orjson
import pytest

from tests.ingest_service.conftest import make_client


def events(db):
    return db.execute(
        """SELECT event_type, site_id, session_id, path, ip_address::text, raw_event_data, created_at
           FROM events_log ORDER BY id"""
    ).fetchall()


def rejected(db):
    return db.execute("SELECT reason, endpoint, body_size, raw_body FROM events_rejected ORDER BY id").fetchall()


def post(client, body, content_type="application/json", **headers):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post("/collect", content=data, headers={"content-type": content_type, **headers})


def test_pixel_stores_the_event_and_answers_a_gif(client, db):
    response = client.get("/i", params={"eventType": "pageview", "url": "https://shop.example.com/a",
                                        "sessionId": "s1", "custom": "kept"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert "no-store" in response.headers["cache-control"]
    assert response.content.startswith(b"GIF89a")
    [(event_type, site, session, path, _, raw, _)] = events(db)
    assert (event_type, site, session, path) == ("pageview", "shop-example-com", "s1", "/a")
    assert raw["custom"] == "kept"


def test_pixel_with_bad_input_still_answers_a_gif_and_dead_letters(client, db):
    response = client.get("/i", params={"siteId": "s"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert events(db) == []
    [(reason, endpoint, _, raw)] = rejected(db)
    assert reason.startswith("missing_event_type") and endpoint == "/i"
    assert bytes(raw) == b"siteId=s"


def test_pixel_refused_by_the_database_is_dead_lettered_and_still_a_gif(client, db):
    # A sealed hour refuses inserts (the export has read it); the pixel must not break the page.
    db.execute("SELECT events_log_seal_hour(date_trunc('hour', now()))")
    db.commit()
    response = client.get("/i", params={"eventType": "pageview", "siteId": "s"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert events(db) == []
    [(reason, endpoint, _, raw)] = rejected(db)
    assert reason.startswith("database_refused:") and "_sealed" in reason and endpoint == "/i"
    assert bytes(raw) == b"eventType=pageview&siteId=s"


def test_single_event_post(client, db):
    response = post(client, {"eventType": "click", "siteId": "site-a", "button": {"id": 7}})
    assert response.status_code == 200
    assert response.json() == {"accepted": 1, "rejected": 0}
    [(event_type, site, *_rest)] = events(db)
    assert (event_type, site) == ("click", "site-a")


def test_array_of_events(client, db):
    response = post(client, [{"eventType": "a", "siteId": "s"}, {"eventType": "b", "siteId": "s"}])
    assert response.json() == {"accepted": 2, "rejected": 0}
    assert [e[0] for e in events(db)] == ["a", "b"]


def test_batch_envelope_children_are_rows_sharing_one_transaction_and_the_envelope_is_not(client, db):
    body = {"eventType": "batch", "siteId": "site-b", "sessionId": "sess", "events": [
        {"eventType": "pageview"}, {"eventType": "click"}, {"eventType": "scroll", "depth": 50}]}
    response = post(client, body)
    assert response.json() == {"accepted": 3, "rejected": 0}
    rows = events(db)
    assert [r[0] for r in rows] == ["pageview", "click", "scroll"]
    assert {r[1] for r in rows} == {"site-b"} and {r[2] for r in rows} == {"sess"}
    assert len({r[6] for r in rows}) == 1  # one created_at: one transaction


def test_invalid_events_in_a_batch_are_dead_lettered_and_the_valid_ones_kept(client, db):
    body = {"eventType": "batch", "siteId": "s", "events": [
        {"eventType": "ok1"}, {"noType": True}, "not an object", {"eventType": "ok2"}]}
    response = post(client, body)
    assert response.status_code == 200
    payload = response.json()
    assert (payload["accepted"], payload["rejected"]) == (2, 2)
    assert [e["error"] for e in payload["errors"]] == ["missing_event_type", "not_an_object"]
    assert [e[0] for e in events(db)] == ["ok1", "ok2"]
    reasons = [r[0] for r in rejected(db)]
    assert reasons[0].startswith("missing_event_type") and reasons[1].startswith("not_an_object")
    assert orjson.loads(bytes(rejected(db)[0][3])) == {"noType": True}


def test_sendbeacon_text_plain_and_gzip(client, db):
    body = orjson.dumps({"eventType": "batch", "siteId": "s", "events": [{"eventType": "beacon"}]})
    assert post(client, body, "text/plain;charset=UTF-8").json()["accepted"] == 1
    assert post(client, gzip.compress(body), "application/json",
                **{"content-encoding": "gzip"}).json()["accepted"] == 1
    assert [e[0] for e in events(db)] == ["beacon", "beacon"]


@pytest.mark.parametrize(
    ("body", "content_type", "headers", "status", "code"),
    [
        (b'{"eventType": "x", ', "application/json", {}, 400, "malformed_json"),
        (b'{"eventType": "x"}', "application/xml", {}, 415, "unsupported_media_type"),
        (b"42", "application/json", {}, 400, "not_an_object"),
        (b"not gzip at all", "application/json", {"content-encoding": "gzip"}, 400, "bad_gzip"),
        (orjson.dumps({"siteId": "s"}), "application/json", {}, 400, "missing_event_type"),
        (orjson.dumps({"eventType": "e" * 51, "siteId": "s"}), "application/json", {}, 400,
         "event_type_too_long"),
        (b'{"eventType": "x", "siteId": "s", "v": "a\\u0000b"}', "application/json", {}, 400,
         "nul_character"),
        (b'{"eventType": "x", "siteId": "s", "v": ' + b"[" * 40 + b"]" * 40 + b"}", "application/json",
         {}, 400, "too_deep"),
        (b"[" * 5000 + b"]" * 5000, "application/json", {}, 400, "too_deep"),
    ],
)
def test_bad_input_gets_a_specific_error_and_a_dead_letter_row(client, db, body, content_type, headers,
                                                               status, code):
    response = post(client, body, content_type, **headers)
    assert response.status_code == status
    assert response.json()["error"] == code
    assert events(db) == []
    [(reason, endpoint, _, _)] = rejected(db)
    assert reason.startswith(code) and endpoint == "/collect"


def test_body_over_the_cap_is_413_and_dead_lettered_with_its_size(database_url, db):
    with make_client(database_url, max_body_bytes=1000, dead_letter_body_cap=100) as small:
        big = orjson.dumps({"eventType": "x", "siteId": "s", "pad": "p" * 2000})
        response = post(small, big)
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"
    [(reason, _, size, raw)] = rejected(db)
    assert reason.startswith("body_too_large") and size == len(big)
    assert len(bytes(raw)) <= 100


def test_gzip_bomb_is_413(database_url, db):
    bomb = gzip.compress(b'{"eventType": "x", "pad": "' + b"a" * 1_000_000 + b'"}')
    assert len(bomb) < 10_000
    with make_client(database_url) as default:
        response = post(default, bomb, **{"content-encoding": "gzip"})
    with make_client(database_url, max_body_bytes=10_000) as small:
        small_bomb = post(small, bomb, **{"content-encoding": "gzip"})
        # Compressible as real batches are, but inflating past the cap.
        big = gzip.compress(orjson.dumps([{"eventType": "x", "siteId": "s", "n": n} for n in range(1000)]))
        over_cap = post(small, big, **{"content-encoding": "gzip"})
    assert response.status_code == 413
    assert response.json()["error"] == "gzip_ratio"  # refused after inflating 64 KiB, not 1 MiB
    assert over_cap.status_code == 413 and over_cap.json()["error"] == "body_too_large"
    assert small_bomb.status_code == 413 and small_bomb.json()["error"] == "body_too_large"
    assert len(rejected(db)) == 3


def test_more_events_than_the_batch_cap_is_413(database_url, db):
    with make_client(database_url, max_batch_events=10) as small:
        response = post(small, [{"eventType": "x", "siteId": "s"}] * 11)
    assert response.status_code == 413
    assert response.json()["error"] == "too_many_events"
    assert events(db) == [] and len(rejected(db)) == 1


def test_a_site_that_is_not_allowed_is_dead_lettered(database_url, db):
    db.execute("INSERT INTO sites (site_id, allowed) VALUES ('banned-site', false)")
    with make_client(database_url) as collector:
        response = post(collector, [{"eventType": "x", "siteId": "banned-site"},
                                    {"eventType": "x", "siteId": "fine-site"}])
        pixel = collector.get("/i", params={"eventType": "x", "siteId": "banned-site"})
    assert response.json()["accepted"] == 1 and response.json()["errors"][0]["error"] == "site_not_allowed"
    assert pixel.status_code == 200 and pixel.headers["content-type"] == "image/gif"
    assert [e[1] for e in events(db)] == ["fine-site"]
    assert [r[0].split(":")[0] for r in rejected(db)] == ["site_not_allowed", "site_not_allowed"]


def test_cors_preflight_and_simple_request(client):
    preflight = client.options("/collect", headers={
        "origin": "https://shop.example.com", "access-control-request-method": "POST",
        "access-control-request-headers": "content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://shop.example.com"
    assert preflight.headers["access-control-allow-credentials"] == "true"
    simple = post(client, {"eventType": "x", "siteId": "s"}, origin="https://shop.example.com")
    assert simple.headers["access-control-allow-origin"] == "https://shop.example.com"
    assert simple.headers["vary"] == "Origin"
    assert "access-control-allow-origin" not in post(client, {"eventType": "x", "siteId": "s"}).headers


def test_cors_restricted_to_configured_origins(database_url):
    with make_client(database_url, cors_origins=("https://allowed.example",)) as restricted:
        ok = restricted.options("/collect", headers={
            "origin": "https://allowed.example", "access-control-request-method": "POST"})
        denied = restricted.options("/collect", headers={
            "origin": "https://evil.example", "access-control-request-method": "POST"})
    assert ok.headers["access-control-allow-origin"] == "https://allowed.example"
    assert denied.status_code == 403 and denied.json()["error"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in denied.headers


def test_pixel_answers_cors_like_the_other_routes(client, database_url):
    pixel = {"eventType": "pageview", "siteId": "s"}
    anywhere = client.get("/i", params=pixel, headers={"origin": "https://a.example"})
    assert anywhere.headers["access-control-allow-origin"] == "https://a.example"
    assert anywhere.headers["access-control-allow-credentials"] == "true"
    assert "access-control-allow-origin" not in client.get("/i", params=pixel).headers
    with make_client(database_url, cors_origins=("https://allowed.example",)) as restricted:
        ok = restricted.get("/i", params=pixel, headers={"origin": "https://allowed.example"})
        other = restricted.get("/i", params=pixel, headers={"origin": "https://evil.example"})
    assert ok.headers["access-control-allow-origin"] == "https://allowed.example"
    assert ok.headers["vary"] == "Origin"
    assert "access-control-allow-origin" not in other.headers
    assert other.status_code == 200 and other.content.startswith(b"GIF89a")  # still the image


def test_tracker_health_readiness_metrics_openapi(client):
    script = client.get("/t.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "sendBeacon" in script.text and "data-site-id" in script.text.replace("dataset", "data-site-id")
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").json() == {"status": "ready"}
    post(client, [{"eventType": "x", "siteId": "s"}] * 3)
    metrics = client.get("/metrics").text
    assert "pixelpipe_events_accepted_total 3" in metrics
    assert "pixelpipe_flush_seconds_count" in metrics and "pixelpipe_queue_rows" in metrics
    spec = client.get("/openapi.json").json()
    assert {"/i", "/collect", "/t.js", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])


def test_readyz_is_503_when_the_database_is_unreachable():
    from pixelpipe.process import free_port

    with make_client(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing") as orphan:
        response = orphan.get("/readyz")
        post_response = post(orphan, {"eventType": "x", "siteId": "s"})
    assert response.status_code == 503
    assert post_response.status_code == 503
    assert post_response.headers["retry-after"]


def test_the_tracker_is_small_cacheable_and_served_gzipped(client):
    plain = client.get("/t.js", headers={"Accept-Encoding": "identity"})
    gzipped = client.get("/t.js", headers={"Accept-Encoding": "gzip, br"})
    assert gzipped.headers["content-encoding"] == "gzip" and gzipped.text == plain.text
    assert int(gzipped.headers["content-length"]) <= 3 * 1024  # the budget, docs/tracker.md
    for response in (plain, gzipped):
        assert response.headers["cache-control"] == "public, max-age=300"
        assert "Accept-Encoding" in response.headers["vary"]
        again = client.get("/t.js", headers={"If-None-Match": response.headers["etag"],
                                             "Accept-Encoding": response.request.headers["accept-encoding"]})
        assert again.status_code == 304 and again.content == b""
    assert plain.headers["etag"] != gzipped.headers["etag"]
