-- The trigger function behind `leases_read_only`: `leases` is a view of the leased steps
-- (migration 2026-12-06-000012_leases_in_steps creates the view and its trigger), and a write
-- aimed at it fails loudly instead of changing `steps` rows. Writes go to the step's lease
-- columns.
-- History: migration 2026-12-06-000012_leases_in_steps.
CREATE OR REPLACE FUNCTION loopd_leases_read_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'leases is a view of the leased steps: write the step''s lease columns'
        USING ERRCODE = 'feature_not_supported';
END $$;
