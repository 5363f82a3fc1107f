-- Tenant admission (docs/security.md): which sites the collector accepts, from where, and with
-- which key. The collector caches these columns and refreshes them every few seconds.
--   allowed_hosts     NULL: any page host. Otherwise events must come from one of these hosts
--                     or a subdomain of one (event URL, Origin and Referer all checked).
--   write_key_sha256  SHA-256 of the site's write key for server-side senders
--                     (Authorization: Bearer <key>); the key itself is never stored.
ALTER TABLE sites ADD COLUMN IF NOT EXISTS allowed_hosts TEXT[];
ALTER TABLE sites ADD COLUMN IF NOT EXISTS write_key_sha256 TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS sites_write_key_sha256 ON sites (write_key_sha256)
    WHERE write_key_sha256 IS NOT NULL;
-- When the collector admitted the site (open policy); first_seen_at stays the first ingest hour.
ALTER TABLE sites ADD COLUMN IF NOT EXISTS admitted_at TIMESTAMPTZ;
CREATE INDEX IF NOT EXISTS sites_admitted_at ON sites (admitted_at);

-- Admits unseen sites under the open policy, at most per_hour_cap a clock hour across every
-- collector worker (serialised by an advisory lock). Returns the requested sites that exist
-- afterwards (known before, or admitted now); the others were over the cap.
CREATE OR REPLACE FUNCTION sites_admit(requested TEXT[], per_hour_cap INTEGER)
RETURNS SETOF TEXT
LANGUAGE plpgsql AS $$
DECLARE
    room INTEGER;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('sites_admit'));
    SELECT per_hour_cap - count(*) INTO room FROM sites
    WHERE admitted_at >= date_trunc('hour', now(), 'UTC');
    INSERT INTO sites (site_id, first_seen_at, admitted_at)
    SELECT site, now(), now()
    FROM (SELECT DISTINCT unnest(requested) AS site) wanted
    WHERE NOT EXISTS (SELECT 1 FROM sites s WHERE s.site_id = wanted.site)
    ORDER BY site
    LIMIT greatest(room, 0)
    ON CONFLICT (site_id) DO NOTHING;
    RETURN QUERY SELECT s.site_id::text FROM sites s WHERE s.site_id = ANY(requested);
END;
$$;

-- The dead letter keeps a capped body; the hash and size say what the whole body was.
ALTER TABLE events_rejected ADD COLUMN IF NOT EXISTS body_sha256 TEXT;
