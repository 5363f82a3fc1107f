-- A site that must be certain of its events (issue 20, docs/security.md): with require_key the
-- collector takes its events only with its write key (keyless /collect, the pixel and Snowplow
-- are dead-lettered as write_key_required). `pixelpipe site set S --require-key` / `--no-require-key`.
ALTER TABLE sites ADD COLUMN IF NOT EXISTS require_key BOOLEAN NOT NULL DEFAULT FALSE;

-- Past the hour's cap nothing is inserted at all: an INSERT of no rows still fires statement
-- triggers, and each announcement made every collector worker reload the whole table.
CREATE OR REPLACE FUNCTION sites_admit(requested TEXT[], per_hour_cap INTEGER)
RETURNS SETOF TEXT
LANGUAGE plpgsql AS $$
DECLARE
    room INTEGER;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('sites_admit'));
    SELECT per_hour_cap - count(*) INTO room FROM sites
    WHERE admitted_at >= date_trunc('hour', now(), 'UTC');
    IF room > 0 THEN
        INSERT INTO sites (site_id, first_seen_at, admitted_at)
        SELECT site, now(), now()
        FROM (SELECT DISTINCT unnest(requested) AS site) wanted
        WHERE NOT EXISTS (SELECT 1 FROM sites s WHERE s.site_id = wanted.site)
        ORDER BY site
        LIMIT room
        ON CONFLICT (site_id) DO NOTHING;
    END IF;
    RETURN QUERY SELECT s.site_id::text FROM sites s WHERE s.site_id = ANY(requested);
END;
$$;

-- Changes to `sites` are announced with the ids that changed (a JSON array), so a worker reloads
-- those rows only; a statement that changed no row announces nothing; '' (too many ids for one
-- notification, or a TRUNCATE) means: reload everything. Replaces 013's trigger.
CREATE OR REPLACE FUNCTION sites_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids TEXT;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT json_agg(site_id)::text INTO ids FROM new_sites;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT json_agg(site_id)::text INTO ids FROM old_sites;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT json_agg(site_id)::text INTO ids
        FROM (SELECT site_id FROM new_sites UNION SELECT site_id FROM old_sites) changed;
    END IF;
    IF TG_OP <> 'TRUNCATE' AND ids IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('pixelpipe_sites', CASE WHEN octet_length(ids) <= 7000 THEN ids ELSE '' END);
    RETURN NULL;
END;
$$;
DROP TRIGGER IF EXISTS sites_changed ON sites;
DROP TRIGGER IF EXISTS sites_inserted ON sites;
DROP TRIGGER IF EXISTS sites_updated ON sites;
DROP TRIGGER IF EXISTS sites_deleted ON sites;
DROP TRIGGER IF EXISTS sites_truncated ON sites;
CREATE TRIGGER sites_inserted AFTER INSERT ON sites REFERENCING NEW TABLE AS new_sites
    FOR EACH STATEMENT EXECUTE FUNCTION sites_changed();
CREATE TRIGGER sites_updated AFTER UPDATE ON sites REFERENCING OLD TABLE AS old_sites NEW TABLE AS new_sites
    FOR EACH STATEMENT EXECUTE FUNCTION sites_changed();
CREATE TRIGGER sites_deleted AFTER DELETE ON sites REFERENCING OLD TABLE AS old_sites
    FOR EACH STATEMENT EXECUTE FUNCTION sites_changed();
CREATE TRIGGER sites_truncated AFTER TRUNCATE ON sites
    FOR EACH STATEMENT EXECUTE FUNCTION sites_changed();
