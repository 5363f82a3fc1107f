"""Hostile input at scale: whatever a client sends, the collector answers 2xx or 4xx, keeps every
valid event beside the bad ones, and leaves a dead-letter reason for each bad one."""

import gzip
import json
from urllib.parse import quote

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ingest_service.conftest import make_client

PROFILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# JSON values as clients really send them, and as attackers do: huge numbers, deep nesting,
# NUL and other control characters, lone surrogates (as JSON escapes), long strings.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
    st.sampled_from(["\x00", "a\x00b", "\ud800", "\udfff", "é" * 30, "x" * 3000, "1e999", "victim\n"]),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=30)
events = st.fixed_dictionaries(
    {"eventType": st.one_of(st.text(min_size=0, max_size=60), scalars)},
    optional={"siteId": st.one_of(st.sampled_from(["s", "site-a", "bad site", "a" * 101, "victim\n"]), scalars),
              "timestamp": st.one_of(scalars, st.sampled_from(["2026-11-30T12:00:00+23:59", "0001-01-01T00:00:00+01:00",
                                                               "9999-12-31T23:59:59-14:00"])),
              "url": st.one_of(scalars, st.sampled_from(["https://ＥＸＡＭＰＬＥ.com/", "https://[::1]/", "http://a..b/"])),
              "sessionId": scalars, "visitorId": scalars, "path": scalars, "userAgent": scalars,
              "extra": json_values},
)


def _encode(value) -> bytes:
    # json, not orjson: it writes lone surrogates as \\ud800 escapes and ints of any size.
    return json.dumps(value, ensure_ascii=True).encode()


def _counts(db):
    return db.execute("SELECT (SELECT count(*) FROM events_log), (SELECT count(*) FROM events_rejected)").fetchone()


@PROFILE
@given(batch=st.lists(events, min_size=1, max_size=8), gzipped=st.booleans())
def test_any_batch_is_answered_4xx_or_2xx_and_every_event_is_kept_or_dead_lettered(database_url, db, batch, gzipped):
    body = _encode(batch)
    headers = {"content-type": "application/json"}
    if gzipped:
        body, headers["content-encoding"] = gzip.compress(body), "gzip"
    before = _counts(db)
    valid = orjson.dumps({"eventType": "ok", "siteId": "s"})
    with make_client(database_url) as client:
        response = client.post("/collect", content=body, headers=headers)
        alongside = client.post("/collect", content=b"[" + valid + b"," + _encode(batch[0]) + b"]",
                                headers={"content-type": "application/json"})
    assert response.status_code in (200, 400, 413), response.text
    answer = response.json()
    stored, dead = (a - b for a, b in zip(_counts(db), before, strict=True))
    if response.status_code == 200 or answer.get("accepted", 0):
        assert answer["accepted"] + answer["rejected"] == len(batch)
    # Every event is a row or has a dead-letter reason (one row for many, past five).
    assert answer["accepted"] >= 0 and (answer["rejected"] == 0 or dead >= 1)
    try:
        orjson.loads(_encode(batch[0]))
    except orjson.JSONDecodeError:  # e.g. a lone surrogate: the whole document is not JSON
        assert alongside.status_code == 400 and alongside.json()["error"] == "malformed_json"
    else:  # a bad event does not cost the valid one beside it
        assert alongside.status_code == 200 and alongside.json()["accepted"] >= 1
        assert stored >= 1


@PROFILE
@given(body=st.binary(max_size=300), content_type=st.sampled_from(["application/json", "text/plain", "image/png"]),
       encoding=st.sampled_from([None, "gzip", "br"]))
def test_arbitrary_bytes_are_a_4xx_with_a_dead_letter_reason(database_url, db, body, content_type, encoding):
    headers = {"content-type": content_type, **({"content-encoding": encoding} if encoding else {})}
    before = _counts(db)
    with make_client(database_url) as client:
        response = client.post("/collect", content=body, headers=headers)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.json()["error"]
        assert _counts(db)[1] > before[1]  # the reason is in the dead letter


@PROFILE
@given(query=st.text(max_size=200))
def test_any_pixel_query_gets_the_gif(database_url, db, query):
    with make_client(database_url) as client:
        response = client.get("/i?" + quote(query.encode("utf-8", "surrogatepass"), safe="=&%"))
    assert response.status_code == 200 and response.content.startswith(b"GIF89a")


# --- the depth reading of a refused body (events.nesting_depth) ------------------------------------

def _reference_depth(text: bytes, stop: int) -> int:
    """A JSON scanner, byte by byte: the nesting at `stop`, strings and their escapes skipped."""
    depth, in_string, escaped = 0, False, False
    for byte in text[:stop]:
        if in_string:
            if escaped:
                escaped = False
            elif byte == ord("\\"):
                escaped = True
            elif byte == ord('"'):
                in_string = False
        elif byte == ord('"'):
            in_string = True
        elif byte in b"[{":
            depth += 1
        elif byte in b"]}":
            depth -= 1
    return depth


string_bodies = st.lists(st.sampled_from(["a", "[", "]", "{", "}", '\\"', "\\\\", "\\n"]), max_size=8).map(
    lambda parts: '"' + "".join(parts) + '"')
structure = st.lists(st.one_of(st.sampled_from(["[", "]", "{", "}", ",", ":", "1"]), string_bodies), max_size=60)


@given(structure, st.integers(min_value=0, max_value=2000))
@settings(max_examples=300, deadline=None)
def test_nesting_depth_skips_strings_as_a_json_scanner_does(parts, stop):
    from ingest_service import events

    text = ("[" * 1025 + "".join(parts)).encode()  # past the count that skips the reading
    stop = min(stop + 1025, len(text))  # also inside a string, or between a backslash and its escape
    assert events.nesting_depth(text, stop) == _reference_depth(text, stop)
