"""The export schema is the client's contract: names, order, types and a version, as read back
from a file in the bucket (what the client's engines see)."""

import io

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.export_files import EXPORT_SCHEMA_VERSION
from tests.pipeline.conftest import closed_hour, materialize_export, partition_key, seed_events

CONTRACT = [  # version 3
    ("id", "INT64", None, "int64"),
    ("event_id", "BYTE_ARRAY", "String", "string"),
    ("event_type", "BYTE_ARRAY", "String", "string"),
    ("session_id", "BYTE_ARRAY", "String", "string"),
    ("visitor_id", "BYTE_ARRAY", "String", "string"),
    ("site_id", "BYTE_ARRAY", "String", "string"),
    ("timestamp", "INT64", "Timestamp(isAdjustedToUTC=true, timeUnit=microseconds, is_from_converted_type=false, force_set_converted_type=false)", "timestamp[us, tz=UTC]"),
    ("url", "BYTE_ARRAY", "String", "string"),
    ("path", "BYTE_ARRAY", "String", "string"),
    ("user_agent", "BYTE_ARRAY", "String", "string"),
    ("ip_address", "BYTE_ARRAY", "String", "string"),
    ("raw_event_data", "BYTE_ARRAY", "JSON", "extension<arrow.json>"),
    ("created_at", "INT64", "Timestamp(isAdjustedToUTC=true, timeUnit=microseconds, is_from_converted_type=false, force_set_converted_type=false)", "timestamp[us, tz=UTC]"),
    ("source", "BYTE_ARRAY", "String", "string"),
]


def test_an_exported_file_has_the_versioned_schema_and_json_typed_raw_events(resources, db, s3, buckets):
    hour = closed_hour(3)
    seed_events(db, hour, "contract", 5, plan={"tier": "pro"})
    assert materialize_export(resources, partition=partition_key(hour)).success
    [key] = [o["Key"] for o in s3.list_objects_v2(Bucket=buckets["client"])["Contents"] if o["Key"].endswith(".parquet")]
    file = pq.ParquetFile(io.BytesIO(s3.get_object(Bucket=buckets["client"], Key=key)["Body"].read()))

    parquet = file.schema
    assert [(c.name, c.physical_type, str(c.logical_type) if str(c.logical_type) != "None" else None,
             str(file.schema_arrow.field(c.name).type)) for c in parquet] == [
        (name, physical, logical, arrow) for name, physical, logical, arrow in CONTRACT]
    assert file.metadata.metadata[b"pixelpipe.schema_version"] == str(EXPORT_SCHEMA_VERSION).encode()
    assert EXPORT_SCHEMA_VERSION == 3
    assert set(file.read(columns=["source"]).column("source").to_pylist()) == {"pixelpipe"}
    raw = file.read().column("raw_event_data")
    assert raw.type == pa.json_()
    assert '"tier":"pro"' in raw[0].as_py().replace(" ", "")


def test_duckdb_reads_the_hive_layout_from_s3_and_queries_inside_raw_event_data(resources, db, s3_server, buckets):
    """What docs/reading.md shows a client: DuckDB from pip, its httpfs extension from pip (no
    download at run time), the bucket read as a hive-partitioned dataset."""
    from pathlib import Path

    import duckdb
    import duckdb_extension_httpfs

    hours = [closed_hour(4), closed_hour(3)]
    for n, hour in enumerate(hours):
        seed_events(db, hour, "duck-shop", 3 + n, plan={"tier": "pro" if n else "free"})
        seed_events(db, hour, "duck-blog", 2, plan={"tier": "free"})
        assert materialize_export(resources, partition=partition_key(hour)).success

    [extension] = Path(duckdb_extension_httpfs.__file__).parent.glob("extensions/*/httpfs.duckdb_extension")
    host = s3_server.endpoint.removeprefix("http://")
    with duckdb.connect() as duck:
        duck.execute(f"LOAD '{extension}'")
        duck.execute(f"""CREATE SECRET local_s3 (TYPE s3, KEY_ID '{s3_server.access_key}',
                         SECRET '{s3_server.secret_key}', ENDPOINT '{host}', URL_STYLE 'path',
                         USE_SSL false, REGION 'us-east-1')""")
        result = duck.execute(f"""
            SELECT site_id, "hour", raw_event_data->'plan'->>'tier' AS tier, count(*) AS events
            FROM read_parquet('s3://{buckets["client"]}/*/*/*/*.parquet', hive_partitioning = true,
                              hive_types = {{'date': DATE, 'hour': INTEGER}})
            GROUP BY ALL ORDER BY ALL""").fetchall()
        json_type = duck.execute(f"""SELECT typeof(raw_event_data) FROM read_parquet(
            's3://{buckets["client"]}/*/*/*/*.parquet') LIMIT 1""").fetchone()[0]
    assert json_type == "JSON"
    assert sorted(result) == sorted([
        ("duck-blog", hours[0].hour, "free", 2), ("duck-blog", hours[1].hour, "free", 2),
        ("duck-shop", hours[0].hour, "free", 3), ("duck-shop", hours[1].hour, "pro", 4)])
