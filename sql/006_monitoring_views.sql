-- Views that answer the original design's monitoring questions (docs/operations.md) from the manifest and the partitions.
-- They count rows still in events_log, i.e. a scan of the live buffer (about a day of data).

-- export_status_by_hour: per ingest hour, rows still in the database, rows exported, and the
-- state of the hour (pending, exported, verified, purged).
CREATE OR REPLACE VIEW export_status_by_hour AS
SELECT
    coalesce(db.ingest_hour, eh.ingest_hour) AS ingest_hour,
    coalesce(db.rows_in_db, 0)               AS rows_in_db,
    eh.rows                                  AS rows_exported,
    eh.sites                                 AS sites_exported,
    eh.exported_at,
    eh.verified_at,
    eh.purged_at,
    CASE
        WHEN eh.purged_at IS NOT NULL THEN 'purged'
        WHEN eh.verified_at IS NOT NULL THEN 'verified'
        WHEN eh.exported_at IS NOT NULL THEN 'exported'
        ELSE 'pending'
    END AS state
FROM (
    SELECT date_trunc('hour', created_at, 'UTC') AS ingest_hour, count(*) AS rows_in_db
    FROM events_log
    GROUP BY 1
) db
FULL JOIN export_hours eh ON eh.ingest_hour = db.ingest_hour;

-- export_lag: one row. Events pending export, the oldest pending hour and how far the export
-- lags behind now, and events exported in the last 24 hours.
CREATE OR REPLACE VIEW export_lag AS
SELECT
    coalesce(sum(rows_in_db) FILTER (WHERE state = 'pending'), 0)::bigint AS events_pending_export,
    min(ingest_hour) FILTER (WHERE state = 'pending')              AS oldest_pending_hour,
    now() - (min(ingest_hour) FILTER (WHERE state = 'pending') + INTERVAL '1 hour') AS export_lag,
    coalesce(sum(rows_exported) FILTER (WHERE exported_at >= now() - INTERVAL '24 hours'), 0)::bigint
                                                                   AS exported_last_24h
FROM export_status_by_hour;
