-- visitor_salts: the secret that turns (site, address, user agent) into a cookieless visitor_id.
-- One per UTC day, created by the first collector worker that needs it; creating a day's salt
-- deletes every earlier one, so yesterday's ids can no longer be recomputed or linked to today's
-- (docs/tracker.md). Never exported, never backed up.
CREATE TABLE IF NOT EXISTS visitor_salts (
    day   DATE PRIMARY KEY,
    salt  BYTEA NOT NULL
);

-- The export removes re-sent events (same site_id and event_id) over the hour and the one
-- before it. The row ids it left out of an hour are kept here, so a re-export reproduces the
-- hour byte for byte even after the earlier hour's rows were purged.
CREATE TABLE IF NOT EXISTS export_duplicates (
    ingest_hour  TIMESTAMPTZ NOT NULL,
    id           BIGINT NOT NULL,
    PRIMARY KEY (ingest_hour, id)
);
