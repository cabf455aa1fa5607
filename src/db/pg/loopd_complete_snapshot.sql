-- What a completion's decision reads, in one statement and without locks: the step's row
-- (without its prompt, which a completion neither reads nor writes) and lease, its run and
-- state with their versions (`xmin`), and loopd_decision_inputs. The write
-- (loopd_complete_apply_at) checks that none of it changed. A claim returns the same, so a
-- completion arriving before anything else changed needs no snapshot at all.
-- Called by: `fast::complete_snapshot` (src/db/fast.rs).
-- History: migrations 2026-11-28-000003_fast_paths, 2026-12-07-000013_versions_not_rows.
CREATE OR REPLACE FUNCTION loopd_complete_snapshot(p_step TEXT, p_phases TEXT[])
RETURNS JSONB LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_step steps;
BEGIN
    SELECT * INTO v_step FROM steps WHERE id = p_step;
    IF NOT FOUND THEN
        RETURN '{}'::jsonb;
    END IF;
    -- The run and its state read once each, with their versions (NULL when gone).
    RETURN (SELECT jsonb_build_object(
        'now', loopd_now_ms(),
        'step', to_jsonb(v_step) - 'prompt',
        'lease', loopd_lease_of(v_step),
        'run', to_jsonb(r), 'run_version', r.xmin::text::bigint,
        'state', to_jsonb(rs), 'state_version', rs.xmin::text::bigint,
        'inputs', loopd_decision_inputs(v_step, p_phases))
      FROM (SELECT 1) one
      LEFT JOIN runs r ON r.id = v_step.run_id
      LEFT JOIN run_state rs ON rs.run_id = v_step.run_id);
END $$;
