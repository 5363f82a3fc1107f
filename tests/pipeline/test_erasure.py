"""Erasure of a visitor: gone from PostgreSQL and from both buckets' files, also an hour retention
purged; receipts, checks and `pixelpipe verify` agree afterwards; billing keeps what was delivered."""

import hashlib
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.defs.erasure.jobs import erase_visitor_job
from pipeline.defs.retention.assets import apply_retention
from pipeline.erasure import store_request
from pixelpipe.core.events_log import ensure_partitions
from tests.pipeline.conftest import materialize_export, partition_key, seed_events, verify
from tests.pipeline.test_billing import _bill

# Three ingest hours of October 2026: PURGED is exported and then dropped by retention, EXPORTED is
# exported and still in PostgreSQL, UNEXPORTED is not exported when the first erasure runs.
PURGED, EXPORTED, UNEXPORTED = (datetime(2026, 10, 10, h, tzinfo=UTC) for h in (5, 6, 7))
OCTOBER = datetime(2026, 10, 1, tzinfo=UTC)


def hour_prefix(site, hour):
    return f"site_id={site}/date={hour:%Y-%m-%d}/hour={hour:%H}/"


def exported_rows(s3, bucket, site, hour):
    """Every row of a site-hour's files, and the receipt beside them."""
    rows, receipt = [], None
    for item in s3.list_objects_v2(Bucket=bucket, Prefix=hour_prefix(site, hour)).get("Contents", []):
        body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        if item["Key"].endswith("_receipt.json"):
            receipt = json.loads(body)
        else:
            rows += pq.read_table(io.BytesIO(body)).to_pylist()
    return rows, receipt


def file_digests(s3, bucket, site, hour):
    return {item["Key"]: item["ETag"]
            for item in s3.list_objects_v2(Bucket=bucket, Prefix=hour_prefix(site, hour)).get("Contents", [])}


def erase(database_url, s3_server, buckets, *args):
    """`pixelpipe erase` as an operator runs it against the stack's database and S3."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIXELPIPE_", "AWS_"))}
    env.update(DATABASE_URL=database_url, PIXELPIPE_HOME="/nonexistent", PIXELPIPE_S3_ENDPOINT=s3_server.endpoint,
               AWS_ACCESS_KEY_ID=s3_server.access_key, AWS_SECRET_ACCESS_KEY=s3_server.secret_key,
               PIXELPIPE_CLIENT_BUCKET=buckets["client"], PIXELPIPE_BACKUP_BUCKET=buckets["backup"])
    return subprocess.run([sys.executable, "-m", "pixelpipe.cli", "erase", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def visitor_rows(db, site, visitor):
    return db.execute("SELECT count(*) FROM events_log WHERE site_id = %s AND visitor_id = %s",
                      (site, visitor)).fetchone()[0]


def test_erasure_across_purged_exported_and_unexported_hours_in_both_buckets(
        resources, db, database_url, s3, s3_server, buckets):
    ensure_partitions(db, now=UNEXPORTED, hours_back=3, hours_ahead=2)
    for hour in (PURGED, EXPORTED, UNEXPORTED):
        seed_events(db, hour, "alpha", 20)  # vis-3 has rows 3, 10 and 17 of each hour
        seed_events(db, hour, "beta", 10)   # and beta has a vis-3 too, which stays
    for hour in (PURGED, EXPORTED):
        assert materialize_export(resources, partition=partition_key(hour)).success
    purged = [v.hour for v in apply_retention(db, PURGED + timedelta(hours=25, minutes=30), 24) if v.purged]
    assert purged == [PURGED]
    beta_before = {(bucket, hour): file_digests(s3, buckets[bucket], "beta", hour)
                   for bucket in ("client", "backup") for hour in (PURGED, EXPORTED)}
    beta_vis3 = visitor_rows(db, "beta", "vis-3")
    db.execute("INSERT INTO events_rejected (reason, raw_body) VALUES ('invalid_json', %s), ('invalid_json', %s)",
               (b'{"siteId":"alpha","visitorId":"vis-3",', b'{"siteId":"beta","visitorId":"vis-3",'))

    done = erase(database_url, s3_server, buckets, "--site", "alpha", "--visitor", "vis-3",
                 "--reason", "GDPR request 2026-118")
    assert done.returncode == 0, done.stderr
    erasure_id = int(done.stdout)
    assert ("6 rows removed from events_log, 6 from the exported files (2 hours rewritten in the client "
            "and backup buckets, receipts included), 1 dead letters") in done.stderr

    # PostgreSQL: the visitor's rows and dead letter are gone; another site's same id is not.
    assert visitor_rows(db, "alpha", "vis-3") == 0 and visitor_rows(db, "beta", "vis-3") == beta_vis3
    assert db.execute("SELECT count(*) FROM events_log WHERE site_id = 'alpha'").fetchone()[0] == 34
    assert [bytes(b) for (b,) in db.execute("SELECT raw_body FROM events_rejected")] == [
        b'{"siteId":"beta","visitorId":"vis-3",']
    # Both buckets: the rewritten hours hold the other 17 rows and say how many were erased.
    for bucket in (buckets["client"], buckets["backup"]):
        for hour in (PURGED, EXPORTED):
            rows, receipt = exported_rows(s3, bucket, "alpha", hour)
            assert len(rows) == 17 and all(row["visitor_id"] != "vis-3" for row in rows)
            assert (receipt["rows"], receipt["erased_events"]) == (17, 3)
            assert receipt["event_ids_sha256"] == hashlib.sha256(
                "".join(row["event_id"] for row in rows).encode()).hexdigest()
        assert verify(s3_server, f"s3://{bucket}").returncode == 0
    assert beta_before == {(bucket, hour): file_digests(s3, buckets[bucket], "beta", hour)
                           for bucket in ("client", "backup") for hour in (PURGED, EXPORTED)}
    # The export's checks ran on the rewritten hours and passed: they stay verified for retention.
    assert db.execute("SELECT count(*) FROM export_hours WHERE verified_at IS NOT NULL").fetchone()[0] == 2
    # The ledger: what, when and why, and the visitor only as a digest.
    ledger = db.execute("SELECT site_id, visitor_sha256, reason, finished_at IS NOT NULL, rows_in_database, "
                        "rows_in_files, dead_letters, hours_rewritten FROM erasures WHERE id = %s",
                        (erasure_id,)).fetchone()
    assert ledger == ("alpha", hashlib.sha256(b"vis-3").hexdigest(), "GDPR request 2026-118", True, 6, 6, 1, 2)
    per_hour = db.execute("SELECT ingest_hour, rows_in_database, rows_in_files FROM erasure_hours "
                          "ORDER BY 1").fetchall()
    assert per_hour == [(PURGED, 0, 3), (EXPORTED, 3, 3), (UNEXPORTED, 3, 0)]

    # The hour not yet exported is exported without the visitor, and its checks pass.
    later = materialize_export(resources, partition=partition_key(UNEXPORTED))
    assert later.success and all(c.passed for c in later.get_asset_check_evaluations())
    rows, receipt = exported_rows(s3, buckets["client"], "alpha", UNEXPORTED)
    assert len(rows) == 17 and "vis-3" not in {row["visitor_id"] for row in rows}
    assert receipt["erased_events"] == 0  # erased before delivery: never delivered, never billed

    # Billing keeps what was delivered: 20 + 20 + 17 for alpha, from the ledger and the receipts.
    db.execute("""INSERT INTO export_hours (ingest_hour, rows, sites, files, bytes, exported_at,
                      reconciled_at, tenants_verified_at)
                  SELECT h, 0, 0, 0, 0, now(), now(), now()
                  FROM generate_series(%s::timestamptz, %s::timestamptz, interval '1 hour') h
                  ON CONFLICT DO NOTHING""", (OCTOBER, datetime(2026, 10, 31, 23, tzinfo=UTC)))
    assert _bill(resources, "2026-10-01").success
    statement_key = "billing/month=2026-10/statement.json"

    def statement():
        body = s3.get_object(Bucket=buckets["client"], Key=statement_key)["Body"].read()
        return {line["site_id"]: line for line in orjson.loads(body)["sites"]}

    billed = statement()
    assert (billed["alpha"]["events"], billed["beta"]["events"]) == (57, 30)
    assert verify(s3_server, f"s3://{buckets['client']}", "--billing", "2026-10").returncode == 0

    # A second erasure (vis-5: rows 5 and 19 of each alpha hour), from Dagster (what the UI launches), after the month was billed: the
    # statement is re-issued over the new receipts, with the same events and amount.
    # The job gets a stored request's id: Dagster keeps run config for good, so never the visitor.
    request_id = store_request(db, "alpha", "vis-5", "account deleted")
    result = erase_visitor_job.execute_in_process(
        run_config={"ops": {"erase_visitor": {"config": {"request_id": request_id}}}}, resources=resources)
    assert result.success
    assert "vis-5" not in json.dumps(result.dagster_run.run_config)
    assert db.execute("SELECT count(*) FROM erasure_requests").fetchone()[0] == 0  # done: only the digest stays
    output = next(e for e in result.events_for_node("erase_visitor") if e.is_successful_output)
    metadata = output.step_output_data.metadata
    assert {k: metadata[k].value for k in ("rows_in_database", "rows_in_files", "hours_rewritten",
                                           "statements_reissued")} == {
        "rows_in_database": 4, "rows_in_files": 6, "hours_rewritten": 3, "statements_reissued": 1}
    assert visitor_rows(db, "alpha", "vis-5") == 0
    reissued = statement()
    assert (reissued["alpha"]["events"], reissued["alpha"]["amount_usd"]) == (57, billed["alpha"]["amount_usd"])
    assert reissued["alpha"]["receipts_sha256"] != billed["alpha"]["receipts_sha256"]
    for bucket in (buckets["client"], buckets["backup"]):
        assert verify(s3_server, f"s3://{bucket}").returncode == 0
    assert verify(s3_server, f"s3://{buckets['client']}", "--billing", "2026-10").returncode == 0
    rebilled = _bill(resources, "2026-10-01")
    assert rebilled.success and all(c.passed for c in rebilled.get_asset_check_evaluations())
    assert statement()["alpha"]["events"] == 57


def test_erase_says_what_is_missing(database_url, s3_server, buckets):
    empty = erase(database_url, s3_server, buckets, "--site", "alpha", "--visitor", "")
    assert empty.returncode == 2 and "the visitor is empty" in empty.stderr and "Traceback" not in empty.stderr


def test_an_erasure_that_dies_half_way_is_finished_by_running_it_again(
        resources, db, s3, s3_server, buckets, monkeypatch):
    import pipeline.erasure

    ensure_partitions(db, now=UNEXPORTED, hours_back=3, hours_ahead=2)
    for hour in (EXPORTED, UNEXPORTED):
        seed_events(db, hour, "alpha", 20)
        assert materialize_export(resources, partition=partition_key(hour)).success
    settings = resources["settings"]

    def s3_goes_away(*args, **kwargs):
        raise ConnectionError("S3 went away")

    # The first hour's files are rewritten, then the run dies before its receipt.
    monkeypatch.setattr(pipeline.erasure, "write_receipt", s3_goes_away)
    try:
        pipeline.erasure.erase_visitor(db, s3, settings, "alpha", "vis-3", "request 7")
    except ConnectionError:
        pass
    else:
        raise AssertionError("the erasure should have died")
    assert verify(s3_server, f"s3://{buckets['client']}").returncode == 1  # files and receipt disagree
    assert db.execute("SELECT count(*) FROM export_hours WHERE verified_at IS NULL").fetchone()[0] == 1
    monkeypatch.undo()

    again = pipeline.erasure.erase_visitor(db, s3, settings, "alpha", "vis-3", "request 7")
    assert (again.rows_in_database, again.rows_in_files) == (6, 6)  # nothing counted twice
    assert db.execute("SELECT count(*), bool_and(finished_at IS NOT NULL), sum(rows_in_files) FROM erasures"
                      ).fetchone() == (1, True, 6)
    for bucket in (buckets["client"], buckets["backup"]):
        for hour in (EXPORTED, UNEXPORTED):
            rows, receipt = exported_rows(s3, bucket, "alpha", hour)
            assert (len(rows), receipt["rows"], receipt["erased_events"]) == (17, 17, 3)
        assert verify(s3_server, f"s3://{bucket}").returncode == 0
    assert db.execute("SELECT count(*) FROM export_hours WHERE verified_at IS NOT NULL").fetchone()[0] == 2


def test_a_file_of_an_earlier_schema_version_is_rewritten_in_the_current_one(tmp_path):
    from pipeline.export_files import EXPORT_SCHEMA, rewrite_site_files

    old = EXPORT_SCHEMA.remove(EXPORT_SCHEMA.get_field_index("source"))  # version 2
    old = old.set(old.get_field_index("raw_event_data"), pa.field("raw_event_data", pa.string()))  # version 1
    hour = datetime(2026, 10, 10, 5, tzinfo=UTC)
    rows = {"id": [1, 2], "event_id": ["a", "b"], "event_type": ["pageview"] * 2, "session_id": [None] * 2,
            "visitor_id": ["vis-1", "vis-2"], "site_id": ["alpha"] * 2, "timestamp": [hour] * 2,
            "url": [None] * 2, "path": [None] * 2, "user_agent": [None] * 2, "ip_address": [None] * 2,
            "raw_event_data": ["{}"] * 2, "created_at": [hour] * 2}
    pq.write_table(pa.table(rows, schema=old), tmp_path / "v1.parquet")
    [file] = rewrite_site_files([tmp_path / "v1.parquet"], "alpha", hour, tmp_path / "out",
                                lambda batch: pc.not_equal(batch.column("visitor_id"), "vis-1"))
    table = pq.read_table(file.path)
    assert table.schema.equals(EXPORT_SCHEMA) and file.rows == 1
    assert table.column("source").to_pylist() == ["pixelpipe"] and table.column("visitor_id").to_pylist() == ["vis-2"]


def test_erasure_matches_the_visitor_exactly_and_reads_dead_letters_as_the_collector_did(
        resources, db, database_url, s3, s3_server, buckets):
    """"alice " is not "alice"; a dead letter is the visitor's when its decoded visitor and site
    are, whatever endpoint, encoding or escape it came in, and never because its text says alice."""
    import gzip
    from urllib.parse import urlencode

    import lzstring
    from starlette.testclient import TestClient

    from ingest_service.app import create_app
    from pixelpipe.core.settings import Settings
    from pixelpipe.core.sites import new_write_key

    ensure_partitions(db, now=EXPORTED, hours_back=1, hours_ahead=2)
    for visitor, count in (("alice", 3), ("alice ", 2), ("bob", 1)):
        db.execute("""INSERT INTO events_log (event_type, site_id, visitor_id, "timestamp", raw_event_data, created_at)
                      SELECT 'pageview', 'alpha', %s, %s, '{}'::jsonb, %s FROM generate_series(1, %s)""",
                   (visitor, EXPORTED, EXPORTED + timedelta(minutes=5), count))
    assert materialize_export(resources, partition=partition_key(EXPORTED)).success
    key = new_write_key(db, "alpha")
    segment = orjson.dumps({"writeKey": key, "type": "track", "anonymousId": "alice"})  # no event name
    with TestClient(create_app(Settings(), database_url)) as collector:
        alices = [  # each refused (no event type, or not JSON) and dead-lettered by the collector
            collector.get("/i?siteId=alpha&visitorId=alice"),  # the pixel's query string
            collector.get("/i?e=&tv=js-3.0&aid=alpha&duid=alice"),  # a Snowplow GET
            collector.post("/v1/track", content=segment),  # Segment: the site is the key's
            collector.post("/v1/track", content=gzip.compress(segment), headers={"Content-Encoding": "gzip"}),
            collector.post("/e/", json={"api_key": key, "distinct_id": "alice", "properties": {}}),  # PostHog
            collector.post("/e/?compression=lz64", headers={"Content-Type": "application/x-www-form-urlencoded"},
                           content=urlencode({"data": lzstring.LZString().compressToBase64(
                               json.dumps([{"distinct_id": "alice", "properties": {"token": key}}]))})),
            collector.post("/collect", content=b'{"siteId":"alpha","visitorId":"\\u0061lice"}'),
            collector.post("/collect", content=b'{"siteId":"alpha","visitorId":"alice",'),  # cut short
        ]
        others = [
            collector.post("/collect", content=b'{"siteId":"alpha","visitorId":"bob","note":"alice"}'),
            collector.post("/collect", content=b'{"siteId":"erz","ref":"alpha","coupon":"alice"}'),
            collector.post("/collect", content=b'{"siteId":"alpha","visitorId":"alice "}'),
            collector.post("/collect", content=b'{"siteId":"erz","visitorId":"alice"}'),  # another site's alice
        ]
    assert all(400 <= r.status_code < 500 or r.headers["content-type"] == "image/gif" for r in alices + others)
    dead_letters = db.execute("SELECT count(*) FROM events_rejected").fetchone()[0]
    assert dead_letters == len(alices) + len(others)

    spaced = erase(database_url, s3_server, buckets, "--site", "alpha", "--visitor", "alice ")
    assert spaced.returncode == 0, spaced.stderr
    assert "2 rows removed from events_log, 2 from the exported files" in spaced.stderr
    assert (visitor_rows(db, "alpha", "alice "), visitor_rows(db, "alpha", "alice")) == (0, 3)
    rows, _ = exported_rows(s3, buckets["client"], "alpha", EXPORTED)
    assert sorted(row["visitor_id"] for row in rows) == ["alice"] * 3 + ["bob"]

    done = erase(database_url, s3_server, buckets, "--site", "alpha", "--visitor", "alice")
    assert done.returncode == 0, done.stderr
    assert f"{len(alices)} dead letters" in done.stderr
    left = sorted(bytes(body) for (body,) in db.execute("SELECT raw_body FROM events_rejected"))
    assert left == sorted([b'{"siteId":"alpha","visitorId":"bob","note":"alice"}',
                           b'{"siteId":"erz","ref":"alpha","coupon":"alice"}', b'{"siteId":"erz","visitorId":"alice"}'])
    rows, receipt = exported_rows(s3, buckets["client"], "alpha", EXPORTED)
    assert [row["visitor_id"] for row in rows] == ["bob"] and receipt["erased_events"] == 5
