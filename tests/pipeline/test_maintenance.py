"""db_maintenance keeps partitions ahead, rescues strays, and logs outside events_log."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from pipeline.defs.maintenance.assets import db_maintenance
from tests.pipeline.conftest import seed_events


def test_maintenance_creates_partitions_ahead_moves_strays_and_logs(resources, db):
    stray_hour = datetime(2026, 11, 2, 7, tzinfo=UTC)  # no partition: lands in the default one
    seed_events(db, stray_hour, "beta", 6)
    assert db.execute("SELECT count(*) FROM events_log_default").fetchone()[0] == 6

    result = dg.materialize([db_maintenance], resources=resources)
    assert result.success
    metadata = result.asset_materializations_for_node("db_maintenance")[0].metadata
    assert metadata["rows_moved_from_default"].value == 6
    assert metadata["partitions_created"].value >= 49
    assert metadata["events_pending_export"].value == 6
    assert metadata["oldest_unexported_hour"].value == stray_hour.isoformat()

    assert db.execute("SELECT count(*) FROM events_log_default").fetchone()[0] == 0
    assert db.execute(f"SELECT count(*) FROM events_log_{stray_hour:%Y%m%d_%H}").fetchone()[0] == 6
    ahead = datetime.now(UTC) + timedelta(hours=48)
    assert db.execute("SELECT to_regclass(%s) IS NOT NULL", (f"events_log_{ahead:%Y%m%d_%H}",)).fetchone()[0]
    # Its log goes to maintenance_log, never into events_log (it would be exported and billed).
    assert db.execute("SELECT count(*) FROM maintenance_log WHERE operation = 'db_maintenance'").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM events_log").fetchone()[0] == 6
    # Statistics are fresh after ANALYZE.
    analyzed = db.execute(f"SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables "
                          f"WHERE relname = 'events_log_{stray_hour:%Y%m%d_%H}'").fetchone()[0]
    assert analyzed
