-- export_locations: every (bucket, hour prefix) an export of an hour ever wrote to, for each
-- site. Recorded before the first upload there and never removed by a re-export, so the tenant
-- check can list each place the hour's files may be, also after a site's bucket or prefix
-- changed (the manifest keeps only the latest export's keys).
CREATE TABLE IF NOT EXISTS export_locations (
    ingest_hour  TIMESTAMPTZ NOT NULL,
    site_id      VARCHAR(100) NOT NULL,
    bucket       TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    first_written_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (ingest_hour, site_id, bucket, prefix)
);
