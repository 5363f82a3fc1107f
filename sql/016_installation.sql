-- Where this installation's data starts: the first hourly partition Dagster offers (unless
-- PIXELPIPE_PARTITIONS_START says otherwise). Without it, partitions began on a fixed date and a
-- fresh install showed hundreds of "missing" hours that never had data.
--
-- One row. An existing installation starts at its first migration or its earliest exported hour,
-- whichever is older (no scan of events_log); a fresh one at the hour it was installed. Rows
-- written on purpose with older ingest times (the demo's history) lower it
-- (pixelpipe/core/installation.py).
CREATE TABLE IF NOT EXISTS installation (
    singleton       BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    data_starts_at  TIMESTAMPTZ NOT NULL
);

INSERT INTO installation (data_starts_at)
SELECT date_trunc('hour', LEAST(
    (SELECT min(applied_at) FROM schema_migrations),
    (SELECT min(ingest_hour) FROM export_hours),
    now()), 'UTC')
ON CONFLICT (singleton) DO NOTHING;
