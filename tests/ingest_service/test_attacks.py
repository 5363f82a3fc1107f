"""Issue 20's holes at the collector's edge, each tried as a hostile client would, through the real
collector (in process, or `pixelpipe collector` where sockets and workers matter) and database."""

from __future__ import annotations

import gzip

import orjson

from pixelpipe.core import sites
from tests.ingest_service.conftest import make_client


def keyed_site(db, site: str, hosts: list[str] | None = None) -> str:
    sites.save_site(db, site, create=True, allowed_hosts=hosts)
    return sites.new_write_key(db, site)


def rows_holding(db, text: str) -> tuple[int, int]:
    """Event rows and dead-letter rows in which `text` appears anywhere."""
    return db.execute(
        """SELECT (SELECT count(*) FROM events_log WHERE raw_event_data::text LIKE '%%' || %s || '%%'),
                  (SELECT count(*) FROM events_rejected WHERE position(convert_to(%s, 'UTF8') IN raw_body) > 0)""",
        (text, text)).fetchone()


# --- 4. write keys ---------------------------------------------------------------------------------

def test_write_keys_reach_neither_raw_event_data_nor_dead_letters(database_url, db):
    key = keyed_site(db, "shop")
    with make_client(database_url) as collector:
        answers = [
            collector.post("/v1/track", json={"writeKey": key, "type": "track", "event": "signup", "userId": "u1"}),
            collector.post("/v1/track", json={"writeKey": key, "type": "track", "userId": "u1"}),  # no event name
            collector.post("/e/", json={"api_key": key, "event": "pageview", "distinct_id": "d1",
                                        "properties": {"token": key, "$current_url": "https://shop.example/"}}),
            collector.post("/batch/", content=gzip.compress(orjson.dumps(
                {"api_key": key, "batch": [{"event": "a", "distinct_id": "d2", "properties": {"token": key}},
                                           {"distinct_id": "d2", "properties": {"token": key}}]})),
                headers={"content-type": "application/json", "content-encoding": "gzip"}),
            collector.post("/e/", content=b'{"api_key": "' + key.encode() + b'", "event": ',  # malformed
                           headers={"content-type": "application/json"}),
        ]
    assert [a.status_code for a in answers] == [200, 400, 200, 200, 400]
    assert db.execute("SELECT count(*) FROM events_log WHERE site_id = 'shop'").fetchone()[0] == 3
    assert db.execute("SELECT count(*) FROM events_rejected").fetchone()[0] == 3
    assert rows_holding(db, key) == (0, 0)
    assert rows_holding(db, "signup")[0] == 1  # the rest of the event is kept as sent


def test_a_browser_request_with_a_sites_key_must_come_from_its_hosts(database_url, db):
    key = keyed_site(db, "shop", ["shop.example.com"])
    event = {"api_key": key, "event": "pageview", "distinct_id": "d1"}
    with make_client(database_url) as collector:
        forged = collector.post("/e/", json=event, headers={"origin": "https://evil.example"})
        ours = collector.post("/e/", json=event, headers={"origin": "https://shop.example.com"})
        server_side = collector.post("/e/", json=event)
    assert forged.status_code == 400 and forged.json()["error"] == "host_not_allowed"
    assert ours.status_code == 200 and server_side.status_code == 200
    assert db.execute("SELECT count(*) FROM events_log WHERE site_id = 'shop'").fetchone()[0] == 2
