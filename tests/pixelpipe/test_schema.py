"""The schema as the collector and the export see it: partitioned, int8 ids, no lost inserts."""

from datetime import UTC, datetime, timedelta

import psycopg

from pixelpipe.core.events_log import ensure_partitions
from pixelpipe.core.migrations import apply_migrations


def _insert(db, created_at, site="shop-example-com"):
    return db.execute(
        """INSERT INTO events_log (event_type, site_id, "timestamp", raw_event_data, created_at)
           VALUES ('pageview', %s, %s, '{"eventType": "pageview"}', %s)
           RETURNING id, tableoid::regclass::text""",
        (site, created_at, created_at),
    ).fetchone()


def test_migrations_apply_to_empty_database_then_reapply_as_noop(empty_database_url):
    first = apply_migrations(empty_database_url)
    assert first[0] == "001_events_log" and len(first) >= 6
    with psycopg.connect(empty_database_url) as conn:
        tables_before = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        ).fetchone()[0]
    assert apply_migrations(empty_database_url) == []
    with psycopg.connect(empty_database_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
        tables_after = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        ).fetchone()[0]
    assert versions == first
    assert tables_after == tables_before


def test_insert_with_any_created_at_lands_and_is_readable(db):
    moments = [
        datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime.now(UTC),
        datetime(2150, 6, 1, 12, 0, tzinfo=UTC),
    ]
    for moment in moments:
        _insert(db, moment)
    stored = [r[0] for r in db.execute("SELECT created_at FROM events_log ORDER BY created_at")]
    assert stored == moments


def test_rows_land_in_their_hourly_partition(db):
    now = datetime(2026, 11, 24, 17, 30, tzinfo=UTC)
    ensure_partitions(db, now=now, hours_back=2, hours_ahead=2)
    _, partition = _insert(db, datetime(2026, 11, 24, 16, 59, 59, 999999, tzinfo=UTC))
    assert partition == "events_log_20261124_16"
    _, partition = _insert(db, datetime(2026, 11, 24, 17, 0, tzinfo=UTC))
    assert partition == "events_log_20261124_17"
    _, partition = _insert(db, datetime(2026, 11, 25, 3, 0, tzinfo=UTC))
    assert partition == "events_log_default"


def test_partitions_are_created_ahead(db):
    now = datetime(2026, 11, 24, 17, 30, tzinfo=UTC)
    created = ensure_partitions(db, now=now)
    names = {name for name, _ in created}
    assert "events_log_20261124_17" in names
    assert "events_log_20261126_17" in names  # 48 hours ahead
    assert len(names) >= 49
    # Idempotent: a second call creates nothing.
    assert ensure_partitions(db, now=now) == []


def test_creating_a_partition_moves_strays_out_of_the_default_partition(db):
    hour = datetime(2030, 1, 1, 5, tzinfo=UTC)
    for minute in (0, 30, 59):
        _insert(db, hour + timedelta(minutes=minute))
    assert db.execute("SELECT count(*) FROM events_log_default").fetchone()[0] == 3
    created = ensure_partitions(db, now=hour, hours_back=0, hours_ahead=1)
    assert created == [("events_log_20300101_05", 3)]
    assert db.execute("SELECT count(*) FROM events_log_default").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM events_log_20300101_05").fetchone()[0] == 3


def test_ids_are_int8(db):
    types = dict(
        db.execute(
            """SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
               WHERE attrelid = 'events_log'::regclass AND attnum > 0"""
        ).fetchall()
    )
    assert types["id"] == "bigint"
    db.execute("SELECT setval(pg_get_serial_sequence('events_log', 'id'), 3000000000)")
    event_id, _ = _insert(db, datetime.now(UTC))
    assert event_id > 2**31


def test_monitoring_views_answer_pending_and_exported(db):
    hour = datetime(2026, 11, 24, 10, tzinfo=UTC)
    _insert(db, hour + timedelta(minutes=5))
    _insert(db, hour + timedelta(hours=1, minutes=5))
    db.execute(
        """INSERT INTO export_hours (ingest_hour, rows, sites, files, bytes, exported_at)
           VALUES (%s, 1, 1, 1, 100, now())""",
        (hour,),
    )
    pending, oldest = db.execute(
        "SELECT events_pending_export, oldest_pending_hour FROM export_lag"
    ).fetchone()
    assert pending == 1
    assert oldest == hour + timedelta(hours=1)
    states = dict(db.execute("SELECT ingest_hour, state FROM export_status_by_hour").fetchall())
    assert states == {hour: "exported", hour + timedelta(hours=1): "pending"}
