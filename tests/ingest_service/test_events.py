"""Field extraction rules, tested directly on the pure functions."""

import ipaddress
from datetime import UTC, datetime

import orjson
import pytest

from ingest_service.events import (
    EVENT_COLUMNS,
    EventRejected,
    RequestContext,
    anonymize_ip,
    client_ip,
    event_row,
    parse_timestamp,
    site_id_from_url,
)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
CTX = RequestContext(NOW, "203.0.113.9", "Mozilla/5.0 test", "https://shop.example.com/from-referer")


def row(event):
    return dict(zip(EVENT_COLUMNS, event_row(event, CTX), strict=True))


def test_site_id_is_derived_from_the_page_host():
    assert site_id_from_url("https://shop.example.com/cart?x=1") == "shop-example-com"
    assert row({"eventType": "pageview", "url": "https://Blog.Example.org/p"})["site_id"] == "blog-example-org"
    # No url in the event: the Referer header is the page.
    assert row({"eventType": "pageview"})["site_id"] == "shop-example-com"


def test_derived_site_ids_are_idna_encoded_validated_and_never_collide():
    assert site_id_from_url("https://ＥＸＡＭＰＬＥ.com/") == "example-com"  # as a browser maps it
    assert site_id_from_url("https://bücher.example/") == "xn----bcher--kva-example"  # its xn--bcher-kva form, "-" doubled
    assert site_id_from_url("https://shop-example.com/") == "shop--example-com"
    assert site_id_from_url("https://shop.example-com/") == "shop-example--com"
    hosts = ["a-b.c", "a.b-c", "a-b-c", "a.b.c", "ab.c", "a.bc", "xn--a.b", "xn-a.b", "a--b.c"]
    assert len({site_id_from_url(f"https://{h}/") for h in hosts}) == len(hosts)
    for bad in ("https://under_score.com/", "https://-lead.com/", "https://[::1]/", "https://" + "a" * 120 + ".com/"):
        assert site_id_from_url(bad) is None, bad


def test_timestamps_iso_epoch_ms_and_fallback():
    assert parse_timestamp("2026-11-24T10:00:00Z", NOW) == datetime(2026, 11, 24, 10, tzinfo=UTC)
    assert parse_timestamp(1764000000000, NOW) == datetime.fromtimestamp(1764000000, UTC)
    assert parse_timestamp("1764000000000", NOW) == datetime.fromtimestamp(1764000000, UTC)
    assert parse_timestamp("yesterday", NOW) == NOW
    assert parse_timestamp(10**20, NOW) == NOW
    fallen_back = row({"eventType": "x", "siteId": "s", "timestamp": "soon"})
    assert fallen_back["timestamp"] == NOW
    assert '"timestamp":"soon"' in fallen_back["raw_event_data"]  # original kept


def test_long_values_are_truncated_in_columns_and_kept_whole_in_raw():
    long_session = "s" * 150
    extracted = row({"eventType": "x", "siteId": "s", "sessionId": long_session, "path": "/" + "p" * 600})
    assert extracted["session_id"] == "s" * 100
    assert len(extracted["path"]) == 500
    assert long_session in extracted["raw_event_data"]


def test_path_comes_from_url_and_user_agent_from_header_unless_given():
    extracted = row({"eventType": "x", "url": "https://a.com/deep/page?q=1"})
    assert extracted["path"] == "/deep/page"
    assert extracted["user_agent"] == "Mozilla/5.0 test"
    assert row({"eventType": "x", "siteId": "s", "userAgent": "bot/1"})["user_agent"] == "bot/1"


@pytest.mark.parametrize(
    ("event", "code"),
    [
        ({"siteId": "s"}, "missing_event_type"),
        ({"eventType": "x" * 51, "siteId": "s"}, "event_type_too_long"),
        ({"eventType": "x", "siteId": "s", "note": "a\x00b"}, "nul_character"),
        ({"eventType": "x", "siteId": "s", "deep": [{"a\x00": 1}]}, "nul_character"),
        ({"eventType": "x", "siteId": "../other-tenant"}, "invalid_site_id"),
        ("just a string", "not_an_object"),
    ],
)
def test_invalid_events_are_rejected_with_a_specific_code(event, code):
    with pytest.raises(EventRejected) as error:
        event_row(event, CTX)
    assert error.value.code == code


def test_nesting_past_what_orjson_can_write_back_is_rejected_too():
    event = orjson.loads('{"eventType": "x", "siteId": "s", "a": ' + "[" * 300 + "]" * 300 + "}")
    with pytest.raises(EventRejected) as error:
        event_row(event, CTX)
    assert error.value.code == "too_deep"


def test_the_text_backslash_u0000_is_not_a_nul_and_is_kept():
    extracted = row({"eventType": "x", "siteId": "s", "note": "C:\\u0000"})
    assert orjson.loads(extracted["raw_event_data"])["note"] == "C:\\u0000"


def test_deep_nesting_is_rejected():
    event = {"eventType": "x", "siteId": "s"}
    node = event
    for _ in range(40):
        node["child"] = {}
        node = node["child"]
    with pytest.raises(EventRejected) as error:
        event_row(event, CTX)
    assert error.value.code == "too_deep"


def test_no_site_and_no_page_is_rejected():
    context = RequestContext(NOW, None, None, None)
    with pytest.raises(EventRejected) as error:
        event_row({"eventType": "x"}, context)
    assert error.value.code == "missing_site_id"


def test_ip_anonymisation():
    assert anonymize_ip("203.0.113.77") == "203.0.113.0"
    assert anonymize_ip("2001:db8:1234:5678:9abc:def0:1234:5678") == "2001:db8:1234::"


def test_forwarded_for_is_trusted_only_from_configured_proxies():
    proxies = (ipaddress.ip_network("127.0.0.0/8"),)
    assert client_ip("127.0.0.1", "198.51.100.7", proxies) == "198.51.100.7"
    assert client_ip("127.0.0.1", "6.6.6.6, 198.51.100.7, 127.0.0.2", proxies) == "198.51.100.7"
    assert client_ip("203.0.113.5", "198.51.100.7", proxies) == "203.0.113.5"
    assert client_ip("127.0.0.1", "198.51.100.7", ()) == "127.0.0.1"


def test_the_clients_event_id_is_kept_and_other_ids_map_to_the_same_uuid_each_time():
    import uuid

    given = "0b7a2c4e-55f1-4c1e-9d7e-3f6a1b2c3d4e"
    assert str(row({"eventType": "x", "siteId": "s", "eventId": given})["event_id"]) == given
    # Some SDKs' message ids are not UUIDs: the same text always gives the same UUID.
    first = row({"eventType": "x", "siteId": "s", "eventId": "ajs-next-17"})["event_id"]
    assert first == row({"eventType": "x", "siteId": "s", "eventId": "ajs-next-17"})["event_id"]
    assert first != row({"eventType": "x", "siteId": "s", "eventId": "ajs-next-18"})["event_id"]
    # None given: a fresh random id per event, version 8 (ours, never a re-send).
    assert uuid.UUID(row({"eventType": "x", "siteId": "s"})["event_id"]).version == 8
    # A client's version-8 UUID is mapped, so version 8 always means a server id.
    client_v8 = str(row({"eventType": "x", "siteId": "s"})["event_id"])
    assert row({"eventType": "x", "siteId": "s", "eventId": client_v8})["event_id"].version == 5
    assert row({"eventType": "x", "siteId": "s"})["event_id"] != row({"eventType": "x", "siteId": "s"})["event_id"]
    with pytest.raises(EventRejected) as rejected:
        row({"eventType": "x", "siteId": "s", "eventId": 12})
    assert rejected.value.code == "invalid_event_id"
