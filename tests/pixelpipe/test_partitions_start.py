"""Partitions start where this installation's data starts, not on a fixed date: a fresh install
shows only hours that can hold data, and `pixelpipe up --demo` prints the backfill of its hours."""

from datetime import UTC, datetime, timedelta

import psycopg

from pixelpipe.core.installation import data_start, partitions_start
from pixelpipe.core.migrations import SQL_DIR, apply_migrations
from pixelpipe.core.settings import Settings

PARTITION_KEYS = """{ assetNodeOrError(assetKey: {path: ["hourly_export"]}) {
  ... on AssetNode { partitionKeysByDimension { partitionKeys } } } }"""
HOUR_ROWS = """query ($keys: [String!]) { assetNodeOrError(assetKey: {path: ["hourly_export"]}) {
  ... on AssetNode { assetMaterializations(partitions: $keys) {
    partition metadataEntries { label ... on IntMetadataEntry { intValue } } } } } }"""


def this_hour() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def test_a_fresh_install_starts_at_its_first_hour_and_the_variable_overrides_it(database_url, db):
    before = this_hour()
    start = data_start(db)
    # The template database of this session was migrated at most a few hours ago.
    assert before - timedelta(hours=3) <= start <= before
    assert partitions_start(Settings(database_url=database_url)) == f"{start:%Y-%m-%d-%H}:00"
    assert partitions_start(Settings(database_url=database_url, partitions_start="2026-10-01-00:00")) \
        == "2026-10-01-00:00"


def test_an_existing_install_starts_at_its_earliest_exported_hour(empty_database_url, tmp_path):
    earlier = tmp_path / "sql"
    earlier.mkdir()
    for path in SQL_DIR.glob("0*.sql"):
        if path.name < "016":
            (earlier / path.name).write_text(path.read_text())
    apply_migrations(empty_database_url, earlier)
    exported = this_hour() - timedelta(days=40)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO export_hours (ingest_hour, rows, sites, files, bytes, exported_at) "
                     "VALUES (%s, 1, 1, 1, 1, now())", (exported,))
    assert "016_installation" in apply_migrations(empty_database_url)
    with psycopg.connect(empty_database_url) as conn:
        assert data_start(conn) == exported


def test_up_demo_shows_only_its_own_hours_and_its_backfill_command_exports_them(demo_stack):
    backfill = demo_stack.backfill_demo_hours()  # the command the banner printed, as printed
    first, last = backfill["first"], backfill["last"]
    keys = demo_stack.graphql(PARTITION_KEYS)["assetNodeOrError"]["partitionKeysByDimension"][0]
    assert keys["partitionKeys"][0] == first  # not 2026-11-01: nothing "missing" before the data
    # the demo's six hours, the one in its grace period, the current one (and the next at worst)
    assert len(keys["partitionKeys"]) <= 9
    assert backfill["status"] == "COMPLETED_SUCCESS"
    hours = [f"{datetime.strptime(first, '%Y-%m-%d-%H:%M') + timedelta(hours=n):%Y-%m-%d-%H:%M}"
             for n in range(6)]
    assert hours[-1] == last
    materializations = demo_stack.graphql(HOUR_ROWS, keys=hours)["assetNodeOrError"]["assetMaterializations"]
    rows = {m["partition"]: {e["label"]: e.get("intValue") for e in m["metadataEntries"]}["rows"]
            for m in materializations}
    assert set(rows) == set(hours) and all(450 <= n <= 1200 for n in rows.values())
