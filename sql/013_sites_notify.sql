-- Every change to `sites` (a new write key, a site blocked, hosts changed: by the CLI or by hand)
-- is announced on the channel pixelpipe_sites; each collector worker listens and reloads its
-- cached copy at once, so a key made a moment ago works on its first requests (docs/security.md).
CREATE OR REPLACE FUNCTION sites_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pixelpipe_sites', '');
    RETURN NULL;
END;
$$;
DROP TRIGGER IF EXISTS sites_changed ON sites;
CREATE TRIGGER sites_changed AFTER INSERT OR UPDATE OR DELETE ON sites
    FOR EACH STATEMENT EXECUTE FUNCTION sites_changed();
