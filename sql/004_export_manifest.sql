-- Export state, per ingest hour and per (hour, site), instead of a per-row UPDATE of events_log.
--
-- export_hours: one row per exported ingest hour, also for an hour with no events (rows = 0),
-- so the completeness of a month can be proven. Retention and billing read this ledger.
CREATE TABLE IF NOT EXISTS export_hours (
    ingest_hour    TIMESTAMPTZ PRIMARY KEY,
    rows           BIGINT NOT NULL,
    sites          INTEGER NOT NULL,
    files          INTEGER NOT NULL,
    bytes          BIGINT NOT NULL,
    exported_at    TIMESTAMPTZ NOT NULL,
    -- Set by the asset checks once the uploaded objects reconcile with PostgreSQL and hold no
    -- other tenant's rows; cleared by every re-export. Retention trusts only verified hours.
    reconciled_at  TIMESTAMPTZ,
    tenants_verified_at TIMESTAMPTZ,
    -- Both checks passed (GREATEST alone would ignore a NULL).
    verified_at    TIMESTAMPTZ GENERATED ALWAYS AS (
        CASE WHEN reconciled_at IS NOT NULL AND tenants_verified_at IS NOT NULL
             THEN GREATEST(reconciled_at, tenants_verified_at) END) STORED,
    purged_at      TIMESTAMPTZ,
    CHECK (date_trunc('hour', ingest_hour, 'UTC') = ingest_hour)
);

-- export_manifest: one row per (ingest hour, site) with the objects written for it.
CREATE TABLE IF NOT EXISTS export_manifest (
    ingest_hour    TIMESTAMPTZ NOT NULL REFERENCES export_hours (ingest_hour) ON DELETE CASCADE,
    site_id        VARCHAR(100) NOT NULL,
    rows           BIGINT NOT NULL,
    bytes          BIGINT NOT NULL,
    client_bucket  TEXT NOT NULL,
    client_keys    TEXT[] NOT NULL,
    backup_bucket  TEXT NOT NULL,
    backup_keys    TEXT[] NOT NULL,
    sha256         TEXT[] NOT NULL,
    exported_at    TIMESTAMPTZ NOT NULL,
    verified_at    TIMESTAMPTZ,
    PRIMARY KEY (ingest_hour, site_id)
);
