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

-- Ids the collector makes for events sent without one are UUID version 8 (ingest_service/events.py
-- server_event_id); rows inserted without an event_id get the same kind. Only client ids can be
-- re-sent, so the export's duplicate search skips version 8 with a cheap test per row.
CREATE OR REPLACE FUNCTION server_event_id() RETURNS uuid LANGUAGE sql VOLATILE AS $$
    SELECT overlay(gen_random_uuid()::text placing '8' from 15 for 1)::uuid
$$;
ALTER TABLE events_log ALTER COLUMN event_id SET DEFAULT server_event_id();
