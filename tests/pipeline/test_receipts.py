"""Receipts beside the data, and `pixelpipe verify` checking a bucket with nothing but S3 access."""

import hashlib
import io
import json

import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError

from pipeline.export_files import EXPORT_SCHEMA_VERSION
from pixelpipe.core.s3 import s3_client
from tests.pipeline.conftest import (
    closed_hour,
    materialize_export,
    partition_key,
    seed_events,
    verify,
)


def receipt(s3, bucket, site, hour, prefix=""):
    key = f"{prefix}site_id={site}/date={hour:%Y-%m-%d}/hour={hour:%H}/_receipt.json"
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def test_receipts_for_three_sites_an_empty_hour_and_a_re_export(resources, db, s3, buckets):
    hours = [closed_hour(5), closed_hour(4), closed_hour(3)]
    for site in ("alpha", "beta", "gamma"):
        seed_events(db, hours[0], site, 4)
    for site in ("alpha", "beta"):
        seed_events(db, hours[1], site, 3)
    # hours[2] gets no events at all.
    for hour in hours:
        assert materialize_export(resources, partition=partition_key(hour)).success

    for bucket in (buckets["client"], buckets["backup"]):
        for hour in hours:
            for site in ("alpha", "beta", "gamma"):
                claim = json.loads(receipt(s3, bucket, site, hour))
                expected = db.execute(
                    "SELECT count(*), min(id), max(id), count(*) FILTER (WHERE \"timestamp\" < %s) "
                    "FROM events_log WHERE site_id = %s AND created_at >= %s AND created_at < %s + interval '1 hour'",
                    (hour, site, hour, hour)).fetchone()
                assert (claim["rows"], claim["min_id"], claim["max_id"], claim["late_events"]) == expected
                assert claim["site_id"] == site and claim["hour"] == f"{hour:%Y-%m-%dT%H}:00:00Z"
                assert claim["schema_version"] == EXPORT_SCHEMA_VERSION
                ids = ""
                for file in claim["files"]:
                    key = f"site_id={site}/date={hour:%Y-%m-%d}/hour={hour:%H}/{file['name']}"
                    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                    assert (len(body), hashlib.sha256(body).hexdigest()) == (file["bytes"], file["sha256"])
                    table = pq.read_table(io.BytesIO(body))
                    assert table.num_rows == file["rows"]
                    ids += "".join(table.column("event_id").to_pylist())
                assert claim["event_ids_sha256"] == hashlib.sha256(ids.encode()).hexdigest()
                assert (claim["files"] == []) == (expected[0] == 0)  # empty: a receipt with 0 rows

    # A re-export writes the same receipt, apart from exported_at.
    before = json.loads(receipt(s3, buckets["client"], "alpha", hours[0]))
    assert materialize_export(resources, partition=partition_key(hours[0])).success
    after = json.loads(receipt(s3, buckets["client"], "alpha", hours[0]))
    assert {**before, "exported_at": None} == {**after, "exported_at": None}


def test_pixelpipe_verify_passes_then_names_each_problem(resources, db, s3, s3_server, buckets):
    hours = [closed_hour(6), closed_hour(5), closed_hour(4), closed_hour(3)]
    for hour in hours:
        for site in ("one", "two"):
            seed_events(db, hour, site, 5)
        assert materialize_export(resources, partition=partition_key(hour)).success
    client = buckets["client"]
    # verify() runs with a read-only identity: one that cannot write to the bucket at all.
    reader = s3_client(s3_server.endpoint, s3_server.reader_access_key, s3_server.reader_secret_key, "us-east-1")
    with pytest.raises(ClientError, match="AccessDenied"):
        reader.put_object(Bucket=client, Key="written-by-a-reader", Body=b"x")
    passed = verify(s3_server, f"s3://{client}")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "8 site-hours checked" in passed.stderr and "all match their receipts" in passed.stderr

    def part(site, hour):
        return f"site_id={site}/date={hour:%Y-%m-%d}/hour={hour:%H}/part-00000.parquet"

    def body(key):
        return s3.get_object(Bucket=client, Key=key)["Body"].read()

    truncated, changed, missing, extra = part("one", hours[0]), part("one", hours[1]), part("two", hours[0]), part("two", hours[1])
    s3.put_object(Bucket=client, Key=truncated, Body=body(truncated)[:-100])
    original = bytearray(body(changed))
    original[100] ^= 0xFF  # same size, other bytes
    s3.put_object(Bucket=client, Key=changed, Body=bytes(original))
    s3.delete_object(Bucket=client, Key=missing)
    s3.put_object(Bucket=client, Key=extra.replace("part-00000", "part-00009"), Body=body(extra))
    s3.delete_object(Bucket=client, Key=f"site_id=two/date={hours[2]:%Y-%m-%d}/hour={hours[2]:%H}/_receipt.json")

    failed = verify(s3_server, f"s3://{client}")
    assert failed.returncode == 1
    lines = failed.stdout.splitlines()
    assert f"s3://{client}/{truncated}: size" in failed.stdout
    assert f"s3://{client}/{changed}: SHA-256 differs from the receipt" in lines
    assert f"s3://{client}/{missing}: missing (the receipt lists it)" in lines
    assert f"s3://{client}/{extra.replace('part-00000', 'part-00009')}: extra (not in the receipt)" in lines
    assert any(line.endswith(f"hour={hours[2]:%H}/: no receipt: the hour is incomplete or was never exported")
               for line in lines)
    assert len(lines) == 5 and "5 problems" in failed.stderr

    # One site, one range: only its problems; an hour of the range with nothing at all is one too.
    narrowed = verify(s3_server, f"s3://{client}", "--site", "one", "--from", partition_key(hours[2]),
                      "--to", partition_key(hours[3] + (hours[3] - hours[2])))
    assert narrowed.returncode == 1
    assert narrowed.stdout.splitlines() == [
        f"s3://{client}/site_id=one/date={(hours[3] + (hours[3] - hours[2])):%Y-%m-%d}/"
        f"hour={(hours[3] + (hours[3] - hours[2])):%H}/: no receipt: the hour is incomplete or was never exported"]
    # And the backup bucket, untouched, passes.
    assert verify(s3_server, f"s3://{buckets['backup']}").returncode == 0
    # The Dagster check runs the same code over the hour's sites, in both buckets.
    from pipeline.verification import verify_receipts

    checked, problems = verify_receipts(db, s3, [hours[0]], buckets["backup"])
    assert checked == 4 and sorted(p.split(": ")[0] for p in problems) == sorted(
        [f"s3://{client}/{truncated}", f"s3://{client}/{missing}"])


def test_pixelpipe_verify_says_what_to_fix(s3_server):
    wrong = verify(s3_server, "my-bucket")
    assert wrong.returncode == 2 and "write it as s3://BUCKET or s3://BUCKET/PREFIX" in wrong.stderr
    unreachable = verify(s3_server, "s3://no-such-bucket-here")
    assert unreachable.returncode == 2 and "PIXELPIPE_S3_ENDPOINT" in unreachable.stderr


def test_verify_names_every_malformed_or_unaccounted_object_of_a_crafted_bucket(resources, db, s3, s3_server,
                                                                               buckets):
    """Each crafted thing is one named line and the exit status is 1: no traceback, nothing skipped."""
    import pyarrow as pa

    hour = closed_hour(3)
    seed_events(db, hour, "alpha", 5)
    assert materialize_export(resources, partition=partition_key(hour)).success
    bucket = buckets["client"]
    assert verify(s3_server, f"s3://{bucket}").returncode == 0
    folder = f"date={hour:%Y-%m-%d}/hour={hour:%H}/"

    def parquet(rows: int) -> bytes:
        out = io.BytesIO()
        pq.write_table(pa.table({"n": list(range(rows))}), out)
        return out.getvalue()

    def put(key, body):
        s3.put_object(Bucket=bucket, Key=key, Body=body)

    def entry(name, body, **changes):
        file = {"name": name, "bytes": len(body), "rows": 3, "sha256": hashlib.sha256(body).hexdigest()}
        return {**file, **changes}

    def hour_receipt(site, files, **changes):
        return json.dumps({"site_id": site, "hour": f"{hour:%Y-%m-%dT%H}:00:00Z", "rows": 3,
                           "files": files, **changes}).encode()

    data = parquet(3)
    # A file entry without "bytes"; a receipt without "rows".
    put(f"site_id=beta/{folder}part-00000.parquet", data)
    put(f"site_id=beta/{folder}_receipt.json",
        hour_receipt("beta", [{k: v for k, v in entry("part-00000.parquet", data).items() if k != "bytes"}]))
    put(f"site_id=gamma/{folder}part-00000.parquet", data)
    receipt_without_rows = json.loads(hour_receipt("gamma", [entry("part-00000.parquet", data)]))
    del receipt_without_rows["rows"]
    put(f"site_id=gamma/{folder}_receipt.json", json.dumps(receipt_without_rows).encode())
    # An impossible hour.
    put("site_id=delta/date=2026-13-45/hour=99/part-00000.parquet", data)
    # A corrupt footer (its length and magic intact), listed correctly in its receipt.
    length = int.from_bytes(data[-8:-4], "little")
    corrupt = data[:-8 - length] + b"\xff" * length + data[-8:]
    put(f"site_id=epsilon/{folder}part-00000.parquet", corrupt)
    put(f"site_id=epsilon/{folder}_receipt.json", hour_receipt("epsilon", [entry("part-00000.parquet", corrupt)]))
    # 1,000 rows in a sub-folder of a verified hour, and stray objects beside the site folders.
    put(f"site_id=alpha/{folder}sub/part-00000.parquet", parquet(1000))
    put("notes.txt", b"hello")
    put("site_id=alpha/readme", b"hello")

    result = verify(s3_server, f"s3://{bucket}")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stdout.splitlines()
    expected = {
        f"site_id=beta/{folder}_receipt.json": "has no valid 'bytes'",
        f"site_id=gamma/{folder}_receipt.json": "no row count",
        "site_id=delta/date=2026-13-45/hour=99/part-00000.parquet": "not an hour",
        f"site_id=epsilon/{folder}part-00000.parquet": "unreadable Parquet",
        f"site_id=alpha/{folder}sub/part-00000.parquet": "stray object",
        "notes.txt": "stray object",
        "site_id=alpha/readme": "stray object",
    }
    for key, what in expected.items():
        assert any(line.startswith(f"s3://{bucket}/{key}: ") and what in line for line in lines), (key, lines)
    assert len(lines) == len(expected), lines
