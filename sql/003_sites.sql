-- sites: one row per tenant. The hourly export upserts a row the first time it sees a site
-- (the original design's automatic domain discovery, docs/architecture.md). client_bucket NULL means the default client bucket
-- (PIXELPIPE_CLIENT_BUCKET); client_prefix is prepended to the hive-style keys.
CREATE TABLE IF NOT EXISTS sites (
    site_id        VARCHAR(100) PRIMARY KEY,
    first_seen_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    client_bucket  TEXT,
    client_prefix  TEXT NOT NULL DEFAULT '',
    allowed        BOOLEAN NOT NULL DEFAULT TRUE
);
