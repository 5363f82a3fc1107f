"""The readers docs/reading.md shows, on files the export wrote to the (embedded) S3: pyarrow,
polars and chdb (ClickHouse), each as the page writes it, with the local endpoint and keys."""

import json
from datetime import timedelta

import pytest

from tests.pipeline.conftest import closed_hour, materialize_export, partition_key, seed_events


@pytest.fixture
def exported(resources, db, s3_server, buckets):
    """Two hours of `shop-example-com` (5 then 7 rows) and one other site, exported."""
    first = closed_hour(4)
    seed_events(db, first, "shop-example-com", 5, plan={"tier": "pro"})
    seed_events(db, first + timedelta(hours=1), "shop-example-com", 7, plan={"tier": "free"})
    seed_events(db, first, "blog-example-org", 3)
    assert materialize_export(resources, start=partition_key(first),
                              end=partition_key(first + timedelta(hours=1))).success
    return {"bucket": buckets["client"], "hour": first, "endpoint": s3_server.endpoint,
            "key": s3_server.reader_access_key, "secret": s3_server.reader_secret_key}


def test_pyarrow_filters_the_hour_as_a_number(exported):
    import pyarrow.dataset as ds
    import pyarrow.fs as fs

    hour = exported["hour"]
    host = exported["endpoint"].removeprefix("http://")
    s3 = fs.S3FileSystem(access_key=exported["key"], secret_key=exported["secret"], region="us-east-1",
                         endpoint_override=host, scheme="http")
    events = ds.dataset(f"{exported['bucket']}/site_id=shop-example-com", filesystem=s3, format="parquet",
                        partitioning="hive")
    # As in docs/reading.md: `hour` is read as int32, `date` as a string.
    table = events.to_table(filter=(ds.field("date") == f"{hour:%Y-%m-%d}") & (ds.field("hour") == hour.hour))
    assert table.num_rows == 5
    with pytest.raises(Exception, match="int32, string"):  # what the page used to show
        events.to_table(filter=ds.field("hour") == f"{hour:%H}")
    assert json.loads(table.column("raw_event_data").combine_chunks().storage[0].as_py())["plan"] == {"tier": "pro"}


def test_polars_reads_raw_event_data_through_its_storage(exported):
    import polars as pl

    hour = exported["hour"]
    options = {"aws_access_key_id": exported["key"], "aws_secret_access_key": exported["secret"],
               "aws_region": "us-east-1", "aws_endpoint_url": exported["endpoint"], "aws_allow_http": "true"}
    events = pl.scan_parquet(f"s3://{exported['bucket']}/site_id=shop-example-com/**/*.parquet",
                             hive_partitioning=True, storage_options=options)
    # As in docs/reading.md: hive keys typed by polars (`date` a Date, `hour` a number).
    tiers = (events.filter((pl.col("date") == pl.date(hour.year, hour.month, hour.day)) & (pl.col("hour") == hour.hour))
             .select(pl.col("raw_event_data").ext.storage().str.json_path_match("$.plan.tier").alias("tier"))
             .collect())
    assert tiers["tier"].to_list() == ["pro"] * 5
    with pytest.raises(Exception):  # noqa: B017 - the string functions refuse the extension type
        events.select(pl.col("raw_event_data").str.json_path_match("$.plan.tier")).collect()


def test_chdb_reads_every_file(exported):
    import chdb

    hour = exported["hour"]
    url = f"{exported['endpoint']}/{exported['bucket']}/site_id=shop-example-com/*/*/*.parquet"
    result = chdb.query(f"""
        SELECT hour, JSONExtractString(raw_event_data, 'plan', 'tier') AS tier, count() AS events
        FROM s3('{url}', '{exported['key']}', '{exported['secret']}', 'Parquet')
        WHERE date = '{hour:%Y-%m-%d}' OR date = '{hour + timedelta(hours=1):%Y-%m-%d}'
        GROUP BY ALL ORDER BY ALL""", "JSONEachRow")
    rows = [json.loads(line) for line in result.bytes().decode().splitlines()]
    second = hour + timedelta(hours=1)
    assert [(int(r["hour"]), r["tier"], int(r["events"])) for r in rows] == sorted(
        [(hour.hour, "pro", 5), (second.hour, "free", 7)])
