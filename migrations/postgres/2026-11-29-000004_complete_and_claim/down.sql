DROP FUNCTION loopd_complete_and_claim(text, text, bigint, jsonb, jsonb, jsonb, jsonb, jsonb,
                                       jsonb, text[], bigint, bigint, text[], text[]);
DROP INDEX steps_run_implementations;

-- loopd_decision_inputs as 2026-11-28-000003_fast_paths made it.
CREATE OR REPLACE FUNCTION loopd_decision_inputs(p_step steps, p_phases TEXT[])
RETURNS JSONB LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_watch BOOLEAN := p_step.phase = 'verification' AND NOT p_step.is_final;
BEGIN
    RETURN jsonb_build_object(
        'others_active', EXISTS (SELECT 1 FROM steps s WHERE s.run_id = p_step.run_id
                                    AND s.id <> p_step.id
                                    AND s.status IN ('QUEUED', 'RETRYING', 'IN_PROGRESS')),
        'attempts', (SELECT coalesce(jsonb_object_agg(p, a), '{}'::jsonb)
                       FROM (SELECT p, (SELECT max(s.attempt) FROM steps s
                                         WHERE s.run_id = p_step.run_id AND s.phase = p) AS a
                               FROM unnest(p_phases) AS p) m
                      WHERE a IS NOT NULL),
        'recent_impls', CASE WHEN v_watch THEN
            (SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.seq DESC), '[]')
               FROM (SELECT * FROM steps WHERE run_id = p_step.run_id
                        AND phase = 'implementation'
                      ORDER BY seq DESC LIMIT 3) s) ELSE '[]' END,
        'succeeded_impls', CASE WHEN v_watch THEN
            (SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.seq DESC), '[]')
               FROM (SELECT * FROM steps WHERE run_id = p_step.run_id
                        AND phase = 'implementation' AND status = 'SUCCEEDED'
                      ORDER BY seq DESC LIMIT 2) s) ELSE '[]' END);
END $$;
