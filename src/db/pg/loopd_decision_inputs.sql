-- What deciding what follows `p_step` reads besides its run and state: whether another step
-- of the run is in flight, the highest attempt of each of `p_phases`, and, after a
-- verification that may lead to another implementation, the watchdog's lists
-- (loopd_watch_inputs).
-- Called by: loopd_claim, loopd_complete_snapshot.
-- History: migrations 2026-11-28-000003_fast_paths, 2026-12-01-000006_direct_reply.
CREATE OR REPLACE FUNCTION loopd_decision_inputs(p_step steps, p_phases TEXT[])
RETURNS JSONB LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    RETURN jsonb_build_object(
        'others_active', EXISTS (SELECT 1 FROM steps s WHERE s.run_id = p_step.run_id
                                    AND s.id <> p_step.id
                                    AND s.status IN ('QUEUED', 'RETRYING', 'IN_PROGRESS')),
        'attempts', (SELECT coalesce(jsonb_object_agg(p, a), '{}'::jsonb)
                       FROM (SELECT p, (SELECT max(s.attempt) FROM steps s
                                         WHERE s.run_id = p_step.run_id AND s.phase = p) AS a
                               FROM unnest(p_phases) AS p) m
                      WHERE a IS NOT NULL))
        || CASE WHEN p_step.phase = 'verification' AND NOT p_step.is_final
                THEN loopd_watch_inputs(p_step.run_id)
                ELSE '{"recent_impls": [], "succeeded_impls": []}' END;
END $$;
