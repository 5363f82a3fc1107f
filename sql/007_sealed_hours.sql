-- Sealing: a closed ingest hour never changes. Before the export reads an hour it seals the
-- hour's partition with a CHECK (false) NOT VALID constraint: adding it waits for inserts in
-- flight (it takes the partition's lock), and from then on every insert into that hour fails
-- loudly instead of landing after the export. NOT VALID: existing rows are not checked, and the
-- planner does not use it to exclude the partition. Retention can then trust the exported row
-- count of a sealed hour without counting its rows again.
CREATE OR REPLACE FUNCTION events_log_seal_hour(hour_start TIMESTAMPTZ) RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    name TEXT := events_log_partition_name(hour_start);
BEGIN
    -- The hour's rows may still sit in the default partition: give them their own first.
    PERFORM events_log_ensure_partitions(hour_start, hour_start + INTERVAL '1 hour');
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = to_regclass(quote_ident(name)) AND conname = name || '_sealed') THEN
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (false) NOT VALID', name, name || '_sealed');
    END IF;
    RETURN name;
END;
$$;

-- The hourly partitions that are sealed.
CREATE OR REPLACE VIEW events_log_sealed_partitions AS
SELECT c.conrelid::regclass::text AS partition_name
FROM pg_constraint c JOIN pg_inherits i ON i.inhrelid = c.conrelid
WHERE i.inhparent = 'events_log'::regclass AND c.conname = c.conrelid::regclass::text || '_sealed';
